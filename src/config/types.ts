// The typed configuration every other module receives a slice of. Durations are milliseconds,
// sizes bytes, paths absolute (relative paths in the file are resolved against the working
// directory, as relayd does). Key names in comments are the TOML keys (spec-relayd.md §2.1).

export type PeerAuthentication = 'cert_pinning' | 'cert_validation' | 'dangerous_none';
export type LogLevel = 'off' | 'error' | 'warn' | 'info' | 'debug' | 'trace';

export interface ListenAddress {
  readonly host: string;
  readonly port: number;
}

export interface QueueTiming {
  readonly catchup: { readonly frequencyMs: number; readonly limit: number };
  readonly cleanup: {
    readonly frequencyMs: number;
    readonly retentionMs: number;
    /** cleanup.failed_retention: failed/ keeps evidence longer than incoming/ */
    readonly failedRetentionMs: number;
  };
  /** max_spool_size: disk budget of each spool directory in bytes (0 = none); over it uploads get 507 */
  readonly maxSpoolSize: number;
}

export interface ProxyRoute {
  /** [[https.proxy]] prefix, e.g. "/rudder/" */
  readonly prefix: string;
  /** [[https.proxy]] target, an http:// URL of a local service */
  readonly target: string;
  readonly timeoutMs: number;
}

export interface Config {
  readonly general: {
    readonly nodesListFile: string; // nodes_list_file
    readonly nodesCertsFile: string; // nodes_certs_file
    readonly nodeId: string | undefined; // node_id
    readonly nodeIdFile: string; // node_id_file
    readonly listen: ListenAddress; // listen (local API)
    readonly coreThreads: number | undefined;
    readonly blockingThreads: number | undefined;
    readonly httpsPort: number; // https_port: outgoing HTTPS to upstream and sub-relays
    readonly httpsIdleTimeoutMs: number;
    readonly peerAuthentication: PeerAuthentication;
    readonly caPath: string | undefined;
  };
  readonly processing: {
    readonly inventory: QueueTiming & {
      readonly directory: string;
      readonly output: 'upstream' | 'disabled';
      /** signature_wait: how long an inventory waits for its .sign (and the reverse) */
      readonly signatureWaitMs: number;
    };
    readonly reporting: QueueTiming & {
      readonly directory: string;
      readonly output: 'database' | 'upstream' | 'disabled';
      readonly skipEventTypes: readonly string[];
      /** verify_signature: S/MIME verification at the first hop */
      readonly verifySignature: 'direct' | 'required' | 'off';
      /** max_decoded_size: bound on a decompressed run log (zip bombs) */
      readonly maxDecodedSize: number;
    };
  };
  readonly output: {
    readonly database: {
      readonly url: string;
      readonly password: string | undefined;
      readonly maxPoolSize: number;
    };
    readonly upstream: {
      readonly host: string;
      readonly user: string;
      readonly password: string | undefined;
      readonly defaultPassword: string;
      readonly serverCertificateFile: string;
      readonly maxConcurrency: number;
      readonly connectTimeoutMs: number;
      readonly idleTimeoutMs: number;
      readonly requestTimeoutMs: number;
    };
  };
  readonly remoteRun: {
    readonly enabled: boolean;
    readonly command: string;
    readonly useSudo: boolean;
    /** remote_run.mode: "native" = CFEngine EXEC from this process; "command" = relayd's `rudder remote run` */
    readonly mode: 'native' | 'command';
    /** remote_run.port: the nodes' cf-serverd port */
    readonly port: number;
    readonly maxParallel: number;
    readonly connectTimeoutMs: number;
    readonly timeoutMs: number;
  };
  readonly sharedFiles: {
    readonly path: string;
    readonly maxBodySize: number;
    readonly cleanup: { readonly frequencyMs: number };
  };
  readonly sharedFolder: { readonly path: string };
  // ---- onerelay's own sections ----
  readonly https: {
    readonly listen: ListenAddress;
    /** undefined = identity certificate */
    readonly certificateFile: string | undefined;
    /** undefined = identity private key */
    readonly keyFile: string | undefined;
    /** CIDR list; a bare address means /32 or /128 */
    readonly allowedNetworks: readonly string[];
    readonly policyServerNetworks: readonly string[];
    readonly maxUploadSize: number;
    /** front-door processes, the primary included (N - 1 workers are forked); 0 = as many as CPU cores */
    readonly workers: number;
    readonly shutdownTimeoutMs: number;
    /** a request body that sends no byte for this long is refused (Apache's Timeout); 0 = none */
    readonly bodyTimeoutMs: number;
    /** the whole request (headers and body) must have arrived within this; 0 = none */
    readonly requestTimeoutMs: number;
    readonly proxy: readonly ProxyRoute[];
  };
  readonly identity: {
    readonly privateKeyFile: string;
    /** default: private_key_file with .priv replaced by .pub, as cf-key writes them */
    readonly publicKeyFile: string;
    readonly certificateFile: string;
  };
  readonly policies: { readonly directory: string };
  readonly cfengine: {
    readonly listen: ListenAddress;
    /** cfengine.enabled: serve the CFEngine protocol (HTTPS-only installations turn it off) */
    readonly enabled: boolean;
    /** cfengine.public_roots: readable by any client in allowed_networks (Rudder's def.acl entries) */
    readonly publicRoots: readonly string[];
    readonly maxConnections: number;
    /** cfengine.max_connections_per_address: what one client address may hold of them (undefined: no limit of its own) */
    readonly maxConnectionsPerAddress: number | undefined;
    readonly idleTimeoutMs: number;
    readonly denyBadClocks: boolean;
  };
  readonly logging: { readonly level: LogLevel; readonly filter: string };
  /** [node]: the relay as a Rudder node (its own inventory; spec-agentless-node.md) */
  readonly node: {
    /** node.inventory: send the relay's own inventory upstream (registration, then daily) */
    readonly inventory: boolean;
  };
  /** [own_policies]: the relay's own generated policies (rudder.json), spec-agentless-node.md §B */
  readonly ownPolicies: {
    /** own_policies.enabled: read and apply them (default true) */
    readonly enabled: boolean;
    /** own_policies.inputs_directory: where they land (Rudder: /var/rudder/cfengine-community/inputs) */
    readonly inputsDirectory: string;
    /**
     * own_policies.local_networks: what the ACL built from ALLOWED_NETWORKS always admits; undefined = Rudder's
     * def.acl (127.0.0.0/8, ::1 and the host's own addresses)
     */
    readonly localNetworks: readonly string[] | undefined;
    /** the TOML keys the policies could set that this file sets explicitly: these win over the policies */
    readonly tomlKeys: readonly string[];
  };
  readonly sync: {
    /** sync.serve: answer sub-relays' sync requests (manifest, blobs) */
    readonly serve: boolean;
    /** sync.upstream: pull this relay's data from an upstream onerelay */
    readonly upstream: boolean;
    readonly frequencyMs: number;
    /** sync.manifest_ttl: how long the serving side reuses the walk of a tree it cannot watch with inotify */
    readonly manifestTtlMs: number;
    /** sync.state_directory: blob store and staging (same filesystem as the synchronised trees) */
    readonly stateDirectory: string;
    /** sync.protocol: "https" = the upstream is onerelay (sync API); "cfengine" = a stock Rudder root's cf-serverd */
    readonly protocol: 'https' | 'cfengine';
    /** sync.cfengine_port: the upstream cf-serverd's port (protocol "cfengine") */
    readonly cfenginePort: number;
    /** sync.cfengine_connections: parallel connections to the upstream cf-serverd */
    readonly cfengineConnections: number;
    /** sync.cfengine_path_prefix: prepended to the Rudder paths asked of the upstream cf-serverd ("" on a real root) */
    readonly cfenginePathPrefix: string;
  };
  /** [own_compliance]: the relay's own run log (issue 18; docs/agentless-node.md "Run logs") */
  readonly ownCompliance: {
    /** own_compliance.enabled: send a run log of the relay itself when its own policies are present */
    readonly enabled: boolean;
    /** own_compliance.run_interval: overrides AGENT_RUN_INTERVAL of the policies; undefined = the policies' */
    readonly runIntervalMs: number | undefined;
  };
  /** [activity]: node activity record and delivery ledger (README "Node activity and delivery ledger") */
  readonly activity: {
    /** activity.enabled: record at all (false: the bench's "without" run, or a relay that wants none) */
    readonly enabled: boolean;
    /** activity.state_directory: holds activity.sqlite */
    readonly stateDirectory: string;
    /** activity.ledger_retention: hourly totals and node records are kept this long */
    readonly ledgerRetentionMs: number;
    /** activity.detail_window: per-file ledger rows and per-node events are kept this long */
    readonly detailWindowMs: number;
    /** activity.run_interval: the agents' run interval; no report for twice this = silent */
    readonly runIntervalMs: number;
  };
}

/** Where a configuration came from: a TOML file, or a relayd-style directory. */
export interface ConfigSource {
  /** the path given by the user (file or directory) */
  readonly path: string;
  readonly mainFile: string;
  /** logging.conf when the source is a directory and the file exists */
  readonly loggingFile: string | undefined;
}

export interface LoadedConfig {
  readonly config: Config;
  readonly source: ConfigSource;
  /** unknown keys and other non-fatal remarks, one sentence each */
  readonly warnings: readonly string[];
}
