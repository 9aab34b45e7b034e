// Driving the real CFEngine 3.21 binaries (Debian cfengine3) in tests and measurements
// (testing-with-real-cfengine.md in the project docs): one work dir per simulated host through
// CFENGINE_TEST_OVERRIDE_WORKDIR, keys from cf-key, a copy_from policy like Rudder's update, cf-agent -K -f,
// and a stock cf-serverd for comparisons. Everything binds/connects to 127.0.0.1 only.

import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { existsSync } from 'node:fs';
import { connect as tcpConnect } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { pino } from 'pino';
import { createCfengineServer, makeServerCertificate, type CfengineServer, type CfengineServerOptions } from '../../src/cfengine/index.js';
import { encodeFrame } from '../../src/cfengine/codec.js';
import { createNodesRegistry } from '../../src/nodes/index.js';
import { chmod, lstat, mkdir, readFile, readdir, readlink, symlink, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';

export const CF_BIN = '/usr/bin';
export const CF_AGENT = `${CF_BIN}/cf-agent`;

export function hasCfengine(): boolean {
  return existsSync(CF_AGENT) && existsSync(`${CF_BIN}/cf-key`) && existsSync(`${CF_BIN}/cf-promises`);
}

export interface ProcessResult {
  code: number;
  stdout: string;
  stderr: string;
  durationMs: number;
}

/** runs a CFEngine binary with `workdir` as its work dir; never rejects on a non-zero exit */
export function runCf(
  binary: string,
  args: readonly string[],
  workdir: string,
  options: { timeoutMs?: number } = {},
): Promise<ProcessResult> {
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const child = spawn(binary, args, {
      env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', LANG: 'C', LC_ALL: 'C', CFENGINE_TEST_OVERRIDE_WORKDIR: workdir },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 120_000);
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({
        code: code ?? (signal !== null ? 128 : 1),
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
        durationMs: Number(process.hrtime.bigint() - started) / 1e6,
      });
    });
  });
}

export interface CfWorkdir {
  readonly dir: string;
  readonly privateKey: KeyObject;
  readonly publicKey: KeyObject;
  /** MD5=… as cf-key -p prints it */
  readonly md5: string;
  /** sha256//… as nodeslist.json key-hash */
  readonly sha256Pin: string;
}

const MINIMAL_PROMISES = `body common control
{
  bundlesequence => { "main" };
}
bundle agent main
{
}
`;

/** a work dir with ppkeys/localhost.{priv,pub} made by cf-key, bin/cf-promises and a valid promises.cf */
export async function createCfWorkdir(dir: string, bits = 2048): Promise<CfWorkdir> {
  for (const sub of ['ppkeys', 'inputs', 'bin', 'state', 'outputs']) await mkdir(join(dir, sub), { recursive: true });
  await chmod(join(dir, 'ppkeys'), 0o700);
  await chmod(dir, 0o700);
  if (!existsSync(join(dir, 'bin', 'cf-promises'))) await symlink(`${CF_BIN}/cf-promises`, join(dir, 'bin', 'cf-promises'));
  await writeFile(join(dir, 'inputs', 'promises.cf'), MINIMAL_PROMISES, { mode: 0o600 });
  const made = await runCf(`${CF_BIN}/cf-key`, ['-T', String(bits)], dir);
  if (made.code !== 0) throw new Error(`cf-key failed (${made.code}): ${made.stdout}${made.stderr}`);
  return loadCfWorkdir(dir);
}

export async function loadCfWorkdir(dir: string): Promise<CfWorkdir> {
  const privateKey = createPrivateKey(await readFile(join(dir, 'ppkeys', 'localhost.priv')));
  const publicKey = createPublicKey(privateKey);
  const jwk = publicKey.export({ format: 'jwk' });
  const strip = (b: Buffer): Buffer => {
    let i = 0;
    while (i < b.length - 1 && b[i] === 0) i += 1;
    return b.subarray(i);
  };
  const ne = Buffer.concat([strip(Buffer.from(jwk.n ?? '', 'base64url')), strip(Buffer.from(jwk.e ?? '', 'base64url'))]);
  return {
    dir,
    privateKey,
    publicKey,
    md5: `MD5=${createHash('md5').update(ne).digest('hex')}`,
    sha256Pin: `sha256//${createHash('sha256').update(publicKey.export({ type: 'spki', format: 'der' })).digest('base64')}`,
  };
}

export interface CopySpec {
  /** absolute path on the server */
  readonly source: string;
  /** local destination */
  readonly dest: string;
  readonly compare?: 'digest' | 'mtime';
  readonly purge?: boolean;
  readonly preserve?: boolean;
  readonly verify?: boolean;
  /** recurse("inf") (default) or a single file */
  readonly recurse?: boolean;
}

export interface CopyPolicyOptions {
  readonly port: number;
  readonly copies: readonly CopySpec[];
  readonly server?: string;
  readonly timeoutS?: number;
}

/** a policy whose copy_from bodies mirror Rudder's update (§2.6), protocol 2, trustkey on first contact */
export function copyPolicy(options: CopyPolicyOptions): string {
  const promises = options.copies
    .map((c, i) => {
      const body = `cp${i}`;
      const recurse = c.recurse ?? true;
      return {
        promise: `    "${c.dest}"\n      copy_from => ${body}("${c.source}"),\n${recurse ? '      depth_search => onerelay_recurse,\n' : ''}      handle => "copy_${i}";\n`,
        body: `body copy_from ${body}(p)
{
  servers => { "${options.server ?? '127.0.0.1'}" };
  source => "$(p)";
  compare => "${c.compare ?? 'digest'}";
  portnumber => "${options.port}";
  trustkey => "true";
  protocol_version => "2";
  purge => "${c.purge ?? true ? 'true' : 'false'}";
  preserve => "${c.preserve ?? false ? 'true' : 'false'}";
  verify => "${c.verify ?? true ? 'true' : 'false'}";
  copy_backup => "false";
  timeout => "${options.timeoutS ?? 10}";
}
`,
      };
    })
    .reduce((acc, p) => ({ promises: acc.promises + p.promise, bodies: acc.bodies + p.body }), { promises: '', bodies: '' });
  return `body common control
{
  bundlesequence => { "main" };
  protocol_version => "2";
}
bundle agent main
{
  files:
${promises.promises}}
body depth_search onerelay_recurse
{
  depth => "inf";
}
${promises.bodies}`;
}

/** writes the policy in the work dir and runs `cf-agent -K -f <file>` (inform: -I, one line per copied file) */
export async function runCopy(
  work: CfWorkdir,
  options: CopyPolicyOptions,
  name = 'copy.cf',
  run: { inform?: boolean; timeoutMs?: number } = {},
): Promise<ProcessResult> {
  const file = join(work.dir, 'inputs', name);
  await writeFile(file, copyPolicy(options), { mode: 0o600 });
  return runCf(CF_AGENT, ['-K', ...(run.inform === true ? ['-I'] : []), '-f', file], work.dir, run.timeoutMs === undefined ? {} : { timeoutMs: run.timeoutMs });
}

/** cf-agent's error lines (errors are printed without -I) */
export function errorLines(output: string): string[] {
  return output.split('\n').filter((line) => /\berror:/.test(line)).map((line) => line.trim());
}

// ---- nodes ----

/** nodeslist.json key-hash of a key: sha256// + base64 of SHA-256 of its SPKI DER */
export function sha256PinOf(key: KeyObject): string {
  const publicKey = key.type === 'private' ? createPublicKey(key) : key;
  return `sha256//${createHash('sha256').update(publicKey.export({ type: 'spki', format: 'der' })).digest('base64')}`;
}

/** nodeslist.json for the given nodes, all behind `policyServer` */
export async function writeNodesList(
  file: string,
  nodes: ReadonlyArray<{ readonly id: string; readonly work?: CfWorkdir; readonly sha256Pin?: string }>,
  policyServer = 'root',
): Promise<void> {
  const list: Record<string, unknown> = {};
  for (const node of nodes) {
    const pin = node.sha256Pin ?? node.work?.sha256Pin;
    list[node.id] = { hostname: `${node.id}.test`, 'policy-server': policyServer, ...(pin === undefined ? {} : { 'key-hash': pin }) };
  }
  await writeFile(file, JSON.stringify(list, null, 2));
}

// ---- trees ----

/** deterministic pseudo-random bytes */
function bytes(seed: number, length: number): Buffer {
  const out = Buffer.alloc(length);
  let x = seed * 2654435761 + 1;
  for (let i = 0; i < length; i += 1) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

/**
 * A policy-like tree: `files` files (default 300) over nested directories, a few empty files, one file
 * over 1 MB, mixed modes, one empty directory. Returns the relative file paths.
 */
export async function makeTree(root: string, files = 300): Promise<string[]> {
  const made: string[] = [];
  await mkdir(join(root, 'empty-dir'), { recursive: true });
  for (let i = 0; i < files; i += 1) {
    const dir = i % 5 === 0 ? '' : join(`dir${i % 7}`, i % 3 === 0 ? `sub${i % 4}` : '', i % 11 === 0 ? 'deep/deeper' : '');
    const name = join(dir, `file-${i}.cf`);
    const size = i === 42 ? 1_200_000 : i % 50 === 7 ? 0 : 200 + ((i * 7919) % 19_000);
    await mkdir(join(root, dir), { recursive: true });
    await writeFile(join(root, name), bytes(i, size), { mode: i % 4 === 0 ? 0o600 : i % 4 === 1 ? 0o640 : 0o644 });
    made.push(name);
  }
  await writeFile(join(root, 'rudder-promises-generated'), `${Date.now()}\n`);
  made.push('rudder-promises-generated');
  return made;
}

export interface TreeEntry {
  readonly type: 'file' | 'dir' | 'link';
  readonly mode: number;
  readonly digest?: string;
  readonly target?: string;
}

/** relative path → type, permission bits and content digest */
export async function readTree(root: string): Promise<Map<string, TreeEntry>> {
  const entries = new Map<string, TreeEntry>();
  const walk = async (dir: string): Promise<void> => {
    for (const name of await readdir(dir)) {
      const full = join(dir, name);
      const rel = relative(root, full);
      const s = await lstat(full);
      if (s.isSymbolicLink()) entries.set(rel, { type: 'link', mode: 0, target: await readlink(full) });
      else if (s.isDirectory()) {
        entries.set(rel, { type: 'dir', mode: s.mode & 0o7777 });
        await walk(full);
      } else {
        entries.set(rel, { type: 'file', mode: s.mode & 0o7777, digest: createHash('sha256').update(await readFile(full)).digest('hex') });
      }
    }
  };
  await walk(root);
  return entries;
}

/** differences between two trees (empty when identical); modes compared when asked */
export async function compareTrees(expected: string, actual: string, options: { modes?: boolean } = {}): Promise<string[]> {
  const a = await readTree(expected);
  const b = await readTree(actual);
  const problems: string[] = [];
  for (const [rel, e] of a) {
    const got = b.get(rel);
    if (got === undefined) problems.push(`missing ${rel}`);
    else if (got.type !== e.type) problems.push(`${rel}: ${got.type} instead of ${e.type}`);
    else if (e.digest !== got.digest) problems.push(`${rel}: content differs`);
    else if (options.modes === true && e.type === 'file' && e.mode !== got.mode) {
      problems.push(`${rel}: mode ${got.mode.toString(8)} instead of ${e.mode.toString(8)}`);
    }
  }
  for (const rel of b.keys()) if (!a.has(rel)) problems.push(`extra ${rel}`);
  return problems;
}

// ---- stock cf-serverd, for comparisons ----

export interface CfServerdAccess {
  /** path → admitted MD5= keys */
  readonly keys?: ReadonlyArray<{ readonly path: string; readonly admit: readonly string[] }>;
  /** paths admitted by IP (127.0.0.1) */
  readonly ips?: readonly string[];
}

export interface RunningCfServerd {
  readonly port: number;
  /** cf-serverd's process (its connections are threads of it) */
  readonly pid: number;
  stop(): Promise<void>;
}

/** cf-serverd -F on 127.0.0.1:<port> from `work`, with Rudder-like ACLs, trustkeysfrom 127.0.0.1 */
export async function startCfServerd(work: CfWorkdir, port: number, access: CfServerdAccess): Promise<RunningCfServerd> {
  const rules = [
    ...(access.keys ?? []).map((k) => `    "${k.path}"\n      admit_keys => { ${k.admit.map((a) => `"${a}"`).join(', ')} };\n`),
    ...(access.ips ?? []).map((p) => `    "${p}"\n      admit_ips => { "127.0.0.1" };\n`),
  ].join('');
  const policy = `body common control
{
  bundlesequence => { "main" };
}
bundle agent main
{
}
body server control
{
  port => "${port}";
  bindtointerface => "127.0.0.1";
  allowconnects => { "127.0.0.1" };
  allowallconnects => { "127.0.0.1" };
  trustkeysfrom => { "127.0.0.1" };
  allowlegacyconnects => { };
  maxconnections => "1000";
}
bundle server access_rules
{
  access:
${rules}}
`;
  const { stop, pid } = await spawnCfServerd(work, policy, '127.0.0.1', port);
  return { port, pid, stop };
}

/** writes `policy` as the work dir's promises.cf, runs `cf-serverd -F` on it, waits until address:port accepts */
async function spawnCfServerd(
  work: CfWorkdir,
  policy: string,
  address: string,
  port: number,
): Promise<{ stop: () => Promise<void>; pid: number }> {
  const file = join(work.dir, 'inputs', 'promises.cf');
  await writeFile(file, policy, { mode: 0o600 });
  const child: ChildProcess = spawn(`${CF_BIN}/cf-serverd`, ['-F', '-f', file], {
    env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', LANG: 'C', CFENGINE_TEST_OVERRIDE_WORKDIR: work.dir },
    stdio: 'ignore',
  });
  const deadline = Date.now() + 15_000;
  for (;;) {
    const up = await new Promise<boolean>((resolve) => {
      const socket = tcpConnect(port, address, () => {
        socket.destroy();
        resolve(true);
      });
      socket.on('error', () => resolve(false));
    });
    if (up) break;
    if (Date.now() > deadline || child.exitCode !== null) {
      child.kill('SIGKILL');
      throw new Error(`cf-serverd did not start on ${address}:${port}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  const stop = (): Promise<void> =>
    new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      child.once('exit', () => resolve());
      child.kill('SIGTERM');
    });
  const { pid } = child;
  if (pid === undefined) throw new Error('cf-serverd has no process id');
  return { stop, pid };
}

// ---- a scriptable protocol client (Node TLS), for what cf-agent never sends ----

export interface CfClient {
  readonly socket: TLSSocket;
  /** the server's banner line, e.g. "CFE_v3 cf-serverd 3.21.0" */
  readonly banner: string;
  /** the server's answer to IDENTITY ("OK WELCOME …"), undefined when it closed instead */
  readonly welcome: string | undefined;
  /** one transaction (framed by the codec) */
  send(payload: Buffer | string): void;
  /** raw bytes, unframed */
  sendRaw(bytes: Buffer | string): void;
  /** the next transaction's payload */
  readFrame(timeoutMs?: number): Promise<{ status: string; payload: Buffer }>;
  /** exactly n raw bytes */
  readBytes(n: number, timeoutMs?: number): Promise<Buffer>;
  /** resolves when the server closed the connection */
  readonly closed: Promise<void>;
  isClosed(): boolean;
  close(): void;
}

/**
 * Connects to a CFEngine server with `privateKey` (a CN=a certificate made from it, like cf-agent's), does
 * the identification dialog, and returns a client for single transactions.
 */
export async function connectCfengine(
  port: number,
  privateKey: KeyObject,
  options: { username?: string; version?: number; identify?: boolean; localAddress?: string } = {},
): Promise<CfClient> {
  const socket = tlsConnect({
    host: '127.0.0.1',
    port,
    ...(options.localAddress === undefined ? {} : { localAddress: options.localAddress }),
    key: privateKey.export({ type: 'pkcs1', format: 'pem' }),
    cert: makeServerCertificate(privateKey),
    rejectUnauthorized: false,
    checkServerIdentity: () => undefined,
  });
  socket.setNoDelay(true);
  let buffer = Buffer.alloc(0);
  let closedFlag = false;
  let wake: (() => void) | undefined;
  const closed = new Promise<void>((resolve) => {
    socket.on('close', () => {
      closedFlag = true;
      wake?.();
      resolve();
    });
  });
  socket.on('error', () => undefined);
  socket.on('data', (chunk: Buffer) => {
    buffer = Buffer.concat([buffer, chunk]);
    wake?.();
  });
  const waitFor = async (ready: () => boolean, timeoutMs: number, what: string): Promise<void> => {
    const deadline = Date.now() + timeoutMs;
    while (!ready()) {
      if (closedFlag) throw new Error(`connection closed while waiting for ${what}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timeout waiting for ${what}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      wake = undefined;
    }
  };
  const readLine = async (): Promise<string> => {
    await waitFor(() => buffer.includes(0x0a), 10_000, 'a line');
    const end = buffer.indexOf(0x0a);
    const line = buffer.subarray(0, end).toString('latin1');
    buffer = buffer.subarray(end + 1);
    return line;
  };
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', () => resolve());
    socket.once('error', reject);
  });
  const banner = await readLine();
  let welcome: string | undefined;
  if (options.identify ?? true) {
    socket.write(`CFE_v${options.version ?? 2} cf-agent 3.21.0\n`);
    socket.write(`IDENTITY USERNAME=${options.username ?? 'root'}\n`);
    welcome = await readLine().catch(() => undefined);
  }
  const readBytes = async (n: number, timeoutMs = 10_000): Promise<Buffer> => {
    await waitFor(() => buffer.length >= n, timeoutMs, `${n} bytes`);
    const out = buffer.subarray(0, n);
    buffer = buffer.subarray(n);
    return Buffer.from(out);
  };
  return {
    socket,
    banner,
    welcome,
    send: (payload) => void socket.write(encodeFrame(payload)),
    sendRaw: (bytes) => void socket.write(bytes),
    async readFrame(timeoutMs = 10_000) {
      const header = await readBytes(8, timeoutMs);
      const match = /^(.) (\d+)/.exec(header.toString('latin1'));
      if (match === null) throw new Error(`bad header ${JSON.stringify(header.toString('latin1'))}`);
      return { status: match[1] ?? '', payload: await readBytes(Number(match[2]), timeoutMs) };
    },
    readBytes,
    closed,
    isClosed: () => closedFlag,
    close: () => socket.destroy(),
  };
}

// ---- an onerelay CFEngine server with a real nodes registry, counters and captured logs ----

export class RecordingCounters {
  readonly connections: Record<string, number> = {};
  readonly commands: Record<string, number> = {};
  bytes = 0;

  connection(result: string): void {
    this.connections[result] = (this.connections[result] ?? 0) + 1;
  }

  command(command: string, result: string): void {
    const key = `${command} ${result}`;
    this.commands[key] = (this.commands[key] ?? 0) + 1;
  }

  bytesSent(bytes: number): void {
    this.bytes += bytes;
  }

  /** how many `command` requests were answered (with any result, or with `result`) */
  count(command: string, result?: string): number {
    let n = 0;
    for (const [key, value] of Object.entries(this.commands)) {
      const [c, r] = key.split(' ');
      if (c === command && (result === undefined || r === result)) n += value;
    }
    return n;
  }
}

export interface CfengineFixture {
  readonly base: string;
  /** policiesDirectory */
  readonly share: string;
  readonly sharedFolder: string;
  readonly counters: RecordingCounters;
  readonly logs: Array<Record<string, unknown>>;
  readonly server: CfengineServer;
  readonly relayKey: KeyObject;
  port(): number;
}

export interface FixtureOptions {
  readonly base: string;
  readonly nodes: ReadonlyArray<{ readonly id: string; readonly work?: CfWorkdir; readonly sha256Pin?: string }>;
  /** nodescerts.pem content (nodes pinned by certificate, as Rudder writes it); default: empty */
  readonly nodesCerts?: string;
  readonly server?: Partial<CfengineServerOptions>;
  /** runs once server.start() is under way (during its warm-up) */
  readonly whileStarting?: () => void;
}

/** starts onerelay's CFEngine server on 127.0.0.1:0 over `<base>/share`; stop it with fixture.server.stop() */
export async function startCfengineFixture(options: FixtureOptions): Promise<CfengineFixture> {
  const share = join(options.base, 'share');
  const sharedFolder = join(options.base, 'shared-folder');
  await mkdir(share, { recursive: true });
  await mkdir(sharedFolder, { recursive: true });
  const nodesListFile = join(options.base, 'nodeslist.json');
  await writeNodesList(nodesListFile, options.nodes);
  await writeFile(join(options.base, 'nodescerts.pem'), options.nodesCerts ?? '');
  const nodes = createNodesRegistry({
    myId: 'root',
    nodesListFile,
    nodesCertsFile: join(options.base, 'nodescerts.pem'),
    log: pino({ level: 'silent' }),
  });
  await nodes.reload();
  const logs: Array<Record<string, unknown>> = [];
  const log = pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) });
  const counters = new RecordingCounters();
  const relayKey = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const server = createCfengineServer(
    {
      listen: { host: '127.0.0.1', port: 0 },
      privateKey: relayKey,
      nodeId: 'root',
      policiesDirectory: share,
      sharedFolderPath: sharedFolder,
      allowedNetworks: ['127.0.0.0/8'],
      // a short warm-up: the path runs once before the tests' requests, as in the relay, without its cost
      warmUpRequests: 200,
      ...options.server,
    },
    { nodes, counters, log },
  );
  const starting = server.start();
  options.whileStarting?.();
  await starting;
  return { base: options.base, share, sharedFolder, counters, logs, server, relayKey, port: () => server.port() };
}

// ---- a node for remote runs: stock cf-serverd with a cfruncommand, on its own loopback address ----

export function hasCfRunagent(): boolean {
  return hasCfengine() && existsSync(`${CF_BIN}/cf-serverd`) && existsSync(`${CF_BIN}/cf-runagent`);
}

/** cf-key -t <ip>:<file>: `work` trusts `publicKey` in advance (as a node trusts its relay after its first update) */
export async function trustKey(work: CfWorkdir, key: KeyObject, ip = '127.0.0.1'): Promise<void> {
  const publicKey = key.type === 'private' ? createPublicKey(key) : key;
  const file = join(work.dir, `trust-${createHash('sha256').update(publicKey.export({ type: 'spki', format: 'der' })).digest('hex').slice(0, 16)}.pub`);
  await writeFile(file, publicKey.export({ type: 'pkcs1', format: 'pem' }));
  const result = await runCf(`${CF_BIN}/cf-key`, ['-t', `${ip}:${file}`], work.dir);
  if (result.code !== 0) throw new Error(`cf-key -t failed (${result.code}): ${result.stdout}${result.stderr}`);
}

export interface CfRunNodeOptions {
  /** the loopback address cf-serverd binds to (bindtointerface), e.g. 127.0.0.2 */
  readonly address: string;
  readonly port: number;
  /** MD5=… keys admitted for the cfruncommand script */
  readonly admitKeys: readonly string[];
  /** keys made trusted with cf-key -t before starting */
  readonly trust?: readonly KeyObject[];
  /** extra lines the script prints after "args: …" */
  readonly lines?: readonly string[];
  readonly exitCode?: number;
  /** seconds the script sleeps before its last line */
  readonly sleep?: number;
}

export interface RunningCfRunNode extends RunningCfServerd {
  readonly address: string;
  readonly script: string;
  /** one line per run: the script's arguments */
  readonly runsLog: string;
  readonly work: CfWorkdir;
}

/** cf-serverd -F on address:port whose cfruncommand is a script printing "args: <its arguments>" */
export async function startCfRunNode(work: CfWorkdir, options: CfRunNodeOptions): Promise<RunningCfRunNode> {
  for (const key of options.trust ?? []) await trustKey(work, key);
  const script = join(work.dir, 'run-agent.sh');
  const lines = (options.lines ?? ['agent run done']).map((l) => `echo '${l.replace(/'/g, `'\\''`)}'\n`).join('');
  await writeFile(
    script,
    `#!/bin/sh\necho "$*" >> '${join(work.dir, 'runs.log')}'\necho "args: $*"\n${options.sleep ? `sleep ${options.sleep}\n` : ''}${lines}exit ${options.exitCode ?? 0}\n`,
    { mode: 0o755 },
  );
  const policy = `body common control
{
  bundlesequence => { "main" };
}
bundle agent main
{
}
body server control
{
  port => "${options.port}";
  bindtointerface => "${options.address}";
  allowconnects => { "127.0.0.0/8" };
  allowallconnects => { "127.0.0.0/8" };
  allowusers => { "root" };
  cfruncommand => "${script}";
  maxconnections => "1000";
}
bundle server access_rules
{
  access:
    "${script}"
      admit_keys => { ${options.admitKeys.map((k) => `"${k}"`).join(', ')} };
  roles:
    ".*"
      authorize => { "root" };
}
`;
  const { stop, pid } = await spawnCfServerd(work, policy, options.address, options.port);
  return {
    address: options.address,
    port: options.port,
    pid,
    script,
    runsLog: join(work.dir, 'runs.log'),
    work,
    stop,
  };
}

/** sha256 pin of a work dir's key as NodeEntry.keyHash */
export function keyHashOf(work: CfWorkdir): { type: 'sha256'; bytes: Buffer } {
  return { type: 'sha256', bytes: createHash('sha256').update(work.publicKey.export({ type: 'spki', format: 'der' })).digest() };
}
