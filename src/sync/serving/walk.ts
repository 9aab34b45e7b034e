// Serving side: walking the entitled trees into manifest entries. Hashes are cached by (path, inode,
// size, mtime ns, ctime ns), so a walk of an unchanged tree costs one lstat per file and no reads.
// Dot entries, symlinks and special files are left out (CFEngine's recurse_visible copied no dot files).

import { createHash } from 'node:crypto';
import { constants as fsConstants, lstatSync, readdirSync, type BigIntStats, type Dirent } from 'node:fs';
import { lstat, open } from 'node:fs/promises';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { basename, dirname, join } from 'node:path';
import type { Logger } from 'pino';
import { RelayError } from '../../errors.js';
import { OLD_PREFIX, forEachLimit, isErrno } from '../lib/fs-util.js';
import { isSafeSegment, mtimeMsOfNs, type ManifestEntry, type ManifestFile } from '../lib/manifest.js';

export interface WalkedFile {
  readonly entry: ManifestFile;
  readonly absolute: string;
  readonly ino: bigint;
  readonly size: bigint;
  readonly mtimeNs: bigint;
}

export interface Walked {
  readonly entries: ManifestEntry[];
  readonly files: WalkedFile[];
  /** absolute paths of the directories walked (the unit root first): what to watch for changes */
  readonly directories: string[];
}

interface CachedHash {
  readonly ino: bigint;
  readonly size: bigint;
  readonly mtimeNs: bigint;
  readonly ctimeNs: bigint;
  readonly sha256: string;
  seenAt: number;
}

/** a unit's root changed (swapped by a sync on this relay) or vanished while it was walked: walk it again */
class UnitMoved extends RelayError {
  constructor(message: string) {
    super('RELAY_ERR_FILE_CHANGED', message);
  }
}

const HASH_CONCURRENCY = 16;
const UNIT_ATTEMPTS = 5;
const UNIT_RETRY_MS = 20;
const CACHE_IDLE_MS = 10 * 60_000;
/** at most one pass over the cache per minute to drop paths no walk saw for CACHE_IDLE_MS */
const CACHE_PRUNE_MS = 60_000;
/**
 * Directory listings and lstat run synchronously in slices of this many ms, then the loop gets a turn: an
 * lstat answered from the dentry cache costs a few µs, a round trip through libuv's thread pool ~40 µs,
 * which made the walk of 8,000 unchanged files take 300–500 ms instead of ~40 ms.
 */
const SLICE_MS = 4;

/** a cooperative time slice: call `maybeYield()` between small synchronous steps */
function timeSlicer(): () => Promise<void> | undefined {
  let sliceStart = performance.now();
  return () => {
    if (performance.now() - sliceStart < SLICE_MS) return undefined;
    return yieldToLoop().then(() => {
      sliceStart = performance.now();
    });
  };
}

function lstatOrUndefined(path: string): BigIntStats | undefined {
  return lstatSync(path, { bigint: true, throwIfNoEntry: false });
}

export const fileMode = (mode: number | bigint): number => Number(mode) & 0o777;
export const directoryMode = (mode: number | bigint): number => Number(mode) & 0o2777;

export interface TreeWalker {
  /**
   * Walks the directory `absolute` as manifest path `relative` (emitted as a `d` entry). `subtreeFilter`
   * decides, for a directory relative to the walked root, which children may be descended into
   * (undefined: all); used for node directories whose `share/` must only hold nodes of the nodes list.
   * Absent root: no entries.
   */
  walkUnit(absolute: string, relative: string, subtreeFilter?: SubtreeFilter): Promise<Walked>;
  /** forget a path's hash (it was found changed while served) */
  forget(absolute: string): void;
}

/** for the directory at `segments` below the unit root: the children allowed, or undefined for all */
export type SubtreeFilter = (segments: readonly string[]) => ReadonlySet<string> | undefined;

export function createTreeWalker(log: Logger): TreeWalker {
  const cache = new Map<string, CachedHash>();
  let lastPrune = Date.now();

  /** the sha256 of a file the walk found new or changed; the cache again after open (it may have been hashed meanwhile) */
  async function hashFile(
    absolute: string,
  ): Promise<{ sha256: string; ino: bigint; size: bigint; mtimeNs: bigint; ctimeNs: bigint } | undefined> {
    let handle;
    try {
      handle = await open(absolute, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK);
    } catch (error) {
      if (isErrno(error, 'ENOENT', 'ELOOP')) return undefined;
      throw error;
    }
    try {
      const before = await handle.stat({ bigint: true });
      if (!before.isFile()) return undefined;
      const cached = cache.get(absolute);
      if (
        cached !== undefined &&
        cached.ino === before.ino &&
        cached.size === before.size &&
        cached.mtimeNs === before.mtimeNs &&
        cached.ctimeNs === before.ctimeNs
      ) {
        cached.seenAt = Date.now();
        return { ...cached };
      }
      const hash = createHash('sha256');
      for await (const chunk of handle.createReadStream({ autoClose: false, highWaterMark: 256 * 1024 })) hash.update(chunk as Buffer);
      const after = await handle.stat({ bigint: true });
      if (after.size !== before.size || after.mtimeNs !== before.mtimeNs) throw new UnitMoved(`${absolute} changed while hashed`);
      const result = { sha256: hash.digest('hex'), ino: after.ino, size: after.size, mtimeNs: after.mtimeNs, ctimeNs: after.ctimeNs };
      cache.set(absolute, { ...result, seenAt: Date.now() });
      return result;
    } finally {
      await handle.close();
    }
  }

  async function walkOnce(absolute: string, relative: string, filter: SubtreeFilter | undefined): Promise<Walked> {
    const entries: ManifestEntry[] = [];
    const pending: { absolute: string; relative: string; stat: BigIntStats }[] = [];
    const maybeYield = timeSlicer();
    let rootStat: BigIntStats | undefined;
    try {
      rootStat = lstatOrUndefined(absolute);
    } catch (error) {
      if (!isErrno(error, 'ENOTDIR')) throw error;
    }
    if (rootStat === undefined) {
      // a sync on this relay is between its two renames (install.ts): the unit exists, look again
      const aside = await lstat(join(dirname(absolute), `${OLD_PREFIX}${basename(absolute)}`)).catch(() => undefined);
      if (aside !== undefined) throw new UnitMoved(`${absolute} is being switched`);
      return { entries: [], files: [], directories: [] };
    }
    if (!rootStat.isDirectory()) return { entries: [], files: [], directories: [] };
    const walkedDirectories: string[] = [];

    // depth first, in listing order, without recursion (deep trees) and with a turn for the loop now and then
    const directories: { absolute: string; relative: string; segments: string[]; mode: number }[] = [
      { absolute, relative, segments: [], mode: Number(rootStat.mode) },
    ];
    for (let directory = directories.pop(); directory !== undefined; directory = directories.pop()) {
      entries.push({ kind: 'd', path: directory.relative, mode: directoryMode(directory.mode) });
      walkedDirectories.push(directory.absolute);
      let names: Dirent[];
      try {
        names = readdirSync(directory.absolute, { withFileTypes: true });
      } catch (error) {
        if (isErrno(error, 'ENOENT', 'ENOTDIR')) throw new UnitMoved(`${directory.absolute} vanished`);
        throw error;
      }
      const allowed = filter?.(directory.segments);
      const below: typeof directories = [];
      for (const dirent of names) {
        const name = dirent.name;
        // U+FFFD: a name that is not UTF-8 cannot be named in the manifest
        if (!isSafeSegment(name) || name.includes('\uFFFD')) continue;
        if (allowed !== undefined && !allowed.has(name)) continue;
        const childAbsolute = join(directory.absolute, name);
        const childRelative = `${directory.relative}/${name}`;
        if (dirent.isSymbolicLink()) {
          log.debug({ path: childAbsolute }, 'symlink not synced');
          continue;
        }
        if (!dirent.isDirectory() && !dirent.isFile()) continue;
        const s = lstatOrUndefined(childAbsolute);
        if (s === undefined) throw new UnitMoved(`${childAbsolute} vanished`);
        if (s.isDirectory()) below.push({ absolute: childAbsolute, relative: childRelative, segments: [...directory.segments, name], mode: Number(s.mode) });
        else if (s.isFile()) pending.push({ absolute: childAbsolute, relative: childRelative, stat: s });
        const turn = maybeYield();
        if (turn !== undefined) await turn;
      }
      for (let i = below.length - 1; i >= 0; i -= 1) directories.push(below[i]!);
    }

    const files: WalkedFile[] = [];
    const add = (file: { relative: string; absolute: string; stat: BigIntStats }, hashed: { sha256: string; ino: bigint; size: bigint; mtimeNs: bigint }): void => {
      const entry: ManifestFile = {
        kind: 'f',
        path: file.relative,
        sha256: hashed.sha256,
        size: Number(hashed.size),
        mode: fileMode(file.stat.mode),
        mtimeMs: mtimeMsOfNs(hashed.mtimeNs),
      };
      entries.push(entry);
      files.push({ entry, absolute: file.absolute, ino: hashed.ino, size: hashed.size, mtimeNs: hashed.mtimeNs });
    };
    // known hashes straight from the cache; only new or changed files are opened and read
    const toHash: typeof pending = [];
    const now = Date.now();
    for (const file of pending) {
      const known = cache.get(file.absolute);
      const s = file.stat;
      if (known !== undefined && known.ino === s.ino && known.size === s.size && known.mtimeNs === s.mtimeNs && known.ctimeNs === s.ctimeNs) {
        known.seenAt = now;
        add(file, known);
      } else {
        toHash.push(file);
      }
    }
    await forEachLimit(toHash, HASH_CONCURRENCY, async (file) => {
      const hashed = await hashFile(file.absolute);
      if (hashed === undefined) throw new UnitMoved(`${file.absolute} vanished`);
      add(file, hashed);
    });

    const rootAfter = lstatOrUndefined(absolute);
    if (rootAfter?.ino !== rootStat.ino) throw new UnitMoved(`${absolute} was replaced while walked`);
    return { entries, files, directories: walkedDirectories };
  }

  function prune(): void {
    const now = Date.now();
    if (now - lastPrune < CACHE_PRUNE_MS) return;
    lastPrune = now;
    for (const [path, cached] of cache) if (now - cached.seenAt > CACHE_IDLE_MS) cache.delete(path);
  }

  return {
    async walkUnit(absolute, relative, subtreeFilter) {
      for (let attempt = 1; ; attempt += 1) {
        try {
          const walked = await walkOnce(absolute, relative, subtreeFilter);
          prune();
          return walked;
        } catch (error) {
          if (!(error instanceof UnitMoved) || attempt >= UNIT_ATTEMPTS) throw error;
          log.debug({ path: absolute, reason: error.message, attempt }, 'tree changed while walked, walking again');
          await new Promise((resolve) => setTimeout(resolve, UNIT_RETRY_MS * attempt));
        }
      }
    },
    forget(absolute) {
      cache.delete(absolute);
    },
  };
}
