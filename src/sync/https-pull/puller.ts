// Pulling side of the data sync (issue 7): every `frequency`, and at once on trigger (system/reload,
// POST /rudder/relay-api/1/sync):
//   1. GET manifest with If-None-Match: the generation applied last → 304: done, one request;
//   2. blobs neither in the store nor found on disk → POST blobs in batches, each verified and fsynced;
//      a blob failing verification is fetched again (3 attempts); a blob no longer available → new manifest;
//   3. changed units rebuilt from hard links and switched one by one (install.ts), then units gone
//      upstream removed, then the applied manifest saved, the store pruned, the nodes registry reloaded.
// Nothing is switched before every blob is in the store, so an interrupted pull leaves every unit as it
// was, and the next pull only fetches what the store lacks.

import { mkdir, readdir, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { RelayError, isRelayError, messageOf, relayError } from '../../errors.js';
import type { PeerClient, PeerResponse } from '../../upstream/index.js';
import { createBlobStore, type BlobStore } from '../lib/blob-store.js';
import { MAX_BLOBS_PER_BATCH, readFrames } from '../lib/frames.js';
import { forEachLimit, isErrno, writeFileAtomically } from '../lib/fs-util.js';
import type { SyncPuller, SyncPullerDeps, SyncPullerOptions } from '../index.js';
import { PullAborted, createPullLoop, type PullDone } from '../lib/pull-loop.js';
import { exists, installDirectory, installFile, localPathOf, recover, removeUnit, targetOf } from '../lib/install.js';
import {
  COMMON_NAME,
  DELTA_MAGIC,
  MAX_DELTA_HEADER,
  applyDelta,
  parseDeltaHeader,
  NODES_CERTS_UNIT,
  NODES_LIST_UNIT,
  OWN_POLICIES_UNIT,
  isFileUnit,
  isSafeSegment,
  parseManifest,
  unitsOf,
  type Manifest,
  type ManifestFile,
  type ManifestUnit,
} from '../lib/manifest.js';


export const DEFAULT_SYNC_BASE_PATH = '/rudder/relay-api/sync';
const STATE_FILE = 'sync-state.json';
const MANIFEST_FILE = 'sync-manifest';
const STATE_FORMAT = 1;
const MAX_MANIFEST_BYTES = 1024 * 1024 * 1024;
const BLOB_ATTEMPTS = 3;
const MANIFEST_ROUNDS = 3;
const PROGRESS_EVERY_MS = 5_000;
const INSTALL_CONCURRENCY = 4;

interface SavedState {
  readonly format: number;
  readonly generation: string;
  readonly appliedAt: string;
}

export function createSyncPuller(options: SyncPullerOptions, deps: SyncPullerDeps): SyncPuller {
  const log = deps.log.child({ module: 'sync' });
  const { paths } = options;
  const basePath = options.basePath ?? DEFAULT_SYNC_BASE_PATH;
  const pullCommon = options.pullCommon ?? true;
  const store: BlobStore = createBlobStore(join(paths.stateDirectory, 'blobs'));
  // the relay's own policies are asked for (`own=1`) only when someone reads them here
  const ownSink = paths.ownInputsDirectory !== undefined ? deps.ownPolicies : undefined;
  const ownQuery = ownSink === undefined ? '' : 'own=1';

  let applied: Manifest | undefined;
  let ready: Promise<void> | undefined;
  const loop = createPullLoop({
    frequencyMs: options.frequencyMs,
    log,
    counters: deps.counters,
    prepare: () => prepare(),
    pull: (signal) => pull(signal),
    generation: () => applied?.generation,
  });
  const { state } = loop;

  /** once per process: directories, leftovers of a crash, the manifest applied last */
  function prepare(): Promise<void> {
    ready ??= (async () => {
      for (const directory of [paths.stateDirectory, paths.policiesDirectory, paths.sharedFilesPath, dirname(paths.sharedFolderPath), dirname(paths.nodesListFile), dirname(paths.nodesCertsFile)]) {
        await mkdir(directory, { recursive: true });
      }
      if (paths.ownInputsDirectory !== undefined) await mkdir(dirname(paths.ownInputsDirectory), { recursive: true });
      await store.init();
      const actions = await recover(paths);
      if (actions.length > 0) log.warn({ actions }, 'sync: cleaned up after an interrupted switch');
      try {
        const saved = JSON.parse(await readFile(join(paths.stateDirectory, STATE_FILE), 'utf8')) as Partial<SavedState>;
        const manifest = parseManifest(await readFile(join(paths.stateDirectory, MANIFEST_FILE)));
        if (saved.format === STATE_FORMAT && saved.generation === manifest.generation) {
          applied = manifest;
          state.lastSuccessAt = saved.appliedAt;
        }
      } catch (error) {
        if (!isErrno(error, 'ENOENT')) log.warn({ err: messageOf(error) }, 'sync state unreadable, next pull starts afresh');
      }
    })().catch((error: unknown) => {
      ready = undefined;
      throw error;
    });
    return ready;
  }

  async function request(client: PeerClient, signal: AbortSignal, method: 'GET' | 'POST', path: string, body?: string, headers?: Record<string, string>): Promise<PeerResponse> {
    if (signal.aborted) throw new PullAborted();
    let response: PeerResponse;
    try {
      response = await client.request(method, `${basePath}${path}`, body, headers);
    } catch (error) {
      if (signal.aborted) throw new PullAborted();
      throw new RelayError('RELAY_ERR_UPSTREAM_UNAVAILABLE', `sync ${method} ${path}: ${messageOf(error)}`, { cause: error });
    }
    const onAbort = (): void => {
      response.body.destroy(new PullAborted());
    };
    signal.addEventListener('abort', onAbort, { once: true });
    response.body.once('close', () => signal.removeEventListener('abort', onAbort));
    if (response.status >= 400 && response.status !== 304) {
      const text = (await response.body.text().catch(() => '')).trim().slice(0, 300);
      const code = response.status === 408 || response.status === 429 || response.status >= 500 ? 'RELAY_ERR_UPSTREAM_UNAVAILABLE' : 'RELAY_ERR_UPSTREAM_REFUSED';
      throw new RelayError(code, `sync ${method} ${path}: upstream answered ${response.status}${text === '' ? '' : ` (${text})`}`);
    }
    return response;
  }

  /** a response body, gunzipped when it starts with the gzip magic (PeerResponse carries no headers) */
  async function* decoded(body: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
    const iterator = body[Symbol.asyncIterator]();
    const first = await iterator.next();
    if (first.done === true) return;
    const rest = async function* (): AsyncGenerator<Buffer> {
      yield first.value;
      for (let next = await iterator.next(); next.done !== true; next = await iterator.next()) yield next.value;
    };
    if (first.value[0] !== 0x1f || first.value[1] !== 0x8b) {
      yield* rest();
      return;
    }
    const gunzipStream = createGunzip();
    const source = Readable.from(rest());
    source.on('error', (error) => gunzipStream.destroy(error));
    source.pipe(gunzipStream);
    for await (const chunk of gunzipStream) yield chunk as Buffer;
  }

  interface FetchedManifest {
    readonly manifest: Manifest;
    /** a delta from the applied generation (only the changed units came), with some of their blobs */
    readonly delta: boolean;
    readonly inlineBlobs: number;
    readonly inlineBytes: number;
  }

  /**
   * The manifest; with `base` (the generation applied here), the upstream may answer a delta (manifest.ts)
   * rebuilt here against the applied manifest. 'full' asks the caller to fetch the whole manifest: the delta
   * did not rebuild (a bug or a race upstream, never trusted).
   */
  async function fetchManifest(client: PeerClient, signal: AbortSignal, base: Manifest | undefined): Promise<FetchedManifest | 'not-modified' | 'full'> {
    const parameters = [...(base === undefined ? [] : [`base=${base.generation}`]), ...(ownQuery === '' ? [] : [ownQuery])];
    const query = parameters.length === 0 ? '' : `?${parameters.join('&')}`;
    const response = await request(client, signal, 'GET', `/manifest${query}`, undefined, {
      'accept-encoding': 'gzip',
      ...(base === undefined ? {} : { 'if-none-match': `"${base.generation}"` }),
    });
    if (response.status === 304) {
      await response.body.dump();
      return 'not-modified';
    }
    if (response.status !== 200) {
      await response.body.dump();
      throw new RelayError('RELAY_ERR_UPSTREAM_REFUSED', `sync manifest: unexpected status ${response.status}`);
    }
    const iterator = decoded(response.body as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
    const chunks: Buffer[] = [];
    let size = 0;
    /** one more decoded chunk into `chunks`; false at the end */
    const more = async (): Promise<boolean> => {
      const next = await iterator.next();
      if (next.done === true) return false;
      size += next.value.length;
      if (size > MAX_MANIFEST_BYTES) throw relayError('RELAY_ERR_SYNC_FORMAT', `manifest larger than ${MAX_MANIFEST_BYTES} bytes`);
      chunks.push(next.value);
      return true;
    };
    const joined = (): Buffer => {
      const all = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
      chunks.length = 0;
      if (all.length > 0) chunks.push(all);
      return all;
    };
    try {
      while (size < DELTA_MAGIC.length && (await more()));
      let head = joined();
      if (base === undefined || head.subarray(0, DELTA_MAGIC.length).toString('latin1') !== DELTA_MAGIC) {
        while (await more());
        try {
          return { manifest: parseManifest(joined()), delta: false, inlineBlobs: 0, inlineBytes: 0 };
        } catch (error) {
          throw new RelayError('RELAY_ERR_UPSTREAM_REFUSED', `sync manifest unusable: ${messageOf(error)}`, { cause: error });
        }
      }
      for (let newline = head.indexOf(0x0a); newline < 0; newline = head.indexOf(0x0a)) {
        if (head.length > MAX_DELTA_HEADER || !(await more())) throw relayError('RELAY_ERR_SYNC_FORMAT', 'delta header truncated');
        head = joined();
      }
      const newline = head.indexOf(0x0a);
      const header = parseDeltaHeader(head.subarray(0, newline).toString('latin1'));
      while (head.length < newline + 1 + header.length) {
        if (!(await more())) throw relayError('RELAY_ERR_SYNC_FORMAT', 'delta truncated');
        head = joined();
      }
      let manifest: Manifest;
      try {
        manifest = applyDelta(base, header, head.subarray(newline + 1, newline + 1 + header.length));
      } catch (error) {
        response.body.destroy();
        log.warn({ err: messageOf(error) }, 'sync: the upstream delta is unusable, fetching the whole manifest');
        return 'full';
      }
      // the blobs sent along: verified into the store like any batch; what is missing is asked for later
      const expected = new Set<string>();
      for (const entry of manifest.entries) if (entry.kind === 'f') expected.add(entry.sha256);
      let inlineBlobs = 0;
      let inlineBytes = 0;
      const receiver = store.receiver({
        rejected(sha256) {
          state.rejectedBlobs += 1;
          log.warn({ blob: sha256 }, 'sync: blob failed verification, fetching it again');
        },
        unavailable: () => undefined,
        received(_sha256, bytes) {
          inlineBlobs += 1;
          inlineBytes += bytes;
        },
      });
      const rest = head.subarray(newline + 1 + header.length);
      chunks.length = 0;
      async function* frames(): AsyncGenerator<Buffer> {
        if (rest.length > 0) yield rest;
        for (let next = await iterator.next(); next.done !== true; next = await iterator.next()) yield next.value;
      }
      try {
        await readFrames(frames(), {
          blob(sha256, blobSize) {
            if (!expected.has(sha256)) throw relayError('RELAY_ERR_SYNC_FORMAT', `upstream sent blob ${sha256} that is in no changed unit`);
            return receiver.blob(sha256, blobSize);
          },
          missing: (sha256) => receiver.missing(sha256),
        });
      } catch (error) {
        await receiver.abandon();
        throw error;
      }
      await receiver.flush();
      return { manifest, delta: true, inlineBlobs, inlineBytes };
    } catch (error) {
      response.body.destroy();
      if (signal.aborted) throw new PullAborted();
      if (isRelayError(error) && error.code !== 'RELAY_ERR_SYNC_FORMAT') throw error;
      if (isErrno(error, 'ENOSPC', 'EIO', 'EACCES', 'EROFS')) throw new RelayError('RELAY_ERR_SPOOL_WRITE', `sync: cannot store blobs: ${messageOf(error)}`, { cause: error });
      throw new RelayError('RELAY_ERR_UPSTREAM_UNAVAILABLE', `sync manifest: ${messageOf(error)}`, { cause: error });
    }
  }

  interface Fetched {
    blobs: number;
    bytes: number;
    requests: number;
    unavailable: Set<string>;
  }

  async function fetchBlobs(client: PeerClient, signal: AbortSignal, wanted: Map<string, number>): Promise<Fetched> {
    const result: Fetched = { blobs: 0, bytes: 0, requests: 0, unavailable: new Set() };
    const totalFiles = wanted.size;
    let totalBytes = 0;
    for (const size of wanted.values()) totalBytes += size;
    if (totalFiles === 0) return result;
    log.info({ files: totalFiles, bytes: totalBytes }, 'sync: fetching blobs');
    const progress = setInterval(() => {
      log.info({ files: `${result.blobs}/${totalFiles}`, bytes: `${result.bytes}/${totalBytes}` }, 'sync progress');
    }, PROGRESS_EVERY_MS);
    progress.unref();
    try {
      let remaining = [...wanted.keys()];
      for (let attempt = 1; remaining.length > 0; attempt += 1) {
        if (attempt > BLOB_ATTEMPTS) {
          throw new RelayError('RELAY_ERR_UPSTREAM_UNAVAILABLE', `sync: ${remaining.length} blob(s) failed verification ${BLOB_ATTEMPTS} times (first ${remaining[0]})`);
        }
        const rejected = new Set<string>();
        for (let start = 0; start < remaining.length; start += MAX_BLOBS_PER_BATCH) {
          const hashes = remaining.slice(start, start + MAX_BLOBS_PER_BATCH);
          const asked = new Set(hashes);
          result.requests += 1;
          const response = await request(client, signal, 'POST', ownQuery === '' ? '/blobs' : `/blobs?${ownQuery}`, JSON.stringify({ hashes }), {
            'content-type': 'application/json',
            'accept-encoding': 'gzip',
          });
          const receiver = store.receiver({
            rejected(sha256) {
              state.rejectedBlobs += 1;
              log.warn({ blob: sha256 }, 'sync: blob failed verification, fetching it again');
              rejected.add(sha256);
            },
            unavailable(sha256) {
              result.unavailable.add(sha256);
            },
            received(sha256, size) {
              if (!asked.has(sha256)) return;
              asked.delete(sha256);
              result.blobs += 1;
              result.bytes += size;
            },
          });
          try {
            await readFrames(decoded(response.body as AsyncIterable<Buffer>), {
              blob(sha256, size) {
                if (!wanted.has(sha256)) throw relayError('RELAY_ERR_SYNC_FORMAT', `upstream sent blob ${sha256} that was not asked for`);
                return receiver.blob(sha256, size);
              },
              missing: (sha256) => receiver.missing(sha256),
            });
          } catch (error) {
            response.body.destroy();
            // what was verified so far stays in the store for the next pull
            await receiver.abandon();
            if (signal.aborted) throw new PullAborted();
            if (isRelayError(error) && error.code !== 'RELAY_ERR_SYNC_FORMAT') throw error;
            if (isErrno(error, 'ENOSPC', 'EIO', 'EACCES', 'EROFS')) throw new RelayError('RELAY_ERR_SPOOL_WRITE', `sync: cannot store blobs: ${messageOf(error)}`, { cause: error });
            throw new RelayError('RELAY_ERR_UPSTREAM_UNAVAILABLE', `sync blobs: ${messageOf(error)}`, { cause: error });
          }
          await receiver.flush();
          // neither sent nor reported missing nor rejected: the upstream skipped it, ask again
          for (const sha256 of asked) if (!result.unavailable.has(sha256)) rejected.add(sha256);
        }
        remaining = [...rejected];
      }
    } finally {
      clearInterval(progress);
    }
    return result;
  }

  function unitsToInstall(manifest: Manifest): Map<string, ManifestUnit> {
    const units = unitsOf(manifest);
    if (!pullCommon) units.delete(COMMON_NAME);
    if (ownSink === undefined) units.delete(OWN_POLICIES_UNIT);
    return units;
  }

  async function apply(manifest: Manifest, signal: AbortSignal): Promise<{ changed: string[]; removed: string[] }> {
    const units = unitsToInstall(manifest);
    const previous = applied === undefined ? new Map<string, ManifestUnit>() : unitsToInstall(applied);
    const changed: string[] = [];
    const toInstall: ManifestUnit[] = [];
    for (const unit of units.values()) {
      const target = targetOf(unit.name, paths);
      if (previous.get(unit.name)?.digest === unit.digest && (await exists(target.destination))) continue;
      toInstall.push(unit);
    }
    // directories first, then nodescerts.pem, then nodeslist.json: a node appears once its policies are there
    const rank = (name: string): number => (name === NODES_LIST_UNIT ? 2 : name === NODES_CERTS_UNIT ? 1 : 0);
    toInstall.sort((a, b) => rank(a.name) - rank(b.name));
    // the relay's own policies first, checked before the switch; refused, they are logged and the rest goes on
    const own = toInstall.find((u) => u.name === OWN_POLICIES_UNIT);
    if (own !== undefined && ownSink !== undefined) {
      try {
        await installDirectory(targetOf(own.name, paths), own.entries, store, (build) => ownSink.check(build));
        changed.push(own.name);
      } catch (error) {
        if (!isRelayError(error) || error.code !== 'RELAY_ERR_OWN_POLICIES') throw error;
        ownSink.rejected(error);
      }
    }
    const directories = toInstall.filter((u) => !isFileUnit(u.name) && u.name !== OWN_POLICIES_UNIT);
    let next = 0;
    const worker = async (): Promise<void> => {
      for (let unit = directories[next++]; unit !== undefined; unit = directories[next++]) {
        if (signal.aborted) throw new PullAborted();
        await installDirectory(targetOf(unit.name, paths), unit.entries, store);
        changed.push(unit.name);
      }
    };
    await Promise.all(Array.from({ length: INSTALL_CONCURRENCY }, worker));
    for (const unit of toInstall.filter((u) => isFileUnit(u.name))) {
      if (signal.aborted) throw new PullAborted();
      const file = unit.entries[0] as ManifestFile;
      await installFile(targetOf(unit.name, paths), file, store);
      changed.push(unit.name);
    }

    // purge: /var/rudder/share/ mirrors upstream (everything else in it goes, except common/, which may
    // have another source); elsewhere only what an earlier sync installed is removed
    const removed: string[] = [];
    const gone = new Set<string>();
    // own policies no longer sent (an older upstream): the ones in force stay
    for (const name of previous.keys()) if (!units.has(name) && !isFileUnit(name) && name !== OWN_POLICIES_UNIT) gone.add(name);
    for (const name of await readdir(paths.policiesDirectory).catch(() => [] as string[])) {
      if (isSafeSegment(name) && name !== COMMON_NAME && !units.has(`share/${name}`)) gone.add(`share/${name}`);
    }
    for (const name of gone) {
      if (signal.aborted) throw new PullAborted();
      await removeUnit(targetOf(name, paths));
      removed.push(name);
    }
    return { changed, removed };
  }

  async function saveState(manifest: Manifest): Promise<void> {
    await writeFileAtomically(join(paths.stateDirectory, MANIFEST_FILE), manifest.text, { mode: 0o600 });
    const saved: SavedState = { format: STATE_FORMAT, generation: manifest.generation, appliedAt: new Date().toISOString() };
    await writeFileAtomically(join(paths.stateDirectory, STATE_FILE), `${JSON.stringify(saved)}\n`, { mode: 0o600 });
  }

  async function pull(signal: AbortSignal): Promise<PullDone> {
    await prepare();
    const client = deps.upstream();
    if (client === undefined) {
      throw new RelayError('RELAY_ERR_UPSTREAM_UNAVAILABLE', 'sync: no usable upstream (host or pinned certificate missing)');
    }
    let requests = 0;
    let useBase = true;
    for (let round = 1; round <= MANIFEST_ROUNDS; round += 1) {
      requests += 1;
      const fetchedManifest = await fetchManifest(client, signal, useBase ? applied : undefined);
      if (fetchedManifest === 'not-modified') return { unchanged: true, requests, files: 0, bytes: 0, changedUnits: 0 };
      if (fetchedManifest === 'full') {
        useBase = false;
        round -= 1;
        continue;
      }
      useBase = false;
      const { manifest } = fetchedManifest;

      // what the store lacks, in the units that changed (or are missing here); a file already on disk with
      // the right content is taken as is. Unchanged units keep their blobs in the store (collect keeps them).
      const previousUnits = applied === undefined ? new Map<string, ManifestUnit>() : unitsToInstall(applied);
      const files: ManifestFile[] = [];
      const allFiles: ManifestFile[] = [];
      for (const unit of unitsToInstall(manifest).values()) {
        const unitFiles = unit.entries.filter((e): e is ManifestFile => e.kind === 'f');
        allFiles.push(...unitFiles);
        if (previousUnits.get(unit.name)?.digest === unit.digest && (await exists(targetOf(unit.name, paths).destination))) continue;
        files.push(...unitFiles);
      }
      const byHash = new Map<string, { size: number; paths: string[] }>();
      for (const file of files) {
        const known = byHash.get(file.sha256);
        if (known === undefined) byHash.set(file.sha256, { size: file.size, paths: [file.path] });
        else if (known.paths.length < 2) known.paths.push(file.path);
      }
      const wanted = new Map<string, number>();
      await forEachLimit(byHash, 32, async ([sha256, { size, paths: candidates }]) => {
        if (await store.has(sha256, size)) return;
        for (const path of candidates) {
          const local = localPathOf(path, paths);
          if (local !== undefined && (await store.adopt(sha256, size, local))) return;
        }
        wanted.set(sha256, size);
      });

      const fetchStarted = Date.now();
      const fetched = await fetchBlobs(client, signal, wanted);
      fetched.blobs += fetchedManifest.inlineBlobs;
      fetched.bytes += fetchedManifest.inlineBytes;
      requests += fetched.requests;
      await store.sync();
      log.debug({ blobs: fetched.blobs, bytes: fetched.bytes, ms: Date.now() - fetchStarted }, 'sync: blobs fetched');
      if (fetched.unavailable.size > 0) {
        log.info({ blobs: fetched.unavailable.size, round }, 'sync: upstream content changed during the pull, fetching a new manifest');
        continue;
      }
      const applyStarted = Date.now();
      const { changed, removed } = await apply(manifest, signal);
      log.debug({ changed: changed.length, removed: removed.length, ms: Date.now() - applyStarted }, 'sync: units switched');
      await saveState(manifest);
      applied = manifest;
      const collected = await store.collect(allFiles);
      if (collected > 0) log.debug({ blobs: collected }, 'sync: unused blobs removed');
      if (changed.includes(OWN_POLICIES_UNIT)) {
        log.info({ event: 'own_policies_pulled', inputs: paths.ownInputsDirectory }, 'sync: own policies pulled');
        try {
          await ownSink?.installed();
        } catch (error) {
          log.error({ code: isRelayError(error) ? error.code : 'RELAY_ERR_INTERNAL', err: messageOf(error) }, 'sync: own policies reload after sync failed');
        }
      }
      if (changed.includes(NODES_LIST_UNIT) || changed.includes(NODES_CERTS_UNIT)) {
        try {
          await deps.onNodesChanged();
        } catch (error) {
          log.error({ code: isRelayError(error) ? error.code : 'RELAY_ERR_INTERNAL', err: messageOf(error) }, 'sync: nodes reload after sync failed');
        }
      }
      return {
        unchanged: false,
        requests,
        files: fetched.blobs,
        bytes: fetched.bytes,
        changedUnits: changed.length + removed.length,
        fields: { changedUnits: changed.length, removedUnits: removed.length },
      };
    }
    throw new RelayError('RELAY_ERR_UPSTREAM_UNAVAILABLE', `sync: upstream content kept changing during ${MANIFEST_ROUNDS} manifest rounds`);
  }

  return loop;
}
