// The relay as a Rudder node without an agent (docs: spec-agentless-node.md): the shapes its three jobs share.
// Own policies (what the root generated for this relay) feed the inventory (credentials, endpoint) and the
// run log (config id, report mode, interval); the inventory's and the services' outcomes feed the run log.

/** Rudder's global compliance mode, RUDDER_REPORT_MODE in the relay's own rudder.json */
export type ReportMode = 'full-compliance' | 'changes-only' | 'reports-disabled';

/** What the root generated for this relay (its own rules/cfengine-community/rudder.json and siblings). */
export interface OwnPolicyState {
  /** RUDDER_NODE_CONFIG_ID of the policies in force */
  readonly nodeConfigId: string;
  /** RUDDER_REPORT_MODE */
  readonly reportMode: ReportMode;
  /** RUDDER_COMPLIANCE_MODE: the policy mode, enforce or audit */
  readonly policyMode: 'enforce' | 'audit';
  /** AGENT_RUN_INTERVAL, in milliseconds */
  readonly runIntervalMs: number;
  /** ALLOWED_NETWORKS */
  readonly allowedNetworks: readonly string[];
  /** DAVUSER / DAVPASSWORD: credentials for /inventory-updates/ and /reports/ upstream and locally */
  readonly davUser: string | undefined;
  readonly davPassword: string | undefined;
  /** the generation timestamp (rudder-promises-generated), when present */
  readonly generation: number | undefined;
  /** the folder that holds the relay's own policies (inputs/) */
  readonly inputsDirectory: string;
  /** every variable of rudder.json, as read (values are strings or string arrays, spec-agentless-node.md §B.2) */
  readonly variables: Readonly<Record<string, unknown>>;
}

export interface OwnPolicies {
  /** the policies in force, or undefined before the root generated any for this relay */
  current(): OwnPolicyState | undefined;
  /** called after each change of the policies in force; returns the unsubscribe function */
  onChange(listener: (state: OwnPolicyState) => void): () => void;
}

/** The outcome of a step the relay does in place of an agent's component, as its run log reports it. */
export interface ComponentOutcome {
  readonly ok: boolean;
  /** what was done or what failed, in words for the root's compliance page */
  readonly message: string;
  /** epoch ms */
  readonly at: number;
}

/** The inventory job, as the run log sees it. */
export interface InventoryStatus {
  lastOutcome(): ComponentOutcome | undefined;
}
