// `onerelay migrate --from-rudder`: writes an onerelay configuration that uses an existing Rudder
// relay's data in place — relayd's main.conf as it is, Apache's networks and port, the same key,
// certificate and node id — so nothing is re-trusted on nodes or on the root server.

import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, isAbsolute, join } from 'node:path';
import { parse as parseToml, stringify as stringifyToml } from 'smol-toml';
import { RelayError, messageOf } from '../errors.js';

export interface MigrateOptions {
  /** the filesystem root of the relay ("/"; a test points it at a fixture tree) */
  readonly root: string;
  readonly output: string;
}

export interface MigrateResult {
  readonly output: string;
  /** what was read, and what was decided, one line each (printed for the administrator) */
  readonly notes: string[];
}

type Table = Record<string, unknown>;

/** relayd keys that hold paths (spec-relayd.md §2.1) */
const PATH_KEYS = [
  'general.nodes_list_file',
  'general.nodes_certs_file',
  'general.node_id_file',
  'general.ca_path',
  'processing.inventory.directory',
  'processing.reporting.directory',
  'output.upstream.server_certificate_file',
  'remote_run.command',
  'shared_files.path',
  'shared_folder.path',
];

function table(parent: Table, key: string): Table {
  const existing = parent[key];
  if (typeof existing === 'object' && existing !== null && !Array.isArray(existing)) return existing as Table;
  const created: Table = {};
  parent[key] = created;
  return created;
}

async function readOptional(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch {
    return undefined;
  }
}

/** `Require ip …` / `Require all granted` / `Require local` lines of Apache's network ACL files (spec §1.4) */
export function apacheNetworks(text: string): string[] | undefined {
  const networks: string[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (/^Require\s+all\s+granted/i.test(line)) return ['0.0.0.0/0', '::/0'];
    if (/^Require\s+local/i.test(line)) networks.push('127.0.0.0/8', '::1/128');
    const ip = /^Require\s+ip\s+(.+)$/i.exec(line);
    if (ip?.[1]) networks.push(...ip[1].split(/\s+/).filter(Boolean).map((n) => (n.includes('/') ? n : n.includes(':') ? `${n}/128` : `${n}/32`)));
  }
  return networks.length > 0 ? [...new Set(networks)] : undefined;
}

export async function migrateFromRudder(options: MigrateOptions): Promise<MigrateResult> {
  const at = (path: string) => join(options.root, path);
  const notes: string[] = [];
  const relaydDir = at('/opt/rudder/etc/relayd');
  const mainText = await readOptional(join(relaydDir, 'main.conf'));
  if (mainText === undefined) throw new RelayError('RELAY_ERR_CONFIG_FILE', `${join(relaydDir, 'main.conf')} not found: is this a Rudder relay?`);
  let config: Table;
  try {
    config = parseToml(mainText) as Table;
  } catch (error) {
    throw new RelayError('RELAY_ERR_CONFIG_SYNTAX', `${join(relaydDir, 'main.conf')}: ${messageOf(error)}`);
  }
  notes.push(`read relayd configuration ${join(relaydDir, 'main.conf')}`);

  // every path of relayd's configuration, under the given root
  for (const key of PATH_KEYS) {
    const parts = key.split('.');
    let node: Table = config;
    for (const part of parts.slice(0, -1)) node = table(node, part);
    const last = parts[parts.length - 1] as string;
    const value = node[last];
    if (typeof value === 'string' && isAbsolute(value) && options.root !== '/') node[last] = at(value);
  }
  const general = table(config, 'general');
  // relays use nodescerts.pem (relayd's default is the root server's allnodescerts.pem)
  general['nodes_certs_file'] ??= at('/var/rudder/lib/ssl/nodescerts.pem');
  general['node_id_file'] ??= at('/opt/rudder/etc/uuid.hive');
  general['nodes_list_file'] ??= at('/var/rudder/lib/relay/nodeslist.json');
  for (const section of ['inventory', 'reporting'] as const) {
    const processing = table(table(config, 'processing'), section);
    processing['directory'] ??= at(section === 'inventory' ? '/var/rudder/inventories/' : '/var/rudder/reports/');
  }
  table(table(config, 'output'), 'upstream')['server_certificate_file'] ??= at('/var/rudder/lib/ssl/policy_server.pem');
  table(config, 'shared_files')['path'] ??= at('/var/rudder/shared-files/');
  table(config, 'shared_folder')['path'] ??= at('/var/rudder/configuration-repository/shared-files/');
  const remoteRun = table(config, 'remote_run');
  if (remoteRun['mode'] === undefined) {
    remoteRun['mode'] = 'native';
    notes.push('remote_run.mode = "native": nodes are run with onerelay\'s own CFEngine client (no sudo, no cf-runagent); set "command" for the old way');
  }

  const loggingText = await readOptional(join(relaydDir, 'logging.conf'));
  if (loggingText !== undefined) {
    const level = (parseToml(loggingText) as { general?: { level?: string } }).general?.level;
    if (level !== undefined) table(config, 'logging')['level'] = level;
  }

  // Apache: networks, port, certificates
  const https = table(config, 'https');
  const networks = apacheNetworks((await readOptional(at('/opt/rudder/etc/rudder-networks-24.conf'))) ?? '');
  if (networks) {
    https['allowed_networks'] = networks;
    notes.push(`allowed networks from rudder-networks-24.conf: ${networks.join(', ')}`);
  } else notes.push('no allowed networks in rudder-networks-24.conf (nothing could upload): kept onerelay\'s default, loopback only');
  const policyServers = apacheNetworks((await readOptional(at('/opt/rudder/etc/rudder-networks-policy-server-24.conf'))) ?? '');
  if (policyServers) https['policy_server_networks'] = policyServers;
  let port = 443;
  for (const vhost of ['/etc/apache2/sites-available/rudder.conf', '/etc/apache2/sites-enabled/rudder.conf', '/etc/httpd/conf.d/rudder.conf']) {
    const text = await readOptional(at(vhost));
    const match = text === undefined ? null : /<VirtualHost\s+[^:>]*:(\d+)\s*>/i.exec(text.replace(/<VirtualHost\s+[^:>]*:80\s*>[\s\S]*?<\/VirtualHost>/gi, ''));
    if (match?.[1]) {
      port = Number(match[1]);
      notes.push(`HTTPS port ${port} from ${vhost}`);
      break;
    }
  }
  https['listen'] = `0.0.0.0:${port}`;
  // 9.0+: a dedicated HTTPS certificate, else the agent identity (spec §1.1)
  if (existsSync(at('/opt/rudder/etc/ssl/server.cert')) && existsSync(at('/opt/rudder/etc/ssl/server.key'))) {
    https['certificate_file'] = at('/opt/rudder/etc/ssl/server.cert');
    https['key_file'] = at('/opt/rudder/etc/ssl/server.key');
    notes.push('HTTPS presents /opt/rudder/etc/ssl/server.cert, as Apache did');
  }
  const identity = table(config, 'identity');
  identity['private_key_file'] = at('/var/rudder/cfengine-community/ppkeys/localhost.priv');
  identity['certificate_file'] = at('/opt/rudder/etc/ssl/agent.cert');
  for (const file of [identity['private_key_file'], identity['certificate_file'], general['node_id_file']] as string[]) {
    if (!existsSync(file)) notes.push(`warning: ${file} is missing: the relay's identity must be the one the root server knows`);
  }
  table(config, 'policies')['directory'] = at('/var/rudder/share');
  let cfenginePort = 5309;
  const rudderJson = await readOptional(at('/var/rudder/cfengine-community/inputs/rudder.json'));
  if (rudderJson !== undefined) {
    try {
      const vars = JSON.parse(rudderJson) as Record<string, unknown>;
      if (Number.isInteger(Number(vars['COMMUNITYPORT']))) cfenginePort = Number(vars['COMMUNITYPORT']);
    } catch {
      notes.push('warning: inputs/rudder.json is not JSON; CFEngine port left at 5309');
    }
  }
  table(config, 'cfengine')['listen'] = `0.0.0.0:${cfenginePort}`;

  const header = `# written by \`onerelay migrate --from-rudder\` on ${new Date().toISOString()}
# from ${join(relaydDir, 'main.conf')} and the Apache relay configuration; data is used in place.
`;
  await mkdir(dirname(options.output), { recursive: true });
  await writeFile(options.output, `${header}${stringifyToml(config)}\n`, { mode: 0o640 });
  notes.push(`wrote ${options.output}`);
  return { output: options.output, notes };
}
