// onerelay started as a user starts it: `node dist/cli.js start --config <toml>`, with a config, a
// nodes list and nodes certificates written for the bench's agents; optionally forwarding to an upstream
// (pinned certificate) and serving a policies directory. Ready when the local API's status answers 200
// and the HTTPS front door accepts connections; stopped with SIGTERM.

import { existsSync, readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { NodeIdentity } from './identities.js';
import { acceptsConnections, freePort, startServer, waitUntilReady, type Server } from './processes.js';

export const projectDirectory = resolve(fileURLToPath(new URL('../..', import.meta.url)));
/** BENCH_ONERELAY_CLI benches another build of the CLI */
export const cliFile = process.env['BENCH_ONERELAY_CLI'] ?? join(projectDirectory, 'dist', 'cli.js');

export interface OnerelayOptions {
  /** empty directory for the config and everything onerelay writes */
  readonly directory: string;
  readonly httpsPort: number;
  readonly relay: NodeIdentity;
  readonly agents: readonly NodeIdentity[];
  readonly password: string;
  /** [https] workers; 0 = one per core */
  readonly workers: number;
  /** forward reports (and inventories) to this HTTPS upstream, whose certificate is pinned; default: outputs disabled */
  readonly upstream?: {
    readonly port: number;
    /** PEM file of the upstream's certificate (output.upstream.server_certificate_file) */
    readonly certificateFile: string;
    /** output.upstream.max_concurrency; default: onerelay's */
    readonly maxConcurrency?: number;
  };
  /** processing.reporting.verify_signature; default: onerelay's ("direct") */
  readonly verifySignature?: 'direct' | 'required' | 'off';
  /** [policies] directory; default: onerelay's */
  readonly policiesDirectory?: string;
  /** called once the config is written, before the process is spawned, e.g. to place files in `<reports>/incoming/` (the start scan takes them) */
  readonly beforeStart?: (paths: { readonly reportsIncoming: string }) => Promise<void>;
  /** node flags before the CLI file; default: packaging/onerelay.service's (the relay measured as shipped) */
  readonly nodeArgs?: readonly string[];
  /** called right after the process is spawned, before it is ready */
  readonly onSpawned?: (server: Server) => void;
}

export interface OnerelayUploads {
  readonly server: Server;
  /** where `PUT /reports/<file>` lands */
  readonly reportsDirectory: string;
  readonly apiPort: number;
  /** performance.timeOrigin + performance.now() when the process was spawned, and when it answered ready */
  readonly spawnedAt: number;
  readonly readyAt: number;
}

/** Why onerelay cannot be benched from this tree, or undefined when its CLI is built. */
export function onerelayMissing(): string | undefined {
  if (!existsSync(cliFile)) return `${cliFile} does not exist (the CLI is not written or not built: npm run build)`;
  return undefined;
}

/** A high-resolution wall clock comparable between processes (ms since the epoch). */
export function epochNow(): number {
  return performance.timeOrigin + performance.now();
}

export async function startOnerelayUploads(options: OnerelayOptions): Promise<OnerelayUploads> {
  const at = (name: string): string => join(options.directory, name);
  const apiPort = await freePort();
  // the CFEngine protocol server (when built in) listens on 0.0.0.0:5309 by default: keep it on loopback, on a
  // port of its own, so that it neither faces the network nor collides with another relay on this machine
  const cfenginePort = await freePort();
  await mkdir(at('ppkeys'), { recursive: true });
  await writeFile(at('ppkeys/localhost.priv'), options.relay.privateKeyPem, { mode: 0o600 });
  await writeFile(at('ppkeys/localhost.pub'), options.relay.publicKeyPem);
  await writeFile(at('agent.cert'), options.relay.certificatePem);
  const nodesList = Object.fromEntries(
    options.agents.map((agent, index) => [
      agent.nodeId,
      { hostname: `agent${index}`, 'key-hash': agent.keyHash, 'policy-server': options.relay.nodeId },
    ]),
  );
  await writeFile(at('nodeslist.json'), `${JSON.stringify(nodesList, null, 2)}\n`);
  await writeFile(at('nodescerts.pem'), options.agents.map((agent) => agent.certificatePem).join(''));
  const upstream = options.upstream;
  const output = upstream === undefined ? '' : 'output = "upstream"\n';
  const config = `[general]
node_id = "${options.relay.nodeId}"
nodes_list_file = "${at('nodeslist.json')}"
nodes_certs_file = "${at('nodescerts.pem')}"
listen = "127.0.0.1:${apiPort}"
${upstream === undefined ? '' : `https_port = ${upstream.port}\n`}
[processing.reporting]
directory = "${at('reports')}/"
${output}${options.verifySignature === undefined ? '' : `verify_signature = "${options.verifySignature}"\n`}
[processing.inventory]
directory = "${at('inventories')}/"
${output}
[output.upstream]
host = "127.0.0.1"
password = "${options.password}"
${upstream === undefined ? '' : `server_certificate_file = "${upstream.certificateFile}"\n`}${
    upstream?.maxConcurrency === undefined ? '' : `max_concurrency = ${upstream.maxConcurrency}\n`
  }
[identity]
private_key_file = "${at('ppkeys/localhost.priv')}"
certificate_file = "${at('agent.cert')}"

[https]
listen = "127.0.0.1:${options.httpsPort}"
allowed_networks = ["127.0.0.0/8"]
workers = ${options.workers}

[cfengine]
listen = "127.0.0.1:${cfenginePort}"

# the relay as a Rudder node stays out of the measurement: its own inventory would be one more PUT upstream
[node]
inventory = false

[own_policies]
inputs_directory = "${at('inputs')}"

# recording on, as in production, with its database in the bench's folder
[activity]
state_directory = "${at('state')}"
${options.policiesDirectory === undefined ? '' : `\n[policies]\ndirectory = "${options.policiesDirectory}"\n`}`;
  const configFile = at('onerelay.toml');
  await writeFile(configFile, config);
  const reportsIncoming = at('reports/incoming');
  if (options.beforeStart !== undefined) {
    await mkdir(reportsIncoming, { recursive: true });
    await options.beforeStart({ reportsIncoming });
  }
  applyShippedEnvironment();
  const spawnedAt = epochNow();
  const server = startServer({
    name: 'onerelay',
    command: process.execPath,
    // BENCH_ONERELAY_NODE_ARGS, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof": profiles of every process and thread
    args: [...(options.nodeArgs ?? shippedNodeArgs()), ...(process.env['BENCH_ONERELAY_NODE_ARGS']?.split(' ').filter((arg) => arg !== '') ?? []), cliFile, 'start', '--config', configFile],
    cwd: projectDirectory,
    logFile: at('onerelay.log'),
    stopSignal: 'SIGTERM',
  });
  options.onSpawned?.(server);
  try {
    // the status may answer before the HTTPS front door listens
    await waitUntilReady(server, async () => (await statusIsOk(apiPort)) && acceptsConnections(options.httpsPort), 20_000);
  } catch (error) {
    await server.stop();
    throw error;
  }
  return { server, reportsDirectory: reportsIncoming, apiPort, spawnedAt, readyAt: epochNow() };
}

function statusIsOk(apiPort: number): Promise<boolean> {
  return new Promise((resolve) => {
    const req = request(
      { host: '127.0.0.1', port: apiPort, path: '/rudder/relay-api/1/system/status', agent: false },
      (res) => {
        res.resume();
        resolve(res.statusCode === 200);
      },
    );
    req.setTimeout(2000, () => req.destroy());
    req.on('error', () => resolve(false));
    req.end();
  });
}

const unitFile = join(projectDirectory, 'packaging', 'onerelay.service');

/**
 * The unit's Environment= (e.g. MALLOC_ARENA_MAX), set in this process so that the relays it spawns inherit
 * them: every bench measures the relay as shipped. A value set by the caller wins (e.g. to measure without).
 */
export function applyShippedEnvironment(): string[] {
  const unit = readFileSync(unitFile, 'utf8');
  const applied: string[] = [];
  for (const [, name, value] of unit.matchAll(/^Environment=([A-Z_][A-Z0-9_]*)=(\S*)$/gm)) {
    if (process.env[name!] === undefined) process.env[name!] = value!;
    applied.push(`${name}=${process.env[name!]}`);
  }
  return applied;
}

/** the node flags of packaging/onerelay.service's ExecStart (BENCH_SHIPPED_FLAGS=0: none) */
export function shippedNodeArgs(): string[] {
  if (process.env['BENCH_SHIPPED_FLAGS'] === '0') return [];
  const line = /^ExecStart=\S+ (.*?)\S*dist\/cli\.js /m.exec(readFileSync(unitFile, 'utf8'));
  return (line?.[1] ?? '').split(/\s+/).filter((flag) => flag.startsWith('--'));
}
