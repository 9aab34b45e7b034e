// Reads relayd's main.conf (every key, relayd's defaults) plus onerelay's own sections, and
// collects every problem instead of stopping at the first, so `onerelay check` names them all.

import { readFile, stat } from 'node:fs/promises';
import { isIP } from 'node:net';
import { availableParallelism } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { parse as parseToml, TomlError } from 'smol-toml';
import { RelayError } from '../errors.js';
import { durationExpectation, parseDuration } from './duration.js';
import type { Config, ConfigSource, ListenAddress, LoadedConfig, LogLevel, ProxyRoute } from './types.js';

type Table = Record<string, unknown>;

export interface ConfigProblem {
  /** exit code class: 2 = syntax/type (relayd's TOML deserialization errors), 3 = anything else */
  readonly exitCode: 2 | 3;
  readonly message: string;
}

export class ConfigError extends RelayError {
  readonly problems: readonly ConfigProblem[];
  readonly exitCode: 2 | 3;
  constructor(problems: readonly ConfigProblem[]) {
    const exitCode = problems.some((p) => p.exitCode === 2) ? 2 : 3;
    super(
      exitCode === 2 ? 'RELAY_ERR_CONFIG_SYNTAX' : 'RELAY_ERR_CONFIG_VALUE',
      problems.map((p) => p.message).join('; '),
    );
    this.problems = problems;
    this.exitCode = exitCode;
  }
}

function isTable(value: unknown): value is Table {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Date);
}

function show(value: unknown): string {
  if (typeof value === 'bigint') return value.toString();
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

/** Walks the TOML tree, records which keys were read (to warn about the others) and every bad value. */
class Reader {
  readonly problems: ConfigProblem[] = [];
  private readonly known = new Set<string>();

  constructor(private readonly root: Table) {}

  private lookup(path: string): unknown {
    let node: unknown = this.root;
    for (const part of path.split('.')) {
      if (!isTable(node)) return undefined;
      node = node[part];
    }
    return node;
  }

  private bad(path: string, value: unknown, expected: string): void {
    this.problems.push({ exitCode: 2, message: `${path} = ${show(value)}: expected ${expected}` });
  }

  /** marks a section or key as known without reading it (deprecated keys relayd ignores) */
  accept(path: string): void {
    this.known.add(path);
  }

  /** whether the file sets `path` (a value set explicitly wins over the relay's own policies) */
  has(path: string): boolean {
    return this.lookup(path) !== undefined;
  }

  raw(path: string): unknown {
    this.known.add(path);
    return this.lookup(path);
  }

  string(path: string, fallback: string): string;
  string(path: string, fallback: undefined): string | undefined;
  string(path: string, fallback: string | undefined): string | undefined {
    const value = this.raw(path);
    if (value === undefined) return fallback;
    if (typeof value !== 'string') {
      this.bad(path, value, 'a string');
      return fallback;
    }
    return value;
  }

  path(path: string, fallback: string): string;
  path(path: string, fallback: undefined): string | undefined;
  path(path: string, fallback: string | undefined): string | undefined {
    const value = this.string(path, fallback as string);
    if (value === undefined) return undefined;
    if (value === '') {
      this.bad(path, value, 'a non-empty path');
      return fallback === undefined ? undefined : resolve(fallback);
    }
    return resolve(value);
  }

  integer(path: string, fallback: number, min = 0, max = Number.MAX_SAFE_INTEGER): number {
    const value = this.raw(path);
    if (value === undefined) return fallback;
    const n = typeof value === 'bigint' ? Number(value) : value;
    if (typeof n !== 'number' || !Number.isInteger(n) || n < min || n > max) {
      this.bad(path, value, `an integer between ${min} and ${max}`);
      return fallback;
    }
    return n;
  }

  optionalInteger(path: string, min: number, max: number): number | undefined {
    if (this.lookup(path) === undefined) {
      this.known.add(path);
      return undefined;
    }
    return this.integer(path, min, min, max);
  }

  boolean(path: string, fallback: boolean): boolean {
    const value = this.raw(path);
    if (value === undefined) return fallback;
    if (typeof value !== 'boolean') {
      this.bad(path, value, 'true or false');
      return fallback;
    }
    return value;
  }

  oneOf<T extends string>(path: string, choices: readonly T[], fallback: T): T {
    const value = this.raw(path);
    if (value === undefined) return fallback;
    if (typeof value !== 'string' || !(choices as readonly string[]).includes(value)) {
      this.bad(path, value, `one of ${choices.map((c) => `"${c}"`).join(', ')}`);
      return fallback;
    }
    return value as T;
  }

  duration(path: string, fallbackMs: number): number {
    const value = this.raw(path);
    if (value === undefined) return fallbackMs;
    const ms = parseDuration(value);
    if (ms === undefined) {
      this.bad(path, value, durationExpectation);
      return fallbackMs;
    }
    return ms;
  }

  /** bytes: an integer, or a string with a unit ("10GiB", "500 MB", "64k") */
  size(path: string, fallback: number): number {
    const value = this.raw(path);
    if (value === undefined) return fallback;
    const bytes = parseSize(value);
    if (bytes === undefined) {
      this.bad(path, value, 'a size in bytes: an integer or a string such as "10GiB", "500MB", "64KiB"');
      return fallback;
    }
    return bytes;
  }

  stringArray(path: string, fallback: readonly string[]): readonly string[] {
    const value = this.raw(path);
    if (value === undefined) return fallback;
    if (!Array.isArray(value) || value.some((v) => typeof v !== 'string')) {
      this.bad(path, value, 'an array of strings');
      return fallback;
    }
    return value as string[];
  }

  listen(path: string, fallback: string): ListenAddress {
    const value = this.string(path, fallback);
    const parsed = parseListen(value);
    if (!parsed) {
      this.bad(path, value, 'an address "host:port", e.g. "127.0.0.1:3030" or "[::1]:443"');
      return parseListen(fallback) as ListenAddress;
    }
    return parsed;
  }

  networks(path: string, fallback: readonly string[]): readonly string[] {
    const list = this.stringArray(path, fallback);
    for (const cidr of list) {
      if (!isCidr(cidr)) this.bad(path, cidr, 'a network "address/prefix" such as "192.168.0.0/16" or "::1/128"');
    }
    return list;
  }

  unknownKeys(): string[] {
    const unknown: string[] = [];
    const walk = (node: unknown, prefix: string): void => {
      if (!isTable(node)) return;
      for (const [key, child] of Object.entries(node)) {
        const path = prefix === '' ? key : `${prefix}.${key}`;
        if (this.known.has(path)) continue;
        const isSection = isTable(child) || (Array.isArray(child) && child.every(isTable) && child.length > 0);
        const knownBelow = [...this.known].some((k) => k.startsWith(`${path}.`));
        if (isSection && knownBelow && !Array.isArray(child)) walk(child, path);
        else unknown.push(path);
      }
    };
    walk(this.root, '');
    return unknown;
  }
}

const SIZE_UNITS: Record<string, number> = {
  '': 1, b: 1,
  k: 1024, kb: 1000, kib: 1024,
  m: 1024 ** 2, mb: 1000 ** 2, mib: 1024 ** 2,
  g: 1024 ** 3, gb: 1000 ** 3, gib: 1024 ** 3,
  t: 1024 ** 4, tb: 1000 ** 4, tib: 1024 ** 4,
};

export function parseSize(value: unknown): number | undefined {
  if (typeof value === 'number' || typeof value === 'bigint') {
    const n = Number(value);
    return Number.isSafeInteger(n) && n >= 0 ? n : undefined;
  }
  if (typeof value !== 'string') return undefined;
  const match = /^\s*(\d+)\s*([a-zA-Z]*)\s*$/.exec(value);
  if (!match) return undefined;
  const factor = SIZE_UNITS[(match[2] ?? '').toLowerCase()];
  if (factor === undefined) return undefined;
  const n = Number(match[1]) * factor;
  return Number.isSafeInteger(n) ? n : undefined;
}

export function parseListen(value: string): ListenAddress | undefined {
  const match = /^(?:\[([^\]]+)\]|([^:\s]+)):(\d{1,5})$/.exec(value.trim());
  if (!match) return undefined;
  const host = match[1] ?? match[2] ?? '';
  const port = Number(match[3]);
  if (port > 65535) return undefined;
  if (match[1] !== undefined && isIP(host) !== 6) return undefined;
  return { host, port };
}

export function isCidr(value: string): boolean {
  const [address, prefix, ...rest] = value.split('/');
  if (rest.length > 0 || address === undefined) return false;
  const family = isIP(address);
  if (family === 0) return false;
  if (prefix === undefined) return true;
  if (!/^\d{1,3}$/.test(prefix)) return false;
  return Number(prefix) <= (family === 4 ? 32 : 128);
}

/** Paths the relay answers itself on the HTTPS endpoint; a [[https.proxy]] prefix may not cover them. */
export const RELAY_PATHS: readonly string[] = ['/uuid', '/reports/', '/inventories/', '/inventory-updates/', '/policies/', '/common/', '/rudder/relay-api/'];

/**
 * A prefix at or below a relay path would take it over. A prefix above one ("/rudder/", "/") is
 * fine: the router prefers the relay's more specific routes.
 */
function shadowsRelayPath(prefix: string): string | undefined {
  const withSlash = (p: string) => (p.endsWith('/') ? p : `${p}/`);
  return RELAY_PATHS.find((path) => withSlash(prefix).startsWith(withSlash(path)));
}

/** "" or an absolute directory (no trailing slash): where the Rudder paths live on a relocated upstream */
function readPathPrefix(reader: Reader, path: string): string {
  const value = reader.string(path, '');
  if (value === '') return '';
  if (!value.startsWith('/') || value.includes('\0') || value.split('/').includes('..')) {
    reader.problems.push({ exitCode: 2, message: `${path} = ${JSON.stringify(value)}: expected "" or an absolute directory without ".."` });
    return '';
  }
  return value.replace(/\/+$/, '');
}

function readProxyRoutes(reader: Reader): readonly ProxyRoute[] {
  const value = reader.raw('https.proxy');
  if (value === undefined) return [];
  if (!Array.isArray(value) || !value.every(isTable)) {
    reader.problems.push({ exitCode: 2, message: `https.proxy: expected an array of tables ([[https.proxy]])` });
    return [];
  }
  return value.map((entry, index) => {
    const sub = new Reader(entry as Table);
    const where = `https.proxy[${index}]`;
    const prefix = sub.string('prefix', '');
    const target = sub.string('target', '');
    const timeoutMs = sub.duration('timeout', 300_000);
    for (const p of sub.problems) reader.problems.push({ exitCode: p.exitCode, message: `${where}.${p.message}` });
    if (!prefix.startsWith('/')) {
      reader.problems.push({ exitCode: 2, message: `${where}.prefix = ${show(prefix)}: expected a path starting with "/"` });
    }
    const shadowed = prefix.startsWith('/') ? shadowsRelayPath(prefix) : undefined;
    if (shadowed !== undefined) {
      reader.problems.push({ exitCode: 3, message: `${where}.prefix = ${show(prefix)}: would shadow the relay's own path ${shadowed}` });
    }
    if (!/^http:\/\/[^/]+/.test(target)) {
      reader.problems.push({ exitCode: 2, message: `${where}.target = ${show(target)}: expected an http:// URL of a local service` });
    }
    return { prefix, target: target.replace(/\/+$/, ''), timeoutMs };
  });
}

/** the TOML keys whose value the relay's own policies also give (agentless/settings.ts) */
const OWN_POLICY_KEYS = ['https.allowed_networks', 'https.policy_server_networks', 'output.upstream.user', 'output.upstream.password'] as const;

const LOG_LEVELS: readonly LogLevel[] = ['off', 'error', 'warn', 'info', 'debug', 'trace'];

function buildConfig(main: Reader, logging: Reader | undefined): Config {
  const r = main;
  r.accept('output.upstream.url');
  r.accept('output.upstream.verify_certificates');
  const privateKeyFile = r.path('identity.private_key_file', '/var/rudder/cfengine-community/ppkeys/localhost.priv');
  const queue = (base: string, retentionDays: number) => ({
    catchup: {
      frequencyMs: r.duration(`${base}.catchup.frequency`, 10_000),
      limit: r.integer(`${base}.catchup.limit`, 50),
    },
    cleanup: {
      frequencyMs: r.duration(`${base}.cleanup.frequency`, 3_600_000),
      retentionMs: r.duration(`${base}.cleanup.retention`, retentionDays * 86_400_000),
      failedRetentionMs: r.duration(`${base}.cleanup.failed_retention`, 30 * 86_400_000),
    },
    maxSpoolSize: r.size(`${base}.max_spool_size`, 10 * 1024 ** 3),
  });
  const logSource = logging ?? r;
  const logPrefix = logging ? 'general' : 'logging';
  return {
    general: {
      nodesListFile: r.path('general.nodes_list_file', '/var/rudder/lib/relay/nodeslist.json'),
      nodesCertsFile: r.path('general.nodes_certs_file', '/var/rudder/lib/ssl/shared/allnodescerts.pem'),
      nodeId: r.string('general.node_id', undefined),
      nodeIdFile: r.path('general.node_id_file', '/opt/rudder/etc/uuid.hive'),
      listen: r.listen('general.listen', '127.0.0.1:3030'),
      coreThreads: r.optionalInteger('general.core_threads', 1, 1024),
      blockingThreads: r.optionalInteger('general.blocking_threads', 1, 65536),
      httpsPort: r.integer('general.https_port', 443, 1, 65535),
      httpsIdleTimeoutMs: r.duration('general.https_idle_timeout', 2_000),
      peerAuthentication: r.oneOf(
        'general.peer_authentication',
        ['cert_pinning', 'cert_validation', 'dangerous_none'] as const,
        'cert_pinning',
      ),
      caPath: r.path('general.ca_path', undefined),
    },
    processing: {
      inventory: {
        directory: r.path('processing.inventory.directory', '/var/rudder/inventories/'),
        output: r.oneOf('processing.inventory.output', ['upstream', 'disabled'] as const, 'disabled'),
        signatureWaitMs: r.duration('processing.inventory.signature_wait', 10_000),
        ...queue('processing.inventory', 7),
      },
      reporting: {
        directory: r.path('processing.reporting.directory', '/var/rudder/reports/'),
        output: r.oneOf('processing.reporting.output', ['database', 'upstream', 'disabled'] as const, 'disabled'),
        skipEventTypes: r.stringArray('processing.reporting.skip_event_types', []),
        verifySignature: r.oneOf('processing.reporting.verify_signature', ['direct', 'required', 'off'] as const, 'direct'),
        maxDecodedSize: r.size('processing.reporting.max_decoded_size', 64 * 1024 ** 2),
        ...queue('processing.reporting', 7),
      },
    },
    output: {
      database: {
        url: r.string('output.database.url', 'postgres://rudder@127.0.0.1/rudder'),
        password: r.string('output.database.password', undefined),
        maxPoolSize: r.integer('output.database.max_pool_size', 10, 1, 4096),
      },
      upstream: {
        host: r.string('output.upstream.host', ''),
        user: r.string('output.upstream.user', 'rudder'),
        password: r.string('output.upstream.password', undefined),
        defaultPassword: r.string('output.upstream.default_password', 'rudder'),
        serverCertificateFile: r.path('output.upstream.server_certificate_file', '/var/rudder/lib/ssl/policy_server.pem'),
        maxConcurrency: r.integer('output.upstream.max_concurrency', 8, 1, 256),
        connectTimeoutMs: r.duration('output.upstream.connect_timeout', 10_000),
        idleTimeoutMs: r.duration('output.upstream.idle_timeout', 30_000),
        requestTimeoutMs: r.duration('output.upstream.request_timeout', 300_000),
      },
    },
    remoteRun: {
      enabled: r.boolean('remote_run.enabled', true),
      command: r.path('remote_run.command', '/opt/rudder/bin/rudder'),
      useSudo: r.boolean('remote_run.use_sudo', true),
      mode: r.oneOf('remote_run.mode', ['native', 'command'] as const, 'native'),
      port: r.integer('remote_run.port', 5309, 1, 65535),
      maxParallel: r.integer('remote_run.max_parallel', 32, 1, 1024),
      connectTimeoutMs: r.duration('remote_run.connect_timeout', 10_000),
      timeoutMs: r.duration('remote_run.timeout', 300_000),
    },
    sharedFiles: {
      path: r.path('shared_files.path', '/var/rudder/shared-files/'),
      maxBodySize: r.integer('shared_files.max_body_size', 52_428_800),
      cleanup: { frequencyMs: r.duration('shared_files.cleanup.frequency', 600_000) },
    },
    sharedFolder: { path: r.path('shared_folder.path', '/var/rudder/configuration-repository/shared-files/') },
    https: {
      listen: r.listen('https.listen', '0.0.0.0:443'),
      certificateFile: r.path('https.certificate_file', undefined),
      keyFile: r.path('https.key_file', undefined),
      allowedNetworks: r.networks('https.allowed_networks', ['127.0.0.0/8', '::1/128']),
      policyServerNetworks: r.networks('https.policy_server_networks', ['127.0.0.1/32', '::1/128']),
      maxUploadSize: r.size('https.max_upload_size', 50 * 1024 * 1024),
      workers: r.integer('https.workers', 0, 0, 256),
      shutdownTimeoutMs: r.duration('https.shutdown_timeout', 10_000),
      bodyTimeoutMs: r.duration('https.body_timeout', 60_000),
      requestTimeoutMs: r.duration('https.request_timeout', 600_000),
      proxy: readProxyRoutes(r),
    },
    identity: {
      privateKeyFile,
      publicKeyFile: r.path('identity.public_key_file', privateKeyFile.replace(/(\.priv)?$/, '.pub')),
      certificateFile: r.path('identity.certificate_file', '/opt/rudder/etc/ssl/agent.cert'),
    },
    policies: { directory: r.path('policies.directory', '/var/rudder/share') },
    cfengine: {
      listen: r.listen('cfengine.listen', '0.0.0.0:5309'),
      enabled: r.boolean('cfengine.enabled', true),
      // spec-https-front-cfserverd-sync.md §2.3: bootstrap policies, the ncf library and local techniques
      publicRoots: r.stringArray('cfengine.public_roots', [
        '/var/rudder/cfengine-community/masterfiles',
        '/usr/share/ncf/tree',
        '/var/rudder/configuration-repository/ncf',
      ]).map((p) => resolve(p)),
      maxConnections: r.integer('cfengine.max_connections', 500, 1, 100_000),
      // none by default: Rudder lets every allowed address hold many (allowallconnects), and NAT'd nodes share one
      maxConnectionsPerAddress: r.optionalInteger('cfengine.max_connections_per_address', 1, 100_000),
      // cf-serverd's 600 s: cf-agent reuses its connection after a pause in its run (cfengine/server.ts)
      idleTimeoutMs: r.duration('cfengine.idle_timeout', 600_000),
      denyBadClocks: r.boolean('cfengine.deny_bad_clocks', true),
    },
    sync: {
      serve: r.boolean('sync.serve', false),
      upstream: r.boolean('sync.upstream', false),
      frequencyMs: r.duration('sync.frequency', 60_000),
      manifestTtlMs: r.duration('sync.manifest_ttl', 10_000),
      stateDirectory: r.path('sync.state_directory', '/var/rudder/onerelay/sync'),
      protocol: r.oneOf('sync.protocol', ['https', 'cfengine'] as const, 'https'),
      cfenginePort: r.integer('sync.cfengine_port', 5309, 1, 65535),
      cfengineConnections: r.integer('sync.cfengine_connections', 16, 1, 256),
      cfenginePathPrefix: readPathPrefix(r, 'sync.cfengine_path_prefix'),
    },
    node: { inventory: r.boolean('node.inventory', true) },
    ownCompliance: {
      enabled: r.boolean('own_compliance.enabled', true),
      runIntervalMs: r.raw('own_compliance.run_interval') === undefined ? undefined : r.duration('own_compliance.run_interval', 300_000),
    },
    ownPolicies: {
      enabled: r.boolean('own_policies.enabled', true),
      inputsDirectory: r.path('own_policies.inputs_directory', '/var/rudder/cfengine-community/inputs'),
      localNetworks: r.has('own_policies.local_networks') ? r.networks('own_policies.local_networks', []) : undefined,
      tomlKeys: OWN_POLICY_KEYS.filter((key) => r.has(key)),
    },
    activity: {
      enabled: r.boolean('activity.enabled', true),
      stateDirectory: r.path('activity.state_directory', '/var/rudder/onerelay'),
      ledgerRetentionMs: r.duration('activity.ledger_retention', 7 * 86_400_000),
      detailWindowMs: r.duration('activity.detail_window', 6 * 3_600_000),
      runIntervalMs: r.duration('activity.run_interval', 300_000),
    },
    logging: {
      level: logSource.oneOf(`${logPrefix}.level`, LOG_LEVELS, 'info'),
      filter: logSource.string(`${logPrefix}.filter`, ''),
    },
  };
}

/** relayd's validation (spec-relayd.md §2.3), done after parsing; these are exit-3 problems. */
function validate(config: Config, nodeId: string | undefined): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const upstreamNeeded =
    config.processing.reporting.output === 'upstream' || config.processing.inventory.output === 'upstream';
  if (nodeId !== undefined && nodeId !== 'root' && config.output.upstream.host === '') {
    problems.push({ exitCode: 3, message: 'missing upstream server configuration: output.upstream.host is required on a relay' });
  }
  if (config.sync.upstream && config.sync.protocol === 'cfengine' && config.output.upstream.host === '') {
    problems.push({ exitCode: 3, message: 'sync.protocol = "cfengine": expected output.upstream.host (the root whose cf-serverd is pulled from)' });
  }
  // a relay that pulls its own policies gets DAVPASSWORD from them (spec-agentless-node.md §B.3 2)
  const passwordFromPolicies = config.ownPolicies.enabled && config.sync.upstream;
  if (upstreamNeeded && config.output.upstream.password === undefined && !passwordFromPolicies) {
    problems.push({ exitCode: 3, message: 'missing upstream password configuration: output.upstream.password is required when an output is "upstream"' });
  }
  // the relay's own policies hold DAVPASSWORD and its ACL: never inside a tree served to nodes (spec-agentless-node.md §B.1)
  const own = config.ownPolicies.inputsDirectory;
  const served = [config.policies.directory, config.sharedFolder.path, config.sharedFiles.path, ...config.cfengine.publicRoots];
  const within = (inner: string, outer: string): boolean => {
    const o = outer.replace(/\/+$/, '');
    const i = inner.replace(/\/+$/, '');
    return i === o || i.startsWith(`${o}/`) || o.startsWith(`${i}/`);
  };
  const overlap = served.find((tree) => within(own, tree));
  if (config.ownPolicies.enabled && overlap !== undefined) {
    problems.push({ exitCode: 3, message: `own_policies.inputs_directory = ${own} overlaps ${overlap}, which is served to nodes: expected a folder of its own (Rudder: /var/rudder/cfengine-community/inputs)` });
  }
  if (config.processing.reporting.output === 'database' && config.output.database.password === undefined) {
    problems.push({ exitCode: 3, message: 'missing database password configuration: output.database.password' });
  }
  return problems;
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch {
    return false;
  }
}

async function readText(path: string, what: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (error) {
    const reason = (error as NodeJS.ErrnoException).code ?? String(error);
    throw new ConfigError([{ exitCode: 3, message: `could not read ${what} ${path} (${reason})` }]);
  }
}

function parseTomlText(text: string, file: string): Table {
  try {
    return parseToml(text) as Table;
  } catch (error) {
    const detail = error instanceof TomlError ? `line ${error.line}, column ${error.column}: ${error.message.split('\n')[0]}` : String(error);
    throw new ConfigError([{ exitCode: 2, message: `TOML syntax error in ${file}: ${detail}` }]);
  }
}

export async function resolveSource(path: string): Promise<ConfigSource> {
  const absolute = resolve(path);
  if (await isDirectory(absolute)) {
    const loggingFile = join(absolute, 'logging.conf');
    return { path: absolute, mainFile: join(absolute, 'main.conf'), loggingFile };
  }
  return { path: absolute, mainFile: absolute, loggingFile: undefined };
}

/**
 * Reads the node id the configuration points at, without generating anything
 * (identity owns generation; this is only for validation that depends on "am I root?").
 */
async function peekNodeId(config: Config): Promise<string | undefined> {
  if (config.general.nodeId !== undefined) return config.general.nodeId.trim();
  try {
    return (await readFile(config.general.nodeIdFile, 'utf8')).trim();
  } catch {
    return undefined;
  }
}

/**
 * Reads and validates without throwing on bad values: a value problem leaves the default in its
 * place, so `check` can go on and look at the data files too. Unreadable files and TOML syntax
 * errors still throw (nothing else can be said then).
 */
export async function readConfig(path: string): Promise<LoadedConfig & { problems: readonly ConfigProblem[] }> {
  const source = await resolveSource(path);
  const mainText = await readText(source.mainFile, 'main configuration file');
  const main = new Reader(parseTomlText(mainText, source.mainFile));
  let logging: Reader | undefined;
  if (source.loggingFile !== undefined) {
    let loggingText = '';
    try {
      loggingText = await readFile(source.loggingFile, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') {
        throw new ConfigError([{ exitCode: 3, message: `could not read logging configuration file ${source.loggingFile}` }]);
      }
    }
    logging = new Reader(parseTomlText(loggingText, source.loggingFile));
  }
  const config = buildConfig(main, logging);
  const problems = [...main.problems, ...(logging?.problems ?? [])];
  problems.push(...validate(config, await peekNodeId(config)));
  const warnings = main.unknownKeys().map((key) => `unknown configuration key ${key} in ${source.mainFile} (ignored)`);
  if (logging) {
    warnings.push(...logging.unknownKeys().map((key) => `unknown configuration key ${key} in ${source.loggingFile} (ignored)`));
  }
  if (config.general.peerAuthentication === 'dangerous_none') warnings.push('Certificate verification is disabled');
  if (config.processing.reporting.output === 'database') {
    warnings.push('processing.reporting.output = "database" is a root-server mode onerelay does not implement; reports stay in the spool');
  }
  return { config, source, warnings, problems };
}

export async function loadConfig(path: string): Promise<LoadedConfig> {
  const { config, source, warnings, problems } = await readConfig(path);
  if (problems.length > 0) throw new ConfigError(problems);
  return { config, source, warnings };
}

export function configDirectory(source: ConfigSource): string {
  return dirname(source.mainFile);
}
