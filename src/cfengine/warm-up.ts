// Warm-up of the request path before the server listens (issue 20). V8 runs new code in its interpreter
// and optimises a function only after some thousands of calls: measured with --trace-opt, the last hot
// functions of the request path were optimised after ~7,000 requests, so the first agent runs after a
// start took 1.15–1.40× cf-serverd's time. Here the real path (TLS socket, framing, dispatch, admission,
// the file service, the codec) answers the requests of a cf-agent-like copy, over loopback, from a
// private listener on an ephemeral port of 127.0.0.1 and a private temporary tree readable by this
// connection only; the relay's counters, digests, logs and node activity are not touched.
// V8 keeps optimised code only while the hidden classes (maps) and call targets it was specialised on hold:
// measured with --trace-deopt, a warm-up whose objects were built otherwise than the server's (a socket
// without the idle timeout, a spread copy of the context, an ACL and counters made of other closures) had
// its code thrown away at the first agent's requests, and the full collection after it discarded the code
// of the STAT, MD5 and GET handlers ("weak objects": the maps of its sockets and stats had died). So its
// objects come from the server's own code (openConnection, connectionContext, the ACL class, the tally),
// and a few of them are handed back to be kept for the server's life (keepAlive).

import { createHash, randomBytes } from 'node:crypto';
import { lstatSync, mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { SecureContext } from 'node:tls';
import type { KeyObject } from 'node:crypto';
import type { Logger } from 'pino';
import type { NodesRegistry } from '../nodes/index.js';
import { createPathAcl, toBinaryPath } from '../access/index.js';
import { connectCfengineServer, type CfengineClient } from './client.js';
import { CFD_TERMINATOR, HEADER_SIZE, encodeGetRequest, encodeMd5Request, encodeOpendirRequest, encodeStatRequest, parseStatLine } from './codec.js';
import { openConnection, type CfengineConnection } from './connection.js';
import { DigestCache, DirectoryCache } from './files.js';
import type { CfengineCounters } from './index.js';
import { connectionContext, type ConnectionContext } from './session.js';

/** files of the private tree: sizes like a policy tree's (most a few KiB, some tens) */
const FILES = 60;
/** requests per connection: one agent run's worth, so connection set-up is warmed too */
const REQUESTS_PER_CONNECTION = 400;
/** the node the warm-up's client is taken for (a folder of the private tree only) */
const WARM_UP_NODE = 'warm-up-node';

/**
 * Counters that count nothing, with the keys of the relay's counters in their order (app/compose.ts), so
 * that the objects have one shape. Two of them, written apart and used by alternate connections: a call
 * site that has seen two functions is compiled as a generic call, while one that saw only the warm-up's
 * function (or closures of one function literal) is inlined, and thrown away ("wrong call target", "wrong
 * feedback cell") when the first agent's connection calls the relay's metrics.
 */
const noCounters: readonly CfengineCounters[] = [
  { connection: () => undefined, command: () => undefined, bytesSent: () => undefined, session: () => undefined },
  { connection: () => {}, command: () => {}, bytesSent: () => {}, session: () => {} },
];

export interface WarmUpOptions {
  /** requests to answer (0: none) */
  readonly requests: number;
  /** stops early after this long (a slow machine must not delay the start by much) */
  readonly budgetMs: number;
  readonly secureContext: SecureContext;
  readonly privateKey: KeyObject;
  /** the server's certificate, reused as the client's (saves a signature) */
  readonly certificate: string;
  /** the server's context: its shape (and its nodes registry) are reused, its shared state is not */
  readonly context: ConnectionContext;
  /** for the outcome; the warm-up's connections log nothing */
  readonly log: Logger;
}

/**
 * answers about `requests` requests through CfengineConnection; resolves with how many, and the objects to
 * keep (the last connection, client and stat: their maps keep the optimised code valid); never rejects
 */
export async function warmUp(options: WarmUpOptions): Promise<{ requests: number; ms: number; keepAlive: unknown[] }> {
  const started = performance.now();
  if (options.requests <= 0) return { requests: 0, ms: 0, keepAlive: [] };
  const tree = mkdtempSync(join(tmpdir(), 'onerelay-cfengine-warm-up-'));
  const listener = createServer({ noDelay: true });
  const connections = new Set<CfengineConnection>();
  let answered = 0;
  let opened = 0;
  let kept: CfengineConnection | undefined;
  let keptClient: CfengineClient | undefined;
  let keptStats: unknown;
  try {
    // the tree is laid out as the relay's roots are, and the client is a known node reading its own folder:
    // the ACL then takes the branches real agents take (measured: a warm-up as an unknown key reading a
    // public root left the node branch without type feedback, and the first real copy ran those functions
    // unoptimised again)
    const share = join(tree, 'share');
    const files = makeTree(join(share, WARM_UP_NODE));
    keptStats = lstatSync(tree, { bigint: true });
    for (const folder of ['common', 'public', 'shared-folder', 'shared-files']) mkdirSync(join(tree, folder));
    const node = { id: WARM_UP_NODE, hostname: 'warm-up', policyServer: 'root', keyHash: undefined };
    // the same shape as the server's context (same keys, same order: the request path's property
    // accesses stay monomorphic), with private state
    const contextWith = (counters: CfengineCounters): ConnectionContext => connectionContext({
      ...options.context,
      // the registry as is, except that the warm-up's key is taken for the warm-up node
      nodes: Object.assign(Object.create(options.context.nodes) as NodesRegistry, { findByPublicKey: () => node }),
      counters,
      // the warm-up's connections log nothing
      log: options.log.child({ warmUp: true }, { level: 'silent' }),
      acl: createPathAcl({
        policiesDirectory: share,
        sharedFolderPath: join(tree, 'shared-folder'),
        sharedFilesPath: join(tree, 'shared-files'),
        commonRoots: [join(tree, 'common')],
        // one public root that does not exist: a relay's often do not (Rudder's defaults on a host without
        // them), and the ACL then takes the branch that looks for them again
        publicRoots: [join(tree, 'public'), join(tree, 'public-missing')],
      }),
      digests: new DigestCache(),
      directories: new DirectoryCache(),
      exec: { keys: new Set(), command: '' },
    });
    const contexts = noCounters.map(contextWith);
    listener.on('connection', (socket: Socket) => {
      socket.on('error', () => undefined);
      // the peer address read as the server reads it (net.Socket caches it in a property of its own)
      const peer = socket.remoteAddress ?? 'unknown';
      const context = contexts[opened++ % 2] as ConnectionContext;
      const connection = openConnection(socket, options.secureContext, peer, context, (closed) => connections.delete(closed));
      kept = connection;
      connections.add(connection);
    });
    await new Promise<void>((resolve, reject) => {
      listener.once('error', reject);
      listener.listen(0, '127.0.0.1', () => resolve());
    });
    const address = listener.address();
    const port = address !== null && typeof address === 'object' ? address.port : 0;
    while (answered < options.requests && performance.now() - started < options.budgetMs) {
      const client = await connectCfengineServer({
        host: '127.0.0.1',
        port,
        privateKey: options.privateKey,
        certificate: options.certificate,
        connectTimeoutMs: options.budgetMs,
        verifyServerKey: () => undefined,
        username: 'root',
      });
      keptClient = client;
      try {
        answered += await copyRun(client, join(share, WARM_UP_NODE), files, Math.min(REQUESTS_PER_CONNECTION, options.requests - answered), started + options.budgetMs);
      } finally {
        client.close();
      }
    }
  } catch (error) {
    options.log.warn({ err: error, requests: answered }, 'cfengine warm-up stopped early (the server starts anyway)');
  } finally {
    for (const connection of connections) connection.destroy('warm-up done');
    await new Promise<void>((resolve) => listener.close(() => resolve()));
    rmSync(tree, { recursive: true, force: true });
  }
  return { requests: answered, ms: performance.now() - started, keepAlive: [kept, keptClient, keptStats] };
}

/** folders of the private tree: nested as a policy tree's are, several files each */
const FOLDERS = ['rules', 'rules/ncf', 'rules/ncf/10_ncf_internals', 'rules/ncf/20_cfe_basics', 'rules/lib', 'rules/lib/deep/deeper'];

interface TreeFile {
  readonly name: string;
  readonly md5: Buffer;
}

function makeTree(root: string): Array<{ readonly folder: string; readonly files: TreeFile[] }> {
  const folders = FOLDERS.map((folder) => ({ folder, files: [] as TreeFile[] }));
  for (const { folder } of folders) mkdirSync(join(root, folder), { recursive: true });
  for (let i = 0; i < FILES; i += 1) {
    const entry = folders[i % folders.length] as (typeof folders)[number];
    const name = `${entry.folder}/file-${i}.cf`;
    // mostly a few KiB, every fifth one tens of KiB (several GET writes), one larger than the file service
    // reads directly (src/fs-direct: through the thread pool), as a policy tree's archives are, one empty
    const bytes = randomBytes(i === 1 ? 300_000 : i === 2 ? 0 : i % 5 === 0 ? 40_000 + i * 100 : 500 + i * 97);
    writeFileSync(join(root, name), bytes);
    entry.files.push({ name, md5: createHash('md5').update(bytes).digest() });
  }
  return folders;
}

/**
 * What cf-agent's recursive copy_from with compare digest asks, folder by folder: STAT and OPENDIR of the
 * folder, then for each file STAT, and on a cold copy GET then MD5 (verify => true: the digest the GET just
 * computed), on a no-change run MD5 with the right digest. Passes alternate cold and no-change.
 */
async function copyRun(client: CfengineClient, tree: string, folders: ReturnType<typeof makeTree>, requests: number, deadline: number): Promise<number> {
  let sent = 0;
  // the codec's request encoders give whole frames; the client frames what it sends itself
  const ask = async (frame: Buffer): Promise<void> => {
    await client.send(frame.subarray(HEADER_SIZE));
    sent += 1;
  };
  const stat = async (path: string): Promise<bigint> => {
    await ask(encodeStatRequest(path));
    const fields = parseStatLine((await client.readFrame()).payload.toString('latin1'));
    await client.readFrame(); // OK:<link target>
    return fields?.size ?? 0n;
  };
  for (let pass = 0; sent < requests && performance.now() < deadline; pass += 1) {
    const cold = pass % 2 === 0;
    for (const { folder, files } of folders) {
      if (sent >= requests || performance.now() >= deadline) break;
      const directory = toBinaryPath(join(tree, folder));
      await stat(directory);
      await ask(encodeOpendirRequest(directory));
      // names until the terminator frame
      for (;;) if ((await client.readFrame()).payload.toString('latin1').includes(CFD_TERMINATOR)) break;
      for (const file of files) {
        if (sent >= requests) break;
        const path = toBinaryPath(join(tree, file.name));
        const size = await stat(path);
        if (cold) {
          await ask(encodeGetRequest(path));
          let left = Number(size);
          while (left > 0) left -= (await client.readRaw(left)).length;
        }
        await ask(encodeMd5Request(path, cold ? Buffer.alloc(16) : file.md5));
        await client.readFrame();
      }
    }
  }
  return sent;
}
