// Writes the relay's own generated policies (what the root writes to /var/rudder/share/<relay>/rules/cfengine-community/,
// fetched into the relay's inputs/) in Rudder's formats, as far as the relay's own run log reads them:
// - rudder.json: one flat object, keys sorted, every value a string (PolicyWriterService.systemVariableToJson);
// - rudder-directives.csv: "<directive>","<mode>","<generation>","<hooks>","<technique>","<version>","<is_system>","<order>"
//   (PolicyWriterService.writeDirectiveCsv);
// - the reporting contexts of the system directives (rudder-system-directives*.cf, from rudder-techniques
//   common/1.0/rudder-system-directives.st), common's TRACKINGKEY (common/1.0/common.st) and the literal-root
//   context of promises.st; the technique files whose presence tells the Rudder version.
// Shapes follow Rudder's root-default-install expected-share fixture (rudder-core tests), written here, not copied.

import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';

export interface OwnPoliciesSpec {
  readonly relayId: string;
  /** the relay's policy server (root, or a relay above it) */
  readonly parentId?: string;
  readonly configId: string;
  readonly reportMode?: 'full-compliance' | 'changes-only' | 'reports-disabled';
  /** SERVER_VERSION; undefined: not written (the version is then guessed from the technique files) */
  readonly serverVersion?: string;
  /** which files of the Rudder version to write (scheduler.cf from 9.1, apache "Configured" from 9.0, rpm-key.cf from 8.2) */
  readonly filesOf?: '8.3' | '9.0' | '9.1';
  /** user directives (non-system techniques) also applied to the relay */
  readonly userDirectives?: ReadonlyArray<{ readonly ruleId: string; readonly directiveId: string; readonly technique: string }>;
}

async function put(root: string, path: string, content: string): Promise<void> {
  await mkdir(dirname(join(root, path)), { recursive: true });
  await writeFile(join(root, path), content);
}

const SYSTEM_OF_RELAY = ['rudder-service-apache', 'rudder-service-relayd', 'server-common'] as const;

export async function writeOwnPolicies(inputs: string, spec: OwnPoliciesSpec): Promise<void> {
  const id = spec.relayId;
  const parent = spec.parentId ?? 'root';
  const files = spec.filesOf ?? '9.1';
  const variables: Record<string, string | string[]> = {
    AGENT_RUN_INTERVAL: '5',
    AGENT_RUN_SCHEDULE: ' "Min01", "Min06", "Min11", "Min16", "Min21", "Min26", "Min31", "Min36", "Min41", "Min46", "Min51", "Min56" ',
    AGENT_RUN_SPLAYTIME: '2',
    AGENT_TYPE: 'cfengine-community',
    ALLOWED_NETWORKS: ['127.0.0.0/8'],
    DAVPASSWORD: 'dav-secret',
    DAVUSER: 'rudder',
    HTTPS_POLICY_DISTRIBUTION_PORT: '443',
    POLICY_SERVER_HTTPS_ONLY: 'true',
    RELAY_SYNC_METHOD: 'classic',
    RUDDER_COMPLIANCE_MODE: 'enforce',
    RUDDER_NODE_CONFIG_ID: spec.configId,
    RUDDER_NODE_KIND: 'relay',
    RUDDER_REPORT_MODE: spec.reportMode ?? 'full-compliance',
    ...(spec.serverVersion === undefined ? {} : { SERVER_VERSION: spec.serverVersion }),
  };
  const sorted = Object.fromEntries(Object.keys(variables).sort().map((k) => [k, variables[k]]));
  await put(inputs, 'rudder.json', `${JSON.stringify(sorted, null, 2).replace(/": /g, '" : ')}\n`);
  await put(inputs, 'rudder-promises-generated', `${Date.now()}\n`);

  const csv = [
    `"common-hasPolicyServer-${parent}","enforce","merged","false","common","1.0","true","Common"`,
    `"inventory-all","enforce","merged","false","inventory","1.0","true","Inventory"`,
    ...SYSTEM_OF_RELAY.map((t) => `"${t}-${id}","enforce","merged","false","${t}","1.0","true","Server ${t} - ${id}"`),
    ...(spec.userDirectives ?? []).map((d) => `"${d.directiveId}","enforce","merged","false","${d.technique}","1.0","false","${d.technique}"`),
  ];
  await put(inputs, 'rudder-directives.csv', `${csv.join('\n')}\n`);

  const method = (rule: string, directive: string, technique: string, name: string) =>
    `      "${name}" usebundle => rudder_reporting_context_v4("${directive}","${rule}","${technique}","","","${directive}${rule}");\n`;
  const system = SYSTEM_OF_RELAY.map((t) => `bundle agent run_${t.replaceAll('-', '_')}_${id.replaceAll('-', '_')}\n{\n  methods:\n${method(`policy-server-${id}`, `${t}-${id}`, t, `Rule for policy server ${id}/Server ${t} - ${id}`)}}\n`).join('');
  await put(inputs, 'rudder-system-directives.cf', `body file control {\n  inputs => {\n  };\n}\n\n${system}`);
  await put(inputs, 'rudder-system-directives-end.cf', `bundle agent run_inventory_all\n{\n  methods:\n${method('inventory-all', 'inventory-all', 'inventory', 'Rudder system policy: daily inventory/Inventory')}}\n`);
  await put(inputs, 'common/1.0/common.cf', `bundle agent rudder_common_system_directive {\n  vars:\n    "directiveId"           string => "hasPolicyServer-${parent}@@common-hasPolicyServer-${parent}@@0";\n}\n`);
  // promises.st sets the common context with the literal root ids whatever the parent (spec §C.4 quirk)
  await put(inputs, 'promises.cf', `bundle agent rudder_directives {\n  methods:\n      "Reporting context" usebundle => rudder_reporting_context_v4("common-hasPolicyServer-root","hasPolicyServer-root","Common","","","reportid");\n}\n`);
  await put(inputs, 'common/1.0/rpm-key.cf', 'bundle agent check_rpm_key {}\n');
  if (files === '9.1') await put(inputs, 'common/1.0/scheduler.cf', 'bundle agent system_scheduler {}\n');
  await put(
    inputs,
    'rudder-service-apache/1.0/apache/main.cf',
    `bundle agent system_rudder_apache_configuration {\n  methods:\n      "any" usebundle => _method_reporting_context_v4("Apache service", "Started", "apache_started");\n${files === '8.3' ? '' : '      "any" usebundle => _method_reporting_context_v4("Apache service", "Configured", "apache_configured");\n'}}\n`,
  );
  for (const d of spec.userDirectives ?? []) await put(inputs, `${d.technique}/1.0/${d.technique}.cf`, `bundle agent ${d.technique.replaceAll('-', '_')} {}\n`);
}

/** the (component, key) pairs expected of a relay under its parent, per Rudder version (rudder-techniques metadata.xml) */
export function expectedPairs(version: '8.3' | '9.0' | '9.1'): string[] {
  const common = ['Update', 'ncf Initialization', 'Security parameters', 'CRON Daemon', 'GPG key', 'Monitoring', ...(version === '9.1' ? ['Events scheduler'] : [])];
  return [
    ...common.map((c) => `${c}/None`),
    'Inventory/None',
    'Reload Rudder services/None',
    ...['Enabled', 'Started', ...(version === '8.3' ? [] : ['Configured'])].map((k) => `Apache service/${k}`),
    ...['Allowed networks permissions', 'Allowed networks configuration', 'Remote run permissions', 'Remote run configuration', 'Webdav configuration', 'Webdav permissions', 'Logrotate'].map((k) => `Apache configuration/${k}`),
    ...['Permissions', 'Apache certificate'].map((k) => `Configure apache certificate/${k}`),
    ...['Configuration permissions', 'Configuration', 'Enabled', 'Started', 'Policy-server certificate', 'Root server certificate', 'Root certificate permissions', 'Policy server certificate permissions'].map((k) => `Rudder-relayd service/${k}`),
    'Synchronize policies/None',
    'Synchronize files/None',
    'Synchronize resources/None',
  ].sort();
}
