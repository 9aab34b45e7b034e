// `onerelay check` (relayd's --test, extended): loads the configuration and every data file it
// points at, and names every problem rather than stopping at the first.

import { X509Certificate } from 'node:crypto';
import { access, constants, readFile, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { pino } from 'pino';
import { ConfigError, readConfig, type Config } from '../config/index.js';
import { messageOf } from '../errors.js';
import { loadIdentity } from '../identity/index.js';
import { createNodesRegistry } from '../nodes/index.js';
import { identityPaths } from './paths.js';

export const DATABASE_REFUSED =
  'processing.reporting.output = "database" is rudder-relayd\'s root-server mode: onerelay forwards reports upstream; set it to "upstream" (or "disabled")';

export interface CheckResult {
  readonly problems: string[];
  readonly warnings: string[];
  /** 0 fine, 2 TOML syntax or type error, 3 any other problem */
  readonly exitCode: 0 | 2 | 3;
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** a directory the relay writes to must exist and be writable, or be creatable */
async function writableOrCreatable(path: string): Promise<string | undefined> {
  let current = path;
  for (;;) {
    if (await exists(current)) {
      try {
        await access(current, constants.W_OK);
        return undefined;
      } catch {
        return current === path ? `${path} is not writable` : `${path} does not exist and ${current} is not writable`;
      }
    }
    const parent = dirname(current);
    if (parent === current) return `${path} cannot be created`;
    current = parent;
  }
}

async function checkCertificateFile(path: string, what: string, problems: string[], warnings: string[], required: boolean): Promise<void> {
  let pem: Buffer;
  try {
    pem = await readFile(path);
  } catch (error) {
    const reason = (error as NodeJS.ErrnoException).code ?? messageOf(error);
    (required ? problems : warnings).push(`${what} ${path} cannot be read (${reason})`);
    return;
  }
  try {
    new X509Certificate(pem);
  } catch (error) {
    problems.push(`${what} ${path} is not a PEM certificate: ${messageOf(error)}`);
  }
}

async function checkData(config: Config, problems: string[], warnings: string[], options: CheckOptions): Promise<void> {
  if (config.processing.reporting.output === 'database') problems.push(DATABASE_REFUSED);
  let nodeId: string | undefined;
  try {
    const identity = await loadIdentity(identityPaths(config));
    nodeId = identity.nodeId;
  } catch (error) {
    problems.push(`identity: ${messageOf(error)} (onerelay init generates a missing identity)`);
  }
  if (options.nodesData !== false) await checkNodesData(config, nodeId, problems);
  if (!(await exists(config.general.nodesListFile))) {
    warnings.push(`nodes list ${config.general.nodesListFile} does not exist: no node is known until it does`);
  }
  const upstreamUsed = config.processing.reporting.output === 'upstream' || config.processing.inventory.output === 'upstream';
  if (upstreamUsed && config.general.peerAuthentication === 'cert_pinning') {
    await checkCertificateFile(config.output.upstream.serverCertificateFile, 'upstream certificate (output.upstream.server_certificate_file)', problems, warnings, false);
  }
  if (config.general.peerAuthentication === 'cert_validation' && config.general.caPath !== undefined) {
    await checkCertificateFile(config.general.caPath, 'CA certificate (general.ca_path)', problems, warnings, true);
  }
  if (config.https.certificateFile !== undefined) {
    await checkCertificateFile(config.https.certificateFile, 'HTTPS certificate (https.certificate_file)', problems, warnings, true);
  }
  if (config.https.keyFile !== undefined && !(await exists(config.https.keyFile))) {
    problems.push(`HTTPS key (https.key_file) ${config.https.keyFile} does not exist`);
  }
  for (const [key, directory] of [
    ['processing.reporting.directory', config.processing.reporting.directory],
    ['processing.inventory.directory', config.processing.inventory.directory],
  ] as const) {
    const problem = await writableOrCreatable(directory);
    if (problem !== undefined) problems.push(`${key}: ${problem}`);
  }
}

/** the nodes list and certificates parsed as the registry parses them (a whole load: 0.2–0.35 s of CPU and ~27 MB of buffers at 10,000 nodes) */
async function checkNodesData(config: Config, nodeId: string | undefined, problems: string[]): Promise<void> {
  const silent = pino({ level: 'silent' });
  const nodes = createNodesRegistry({
    myId: nodeId ?? config.general.nodeId ?? 'unknown',
    nodesListFile: config.general.nodesListFile,
    nodesCertsFile: config.general.nodesCertsFile,
    // a parse only: no signature is checked, so the certificates file is not kept open
    keepSigners: false,
    log: silent,
  });
  try {
    await nodes.reload();
  } catch (error) {
    problems.push(`nodes: ${messageOf(error)}`);
  }
}

export interface CheckOptions {
  /**
   * false: leave the nodes list and certificates out. The running relay's status asks so: its live registry
   * re-reads both files on every change and reports their problems in its own `nodes` status, and a whole
   * parse per status request (the status page refreshes every 10 s) cost 0.2–0.35 s of CPU and left ~30 MB of
   * fragmented malloc heap behind at 10,000 nodes (bench/footprint). Default true (`onerelay check`).
   */
  readonly nodesData?: boolean;
}

export async function checkInstallation(configPath: string, options: CheckOptions = {}): Promise<CheckResult> {
  let config: Config;
  const warnings: string[] = [];
  const problems: string[] = [];
  let exitCode: 0 | 2 | 3 = 0;
  try {
    const loaded = await readConfig(configPath);
    config = loaded.config;
    warnings.push(...loaded.warnings);
    problems.push(...loaded.problems.map((p) => p.message));
    if (loaded.problems.length > 0) exitCode = loaded.problems.some((p) => p.exitCode === 2) ? 2 : 3;
  } catch (error) {
    if (error instanceof ConfigError) {
      return { problems: error.problems.map((p) => p.message), warnings, exitCode: error.exitCode };
    }
    return { problems: [messageOf(error)], warnings, exitCode: 3 };
  }
  const before = problems.length;
  await checkData(config, problems, warnings, options);
  if (exitCode === 0 && problems.length > before) exitCode = 3;
  return { problems, warnings, exitCode };
}
