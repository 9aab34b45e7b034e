// Signed, gzipped run logs as Rudder agents upload them, for forwarding benches: a realistic run log
// (control start/end, many component reports of a few dozen rules and directives, the node's id on every
// line), signed with the node's key by `openssl smime -sign -text -nocerts` like the agent, gzipped, named
// `<YYYY-MM-DDThh:mm:ss+00:00>@<node id>.log.gz`. Signing takes one openssl run per file, so the files are
// made once and cached under the OS temp dir (next to the identities), with a manifest written last.

import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { cacheDirectory, identityFiles, type NodeIdentity } from './identities.js';
import { runlogFileName } from './upload-client.js';

export interface RunlogNode {
  /** name of its cached identity (identities.ts), whose key files sign */
  readonly name: string;
  readonly identity: NodeIdentity;
}

export interface SignedRunlog {
  /** file name, `<timestamp>@<node id>.log.gz` */
  readonly name: string;
  /** absolute path in the cache (read-only: copy it) */
  readonly file: string;
  readonly nodeId: string;
  /** gzipped size on disk */
  readonly bytes: number;
  /** hex SHA-256 of the file */
  readonly sha256: string;
}

export interface RunlogSet {
  readonly directory: string;
  readonly files: readonly SignedRunlog[];
  /** mean size of the run log text, and of the signed text, before gzip */
  readonly meanTextBytes: number;
  readonly meanSignedBytes: number;
}

interface Manifest {
  readonly files: readonly SignedRunlog[];
  readonly meanTextBytes: number;
  readonly meanSignedBytes: number;
}

const formatVersion = 1;
/** agents run every 5 minutes; the first run of the set */
const firstRunSecond = Date.UTC(2025, 5, 1) / 1000;

/**
 * `perNode` run logs of about `textBytes` each for every node, made (two openssl at a time) on first use.
 * File i of node n is n's run number i: its name's time stamp is 5 minutes after the previous one.
 */
export async function cachedSignedRunlogs(nodes: readonly RunlogNode[], perNode: number, textBytes: number): Promise<RunlogSet> {
  const key = createHash('sha256')
    .update(JSON.stringify({ formatVersion, perNode, textBytes, nodes: nodes.map((node) => [node.name, node.identity.keyHash]) }))
    .digest('hex')
    .slice(0, 16);
  const directory = join(cacheDirectory, `runlogs-${nodes.length}x${perNode}-${textBytes}-${key}`);
  const cached = await readFile(join(directory, 'manifest.json'), 'utf8').catch(() => undefined);
  if (cached !== undefined) return { directory, ...(JSON.parse(cached) as Manifest) };

  await mkdir(cacheDirectory, { recursive: true });
  const work = await mkdtemp(join(cacheDirectory, '.new-runlogs-'));
  try {
    const jobs = nodes.flatMap((node, nodeIndex) => Array.from({ length: perNode }, (_, run) => ({ node, nodeIndex, run })));
    const files: SignedRunlog[] = new Array<SignedRunlog>(jobs.length);
    let textTotal = 0;
    let signedTotal = 0;
    let next = 0;
    const lane = async (): Promise<void> => {
      for (let index = next++; index < jobs.length; index = next++) {
        const { node, nodeIndex, run } = jobs[index]!;
        const second = firstRunSecond + run * 300 + nodeIndex; // nodes do not all run the same second
        const text = runlogText(node.identity.nodeId, nodeIndex, second, textBytes);
        const signed = await smimeSign(node.name, text);
        const body = gzipSync(signed);
        const name = runlogFileName(second, node.identity.nodeId);
        // ':' is fine on Linux; the cache keeps the agent's name as is
        await writeFile(join(work, name), body);
        files[index] = {
          name,
          file: join(directory, name),
          nodeId: node.identity.nodeId,
          bytes: body.length,
          sha256: createHash('sha256').update(body).digest('hex'),
        };
        textTotal += text.length;
        signedTotal += signed.length;
      }
    };
    await Promise.all([lane(), lane()]);
    const manifest: Manifest = { files, meanTextBytes: textTotal / files.length, meanSignedBytes: signedTotal / files.length };
    await writeFile(join(work, 'manifest.json'), `${JSON.stringify(manifest)}\n`);
    await rm(directory, { recursive: true, force: true });
    await rename(work, directory);
    return { directory, ...manifest };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** `openssl smime -sign -text -nocerts -signer agent.cert -inkey localhost.priv` over `text` (stdin → stdout) */
function smimeSign(identityName: string, text: string): Promise<Buffer> {
  const { privateKeyFile, certificateFile } = identityFiles(identityName);
  return new Promise((resolve, reject) => {
    const child = spawn('openssl', ['smime', '-sign', '-text', '-nocerts', '-signer', certificateFile, '-inkey', privateKeyFile], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (chunk: Buffer) => out.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => (err += chunk.toString()));
    child.once('error', reject);
    // 'close', not 'exit': the output may still be in the pipe when the process has exited
    child.once('close', (code) => {
      const signed = Buffer.concat(out);
      if (code === 0 && signed.subarray(0, 64).includes('MIME-Version:')) resolve(signed);
      else reject(new Error(`openssl smime -sign exited ${String(code)} with ${signed.length} bytes out: ${err.trim()}`));
    });
    child.stdin.end(text);
  });
}

// ---- a run log's text ----

const techniques = [
  ['Common', 'hasPolicyServer-root', 'common-root'],
  ['File_content', 'f2c4a0d8-9a3e-4f1b-8c2d-1e5f6a7b8c9d', 'a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d'],
  ['Package_management', '0b1c2d3e-4f5a-4b6c-9d7e-8f9a0b1c2d3e', '5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9'],
  ['Service_management', '3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f', '9a0b1c2d-3e4f-4a5b-b6c7-d8e9f0a1b2c3'],
  ['User_management', '7d8e9f0a-1b2c-4d3e-9f4a-5b6c7d8e9f0a', '2b3c4d5e-6f7a-4b8c-8d9e-0f1a2b3c4d5e'],
  ['sshConfiguration', 'b4c5d6e7-f8a9-4b0c-a1d2-e3f4a5b6c7d8', '6c7d8e9f-0a1b-4c2d-b3e4-f5a6b7c8d9e0'],
  ['Time_settings', 'e8f9a0b1-c2d3-4e4f-95a6-b7c8d9e0f1a2', 'c0d1e2f3-a4b5-4c6d-87e8-f9a0b1c2d3e4'],
  ['Generic_CFEngine_variable', '1f2a3b4c-5d6e-4f7a-8b9c-0d1e2f3a4b5c', 'd5e6f7a8-b9c0-4d1e-a2f3-b4c5d6e7f8a9'],
] as const;
const components = ['File', 'Package', 'Service', 'Permissions', 'Line', 'Directory', 'Command', 'Variable'] as const;
const keys = ['/etc/ssh/sshd_config', 'openssh-server', 'ntp', '/etc/motd', 'rsyslog', '/var/log/audit', 'cron', 'admin'] as const;
const messages = [
  'File content was correct',
  'Package is installed in the expected version',
  'Service is running as expected',
  'Permissions on the file were correct',
  'Line was present in the file',
  'Directory exists with the expected owner',
  'Command ran successfully',
  'Variable was defined',
] as const;

/** deterministic 32-bit generator (mulberry32), so a node's run logs are the same from one cache to the next */
function generator(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function agentTimestamp(second: number): string {
  return `${new Date(second * 1000).toISOString().slice(0, 19)}+00:00`;
}

/** the output of one agent run: control start, report lines until about `size` bytes, control end */
export function runlogText(nodeId: string, nodeIndex: number, startSecond: number, size: number): string {
  const random = generator(nodeIndex * 1_000_003 + startSecond);
  const start = new Date(startSecond * 1000).toISOString();
  const startDate = `${start.slice(0, 10)} ${start.slice(11, 19)}+00:00`;
  const configId = `20250601-000000-${(0x3ad37587 + nodeIndex).toString(16)}`;
  let second = startSecond;
  const line = (fields: string, message: string): string =>
    `${agentTimestamp(second)} R: @@${fields}@@${startDate}##${nodeId}@#${message}\n`;
  const end = line(`Common@@control@@rudder@@run@@0@@end@@${configId}`, 'End execution');
  let text = line(`Common@@control@@rudder@@run@@0@@start@@${configId}`, 'Start execution');
  let serial = 0;
  while (text.length + end.length < size) {
    if (random() < 0.3) second++;
    const [technique, rule, directive] = techniques[Math.floor(random() * techniques.length)]!;
    const kind = Math.floor(random() * components.length);
    const outcome = random();
    const event = outcome < 0.85 ? 'result_success' : outcome < 0.95 ? 'result_repaired' : outcome < 0.98 ? 'log_info' : 'result_na';
    const key = `${keys[kind]!}${random() < 0.5 ? '' : `.${serial++}`}`;
    const message =
      event === 'result_repaired'
        ? `${messages[kind]!.replace(/was|were|is|ran/, 'has been')} (repaired in ${Math.floor(random() * 900 + 10)} ms)`
        : event === 'result_na'
          ? `${components[kind]!} not applicable on this node`
          : messages[kind]!;
    text += line(`${technique}@@${event}@@${rule}@@${directive}@@0@@${components[kind]!} ${key.split('/').at(-1)!}@@${key}`, message);
  }
  return text + end;
}
