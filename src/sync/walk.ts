// Serving side: walking the entitled trees into manifest entries. Hashes are cached by (path, inode,
// size, mtime ns, ctime ns), so a walk of an unchanged tree costs one lstat per file and no reads.
// Dot entries, symlinks and special files are left out (CFEngine's recurse_visible copied no dot files).

import { createHash } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { lstat, open, readdir } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { Logger } from 'pino';
import { OLD_PREFIX, forEachLimit, isErrno } from './fs-util.js';
import { isSafeSegment, type ManifestEntry, type ManifestFile } from './manifest.js';

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
class UnitMoved extends Error {}

const HASH_CONCURRENCY = 16;
const UNIT_ATTEMPTS = 5;
const UNIT_RETRY_MS = 20;
const CACHE_IDLE_MS = 10 * 60_000;
/** at most one pass over the cache per minute to drop paths no walk saw for CACHE_IDLE_MS */
const CACHE_PRUNE_MS = 60_000;

/** ms rounded to nearest: utimes() through a double may store …122999999 ns for …123 ms */
export const mtimeMsOfNs = (mtimeNs: bigint): number => Number((mtimeNs + 500_000n) / 1_000_000n);

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

  async function hashFile(
    absolute: string,
    seen: { ino: bigint; size: bigint; mtimeNs: bigint; ctimeNs: bigint },
  ): Promise<{ sha256: string; ino: bigint; size: bigint; mtimeNs: bigint; ctimeNs: bigint } | undefined> {
    // unchanged since hashed: no open, no read
    const known = cache.get(absolute);
    if (known !== undefined && known.ino === seen.ino && known.size === seen.size && known.mtimeNs === seen.mtimeNs && known.ctimeNs === seen.ctimeNs) {
      known.seenAt = Date.now();
      return { ...known };
    }
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
    const pending: { absolute: string; relative: string }[] = [];
    let rootStat;
    try {
      rootStat = await lstat(absolute, { bigint: true });
    } catch (error) {
      if (!isErrno(error, 'ENOENT', 'ENOTDIR')) throw error;
      // a sync on this relay is between its two renames (install.ts): the unit exists, look again
      const aside = await lstat(join(dirname(absolute), `${OLD_PREFIX}${basename(absolute)}`)).catch(() => undefined);
      if (aside !== undefined) throw new UnitMoved(`${absolute} is being switched`);
      return { entries: [], files: [] };
    }
    if (!rootStat.isDirectory()) return { entries: [], files: [] };

    const visit = async (directory: string, relativeDirectory: string, segments: string[], mode: number): Promise<void> => {
      entries.push({ kind: 'd', path: relativeDirectory, mode: directoryMode(mode) });
      let names;
      try {
        names = await readdir(directory, { withFileTypes: true });
      } catch (error) {
        if (isErrno(error, 'ENOENT', 'ENOTDIR')) throw new UnitMoved(`${directory} vanished`);
        throw error;
      }
      const allowed = filter?.(segments);
      for (const dirent of names) {
        const name = dirent.name;
        // U+FFFD: a name that is not UTF-8 cannot be named in the manifest
        if (!isSafeSegment(name) || name.includes('\uFFFD')) continue;
        if (allowed !== undefined && !allowed.has(name)) continue;
        const childAbsolute = join(directory, name);
        const childRelative = `${relativeDirectory}/${name}`;
        if (dirent.isDirectory()) {
          let s;
          try {
            s = await lstat(childAbsolute, { bigint: true });
          } catch (error) {
            if (isErrno(error, 'ENOENT')) throw new UnitMoved(`${childAbsolute} vanished`);
            throw error;
          }
          await visit(childAbsolute, childRelative, [...segments, name], Number(s.mode));
        } else if (dirent.isFile()) {
          pending.push({ absolute: childAbsolute, relative: childRelative });
        } else if (dirent.isSymbolicLink()) {
          log.debug({ path: childAbsolute }, 'symlink not synced');
        }
      }
    };
    await visit(absolute, relative, [], Number(rootStat.mode));

    const files: WalkedFile[] = [];
    await forEachLimit(pending, HASH_CONCURRENCY, async (file) => {
      const s = await lstat(file.absolute, { bigint: true }).catch((error: unknown) => {
        if (isErrno(error, 'ENOENT')) throw new UnitMoved(`${file.absolute} vanished`);
        throw error;
      });
      if (!s.isFile()) return;
      const hashed = await hashFile(file.absolute, s);
      if (hashed === undefined) throw new UnitMoved(`${file.absolute} vanished`);
      const entry: ManifestFile = {
        kind: 'f',
        path: file.relative,
        sha256: hashed.sha256,
        size: Number(hashed.size),
        mode: fileMode(s.mode),
        mtimeMs: mtimeMsOfNs(hashed.mtimeNs),
      };
      entries.push(entry);
      files.push({ entry, absolute: file.absolute, ino: hashed.ino, size: hashed.size, mtimeNs: hashed.mtimeNs });
    });

    const rootAfter = await lstat(absolute, { bigint: true }).catch(() => undefined);
    if (rootAfter?.ino !== rootStat.ino) throw new UnitMoved(`${absolute} was replaced while walked`);
    return { entries, files };
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
