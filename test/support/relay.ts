// Starts onerelay as a user does (`node dist/cli.js start --config FILE`) in a temp directory,
// with free ports and the fixture relay identity (37817c4d…, a real RSA-4096 key made by cf-key),
// and collects its JSON log lines.

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { freePort, tempDir, type Teardownable } from './tmp.js';

export const ROOT = resolve(import.meta.dirname, '..', '..');
export const CLI = join(ROOT, 'dist', 'cli.js');
export { FIXTURES } from './fixtures.js';
import { FIXTURES } from './fixtures.js';
export const FIXTURE_KEYS = join(FIXTURES, 'files', 'keys');
export const RELAY_ID = '37817c4d-fbf7-4850-a985-50021f4e8f41';
export const DAV_PASSWORD = 'dav-secret';

export interface LogLine {
  readonly level: number;
  readonly msg: string;
  readonly event?: string;
  readonly [key: string]: unknown;
}

export interface RelayOptions {
  /** the CLI to run instead of dist/cli.js (benches: BENCH_ONERELAY_CLI) */
  readonly cli?: string;
  /** extra TOML appended to the generated configuration (may add keys to the last section only if you know what you do; prefer `sections`) */
  readonly extraToml?: string;
  /** nodeslist.json content; default: empty list */
  readonly nodesList?: Record<string, { hostname: string; 'key-hash'?: string; 'policy-server': string }>;
  /** nodescerts.pem content */
  readonly nodesCerts?: string;
  readonly workers?: number;
  readonly peerAuthentication?: 'cert_pinning' | 'cert_validation';
  readonly maxUploadSize?: number;
  /** https.allowed_networks; null leaves the key out (the relay's own policies then set them) */
  readonly allowedNetworks?: readonly string[] | null;
  /** output.upstream.password; null leaves it out (the relay's own policies' DAVPASSWORD then applies) */
  readonly upstreamPassword?: string | null;
  /** extra lines in [own_policies] (its inputs_directory is <dir>/inputs) */
  readonly ownPoliciesToml?: string;
  /** do not wait for readiness (for start-failure tests) */
  readonly expectFailure?: boolean;
  /** reuse a directory (restart tests) */
  readonly dir?: string;
  /** let the relay generate its own identity instead of using the fixture one */
  readonly freshIdentity?: boolean;
  /** forward to this upstream (outputs "upstream"); without it both outputs are "disabled" */
  readonly upstream?: { readonly port: number; readonly certificateFile: string };
  /** [processing.reporting] verify_signature */
  readonly verifySignature?: 'direct' | 'required' | 'off';
  /** max_spool_size of both spools */
  readonly maxSpoolSize?: number;
  /** extra lines in [output.upstream] (an `idle_timeout` here replaces the default 5s) */
  readonly upstreamToml?: string;
  /** extra lines in [https] (body_timeout, request_timeout, ...) */
  readonly httpsToml?: string;
  /** https.shutdown_timeout, default "5s" */
  readonly shutdownTimeout?: string;
  /** another fixture identity than 37817c4d… (e.g. e745a140… for a second relay) */
  readonly relayId?: string;
  /** general.https_port: the port of peers' HTTPS (sub-relays), when there is no upstream option */
  readonly peerHttpsPort?: number;
  /** [node] inventory: the relay sends its own inventory upstream (default off in tests, so that upstream counts stay exact) */
  readonly ownInventory?: boolean;
  /** extra lines in [activity] (its database is in <dir>/state) */
  readonly activityToml?: string;
  /** node flags before the CLI file (benches: --cpu-prof, V8 flags) */
  readonly nodeArgs?: readonly string[];
}

export interface CliResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** runs `node dist/cli.js ARGS` to completion */
export function runCli(args: readonly string[], cwd = ROOT): Promise<CliResult> {
  return new Promise((resolveRun, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.on('error', reject);
    child.on('exit', (code) => resolveRun({ code, stdout, stderr }));
  });
}

export interface RunningRelay {
  readonly dir: string;
  readonly configFile: string;
  readonly httpsPort: number;
  readonly apiPort: number;
  readonly cfenginePort: number;
  readonly httpsUrl: string;
  readonly apiUrl: string;
  readonly reportsIncoming: string;
  readonly inventoriesIncoming: string;
  readonly inventoryUpdatesIncoming: string;
  readonly nodesListFile: string;
  readonly nodesCertsFile: string;
  readonly child: ChildProcess;
  readonly logs: LogLine[];
  readonly output: () => string;
  /** SIGKILL to the primary and every worker */
  killAll(): Promise<number | null>;
  /** resolves with the exit code */
  readonly exited: Promise<number | null>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  waitForLog(predicate: (line: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
}

function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  try {
    if (child.pid !== undefined) process.kill(-child.pid, signal);
  } catch {
    child.kill(signal);
  }
}

export function relayConfigToml(dir: string, ports: { https: number; api: number; cfengine?: number }, options: RelayOptions): string {
  const networks = options.allowedNetworks === null ? undefined : (options.allowedNetworks ?? ['127.0.0.0/8', '::1/128']).map((n) => JSON.stringify(n)).join(', ');
  const output = options.upstream ? 'upstream' : 'disabled';
  const budget = options.maxSpoolSize === undefined ? '' : `max_spool_size = ${options.maxSpoolSize}\n`;
  return `
[general]
node_id_file = "${dir}/uuid.hive"
nodes_list_file = "${dir}/nodeslist.json"
nodes_certs_file = "${dir}/nodescerts.pem"
listen = "127.0.0.1:${ports.api}"
peer_authentication = "${options.peerAuthentication ?? 'cert_pinning'}"
https_port = ${options.upstream?.port ?? options.peerHttpsPort ?? 443}

[processing.inventory]
directory = "${dir}/inventories/"
output = "${output}"
signature_wait = "2s"
${budget}
[processing.inventory.catchup]
frequency = "1s"

[processing.reporting]
directory = "${dir}/reports/"
output = "${output}"
verify_signature = "${options.verifySignature ?? 'direct'}"
${budget}
[processing.reporting.catchup]
frequency = "1s"

[output.upstream]
host = "127.0.0.1"
user = "rudder"
${options.upstreamPassword === null ? '' : `password = "${options.upstreamPassword ?? DAV_PASSWORD}"\n`}server_certificate_file = "${options.upstream?.certificateFile ?? `${dir}/policy_server.pem`}"
connect_timeout = "2s"
${options.upstreamToml?.includes('idle_timeout') === true ? '' : 'idle_timeout = "5s"'}
${options.upstreamToml ?? ''}

[https]
listen = "127.0.0.1:${ports.https}"
${networks === undefined ? '' : `allowed_networks = [${networks}]\n`}workers = ${options.workers ?? 2}
max_upload_size = ${options.maxUploadSize ?? 1048576}
shutdown_timeout = "${options.shutdownTimeout ?? '5s'}"
${options.httpsToml ?? ''}

[identity]
private_key_file = "${dir}/ppkeys/localhost.priv"
certificate_file = "${dir}/agent.cert"

[policies]
directory = "${dir}/share"

[shared_files]
path = "${dir}/shared-files/"

[cfengine]
${ports.cfengine === undefined ? 'enabled = false' : `listen = "127.0.0.1:${ports.cfengine}"`}

[node]
inventory = ${options.ownInventory ?? false}

[own_policies]
inputs_directory = "${dir}/inputs"
${options.ownPoliciesToml ?? ''}

[shared_folder]
path = "${dir}/shared-folder/"

[activity]
${options.activityToml?.includes('state_directory') ? '' : `state_directory = "${dir}/state"`}
${options.activityToml ?? ''}
${options.extraToml ?? ''}
`;
}

export async function startRelay(t: Teardownable, options: RelayOptions = {}): Promise<RunningRelay> {
  const dir = options.dir ?? tempDir(t, 'onerelay-e2e-');
  const httpsPort = await freePort();
  const apiPort = await freePort();
  const cfenginePort = await freePort();
  await mkdir(join(dir, 'ppkeys'), { recursive: true, mode: 0o700 });
  // the fixture identity, unless the folder already has one (a restart, or `onerelay init` ran there)
  if (!options.freshIdentity && !existsSync(join(dir, 'uuid.hive'))) {
    const id = options.relayId ?? RELAY_ID;
    await writeFile(join(dir, 'uuid.hive'), `${id}\n`);
    await copyFile(join(FIXTURE_KEYS, `${id}.nopass.priv`), join(dir, 'ppkeys', 'localhost.priv'));
    await copyFile(join(FIXTURE_KEYS, `${id}.pub`), join(dir, 'ppkeys', 'localhost.pub'));
    await copyFile(join(FIXTURE_KEYS, `${id}.cert`), join(dir, 'agent.cert'));
  }
  await writeFile(join(dir, 'nodeslist.json'), JSON.stringify(options.nodesList ?? {}, null, 2));
  await writeFile(join(dir, 'nodescerts.pem'), options.nodesCerts ?? '');
  const configFile = join(dir, 'onerelay.toml');
  await writeFile(configFile, relayConfigToml(dir, { https: httpsPort, api: apiPort, cfengine: cfenginePort }, options));

  // its own process group, so that a test can kill the primary and its workers at once
  const child = spawn(process.execPath, [...(options.nodeArgs ?? []), options.cli ?? CLI, 'start', '--config', configFile], {
    cwd: dir,
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  const logs: LogLine[] = [];
  let raw = '';
  const waiters = new Set<() => void>();
  let pending = '';
  child.stdout?.setEncoding('utf8');
  child.stdout?.on('data', (chunk: string) => {
    raw += chunk;
    pending += chunk;
    let newline: number;
    while ((newline = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, newline);
      pending = pending.slice(newline + 1);
      try {
        logs.push(JSON.parse(line) as LogLine);
      } catch {
        // not JSON: kept in raw output only
      }
    }
    for (const wake of waiters) wake();
  });
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => {
    raw += chunk;
  });
  const exited = new Promise<number | null>((resolveExit) => child.on('exit', (code) => resolveExit(code)));
  let hasExited = false;
  void exited.then(() => {
    hasExited = true;
    for (const wake of waiters) wake();
  });
  t.teardown(async () => {
    if (!hasExited) {
      killGroup(child, 'SIGKILL');
      await exited;
    }
  });

  const waitForLog = (predicate: (line: LogLine) => boolean, timeoutMs = 20_000): Promise<LogLine> =>
    new Promise((resolveLog, reject) => {
      const check = () => {
        const found = logs.find(predicate);
        if (found) {
          cleanup();
          resolveLog(found);
        } else if (hasExited) {
          cleanup();
          reject(new Error(`relay exited before the expected log line; output:\n${raw}`));
        }
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`timed out waiting for a log line; output:\n${raw}`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        waiters.delete(check);
      };
      waiters.add(check);
      check();
    });

  const relay: RunningRelay = {
    dir,
    configFile,
    httpsPort,
    apiPort,
    cfenginePort,
    httpsUrl: `https://127.0.0.1:${httpsPort}`,
    apiUrl: `http://127.0.0.1:${apiPort}`,
    reportsIncoming: join(dir, 'reports', 'incoming'),
    inventoriesIncoming: join(dir, 'inventories', 'incoming'),
    inventoryUpdatesIncoming: join(dir, 'inventories', 'accepted-nodes-updates'),
    nodesListFile: join(dir, 'nodeslist.json'),
    nodesCertsFile: join(dir, 'nodescerts.pem'),
    child,
    logs,
    output: () => raw,
    exited,
    async stop(signal = 'SIGTERM') {
      if (!hasExited) child.kill(signal);
      return exited;
    },
    waitForLog,
    async killAll() {
      killGroup(child, 'SIGKILL');
      return exited;
    },
  };
  if (!options.expectFailure) await waitForLog((line) => line.event === 'ready', 30_000);
  return relay;
}

/** polls a condition that has no event to wait for (a directory listing, a status field) */
export async function until(predicate: () => Promise<boolean> | boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** the local API's system status, part by part */
export async function systemStatus(relay: RunningRelay): Promise<Record<string, { status: string; details?: string; [k: string]: unknown }>> {
  const body = (await fetch(`${relay.apiUrl}/rudder/relay-api/1/system/status`).then((r) => r.json())) as { data: Record<string, { status: string }> };
  return body.data;
}
