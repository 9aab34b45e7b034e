// Which (rule, directive, component, key) the root expects in the relay's run log, derived from the relay's
// own generated policies (spec-agentless-node.md §C.4, docs/agentless-node.md "Run logs"):
// - the directives and their techniques: rudder-directives.csv, written by the root for this node
//   (PolicyWriterService.writeDirectiveCsv: "<directive id>","<mode>","<generation>","<hooks>","<technique>","<version>","<is_system>",…);
// - each directive's rule: the reporting contexts the root generated (rudder-system-directives*.cf
//   `rudder_reporting_context_v4("<directive>","<rule>",…)`, common/1.0/common.cf TRACKINGKEY `"<rule>@@<directive>@@0"`),
//   else the fixed ids of PolicyServerManagementService (policy-server-<id>, hasPolicyServer-<parent>, inventory-all);
// - each technique's components and keys: the sections of its metadata.xml (Normation/rudder-techniques
//   techniques/system/*/1.0/metadata.xml), which the root does not copy to the node, so they are tabled here per
//   Rudder version, the version being rudder.json's SERVER_VERSION (else guessed from the technique files present).

import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';

/** what onerelay does in place of a component, or why it has no meaning here */
export type ComponentProbe =
  | 'update' // common: Update — the relay's own policies and data pulled from upstream
  | 'security' // common: Security parameters — key and certificate in place, private key not world-readable
  | 'inventory' // inventory: Inventory
  | 'https' // the HTTPS endpoint serving (Apache's part)
  | 'relay-service' // the relay service answering (relayd's part)
  | 'upstream-certificate' // the parent's pinned certificate usable
  | 'sync' // data synchronised from upstream
  | { readonly na: string };

export interface ExpectedComponent {
  readonly technique: string;
  readonly ruleId: string;
  readonly directiveId: string;
  readonly component: string;
  /** "None" for a component without report keys (RuleExpectedReportBuilder, DEFAULT_COMPONENT_KEY) */
  readonly key: string;
  readonly probe: ComponentProbe;
}

export interface ExpectedReports {
  /** the Rudder version whose metadata was used, and where it was read */
  readonly rudderVersion: string;
  readonly versionSource: 'SERVER_VERSION' | 'technique files';
  readonly components: readonly ExpectedComponent[];
  /** directives of the policies that onerelay cannot report on (user techniques, root-only services) */
  readonly skippedDirectives: readonly string[];
}

type Version = readonly [number, number];

interface KeySpec {
  readonly key: string;
  readonly probe: ComponentProbe;
  readonly since?: Version;
  /** first version without it */
  readonly until?: Version;
}

interface ComponentSpec {
  readonly component: string;
  readonly keys: readonly KeySpec[];
  readonly since?: Version;
  readonly until?: Version;
}

const none = (probe: ComponentProbe): readonly KeySpec[] => [{ key: 'None', probe }];
const na = (why: string): ComponentProbe => ({ na: why });

/**
 * Sections with component="true" of the system techniques, checked against rudder-techniques branches
 * 7.3, 8.0, 8.1, 8.2, 8.3, 9.0, 9.1, 9.2, 10.0 and master (c783870d).
 */
const TECHNIQUES: Readonly<Record<string, { readonly reportName: string; readonly components: readonly ComponentSpec[] }>> = {
  // reportName: the technique name written in reports when no reporting context names it (informative only)
  common: {
    reportName: 'Common',
    components: [
      { component: 'Update', keys: none('update') },
      { component: 'ncf Initialization', keys: none(na('No configuration library to initialise: onerelay runs no agent')) },
      { component: 'Security parameters', keys: none('security') },
      { component: 'Log system for reports', until: [8, 0], keys: none(na('Reports are sent over HTTPS, no syslog')) },
      { component: 'CRON Daemon', keys: none(na('No cron job: onerelay runs as a service')) },
      { component: 'GPG key', since: [8, 2], keys: none(na('No package signing key to trust')) },
      { component: 'Monitoring', keys: none(na('No monitoring information to share')) },
      { component: 'Events scheduler', since: [9, 1], keys: none(na('No scheduled events run by onerelay')) },
    ],
  },
  inventory: { reportName: 'Inventory', components: [{ component: 'Inventory', keys: none('inventory') }] },
  'server-common': {
    reportName: 'Server common',
    components: [{ component: 'Reload Rudder services', keys: none(na('No Rudder services restart needed: onerelay applies its configuration itself')) }],
  },
  'rudder-service-apache': {
    reportName: 'Rudder apache',
    components: [
      {
        component: 'Apache service',
        keys: [
          { key: 'Enabled', probe: 'https' },
          { key: 'Started', probe: 'https' },
          { key: 'Configured', probe: 'https', since: [9, 0] },
        ],
      },
      {
        component: 'Apache configuration',
        keys: [
          { key: 'Allowed networks permissions', probe: na('No Apache configuration file: allowed networks are in onerelay\'s configuration') },
          { key: 'Allowed networks configuration', probe: 'https' },
          { key: 'Remote run permissions', probe: na('No Apache configuration file: remote run networks are in onerelay\'s configuration') },
          { key: 'Remote run configuration', probe: 'https' },
          { key: 'Webdav configuration', probe: 'https' },
          { key: 'Webdav permissions', probe: na('No htpasswd file: WebDAV credentials are in onerelay\'s configuration') },
          { key: 'Logrotate', probe: na('No Apache log file: onerelay logs to its journal') },
        ],
      },
      {
        component: 'Configure apache certificate',
        keys: [
          { key: 'Permissions', probe: na('No Apache copy of the certificate: the HTTPS endpoint uses the agent certificate in place') },
          { key: 'Apache certificate', probe: 'https' },
        ],
      },
    ],
  },
  'rudder-service-relayd': {
    reportName: 'Rudder relay',
    components: [
      {
        component: 'Rudder-relayd service',
        keys: [
          { key: 'Configuration permissions', probe: na('No relayd configuration file: onerelay reads its own') },
          { key: 'Configuration', probe: 'relay-service' },
          { key: 'Enabled', probe: 'relay-service' },
          { key: 'Started', probe: 'relay-service' },
          { key: 'Log rotation', until: [8, 0], probe: na('No relayd log file: onerelay logs to its journal') },
          { key: 'Policy-server certificate', probe: 'upstream-certificate' },
          { key: 'Root server certificate', probe: na('The root certificate is not used by onerelay: it pins its parent') },
          { key: 'Root certificate permissions', probe: na('The root certificate is not used by onerelay: it pins its parent') },
          { key: 'Policy server certificate permissions', probe: na('The parent certificate is read in place by onerelay') },
        ],
      },
      { component: 'Synchronize policies', keys: none('sync') },
      { component: 'Synchronize files', keys: none('sync') },
      { component: 'Synchronize resources', keys: none('sync') },
    ],
  },
};

/** the versions the table was checked against; a newer root is read with the newest */
export const CHECKED_RUDDER_VERSIONS = ['7.3', '8.0', '8.1', '8.2', '8.3', '9.0', '9.1', '9.2', '10.0'] as const;

function atLeast(version: Version, bound: Version): boolean {
  return version[0] > bound[0] || (version[0] === bound[0] && version[1] >= bound[1]);
}

function applies(spec: { readonly since?: Version; readonly until?: Version }, version: Version): boolean {
  return (spec.since === undefined || atLeast(version, spec.since)) && (spec.until === undefined || !atLeast(version, spec.until));
}

function parseVersion(value: unknown): Version | undefined {
  const match = typeof value === 'string' ? /^(\d+)\.(\d+)/.exec(value.trim()) : null;
  return match ? [Number(match[1]), Number(match[2])] : undefined;
}

const exists = (path: string): Promise<boolean> => stat(path).then(
  () => true,
  () => false,
);

/** without SERVER_VERSION, the files that came with each version's components (rudder-techniques metadata TMLS) */
async function versionFromFiles(inputs: string): Promise<Version> {
  if (await exists(join(inputs, 'common/1.0/scheduler.cf'))) return [9, 1]; // "Events scheduler"
  const apache = await readFile(join(inputs, 'rudder-service-apache/1.0/apache/main.cf'), 'utf8').catch(() => '');
  if (apache.includes('"Configured"')) return [9, 0]; // Apache service / Configured
  if (await exists(join(inputs, 'common/1.0/rpm-key.cf'))) return [8, 2]; // "GPG key"
  return [8, 0];
}

/** one rudder-directives.csv line: quoted fields, "" for a quote inside */
function csvFields(line: string): string[] {
  const fields: string[] = [];
  const pattern = /"((?:[^"]|"")*)"(?:,|$)/g;
  for (let match = pattern.exec(line); match !== null && match[0] !== ''; match = pattern.exec(line)) fields.push(match[1]!.replaceAll('""', '"'));
  return fields;
}

interface DirectiveRow {
  readonly directiveId: string;
  readonly technique: string;
  readonly isSystem: boolean;
}

/** rudder-directives.csv; undefined when the file is absent (policies older than Rudder 7.0 or not generated) */
async function readDirectives(inputs: string): Promise<DirectiveRow[] | undefined> {
  let text: string;
  try {
    text = await readFile(join(inputs, 'rudder-directives.csv'), 'utf8');
  } catch {
    return undefined;
  }
  return text
    .split('\n')
    .map(csvFields)
    .filter((fields) => fields.length >= 7)
    .map((fields) => ({ directiveId: fields[0]!, technique: fields[4]!, isSystem: fields[6] === 'true' }));
}

/** directive id → rule id, and directive id → technique name written in reports, as the generated reporting contexts say */
async function readRuleIds(inputs: string): Promise<{ rules: Map<string, string>; names: Map<string, string> }> {
  const rules = new Map<string, string>();
  const names = new Map<string, string>();
  // common's TRACKINGKEY first: promises.cf sets the common context with the literal root ids (spec §C.4 quirk)
  for (const file of ['common/1.0/common.cf', 'rudder-system-directives.cf', 'rudder-system-directives-end.cf', 'promises.cf']) {
    const text = await readFile(join(inputs, file), 'utf8').catch(() => '');
    for (const match of text.matchAll(/"([A-Za-z0-9_.:-]+)@@([A-Za-z0-9_.:-]+)@@\d+"/g)) if (!rules.has(match[2]!)) rules.set(match[2]!, match[1]!);
    for (const match of text.matchAll(/rudder_reporting_context_v4\(\s*"([^"]+)"\s*,\s*"([^"]+)"\s*,\s*"([^"]*)"/g)) {
      if (!rules.has(match[1]!)) rules.set(match[1]!, match[2]!);
      // the agent writes the context's technique name (log_rudder.cf rudder_reporting_context_v4 t_name) in each report
      if (!names.has(match[1]!) && match[3] !== '') names.set(match[1]!, match[3]!);
    }
  }
  return { rules, names };
}

/** the rule of a system directive by PolicyServerManagementService's fixed ids, when no generated file said */
function conventionalRule(directiveId: string, technique: string, myId: string): string | undefined {
  if (technique === 'inventory') return 'inventory-all';
  if (technique === 'common') return directiveId.startsWith('common-') ? directiveId.slice('common-'.length) : undefined;
  return directiveId === `${technique}-${myId}` ? `policy-server-${myId}` : undefined;
}

/**
 * The expected reports of the relay's system directives, from its own policies in `inputs`.
 * `variables` is rudder.json (SERVER_VERSION).
 */
export async function expectedReports(inputs: string, variables: Readonly<Record<string, unknown>>, myId: string): Promise<ExpectedReports> {
  const declared = parseVersion(variables['SERVER_VERSION']);
  const version = declared ?? (await versionFromFiles(inputs));
  const rows = (await readDirectives(inputs)) ?? [];
  const { rules, names } = await readRuleIds(inputs);
  const components: ExpectedComponent[] = [];
  const skippedDirectives: string[] = [];
  for (const row of rows) {
    const spec = row.isSystem ? TECHNIQUES[row.technique] : undefined;
    const ruleId = rules.get(row.directiveId) ?? conventionalRule(row.directiveId, row.technique, myId);
    if (spec === undefined || ruleId === undefined) {
      skippedDirectives.push(row.directiveId);
      continue;
    }
    for (const component of spec.components) {
      if (!applies(component, version)) continue;
      for (const key of component.keys) {
        if (!applies(key, version)) continue;
        components.push({ technique: names.get(row.directiveId) ?? spec.reportName, ruleId, directiveId: row.directiveId, component: component.component, key: key.key, probe: key.probe });
      }
    }
  }
  return { rudderVersion: `${version[0]}.${version[1]}`, versionSource: declared ? 'SERVER_VERSION' : 'technique files', components, skippedDirectives };
}
