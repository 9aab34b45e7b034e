// Helpers for the data sync tests: a real HTTPS fastify server with the sync routes (client certificates
// requested, attributed by the nodes registry, fault injection on blob batches), a pinned undici client
// that presents a relay's certificate, and small tree builders/readers.

import { X509Certificate, createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Transform, pipeline, type Readable, type TransformCallback } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify';
import forge from 'node-forge';
import pino, { type Logger } from 'pino';
import { Pool, buildConnector } from 'undici';
import type { Test } from 'tap';
import { createNodesRegistry, type NodesRegistry } from '../../src/nodes/index.js';
import { clientCertificateRequester, createSyncPuller, createSyncServing, type SyncPaths, type SyncPuller, type SyncServing } from '../../src/sync/index.js';
import type { PeerClient } from '../../src/upstream/index.js';
import { tempDir } from './tmp.js';
import { FIXTURES } from './fixtures.js';

export const KEYS = `${FIXTURES}/files/keys`;
/** the serving (upstream) onerelay */
export const UPSTREAM_ID = 'e745a140-40bc-4b86-b6dc-084488fc906b';
/** the pulling relay */
export const RELAY_ID = '37817c4d-fbf7-4850-a985-50021f4e8f41';

export interface Identity {
  readonly key: string;
  readonly cert: string;
}

export function fixtureIdentity(id: string): Identity {
  return { key: readFileSync(join(KEYS, `${id}.nopass.priv`), 'utf8'), cert: readFileSync(join(KEYS, `${id}.cert`), 'utf8') };
}

/** nodeslist.json `key-hash` of a certificate: sha256//base64(sha256(SPKI DER)) */
export function keyHashOf(certificatePem: string): string {
  const spki = new X509Certificate(certificatePem).publicKey.export({ type: 'spki', format: 'der' });
  return `sha256//${createHash('sha256').update(spki).digest('base64')}`;
}

/** a fresh self-signed certificate with subject UID=<nodeId> (like an agent certificate) */
export function makeNodeCertificate(nodeId: string): Identity {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const key = privateKey.export({ type: 'pkcs1', format: 'pem' }).toString();
  const forgeKey = forge.pki.privateKeyFromPem(key) as forge.pki.rsa.PrivateKey;
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.rsa.setPublicKey(forgeKey.n, forgeKey.e);
  cert.serialNumber = `01${forge.util.bytesToHex(forge.random.getBytesSync(8))}`;
  cert.validity.notBefore = new Date(Date.now() - 3600_000);
  cert.validity.notAfter = new Date(Date.now() + 24 * 3600_000);
  const subject = [{ type: '0.9.2342.19200300.100.1.1', value: nodeId }];
  cert.setSubject(subject);
  cert.setIssuer(subject);
  cert.sign(forgeKey, forge.md.sha256.create());
  return { key, cert: forge.pki.certificateToPem(cert) };
}

/**
 * A PeerClient (src/upstream's interface) that presents `identity` as TLS client certificate and accepts
 * only the pinned server certificate. createPeerClient cannot present a client certificate yet.
 */
export function identifiedPeerClient(options: { port: number; pinned: string; identity?: Identity }): PeerClient {
  const pinned = new X509Certificate(options.pinned);
  const base = buildConnector({
    rejectUnauthorized: false,
    minVersion: 'TLSv1.3',
    maxCachedSessions: 0,
    ...(options.identity === undefined ? {} : { key: options.identity.key, cert: options.identity.cert }),
  });
  const pool = new Pool(`https://127.0.0.1:${options.port}`, {
    connections: 4,
    connect: (connectOptions, callback) => {
      base(connectOptions, (error, socket) => {
        if (error !== null) return callback(error, null);
        const presented = (socket as TLSSocket).getPeerX509Certificate();
        if (presented === undefined || !presented.raw.equals(pinned.raw)) {
          socket.destroy();
          return callback(new Error('server certificate is not the pinned one'), null);
        }
        return callback(null, socket);
      });
    },
  });
  return {
    async request(method, pathAndQuery, body, headers = {}) {
      const response = await pool.request({ method, path: pathAndQuery, headers, ...(body === undefined ? {} : { body }) });
      return { status: response.statusCode, body: response.body };
    },
    close: () => pool.close(),
  };
}

export interface RecordedRequest {
  readonly method: string;
  readonly url: string;
  /** 0 when the connection was cut before an answer */
  status: number;
  /** hashes asked for by POST /blobs */
  readonly hashes: readonly string[];
}

export interface SyncFaults {
  /** flip one byte of the next blob batch at this offset of the (uncompressed) response */
  corruptNextBatchAt?: number;
  /** destroy the connection of the next blob batch after this many bytes */
  abortNextBatchAfter?: number;
}

export interface TestSyncServer {
  readonly port: number;
  /** fastify's inject() on the serving app (no TLS, so no client certificate) */
  readonly inject: FastifyInstance['inject'];
  readonly serving: SyncServing;
  readonly requests: RecordedRequest[];
  readonly faults: SyncFaults;
  close(): Promise<void>;
}

/**
 * The serving side on a real HTTPS listener (127.0.0.1, port chosen by the kernel), mounted at both
 * relay API prefixes like the front door does. Fault injection turns gzip off for the faulty batch so the
 * offsets are those of the framed stream.
 */
export async function startSyncServer(options: {
  identity: Identity;
  paths: SyncPaths;
  nodes: NodesRegistry;
  log?: Logger;
  requesterOf?: (request: FastifyRequest) => string | undefined;
  /** default 0: a tree that cannot be watched is walked at every manifest request */
  manifestTtlMs?: number;
  maxWatches?: number;
}): Promise<TestSyncServer> {
  const log = options.log ?? pino({ level: 'silent' });
  const app = Fastify({
    loggerInstance: log,
    https: { key: options.identity.key, cert: options.identity.cert, minVersion: 'TLSv1.3', requestCert: true, rejectUnauthorized: false },
  });
  const requests: RecordedRequest[] = [];
  const faults: SyncFaults = {};
  const serving = createSyncServing(
    { paths: options.paths, manifestTtlMs: options.manifestTtlMs ?? 0, ...(options.maxWatches === undefined ? {} : { maxWatches: options.maxWatches }) },
    { nodes: options.nodes, requesterOf: options.requesterOf ?? clientCertificateRequester(options.nodes), log },
  );
  const faulty = new WeakSet<FastifyRequest>();
  app.addHook('onRequest', async (request) => {
    if (request.method === 'POST' && request.url.endsWith('/blobs') && (faults.corruptNextBatchAt !== undefined || faults.abortNextBatchAfter !== undefined)) {
      faulty.add(request);
      delete request.headers['accept-encoding'];
    }
  });
  app.addHook('onSend', async (request, _reply, payload) => {
    if (!faulty.has(request) || payload === null || typeof (payload as { pipe?: unknown }).pipe !== 'function') return payload;
    const corruptAt = faults.corruptNextBatchAt;
    const abortAfter = faults.abortNextBatchAfter;
    delete faults.corruptNextBatchAt;
    delete faults.abortNextBatchAfter;
    let offset = 0;
    const transform = new Transform({
      transform(chunk: Buffer, _encoding, callback: TransformCallback) {
        let out = chunk;
        if (corruptAt !== undefined && offset <= corruptAt && corruptAt < offset + chunk.length) {
          out = Buffer.from(chunk);
          out[corruptAt - offset] = (out[corruptAt - offset] ?? 0) ^ 0xff;
        }
        if (abortAfter !== undefined && offset + chunk.length >= abortAfter) {
          this.push(out.subarray(0, Math.max(0, abortAfter - offset)));
          // let the bytes go out, then cut the connection mid-stream
          setTimeout(() => request.raw.socket.destroy(), 20);
          offset += chunk.length;
          return callback();
        }
        offset += chunk.length;
        callback(null, out);
      },
    });
    pipeline(payload as Readable, transform, () => undefined);
    return transform;
  });
  const recorded = new WeakMap<FastifyRequest, RecordedRequest>();
  app.addHook('preHandler', async (request) => {
    const body = request.body as { hashes?: string[] } | undefined;
    const record: RecordedRequest = { method: request.method, url: request.url, status: 0, hashes: body?.hashes ?? [] };
    recorded.set(request, record);
    requests.push(record);
  });
  app.addHook('onResponse', async (request, reply) => {
    const record = recorded.get(request);
    if (record !== undefined) record.status = reply.statusCode;
  });
  for (const prefix of ['/rudder/relay-api/sync', '/rudder/relay-api/1/sync']) await app.register(serving.routes, { prefix });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const address = app.server.address();
  if (address === null || typeof address === 'string') throw new Error('no port');
  return { port: address.port, inject: app.inject.bind(app) as FastifyInstance['inject'], serving, requests, faults, close: () => app.close() };
}

export function syncPaths(root: string): SyncPaths {
  return {
    policiesDirectory: join(root, 'share'),
    sharedFolderPath: join(root, 'configuration-repository', 'shared-files'),
    sharedFilesPath: join(root, 'shared-files'),
    nodesListFile: join(root, 'lib', 'relay', 'nodeslist.json'),
    nodesCertsFile: join(root, 'lib', 'ssl', 'nodescerts.pem'),
    stateDirectory: join(root, 'state'),
  };
}

export async function writeTree(root: string, files: ReadonlyMap<string, Buffer | string>): Promise<void> {
  const directories = new Set<string>();
  for (const path of files.keys()) directories.add(dirname(join(root, path)));
  for (const directory of directories) await mkdir(directory, { recursive: true });
  for (const [path, content] of files) await writeFile(join(root, path), content);
}

/** every regular file below `root` (relative path → content); absent root → empty */
export async function readTree(root: string): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  const visit = async (directory: string, prefix: string): Promise<void> => {
    let entries;
    try {
      entries = await readdir(directory, { withFileTypes: true });
    } catch {
      return;
    }
    for (const entry of entries) {
      const path = prefix === '' ? entry.name : `${prefix}/${entry.name}`;
      if (entry.isDirectory()) await visit(join(directory, entry.name), path);
      else if (entry.isFile()) out.set(path, await readFile(join(directory, entry.name)));
    }
  };
  await visit(root, '');
  return out;
}

export interface CollectedLogs {
  readonly log: Logger;
  readonly lines: Record<string, unknown>[];
}

export function collectLogs(level: pino.Level = 'info'): CollectedLogs {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level }, { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
  return { log, lines };
}

// ---------------------------------------------------------------------------
// a serving upstream and a pulling relay with a realistic tree

export const nodeId = (i: number): string => `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`;
export const NODES = Array.from({ length: 10 }, (_, i) => nodeId(i));
export const SUB_RELAY = nodeId(100);
export const SUB_NODE = nodeId(101);
export const SIBLING_RELAY = nodeId(200);
export const SIBLING_NODE = nodeId(201);
export const FILES_PER_NODE = 300;
const BIG = 1536 * 1024;

/** 300 files: one big archive (> 1 MiB), 199 files identical on every node, 100 of the node's own */
export function nodeFiles(node: string, variant = 0): Map<string, Buffer> {
  const files = new Map<string, Buffer>();
  files.set('rules/rudder.tar.bz2', randomBytes(BIG));
  for (let i = 1; i < 200; i += 1) {
    files.set(`rules/cfengine-community/lib/${i % 7}/common-${i}.cf`, Buffer.from(`# common ${i}\n${'bundle agent x {}\n'.repeat(20 + i)}`));
  }
  for (let i = 200; i < FILES_PER_NODE; i += 1) {
    files.set(`rules/cfengine-community/directives/${node}-${i}.cf`, Buffer.from(`# ${node} ${i} v${variant}\n${'vars: "a" string => "b";\n'.repeat(10 + (i % 13))}`));
  }
  return files;
}

export interface SyncPair {
  readonly up: SyncPaths;
  readonly down: SyncPaths;
  readonly upstreamShare: string;
  readonly server: TestSyncServer;
  readonly client: PeerClient;
  readonly puller: SyncPuller;
  readonly registry: NodesRegistry;
  readonly logs: CollectedLogs;
  readonly relay: Identity;
  readonly upstream: Identity;
  readonly nodeCerts: Map<string, Identity>;
  nodesChanged: number;
  readonly counted: { result: string; bytes: number; files: number }[];
  newPuller(): SyncPuller;
}

/**
 * Upstream e745a140… serving its tree on HTTPS (nodes list: this relay 37817c4d… with its key-hash, the
 * `nodes` first NODES below it with 300 files each, a sub-relay with a node, a sibling relay with a node),
 * and a puller for relay 37817c4d… presenting its certificate and pinning the upstream's.
 */
export async function startSyncPair(test: Test, options: { emptyFile?: boolean; nodes?: number } = {}): Promise<SyncPair> {
  const nodes = NODES.slice(0, options.nodes ?? NODES.length);
  const root = tempDir(test, 'onerelay-sync-');
  const up = syncPaths(join(root, 'upstream'));
  const down = syncPaths(join(root, 'relay'));
  const relay = fixtureIdentity(RELAY_ID);
  const upstream = fixtureIdentity(UPSTREAM_ID);
  const nodeCerts = new Map([
    [NODES[0] ?? '', makeNodeCertificate(NODES[0] ?? '')],
    [SIBLING_NODE, makeNodeCertificate(SIBLING_NODE)],
  ]);

  const list: Record<string, Record<string, string>> = {
    [RELAY_ID]: { hostname: 'relay.test', 'policy-server': UPSTREAM_ID, 'key-hash': keyHashOf(relay.cert) },
    [SIBLING_RELAY]: { hostname: 'sibling.test', 'policy-server': UPSTREAM_ID },
    [SIBLING_NODE]: { hostname: 's1.test', 'policy-server': SIBLING_RELAY },
    [SUB_RELAY]: { hostname: 'sub.test', 'policy-server': RELAY_ID },
    [SUB_NODE]: { hostname: 'b1.test', 'policy-server': SUB_RELAY },
  };
  for (const node of nodes) list[node] = { hostname: `${node}.test`, 'policy-server': RELAY_ID };
  await mkdir(join(up.nodesListFile, '..'), { recursive: true });
  await mkdir(join(up.nodesCertsFile, '..'), { recursive: true });
  await writeFile(up.nodesListFile, JSON.stringify(list));
  await writeFile(up.nodesCertsFile, [relay.cert, ...[...nodeCerts.values()].map((c) => c.cert)].join(''));

  const upstreamShare = join(up.policiesDirectory, RELAY_ID, 'share');
  for (const node of nodes) await writeTree(join(upstreamShare, node), nodeFiles(node));
  await writeTree(join(upstreamShare, SUB_RELAY), new Map([['rules/cfengine-community/sub.cf', 'sub relay policies '.repeat(20)]]));
  await writeTree(join(upstreamShare, SUB_RELAY, 'share', SUB_NODE), new Map([['rules/cfengine-community/b1.cf', 'node behind the sub-relay '.repeat(20)]]));
  // on disk below the sub-relay but not in the nodes list: not served
  await writeTree(join(upstreamShare, SUB_RELAY, 'share', 'unlisted-node'), new Map([['rules/x.cf', 'stale '.repeat(50)]]));
  await writeTree(join(up.policiesDirectory, SIBLING_RELAY, 'share', SIBLING_NODE), new Map([['rules/s1.cf', 'sibling '.repeat(50)]]));
  await writeTree(join(up.policiesDirectory, 'common'), new Map([['policies-library-linux.tar.bz2', randomBytes(4096)]]));
  await writeTree(
    up.sharedFolderPath,
    new Map<string, Buffer | string>([
      ['motd.txt', 'welcome '.repeat(40)],
      ['packages/tool.bin', randomBytes(3000)],
      ...(options.emptyFile === true ? [['empty', ''] as [string, string]] : []),
    ]),
  );
  await writeTree(
    join(up.sharedFilesPath, RELAY_ID, 'shared-files', NODES[1] ?? ''),
    new Map([[`files/${NODES[2]}/file-id-1`, 'a shared file '.repeat(30)]]),
  );

  const logs = collectLogs('debug');
  const registry = createNodesRegistry({ myId: UPSTREAM_ID, nodesListFile: up.nodesListFile, nodesCertsFile: up.nodesCertsFile, log: logs.log });
  await registry.reload();
  const server = await startSyncServer({ identity: upstream, paths: up, nodes: registry, log: logs.log });
  const client = identifiedPeerClient({ port: server.port, pinned: upstream.cert, identity: relay });
  const counted: SyncPair['counted'] = [];
  const pullers: SyncPuller[] = [];
  const state = {
    up,
    down,
    upstreamShare,
    server,
    client,
    registry,
    logs,
    relay,
    upstream,
    nodeCerts,
    nodesChanged: 0,
    counted,
    newPuller(): SyncPuller {
      const puller = createSyncPuller(
        { paths: down, myId: RELAY_ID, frequencyMs: 3_600_000 },
        {
          upstream: () => client,
          onNodesChanged: async () => {
            state.nodesChanged += 1;
          },
          counters: { synced: (result, _ms, bytes, files) => void counted.push({ result, bytes, files }) },
          log: logs.log,
        },
      );
      pullers.push(puller);
      return puller;
    },
  } as Omit<SyncPair, 'puller'> & { puller?: SyncPuller };
  (state as { puller: SyncPuller }).puller = state.newPuller();
  test.teardown(async () => {
    for (const puller of pullers) await puller.stop();
    await client.close();
    await server.close();
  });
  return state as SyncPair;
}

export const inodes = async (root: string): Promise<Map<string, number>> => {
  const out = new Map<string, number>();
  for (const path of (await readTree(root)).keys()) out.set(path, (await stat(join(root, path))).ino);
  return out;
};

export const sameTree = (test: Test, actual: Map<string, Buffer>, expected: Map<string, Buffer>, what: string): void => {
  test.same([...actual.keys()].sort(), [...expected.keys()].sort(), `${what}: same paths`);
  const differing = [...expected].filter(([path, content]) => !actual.get(path)?.equals(content)).map(([path]) => path);
  test.same(differing, [], `${what}: byte-identical`);
};
