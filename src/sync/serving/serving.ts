// Serving side of the data sync (issue 7): for the relay proven by the client certificate, a manifest of
// everything it is entitled to and its blobs, batched in one streamed response. Routes, relative to the
// prefix the plugin is mounted at (/rudder/relay-api/sync and /rudder/relay-api/1/sync):
//   GET  /manifest        200 text manifest (gzip if accepted), ETag "<generation>"; 304 on If-None-Match
//   POST /blobs           {"hashes":[…]} → framed blobs (frames.ts), gzip if accepted
//   GET  /blobs/<sha256>  one blob (for curl and debugging)
// What a relay R is entitled to (spec-https-front-cfserverd-sync.md §3.2):
//   share/<node>/…          <policies>/<path to R>/share/<node>/ for each node whose policy server is R; inside,
//                           a sub-relay's share/ only holds nodes of the nodes list below it, recursively
//   common/…                <policies>/common/
//   shared-folder/…         the shared folder
//   shared-files/<entry>/…  <shared files>/<path to R>/shared-files/<entry>/ (§3.2 c: becomes the relay's root)
//   nodeslist.json          the nodes below R, as in our nodeslist.json
//   nodescerts.pem          the certificates of those nodes

import { createHash, type X509Certificate } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable, pipeline } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { createGzip, gzipSync } from 'node:zlib';
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import { RelayError, isRelayError, messageOf } from '../../errors.js';
import type { NodesRegistry } from '../../nodes/index.js';
import { descendantsOf, loadNodesTree, mtimeMsOf, nodesListFor, shareSegments, type NodesTree } from './entitlement.js';
import { END_FRAME, MAX_BLOBS_PER_BATCH, blobHeader, missingFrame } from '../lib/frames.js';
import type { SyncServingDeps, SyncServingOptions, SyncServingRoutes } from '../index.js';
import {
  COMMON_NAME,
  NODES_CERTS_UNIT,
  NODES_LIST_UNIT,
  OWN_POLICIES_UNIT,
  isSafeSegment,
  isSha256Hex,
  serializeDelta,
  serializeManifest,
  unitNameOf,
  unitsOf,
  type Manifest,
  type ManifestEntry,
} from '../lib/manifest.js';
import { createUnitCache, type UnitCache } from './unit-cache.js';
import { createTreeWalker, type SubtreeFilter, type TreeWalker, type Walked } from './walk.js';

const DEFAULT_MANIFEST_TTL_MS = 10_000;
/** earlier generations per relay a delta can start from (a puller is normally one generation behind) */
const DELTA_BASES = 3;
/** new blobs sent along with a delta, so that a small change is one request */
const DELTA_INLINE_BYTES = 4 * 1024 * 1024;
const DELTA_INLINE_BLOBS = 1024;
const GENERATED_FILE_MODE = 0o640;
const TEXT = 'text/plain; charset=utf-8';

type BlobSource =
  | { readonly kind: 'file'; readonly absolute: string; readonly ino: bigint; readonly size: bigint; readonly mtimeNs: bigint }
  | { readonly kind: 'buffer'; readonly data: Buffer };

interface RelayView {
  readonly manifest: Manifest;
  /** what it was made of: the same walks, nodes tree and certificates make the same view */
  readonly walks: readonly Walked[];
  readonly treeVersion: number;
  readonly certsMtimeMs: number;
  readonly blobs: ReadonlyMap<string, BlobSource>;
  readonly computedAt: number;
  readonly nodesLoadedAt: string | undefined;
  gzip: Buffer | undefined;
  /** unit name → digest, computed when a delta from or to this view is asked for */
  unitDigests: Map<string, string> | undefined;
  /** a served file no longer matched: recompute at the next manifest request */
  stale: boolean;
}

export interface SyncServing {
  /** the routes; register this one plugin at each prefix so both share one cache */
  readonly routes: FastifyPluginAsync;
  /** the manifest of `relayId` as it would be served (tests, status); withOwn: with its own policies */
  manifestFor(relayId: string, withOwn?: boolean): Promise<Manifest>;
  /** drop cached manifests (the trees changed and waiting for the TTL is not wanted) */
  invalidate(): void;
}

/** requesterOf for the front door: the node whose pinned certificate the client presented */
export function clientCertificateRequester(nodes: NodesRegistry): (request: FastifyRequest) => string | undefined {
  return (request) => {
    const socket = request.raw.socket as Partial<TLSSocket>;
    if (typeof socket.getPeerX509Certificate !== 'function') return undefined;
    const der = socket.getPeerX509Certificate()?.raw;
    if (der === undefined) return undefined;
    try {
      const match = nodes.matchCertificate(der);
      return match.kind === 'match' ? match.nodeId : undefined;
    } catch {
      return undefined;
    }
  };
}

export function createSyncServing(options: SyncServingOptions, deps: SyncServingDeps): SyncServing {
  const log = deps.log.child({ module: 'sync' });
  const { paths } = options;
  const ttlMs = options.manifestTtlMs ?? DEFAULT_MANIFEST_TTL_MS;
  const walker: TreeWalker = createTreeWalker(log);
  const unitCache: UnitCache = createUnitCache(walker, log, { ttlMs, ...(options.maxWatches === undefined ? {} : { maxWatches: options.maxWatches }) });
  const views = new Map<string, RelayView>();
  /** the views served before the current one, newest first: bases for deltas */
  const history = new Map<string, RelayView[]>();
  const computing = new Map<string, Promise<RelayView>>();
  let nodesTree: NodesTree | undefined;
  /** bumped when the nodes tree object changes: node units' filters depend on it */
  let treeVersion = 0;

  async function compute(relayId: string, previous: RelayView | undefined, withOwn: boolean): Promise<RelayView> {
    const started = Date.now();
    await unitCache.settle();
    if (previous?.stale === true) unitCache.invalidate();
    const nodesLoadedAt = deps.nodes.status().loadedAt;
    const tree = await loadNodesTree(paths.nodesListFile, nodesTree);
    if (tree !== nodesTree) treeVersion += 1;
    nodesTree = tree;
    const variant = String(treeVersion);
    const segments = shareSegments(tree, deps.nodes.myId, relayId);
    if (segments === undefined) {
      throw new RelayError('RELAY_ERR_AUTH_CERTIFICATE', `node ${relayId} is not a relay below this one in the nodes list`);
    }
    const entries: ManifestEntry[] = [];
    const blobs = new Map<string, BlobSource>();
    const walks: Walked[] = [];
    const add = (walked: Walked, same = true): void => {
      if (same) walks.push(walked);
      for (const entry of walked.entries) entries.push(entry);
      for (const file of walked.files) {
        if (!blobs.has(file.entry.sha256)) blobs.set(file.entry.sha256, { kind: 'file', absolute: file.absolute, ino: file.ino, size: file.size, mtimeNs: file.mtimeNs });
      }
    };

    // share/<node>: below a node directory, share/ only lists the nodes that node serves (recursively)
    const shareRoot = join(paths.policiesDirectory, ...segments);
    const nodeFilter =
      (nodeId: string): SubtreeFilter =>
      (inside) => {
        // inside = path segments below the node directory: [] the node dir, ['share'], ['share', X], …
        let owner = nodeId;
        let index = 0;
        while (index + 1 < inside.length && inside[index] === 'share') {
          owner = inside[index + 1] ?? owner;
          index += 2;
        }
        if (index === inside.length - 1 && inside[index] === 'share') return new Set(tree.children.get(owner) ?? []);
        return undefined;
      };
    for (const child of tree.children.get(relayId) ?? []) {
      if (!isSafeSegment(child) || child === COMMON_NAME) continue;
      add(await unitCache.walk(join(shareRoot, child), `share/${child}`, nodeFilter(child), variant));
    }
    // the relay's own policies, beside its nodes' share/ (spec-agentless-node.md §B.1); never in a node's unit
    if (withOwn) add(await unitCache.walk(join(paths.policiesDirectory, ...segments.slice(0, -1), 'rules', 'cfengine-community'), OWN_POLICIES_UNIT));
    add(await unitCache.walk(join(paths.policiesDirectory, COMMON_NAME), COMMON_NAME));
    add(await unitCache.walk(paths.sharedFolderPath, 'shared-folder'));
    const sharedFilesRoot = join(paths.sharedFilesPath, ...segments.map((s, i) => (i % 2 === 1 ? 'shared-files' : s)));
    const sharedFiles = await unitCache.walk(sharedFilesRoot, 'shared-files');
    // the walked root itself is not a unit: each directory directly in it is one; files directly in it are left out
    walks.push(sharedFiles);
    add({
      entries: sharedFiles.entries.filter((e) => e.path !== 'shared-files' && (e.kind === 'd' || e.path.indexOf('/', 'shared-files/'.length) >= 0)),
      files: sharedFiles.files.filter((f) => f.entry.path.indexOf('/', 'shared-files/'.length) >= 0),
      directories: sharedFiles.directories,
    }, false);

    const certsMtimeMs = await mtimeMsOf(paths.nodesCertsFile);
    if (
      previous !== undefined &&
      !previous.stale &&
      previous.treeVersion === treeVersion &&
      previous.certsMtimeMs === certsMtimeMs &&
      previous.nodesLoadedAt === nodesLoadedAt &&
      previous.walks.length === walks.length &&
      previous.walks.every((walked, index) => walked === walks[index])
    ) {
      return previous;
    }

    const descendants = descendantsOf(tree, relayId);
    const generated = async (name: string, data: Buffer, mtimeMs: number): Promise<void> => {
      const sha256 = createHash('sha256').update(data).digest('hex');
      entries.push({ kind: 'f', path: name, sha256, size: data.length, mode: GENERATED_FILE_MODE, mtimeMs });
      blobs.set(sha256, { kind: 'buffer', data });
    };
    await generated(NODES_LIST_UNIT, nodesListFor(tree, descendants), tree.mtimeMs);
    const certificates = descendants.flatMap((id) => deps.nodes.certificatesOf(id).map((c: X509Certificate) => c.toString().trimEnd() + '\n'));
    await generated(NODES_CERTS_UNIT, Buffer.from(certificates.join(''), 'latin1'), certsMtimeMs);

    const manifest = serializeManifest(entries);
    const files = entries.filter((e) => e.kind === 'f').length;
    log.debug({ relay: relayId, generation: manifest.generation, files, blobs: blobs.size, ms: Date.now() - started }, 'sync manifest computed');
    return { manifest, walks, treeVersion, certsMtimeMs, blobs, computedAt: Date.now(), nodesLoadedAt, gzip: undefined, unitDigests: undefined, stale: false };
  }

  /** fresh: as the trees are now (units nothing changed in are not walked again); otherwise the last view (blob requests follow their manifest) */
  /** a relay that asks for its own policies and one that does not get two views (and two generations) */
  function viewFor(relayId: string, fresh: boolean, withOwn: boolean): Promise<RelayView> {
    const key = withOwn ? `${relayId}\0own` : relayId;
    const cached = views.get(key);
    if (cached !== undefined && !fresh) return Promise.resolve(cached);
    const inFlight = computing.get(key);
    if (inFlight !== undefined) return inFlight;
    const run = compute(relayId, cached, withOwn)
      .then((view) => {
        if (cached !== undefined && cached !== view && cached.manifest.generation !== view.manifest.generation) {
          history.set(key, [cached, ...(history.get(key) ?? [])].slice(0, DELTA_BASES));
        }
        views.set(key, view);
        return view;
      })
      .finally(() => computing.delete(key));
    computing.set(key, run);
    return run;
  }

  /** `?own=1`: the puller wants its own policies in the manifest */
  const wantsOwn = (request: FastifyRequest): boolean => (request.query as { own?: unknown } | undefined)?.own === '1';

  const digestsOf = (view: RelayView): Map<string, string> => {
    view.unitDigests ??= new Map([...unitsOf(view.manifest).values()].map((unit) => [unit.name, unit.digest]));
    return view.unitDigests;
  };

  /**
   * The change from `base` to `view` (manifest.ts DELTA_HEADER): the units to drop, the entries of the units
   * that changed, then the new blobs of those units as a batch (up to DELTA_INLINE_*; the puller asks for
   * any other one). Undefined when `base` is not among the last generations served to this relay.
   */
  function delta(viewKey: string, baseGeneration: string, view: RelayView): AsyncGenerator<Buffer> | undefined {
    const base = history.get(viewKey)?.find((v) => v.manifest.generation === baseGeneration);
    if (base === undefined) return undefined;
    const before = digestsOf(base);
    const after = digestsOf(view);
    const dropped = [...before.keys()].filter((name) => after.get(name) !== before.get(name));
    const changed = new Set([...after.keys()].filter((name) => before.get(name) !== after.get(name)));
    const entries = view.manifest.entries.filter((entry) => changed.has(unitNameOf(entry.path)));
    const inline = new Set<string>();
    let inlineBytes = 0;
    for (const entry of entries) {
      if (entry.kind !== 'f' || base.blobs.has(entry.sha256) || inline.has(entry.sha256)) continue;
      if (inline.size >= DELTA_INLINE_BLOBS || inlineBytes + entry.size > DELTA_INLINE_BYTES) break;
      inline.add(entry.sha256);
      inlineBytes += entry.size;
    }
    const text = serializeDelta(baseGeneration, view.manifest.generation, dropped, entries);
    return (async function* () {
      yield text;
      yield* batch(view, [...inline]);
    })();
  }

  function fail(reply: FastifyReply, error: unknown): FastifyReply {
    const relayError = isRelayError(error) ? error : new RelayError('RELAY_ERR_INTERNAL', messageOf(error), { cause: error });
    if (relayError.status >= 500) log.error({ code: relayError.code, err: relayError.message }, 'sync request failed');
    return reply.code(relayError.status).type(TEXT).send(`${relayError.code}: ${relayError.message}\n`);
  }

  function requester(request: FastifyRequest): string {
    const relayId = deps.requesterOf(request);
    if (relayId === undefined) {
      throw new RelayError('RELAY_ERR_AUTH_CERTIFICATE', 'data sync needs the client certificate of a known relay');
    }
    return relayId;
  }

  /** opens a file blob if it is still what was hashed; undefined otherwise (and the view is marked stale) */
  async function openBlob(view: RelayView, source: Extract<BlobSource, { kind: 'file' }>): Promise<FileHandle | undefined> {
    let handle: FileHandle | undefined;
    try {
      handle = await open(source.absolute, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK);
      const s = await handle.stat({ bigint: true });
      if (s.isFile() && s.ino === source.ino && s.size === source.size && s.mtimeNs === source.mtimeNs) return handle;
    } catch {
      // vanished: answered as missing
    }
    await handle?.close().catch(() => undefined);
    view.stale = true;
    return undefined;
  }

  /** the frames of a batch, reading each file as the response drains (no file is held in memory) */
  async function* batch(view: RelayView, hashes: readonly string[]): AsyncGenerator<Buffer> {
    for (const sha256 of hashes) {
      const source = view.blobs.get(sha256);
      if (source === undefined) {
        yield missingFrame(sha256);
        continue;
      }
      if (source.kind === 'buffer') {
        yield blobHeader(sha256, source.data.length);
        yield source.data;
        continue;
      }
      const handle = await openBlob(view, source);
      if (handle === undefined) {
        yield missingFrame(sha256);
        continue;
      }
      try {
        yield blobHeader(sha256, Number(source.size));
        if (source.size === 0n) continue;
        const check = createHash('sha256');
        let sent = 0n;
        for await (const chunk of handle.createReadStream({ autoClose: false, start: 0, end: Number(source.size) - 1, highWaterMark: 256 * 1024 })) {
          const buffer = chunk as Buffer;
          check.update(buffer);
          sent += BigInt(buffer.length);
          yield buffer;
        }
        if (sent !== source.size) throw new RelayError('RELAY_ERR_FILE_CHANGED', `${source.absolute} shrank while sent`);
        if (check.digest('hex') !== sha256) {
          // rewritten in place with the same size and mtime: the client rejects it; hash it again next time
          log.warn({ path: source.absolute }, 'file changed while served, manifest will be recomputed');
          walker.forget(source.absolute);
          view.stale = true;
        }
      } finally {
        await handle.close().catch(() => undefined);
      }
    }
    yield END_FRAME;
  }

  /** Accept-Encoding lists `encoding` without q=0 */
  const accepts = (request: FastifyRequest, encoding: string): boolean =>
    String(request.headers['accept-encoding'] ?? '')
      .split(',')
      .some((token) => {
        const [name = '', ...parameters] = token.split(';').map((part) => part.trim().toLowerCase());
        return name === encoding && !parameters.some((p) => /^q=0(\.0*)?$/.test(p));
      });

  const routes: FastifyPluginAsync = async (app) => {
    app.addHook('onClose', async () => unitCache.close());
    app.get('/manifest', async (request, reply) => {
      let relayId: string;
      let view: RelayView;
      try {
        relayId = requester(request);
        view = await viewFor(relayId, true, wantsOwn(request));
      } catch (error) {
        if (isRelayError(error) && error.status === 403) log.info({ client: request.socket.remoteAddress, err: error.message }, 'sync manifest refused');
        return fail(reply, error);
      }
      const etag = `"${view.manifest.generation}"`;
      reply.header('etag', etag).header('cache-control', 'no-cache').header('vary', 'accept-encoding');
      const ifNoneMatch = request.headers['if-none-match'];
      if (typeof ifNoneMatch === 'string' && ifNoneMatch.split(',').some((tag) => tag.trim().replace(/^W\//, '') === etag)) {
        return reply.code(304).send();
      }
      const base = (request.query as { base?: unknown } | undefined)?.base;
      const changes = typeof base === 'string' && isSha256Hex(base) ? delta(wantsOwn(request) ? `${relayId}\0own` : relayId, base, view) : undefined;
      if (changes !== undefined) {
        const frames = Readable.from(changes, { objectMode: false });
        reply.type('application/octet-stream');
        if (!accepts(request, 'gzip')) return reply.send(frames);
        const gzip = createGzip();
        pipeline(frames, gzip, () => undefined);
        return reply.header('content-encoding', 'gzip').send(gzip);
      }
      reply.type(TEXT);
      if (accepts(request, 'gzip')) {
        view.gzip ??= gzipSync(view.manifest.text);
        return reply.header('content-encoding', 'gzip').send(view.gzip);
      }
      return reply.send(view.manifest.text);
    });

    app.post('/blobs', { bodyLimit: 4 * 1024 * 1024 }, async (request, reply) => {
      let view: RelayView;
      let hashes: string[];
      try {
        const relayId = requester(request);
        const body = request.body as { hashes?: unknown } | undefined;
        if (!Array.isArray(body?.hashes) || body.hashes.length > MAX_BLOBS_PER_BATCH || !body.hashes.every((h) => typeof h === 'string' && isSha256Hex(h))) {
          throw new RelayError('RELAY_ERR_BAD_REQUEST', `expected {"hashes": [at most ${MAX_BLOBS_PER_BATCH} lowercase sha256 hex strings]}`);
        }
        hashes = body.hashes as string[];
        view = await viewFor(relayId, false, wantsOwn(request));
      } catch (error) {
        return fail(reply, error);
      }
      const frames = Readable.from(batch(view, hashes), { objectMode: false });
      reply.type('application/octet-stream').header('cache-control', 'no-store');
      if (!accepts(request, 'gzip')) return reply.send(frames);
      const gzip = createGzip();
      pipeline(frames, gzip, () => undefined);
      return reply.header('content-encoding', 'gzip').send(gzip);
    });

    app.get<{ Params: { sha256: string } }>('/blobs/:sha256', async (request, reply) => {
      let view: RelayView;
      try {
        const relayId = requester(request);
        if (!isSha256Hex(request.params.sha256)) throw new RelayError('RELAY_ERR_BAD_REQUEST', 'expected a lowercase sha256 hex');
        view = await viewFor(relayId, false, wantsOwn(request));
      } catch (error) {
        return fail(reply, error);
      }
      const source = view.blobs.get(request.params.sha256);
      const handle = source?.kind === 'file' ? await openBlob(view, source) : undefined;
      if (source === undefined || (source.kind === 'file' && handle === undefined)) {
        return fail(reply, new RelayError('RELAY_ERR_NOT_FOUND', `no blob ${request.params.sha256} in this relay's manifest`));
      }
      reply.type('application/octet-stream').header('etag', `"${request.params.sha256}"`);
      if (source.kind === 'buffer') return reply.send(source.data);
      if (handle === undefined || source.size === 0n) {
        await handle?.close();
        return reply.send(Buffer.alloc(0));
      }
      return reply.header('content-length', String(source.size)).send(handle.createReadStream({ start: 0, end: Number(source.size) - 1 }));
    });
  };

  return {
    routes,
    manifestFor: async (relayId, withOwn = false) => (await viewFor(relayId, true, withOwn)).manifest,
    invalidate() {
      views.clear();
      history.clear();
    },
  };
}

/** the face's plugin: `{ options, deps }` → the routes (one cache per registration) */
export const syncServingRoutes: SyncServingRoutes = async (app, { options, deps }) => {
  await app.register(createSyncServing(options, deps).routes);
};
