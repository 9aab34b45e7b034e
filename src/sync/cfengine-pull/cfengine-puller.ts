// Pulling side of the data sync when the upstream is a stock Rudder root (issue 7 b): what propagate_promises
// copies with cf-agent (spec-https-front-cfserverd-sync.md §3.2 a–g), pulled with onerelay's CFEngine client
// from cf-serverd (§3.4): TLS with the relay's key, the upstream key pinned, IDENTITY USERNAME=root, several
// connections with requests pipelined (the cfengine module's copy client).
// Per unit (a node directory, the shared folder, a shared-files entry, a library tree): walk upstream (OPENDIR,
// STAT), keep what is already here (same size and mtime, or same size and the server's MD5 says "same": the
// `compare => digest` of Rudder's copy), fetch the rest (GET, then MD5 verify as `verify => true`), build the new
// tree beside the old one with hard links and switch it in (install.ts), so that nothing ever serves a half-updated
// tree; what is gone upstream is gone here. A node directory is not walked at all when its flag file
// `rules/cfengine-community/rudder-promises-generated` and its archives have the size and mtime of the last pull
// (Rudder rewrites the flag on every generation), nor a library tree whose ncf_hash_file did not change.
// An interrupted pull leaves every unit whole (old or new); the next one starts over, reusing what is here.

import { createHash, type KeyObject, type X509Certificate } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { copyFile, link, lstat, mkdir, open, readFile, readdir, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Logger } from 'pino';
import { CfengineClientError, CfengineRefusedError, createCopyClient, makeServerCertificate, type CopyClient, type RemoteStat } from '../../cfengine/index.js';
import { RelayError, isRelayError, messageOf } from '../../errors.js';
import { keyDigests } from '../../identity/index.js';
import type { PeerClient } from '../../upstream/index.js';
import { forEachLimit, isErrno, removeTree, writeFileAtomically } from '../lib/fs-util.js';
import type { OwnPoliciesSink, SyncCounters, SyncPaths, SyncPuller } from '../index.js';
import { PullAborted, createPullLoop } from '../lib/pull-loop.js';
import { buildPathOf, exists, parentsOf, recoverParents, removeUnit, switchDirectory } from '../lib/install.js';
import { fetchLibraryArchive } from './library-archive.js';
import { COMMON_NAME, isSafeSegment } from '../lib/manifest.js';

export const DEFAULT_CFENGINE_PORT = 5309;
const DEFAULT_CONNECTIONS = 16;
const UNIT_CONCURRENCY = 8;
const FILE_CONCURRENCY = 64;
const STATE_FILE = 'cfengine-sync-state.json';
const STATE_FORMAT = 1;
const PROGRESS_EVERY_MS = 5_000;
const VERIFY_ATTEMPTS = 3;

/** the Rudder paths on a root (§3.2), under CfenginePullerOptions.upstreamPrefix */
const RUDDER = {
  share: '/var/rudder/share',
  sharedFolder: '/var/rudder/configuration-repository/shared-files',
  sharedFiles: '/var/rudder/shared-files',
  nodesList: 'rules/cfengine-community/rudder-service-relayd/1.0/relay/nodeslist.json',
  nodesCerts: 'rules/cfengine-community/rudder-service-apache/1.0/apache/nodescerts.pem',
  flag: 'rules/cfengine-community/rudder-promises-generated',
  /** the relay's own policies (T common/1.0/update.st server_inputs), and what says they changed */
  ownInputs: 'rules/cfengine-community',
  ownFlags: ['rudder-promises-generated', 'rudder.json'],
  archives: ['rules/rudder.tar.bz2', 'rules/dsc/rudder.zip'],
  /** §3.2 d–f, each with the file whose change says the tree changed (none for masterfiles) */
  libraries: [
    { path: '/var/rudder/cfengine-community/masterfiles', flag: undefined },
    { path: '/usr/share/ncf/tree', flag: 'ncf_hash_file' },
    { path: '/var/rudder/configuration-repository/ncf', flag: 'ncf_hash_file' },
  ],
} as const;

export interface CfenginePullerOptions {
  readonly paths: SyncPaths;
  readonly myId: string;
  readonly frequencyMs: number;
  /** output.upstream.host, sync.cfengine_port */
  readonly host: string;
  readonly port: number;
  /** the relay's key (its TLS certificate is made from it, as cf-agent's) */
  readonly privateKey: KeyObject;
  /** prepended to every Rudder path on the upstream (sync.cfengine_path_prefix; tests, relocated roots) */
  readonly upstreamPrefix?: string;
  /** the local library roots (cfengine.public_roots): a Rudder library tree is pulled into the root ending with its path */
  readonly libraryRoots?: readonly string[];
  readonly connections?: number;
}

/** the upstream's pinned certificate as the upstream module loads it (upstream/trust.ts `PinnedCertificate`) */
export interface UpstreamPin {
  /** output.upstream.server_certificate_file */
  readonly file: string;
  /** the trusted certificates (several during a rotation), empty when unusable */
  readonly certificates: readonly X509Certificate[];
  /** why it cannot be used, if so */
  readonly problem: string | undefined;
}

export interface CfenginePullerDeps {
  /** the upstream's pinned certificate, asked at each pull: cf-serverd must present one of its keys, and no other */
  readonly upstreamPin: () => UpstreamPin | Promise<UpstreamPin>;
  /** pinned HTTPS client to the upstream (the library archive) */
  readonly upstreamHttps: () => PeerClient | undefined;
  readonly onNodesChanged: () => Promise<void>;
  /** with paths.ownInputsDirectory: the relay's own policies are pulled too (update.st's copy) */
  readonly ownPolicies?: OwnPoliciesSink;
  readonly counters: SyncCounters;
  readonly log: Logger;
}

interface SavedState {
  readonly format: number;
  /** unit → signature of its flag files when it was last installed */
  readonly signatures: Record<string, string>;
  readonly appliedAt?: string;
  readonly libraryEtag?: string;
}

interface RemoteEntry {
  readonly rel: string;
  readonly stat: RemoteStat;
}

interface Progress {
  files: number;
  bytes: number;
  totalFiles: number;
  totalBytes: number;
}

interface UnitResult {
  readonly changed: boolean;
  readonly walked: boolean;
}

/** MD5 of a local file (the digest cf-serverd compares in MD5 requests) */
async function md5Of(path: string): Promise<Buffer> {
  const hash = createHash('md5');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest();
}

export function createCfenginePuller(options: CfenginePullerOptions, deps: CfenginePullerDeps): SyncPuller {
  const log = deps.log.child({ module: 'sync', protocol: 'cfengine' });
  const { paths } = options;
  const prefix = (options.upstreamPrefix ?? '').replace(/\/+$/, '');
  const remote = (path: string): string => `${prefix}${path}`;
  const relayDir = remote(`${RUDDER.share}/${options.myId}`);
  const certificate = makeServerCertificate(options.privateKey);
  const libraries = RUDDER.libraries.flatMap((library) => {
    const local = (options.libraryRoots ?? []).find((root) => root.replace(/\/+$/, '') === library.path || root.replace(/\/+$/, '').endsWith(library.path));
    return local === undefined ? [] : [{ ...library, local: local.replace(/\/+$/, '') }];
  });

  let saved: SavedState = { format: STATE_FORMAT, signatures: {} };
  let ready: Promise<void> | undefined;
  let generation: string | undefined;
  /** the signature of the own policies last refused by the check */
  let refusedOwnSignature: string | undefined;
  const loop = createPullLoop({
    frequencyMs: options.frequencyMs,
    log,
    counters: deps.counters,
    prepare: () => prepare(),
    pull: async (signal) => {
      const result = await pull(signal);
      const changedUnits = result.changedUnits + result.removedUnits;
      return {
        unchanged: changedUnits === 0 && result.files === 0,
        requests: result.requests,
        files: result.files,
        bytes: result.bytes,
        changedUnits,
        fields: { changedUnits: result.changedUnits, removedUnits: result.removedUnits, walkedUnits: result.walkedUnits, skippedUnits: result.skippedUnits },
      };
    },
    generation: () => generation,
  });
  const { state } = loop;

  function prepare(): Promise<void> {
    ready ??= (async () => {
      for (const directory of [paths.stateDirectory, paths.policiesDirectory, paths.sharedFilesPath, dirname(paths.sharedFolderPath), dirname(paths.nodesListFile), dirname(paths.nodesCertsFile)]) {
        await mkdir(directory, { recursive: true });
      }
      const ownParent = paths.ownInputsDirectory === undefined ? [] : [dirname(paths.ownInputsDirectory)];
      for (const directory of ownParent) await mkdir(directory, { recursive: true });
      const actions = await recoverParents([...parentsOf(paths), ...libraries.map((l) => dirname(l.local)), ...ownParent]);
      if (actions.length > 0) log.warn({ actions }, 'sync: cleaned up after an interrupted switch');
      try {
        const read = JSON.parse(await readFile(join(paths.stateDirectory, STATE_FILE), 'utf8')) as Partial<SavedState>;
        if (read.format === STATE_FORMAT && typeof read.signatures === 'object' && read.signatures !== null) {
          saved = { format: STATE_FORMAT, signatures: read.signatures, ...(read.appliedAt === undefined ? {} : { appliedAt: read.appliedAt }), ...(read.libraryEtag === undefined ? {} : { libraryEtag: read.libraryEtag }) };
          state.lastSuccessAt = read.appliedAt;
        }
      } catch (error) {
        if (!isErrno(error, 'ENOENT')) log.warn({ err: messageOf(error) }, 'sync state unreadable, next pull walks everything');
      }
    })().catch((error: unknown) => {
      ready = undefined;
      throw error;
    });
    return ready;
  }

  /** cf-serverd must present the key of the pinned upstream certificate (one of them during a rotation), and no other */
  async function keyVerifier(): Promise<(key: KeyObject) => string | undefined> {
    const pin = await deps.upstreamPin();
    if (pin.problem !== undefined || pin.certificates.length === 0) {
      throw new RelayError('RELAY_ERR_UPSTREAM_UNAVAILABLE', `sync: ${pin.problem ?? `the pinned upstream certificate ${pin.file} holds no certificate`}; its key is the only one accepted from cf-serverd`);
    }
    const pinned = pin.certificates.map((certificate) => certificate.publicKey);
    const expected = pinned.map((key) => key.export({ type: 'spki', format: 'der' }));
    return (key) => {
      const presented = key.export({ type: 'spki', format: 'der' });
      if (expected.some((der) => der.equals(presented))) return undefined;
      const got = keyDigests(key);
      const want = pinned.map((k) => keyDigests(k)).map((d) => `${d.cfengineMd5}, ${d.sha256Pin}`).join('; ');
      return `upstream cf-serverd ${options.host}:${options.port} presented key ${got.cfengineMd5} (${got.sha256Pin}), not the key of the pinned certificate ${pin.file} (${want}); refused`;
    };
  }

  /** "size:mtime" of each path, "-" for a missing one: what says a unit changed without walking it */
  async function signatureOf(copier: CopyClient, base: string, rels: readonly string[]): Promise<string> {
    const parts = await Promise.all(
      rels.map(async (rel) => {
        try {
          const s = await copier.stat(`${base}/${rel}`);
          return `${s.size}:${s.mtime}`;
        } catch (error) {
          if (error instanceof CfengineRefusedError) return '-';
          throw error;
        }
      }),
    );
    return parts.join(',');
  }

  /** a node directory's signature: its flag and archives, and those of the nodes of a sub-relay below it */
  async function nodeSignature(copier: CopyClient, base: string, depth = 0): Promise<string> {
    const [own, below] = await Promise.all([
      signatureOf(copier, base, [RUDDER.flag, ...RUDDER.archives]),
      copier.opendir(`${base}/share`).catch((error: unknown) => {
        if (error instanceof CfengineRefusedError) return undefined;
        throw error;
      }),
    ]);
    if (below === undefined || depth > 8) return own;
    const nested = await Promise.all(below.filter(isSafeSegment).sort().map(async (name) => `${name}=[${await nodeSignature(copier, `${base}/share/${name}`, depth + 1)}]`));
    return `${own};${nested.join(';')}`;
  }

  /** every entry below `root` upstream (dot-directories skipped, as recurse_visible), directories before their content */
  async function walk(copier: CopyClient, root: string, signal: AbortSignal): Promise<RemoteEntry[]> {
    const entries: RemoteEntry[] = [];
    const visit = async (rel: string): Promise<void> => {
      if (signal.aborted) throw new PullAborted();
      // a name that could leave the tree (a broken or hostile upstream) or that CFEngine's recurse_visible
      // skips (dot files) is not copied
      const names = (await copier.opendir(rel === '' ? root : `${root}/${rel}`)).filter(isSafeSegment);
      const children = await Promise.all(
        names.map(async (name) => {
          const childRel = rel === '' ? name : `${rel}/${name}`;
          return { rel: childRel, name, stat: await copier.stat(`${root}/${childRel}`) };
        }),
      );
      const directories: string[] = [];
      for (const child of children) {
        if (child.stat.kind === 'directory') {
          if (child.name.startsWith('.')) continue;
          directories.push(child.rel);
        } else if (child.stat.kind !== 'file') continue;
        entries.push({ rel: child.rel, stat: child.stat });
      }
      await Promise.all(directories.map((d) => visit(d)));
    };
    await visit('');
    return entries;
  }

  /** relative path → "d<mode>" or "f<mode>:<size>:<mtime>" of the local tree, for "nothing to switch" */
  async function localListing(root: string): Promise<Map<string, string> | undefined> {
    const listing = new Map<string, string>();
    const visit = async (dir: string, rel: string): Promise<void> => {
      for (const name of await readdir(dir)) {
        const childRel = rel === '' ? name : `${rel}/${name}`;
        const s = await lstat(join(dir, name));
        if (s.isDirectory()) {
          listing.set(childRel, `d${s.mode & 0o7777}`);
          await visit(join(dir, name), childRel);
        } else listing.set(childRel, `f${s.mode & 0o7777}:${s.size}:${Math.floor(s.mtimeMs / 1000)}`);
      }
    };
    try {
      await visit(root, '');
    } catch (error) {
      if (isErrno(error, 'ENOENT', 'ENOTDIR')) return undefined;
      throw error;
    }
    return listing;
  }

  /**
   * One directory unit: walk `remoteRoot`, decide per file keep/fetch, and unless the local tree is already the
   * same, build the new tree beside `destination` and switch it in.
   */
  async function syncTree(copier: CopyClient, remoteRoot: string, destination: string, signal: AbortSignal, progress: Progress, check?: (build: string) => Promise<void>): Promise<boolean> {
    const rootStat = await copier.stat(remoteRoot);
    if (rootStat.kind !== 'directory') throw new RelayError('RELAY_ERR_UPSTREAM_REFUSED', `sync: upstream ${remoteRoot} is not a directory`);
    const entries = await walk(copier, remoteRoot, signal);
    const files = entries.filter((e) => e.stat.kind === 'file');
    // keep or fetch: same size and mtime → keep; same size → ask the server's MD5; else fetch
    const keep = new Set<string>();
    await forEachLimit(files, FILE_CONCURRENCY, async (entry) => {
      if (signal.aborted) throw new PullAborted();
      const local = join(destination, ...entry.rel.split('/'));
      const s = await lstat(local).catch(() => undefined);
      if (s === undefined || !s.isFile() || s.size !== entry.stat.size) return;
      if (Math.floor(s.mtimeMs / 1000) === entry.stat.mtime) {
        keep.add(entry.rel);
        return;
      }
      if (!(await copier.md5Differs(`${remoteRoot}/${entry.rel}`, await md5Of(local)))) keep.add(entry.rel);
    });
    const wanted = files.filter((f) => !keep.has(f.rel));
    progress.totalFiles += wanted.length;
    for (const f of wanted) progress.totalBytes += f.stat.size;

    const listing = await localListing(destination);
    if (wanted.length === 0 && listing !== undefined) {
      const expected = new Map<string, string>();
      for (const e of entries) expected.set(e.rel, e.stat.kind === 'directory' ? `d${e.stat.mode}` : `f${e.stat.mode}:${e.stat.size}:${e.stat.mtime}`);
      let same = expected.size === listing.size;
      for (const [rel, value] of expected) if (same && listing.get(rel) !== value) same = false;
      // same content, only mtimes differ (kept after an MD5 "same"): still rebuilt, so the next walk needs no MD5
      if (same) return false;
    }

    const build = buildPathOf(destination);
    await removeTree(build);
    await mkdir(build, { mode: 0o700, recursive: true });
    try {
      const directories = entries.filter((e) => e.stat.kind === 'directory');
      for (const d of directories) await mkdir(join(build, ...d.rel.split('/')), { mode: 0o700 });
      await forEachLimit(files, FILE_CONCURRENCY, async (entry) => {
        if (signal.aborted) throw new PullAborted();
        const target = join(build, ...entry.rel.split('/'));
        if (keep.has(entry.rel)) {
          const local = join(destination, ...entry.rel.split('/'));
          try {
            await link(local, target);
          } catch (error) {
            if (!isErrno(error, 'EXDEV', 'EPERM', 'EMLINK')) throw error;
            await copyFile(local, target);
          }
        } else {
          await fetchVerified(copier, `${remoteRoot}/${entry.rel}`, entry.stat.size, target);
          progress.files += 1;
          progress.bytes += entry.stat.size;
        }
        const handle = await open(target, 'r+');
        try {
          await handle.chmod(entry.stat.mode);
          await handle.utimes(entry.stat.mtime, entry.stat.mtime);
          if (!keep.has(entry.rel)) await handle.sync();
        } finally {
          await handle.close();
        }
      });
      // deepest first: a directory's final mode may forbid what its children still need
      const byDepth = [...directories, { rel: '', stat: rootStat }].sort((a, b) => b.rel.split('/').length - a.rel.split('/').length || b.rel.length - a.rel.length);
      for (const d of byDepth) {
        const path = d.rel === '' ? build : join(build, ...d.rel.split('/'));
        const handle = await open(path, 'r');
        try {
          await handle.chmod(d.stat.mode);
          await handle.sync();
        } finally {
          await handle.close();
        }
      }
      // the relay's own policies: a broken generation never replaces the one in force
      if (check !== undefined) await check(build);
    } catch (error) {
      await removeTree(build);
      throw error;
    }
    if (signal.aborted) {
      await removeTree(build);
      throw new PullAborted();
    }
    await switchDirectory(destination, build);
    return true;
  }

  /** GET, then the MD5 check of what came (cf-agent's verify => true); fetched again when it differs */
  async function fetchVerified(copier: CopyClient, path: string, size: number, target: string): Promise<void> {
    for (let attempt = 1; ; attempt += 1) {
      if (size === 0) {
        await (await open(target, 'w', 0o600)).close();
        return;
      }
      await copier.get(path, size, target);
      if (!(await copier.md5Differs(path, await md5Of(target)))) return;
      state.rejectedBlobs += 1;
      log.warn({ path, attempt }, 'sync: fetched file differs from upstream (changed during the copy?), fetching it again');
      if (attempt >= VERIFY_ATTEMPTS) throw new RelayError('RELAY_ERR_UPSTREAM_UNAVAILABLE', `sync: ${path} failed verification ${VERIFY_ATTEMPTS} times`);
    }
  }

  /** nodeslist.json, nodescerts.pem: fetched when their size or mtime changed, renamed over the target */
  async function syncFile(copier: CopyClient, remotePath: string, destination: string, unit: string, signatures: Record<string, string>): Promise<boolean> {
    let s: RemoteStat;
    try {
      s = await copier.stat(remotePath);
    } catch (error) {
      if (error instanceof CfengineRefusedError) {
        log.debug({ path: remotePath }, 'sync: upstream file absent or refused, kept as is here');
        return false;
      }
      throw error;
    }
    const signature = `${s.size}:${s.mtime}`;
    if (saved.signatures[unit] === signature && (await exists(destination))) {
      signatures[unit] = signature;
      return false;
    }
    const incoming = join(paths.stateDirectory, `incoming.${unit}`);
    await fetchVerified(copier, remotePath, s.size, incoming);
    const data = await readFile(incoming);
    await rm(incoming, { force: true });
    const before = await readFile(destination).catch(() => undefined);
    signatures[unit] = signature;
    if (before !== undefined && before.equals(data)) return false;
    await mkdir(dirname(destination), { recursive: true });
    await writeFileAtomically(destination, data, { mode: 0o640 });
    return true;
  }

  interface PullResult {
    readonly files: number;
    readonly bytes: number;
    readonly requests: number;
    readonly changedUnits: number;
    readonly removedUnits: number;
    readonly walkedUnits: number;
    readonly skippedUnits: number;
    readonly nodesChanged: boolean;
  }

  async function pull(signal: AbortSignal): Promise<PullResult> {
    await prepare();
    const verifyServerKey = await keyVerifier();
    const copier = createCopyClient({
      host: options.host,
      port: options.port,
      privateKey: options.privateKey,
      certificate,
      connections: options.connections ?? DEFAULT_CONNECTIONS,
      verifyServerKey,
      signal,
    });
    const progress: Progress = { files: 0, bytes: 0, totalFiles: 0, totalBytes: 0 };
    const ticker = setInterval(() => {
      log.info({ files: `${progress.files}/${progress.totalFiles}`, bytes: `${progress.bytes}/${progress.totalBytes}` }, 'sync progress');
    }, PROGRESS_EVERY_MS);
    ticker.unref();
    try {
      return await pullWith(copier, signal, progress);
    } catch (error) {
      if (signal.aborted) throw new PullAborted();
      if (error instanceof CfengineRefusedError) throw new RelayError('RELAY_ERR_UPSTREAM_REFUSED', `sync: upstream cf-serverd refused ${error.message}`, { cause: error });
      // the cfengine client's own errors get this puller's context below
      if (isRelayError(error) && !(error instanceof CfengineClientError)) throw error;
      if (isErrno(error, 'ENOSPC', 'EIO', 'EACCES', 'EROFS')) throw new RelayError('RELAY_ERR_SPOOL_WRITE', `sync: cannot write: ${messageOf(error)}`, { cause: error });
      throw new RelayError('RELAY_ERR_UPSTREAM_UNAVAILABLE', `sync from cf-serverd ${options.host}:${options.port}: ${messageOf(error)}`, { cause: error });
    } finally {
      clearInterval(ticker);
      copier.close();
    }
  }

  async function pullWith(copier: CopyClient, signal: AbortSignal, progress: Progress): Promise<PullResult> {
    // the relay's own directory always exists on a root that knows this relay; refused = not admitted
    try {
      await copier.stat(`${relayDir}/`);
    } catch (error) {
      if (!(error instanceof CfengineRefusedError)) throw error;
      throw new RelayError(
        'RELAY_ERR_UPSTREAM_REFUSED',
        `sync: upstream cf-serverd ${options.host}:${options.port} refuses ${relayDir}/ to this relay (is ${options.myId} accepted on the root, with this key?)`,
      );
    }
    const signatures: Record<string, string> = {};
    // the relay's own policies first: what the root generated for it applies before its nodes' trees are walked
    const ownChanged = await pullOwnPolicies(copier, signal, progress, signatures);
    let changedUnits = ownChanged ? 1 : 0;
    let removedUnits = 0;
    let walkedUnits = 0;
    let skippedUnits = 0;
    const count = (result: UnitResult): void => {
      if (result.walked) walkedUnits += 1;
      else skippedUnits += 1;
      if (result.changed) changedUnits += 1;
    };

    // (a) the share/ of every node below this relay → policies.directory/<node>, purged
    const shareRoot = `${relayDir}/share`;
    let nodes: string[];
    try {
      nodes = (await copier.opendir(shareRoot)).filter((name) => isSafeSegment(name) && !name.startsWith('.') && name !== COMMON_NAME);
    } catch (error) {
      if (!(error instanceof CfengineRefusedError)) throw error;
      nodes = []; // no node below this relay yet
    }
    await forEachLimit(nodes, UNIT_CONCURRENCY * 4, async (node) => {
      if (signal.aborted) throw new PullAborted();
      const unit = `share/${node}`;
      const base = `${shareRoot}/${node}`;
      const destination = join(paths.policiesDirectory, node);
      const signature = await nodeSignature(copier, base);
      signatures[unit] = signature;
      if (saved.signatures[unit] === signature && (await exists(destination))) {
        count({ changed: false, walked: false });
        return;
      }
      // walked with a bounded number of units at a time (memory: one unit's listing each)
      await unitSlots.run(async () => count({ changed: await syncTree(copier, base, destination, signal, progress), walked: true }));
    });
    const present = new Set(nodes);
    for (const name of await readdir(paths.policiesDirectory).catch(() => [] as string[])) {
      if (name.startsWith('.') || name === COMMON_NAME || present.has(name)) continue;
      if (signal.aborted) throw new PullAborted();
      await removeUnit({ unit: `share/${name}`, destination: join(paths.policiesDirectory, name), kind: 'directory' });
      removedUnits += 1;
      log.info({ node: name }, 'sync: node directory gone upstream, removed');
    }

    // (b) the shared folder, (d–f) the library trees (when served here): whole-tree units
    const trees: Array<{ unit: string; remote: string; local: string; flag?: string }> = [
      { unit: 'shared-folder', remote: remote(RUDDER.sharedFolder), local: paths.sharedFolderPath.replace(/\/+$/, '') },
      ...libraries.map((l) => ({ unit: `library:${l.path}`, remote: remote(l.path), local: l.local, ...(l.flag === undefined ? {} : { flag: l.flag }) })),
    ];
    // (c) shared-files/<this relay>/shared-files/<entry> → shared_files.path/<entry> (a missing source is fine)
    const sharedFilesRoot = remote(`${RUDDER.sharedFiles}/${options.myId}/shared-files`);
    let sharedEntries: string[] | undefined;
    try {
      sharedEntries = (await copier.opendir(sharedFilesRoot)).filter((name) => isSafeSegment(name) && !name.startsWith('.'));
    } catch (error) {
      if (!(error instanceof CfengineRefusedError)) throw error;
    }
    for (const name of sharedEntries ?? []) trees.push({ unit: `shared-files/${name}`, remote: `${sharedFilesRoot}/${name}`, local: join(paths.sharedFilesPath, name) });
    await forEachLimit(trees, UNIT_CONCURRENCY, async (tree) => {
      try {
        await copier.stat(tree.remote);
      } catch (error) {
        if (!(error instanceof CfengineRefusedError)) throw error;
        log.debug({ path: tree.remote }, 'sync: upstream tree absent or refused, kept as is here');
        return;
      }
      if (tree.flag !== undefined) {
        const signature = await signatureOf(copier, tree.remote, [tree.flag]);
        signatures[tree.unit] = signature;
        if (saved.signatures[tree.unit] === signature && (await exists(tree.local))) {
          count({ changed: false, walked: false });
          return;
        }
      }
      await unitSlots.run(async () => count({ changed: await syncTree(copier, tree.remote, tree.local, signal, progress), walked: true }));
    });
    if (sharedEntries !== undefined) {
      const keepShared = new Set(sharedEntries);
      for (const name of await readdir(paths.sharedFilesPath).catch(() => [] as string[])) {
        if (name.startsWith('.') || keepShared.has(name)) continue;
        await removeUnit({ unit: `shared-files/${name}`, destination: join(paths.sharedFilesPath, name), kind: 'directory' });
        removedUnits += 1;
      }
    }

    // (g) the relay's own nodeslist.json and nodescerts.pem; certificates first, then the list
    const certsChanged = await syncFile(copier, `${relayDir}/${RUDDER.nodesCerts}`, paths.nodesCertsFile, 'nodescerts.pem', signatures);
    const listChanged = await syncFile(copier, `${relayDir}/${RUDDER.nodesList}`, paths.nodesListFile, 'nodeslist.json', signatures);
    if (certsChanged) changedUnits += 1;
    if (listChanged) changedUnits += 1;

    // the library archive: on a stock root only its HTTPS side has it
    // the library archive: on a stock root only its HTTPS side has it. Its failure does not undo the trees
    // pulled above: logged, and tried again at the next pull.
    let library: { changed: boolean; bytes: number; etag: string | undefined } = { changed: false, bytes: 0, etag: saved.libraryEtag };
    try {
      library = await fetchLibraryArchive({ client: deps.upstreamHttps(), destination: join(paths.policiesDirectory, COMMON_NAME), etag: saved.libraryEtag, log }, signal);
    } catch (error) {
      if (signal.aborted) throw new PullAborted();
      log.warn({ code: isRelayError(error) ? error.code : 'RELAY_ERR_INTERNAL', err: messageOf(error) }, 'sync: library archive not fetched');
    }
    if (library.changed) changedUnits += 1;
    progress.files += library.changed ? 1 : 0;
    progress.bytes += library.bytes;

    saved = {
      format: STATE_FORMAT,
      signatures,
      appliedAt: new Date().toISOString(),
      ...(library.etag === undefined ? {} : { libraryEtag: library.etag }),
    };
    await writeFileAtomically(join(paths.stateDirectory, STATE_FILE), `${JSON.stringify(saved)}\n`, { mode: 0o600 });
    generation = createHash('sha256').update(JSON.stringify(Object.entries(signatures).sort())).update(library.etag ?? '').digest('hex').slice(0, 32);
    if (ownChanged) {
      try {
        await deps.ownPolicies?.installed();
      } catch (error) {
        log.error({ code: isRelayError(error) ? error.code : 'RELAY_ERR_INTERNAL', err: messageOf(error) }, 'sync: own policies reload after sync failed');
      }
    }
    if (certsChanged || listChanged) {
      try {
        await deps.onNodesChanged();
      } catch (error) {
        log.error({ code: isRelayError(error) ? error.code : 'RELAY_ERR_INTERNAL', err: messageOf(error) }, 'sync: nodes reload after sync failed');
      }
    }
    return { files: progress.files, bytes: progress.bytes, requests: copier.requests, changedUnits, removedUnits, walkedUnits, skippedUnits, nodesChanged: certsChanged || listChanged };
  }

  /**
   * /var/rudder/share/<relay>/rules/cfengine-community → the relay's own inputs, as update.st copies it, when its
   * rudder-promises-generated (or rudder.json) changed upstream. A folder check() refuses is not switched in: the
   * policies in force stay, and that generation is not fetched again.
   */
  async function pullOwnPolicies(copier: CopyClient, signal: AbortSignal, progress: Progress, signatures: Record<string, string>): Promise<boolean> {
    const destination = paths.ownInputsDirectory;
    if (destination === undefined || deps.ownPolicies === undefined) return false;
    const sink = deps.ownPolicies;
    const unit = 'own-policies';
    const remoteInputs = `${relayDir}/${RUDDER.ownInputs}`;
    const signature = await signatureOf(copier, remoteInputs, RUDDER.ownFlags);
    if (signature.startsWith('-')) {
      log.debug({ path: remoteInputs }, 'sync: no own policies generated upstream for this relay yet');
      return false;
    }
    signatures[unit] = signature;
    if (saved.signatures[unit] === signature && (refusedOwnSignature === signature || (await exists(destination)))) return false;
    try {
      const changed = await syncTree(copier, remoteInputs, destination, signal, progress, (build) => sink.check(build));
      if (changed) log.info({ event: 'own_policies_pulled', path: remoteInputs, inputs: destination }, 'sync: own policies pulled');
      return changed;
    } catch (error) {
      if (!isRelayError(error) || error.code !== 'RELAY_ERR_OWN_POLICIES') throw error;
      // not fetched again until the root generates anew
      refusedOwnSignature = signature;
      sink.rejected(error);
      return false;
    }
  }

  /** at most UNIT_CONCURRENCY units walked and built at once (their listings are in memory) */
  const unitSlots = (() => {
    let free = UNIT_CONCURRENCY;
    const waiting: Array<() => void> = [];
    return {
      async run(task: () => Promise<void>): Promise<void> {
        while (free === 0) await new Promise<void>((resolve) => waiting.push(resolve));
        free -= 1;
        try {
          await task();
        } finally {
          free += 1;
          waiting.shift()?.();
        }
      },
    };
  })();

  return loop;
}
