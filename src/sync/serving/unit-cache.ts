// Serving side: walked units kept current by inotify (fs.watch on every directory of a unit, and on the
// directory holding the unit root), so that a manifest request re-walks only the units something changed
// in since their last walk. A no-change poll then costs no file-system work at all, and a one-file change
// re-walks one node directory instead of every directory of every node.
//
// inotify can be missing or full (max_user_watches, network file systems): a unit that cannot be watched
// is re-walked once older than the TTL (the behaviour without watches), and every watched unit is also
// re-walked after REVALIDATE_MS, as a safety net against lost events.

import { watch, type FSWatcher } from 'node:fs';
import { basename, dirname } from 'node:path';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { SubtreeFilter, TreeWalker, Walked } from './walk.js';

/** a process-wide bound on inotify watches; beyond it units fall back to TTL re-walks */
export const DEFAULT_MAX_WATCHES = 50_000;
/** watched units are walked again after this long even without events */
const REVALIDATE_MS = 10 * 60_000;
/** events during a walk: walk again at most this many times before answering with what was seen */
const WALK_ROUNDS = 3;

export interface UnitCacheOptions {
  /** how long the walk of a unit that cannot be watched is reused */
  readonly ttlMs: number;
  readonly maxWatches?: number;
}

export interface UnitCache {
  /**
   * The walk of the unit at `absolute`, reused while nothing changed below it. `variant` names what the
   * filter depends on (a different variant walks again).
   */
  walk(absolute: string, relative: string, filter?: SubtreeFilter, variant?: string): Promise<Walked>;
  /** lets pending file-system events reach the cache before it is read (call once per request) */
  settle(): Promise<void>;
  /** every unit is walked again at its next use */
  invalidate(): void;
  readonly watchedDirectories: () => number;
  close(): void;
}

interface Unit {
  readonly key: string;
  readonly absolute: string;
  walked: Walked | undefined;
  variant: string | undefined;
  walkedAt: number;
  /** bumped by every event below the unit: a walk that saw another version than at its start is stale */
  version: number;
  walkedVersion: number;
  /** all of its directories (and its parent) are watched */
  watched: boolean;
  directories: Set<string>;
  inFlight: Promise<Walked> | undefined;
}

interface Watch {
  readonly watcher: FSWatcher;
  /** units with this directory inside them */
  readonly units: Set<Unit>;
  /** units whose root is a child of this directory, by name */
  readonly roots: Map<string, Set<Unit>>;
}

function sameWalk(a: Walked, b: Walked): boolean {
  if (a.entries.length !== b.entries.length || a.directories.length !== b.directories.length) return false;
  for (let i = 0; i < a.entries.length; i += 1) {
    const x = a.entries[i]!;
    const y = b.entries[i]!;
    if (x.kind !== y.kind || x.path !== y.path || x.mode !== y.mode) return false;
    if (x.kind === 'f' && y.kind === 'f' && (x.sha256 !== y.sha256 || x.size !== y.size || x.mtimeMs !== y.mtimeMs)) return false;
  }
  for (let i = 0; i < a.files.length; i += 1) {
    const x = a.files[i]!;
    const y = b.files[i]!;
    if (x.absolute !== y.absolute || x.ino !== y.ino || x.mtimeNs !== y.mtimeNs) return false;
  }
  return a.directories.every((directory, i) => directory === b.directories[i]);
}

export function createUnitCache(walker: TreeWalker, log: Logger, options: UnitCacheOptions): UnitCache {
  const maxWatches = options.maxWatches ?? DEFAULT_MAX_WATCHES;
  const units = new Map<string, Unit>();
  const watches = new Map<string, Watch>();
  let closed = false;
  let warnedFull = false;

  const touch = (unit: Unit): void => {
    unit.version += 1;
  };

  function onEvent(directory: string, filename: string | Buffer | null): void {
    const watch = watches.get(directory);
    if (watch === undefined) return;
    for (const unit of watch.units) touch(unit);
    if (filename === null) {
      for (const set of watch.roots.values()) for (const unit of set) touch(unit);
      return;
    }
    const name = typeof filename === 'string' ? filename : filename.toString();
    for (const unit of watch.roots.get(name) ?? []) touch(unit);
  }

  /** the watch of `directory`, made if needed; undefined when it cannot be (full, vanished, not allowed) */
  function watchOf(directory: string): Watch | undefined {
    const known = watches.get(directory);
    if (known !== undefined) return known;
    if (closed) return undefined;
    if (watches.size >= maxWatches) {
      if (!warnedFull) {
        warnedFull = true;
        log.warn({ maxWatches }, 'sync: too many directories to watch, some units are re-walked on a TTL instead');
      }
      return undefined;
    }
    let watcher: FSWatcher;
    try {
      watcher = watch(directory, { persistent: false }, (_event, filename) => onEvent(directory, filename));
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOSPC' || code === 'EMFILE') {
        if (!warnedFull) {
          warnedFull = true;
          log.warn({ code, watches: watches.size }, 'sync: the system refuses more inotify watches (fs.inotify.max_user_watches), some units are re-walked on a TTL instead');
        }
      }
      return undefined;
    }
    const entry: Watch = { watcher, units: new Set(), roots: new Map() };
    watcher.on('error', () => {
      // the directory went away (its units saw the event already) or inotify failed: forget the watch
      for (const unit of entry.units) {
        touch(unit);
        unit.watched = false;
      }
      for (const set of entry.roots.values()) for (const unit of set) {
        touch(unit);
        unit.watched = false;
      }
      drop(directory);
    });
    watches.set(directory, entry);
    return entry;
  }

  function drop(directory: string): void {
    const entry = watches.get(directory);
    if (entry === undefined) return;
    watches.delete(directory);
    try {
      entry.watcher.close();
    } catch {
      // already closed
    }
  }

  function release(unit: Unit, directory: string, asRoot: boolean): void {
    const entry = watches.get(directory);
    if (entry === undefined) return;
    if (asRoot) {
      const set = entry.roots.get(basename(unit.absolute));
      set?.delete(unit);
      if (set?.size === 0) entry.roots.delete(basename(unit.absolute));
    } else {
      entry.units.delete(unit);
    }
    if (entry.units.size === 0 && entry.roots.size === 0) drop(directory);
  }

  /** watch exactly the directories of the new walk (and the root's parent); false if any could not be */
  function rewatch(unit: Unit, directories: readonly string[]): boolean {
    let complete = true;
    const parent = dirname(unit.absolute);
    const parentWatch = watchOf(parent);
    if (parentWatch === undefined) complete = false;
    else {
      const name = basename(unit.absolute);
      const set = parentWatch.roots.get(name) ?? new Set<Unit>();
      set.add(unit);
      parentWatch.roots.set(name, set);
    }
    const next = new Set(directories);
    for (const directory of unit.directories) if (!next.has(directory)) release(unit, directory, false);
    for (const directory of next) {
      const entry = watchOf(directory);
      if (entry === undefined) {
        complete = false;
        next.delete(directory);
      } else {
        entry.units.add(unit);
      }
    }
    unit.directories = next;
    return complete;
  }

  function fresh(unit: Unit, variant: string | undefined, now: number): boolean {
    if (unit.walked === undefined || unit.variant !== variant || unit.version !== unit.walkedVersion) return false;
    return now - unit.walkedAt < (unit.watched ? Math.max(REVALIDATE_MS, options.ttlMs) : options.ttlMs);
  }

  async function walkUnit(unit: Unit, relative: string, filter: SubtreeFilter | undefined, variant: string | undefined): Promise<Walked> {
    let walked: Walked | undefined;
    for (let round = 1; round <= WALK_ROUNDS; round += 1) {
      const version = unit.version;
      walked = await walker.walkUnit(unit.absolute, relative, filter);
      // the same content keeps the same object: the serving side reuses a view whose walks are all the same
      if (unit.walked !== undefined && sameWalk(unit.walked, walked)) walked = unit.walked;
      // the directories are watched before the events of the walk are looked at, so none is missed
      unit.watched = rewatch(unit, walked.directories);
      await yieldToLoop();
      unit.walked = walked;
      unit.variant = variant;
      unit.walkedAt = Date.now();
      unit.walkedVersion = version;
      if (unit.version === version) break;
    }
    return walked!;
  }

  return {
    walk(absolute, relative, filter, variant) {
      const key = `${absolute}\0${relative}`;
      let unit = units.get(key);
      if (unit === undefined) {
        unit = { key, absolute, walked: undefined, variant: undefined, walkedAt: 0, version: 0, walkedVersion: -1, watched: false, directories: new Set(), inFlight: undefined };
        units.set(key, unit);
      }
      if (fresh(unit, variant, Date.now())) return Promise.resolve(unit.walked!);
      if (unit.inFlight !== undefined) return unit.inFlight;
      const current = unit;
      current.inFlight = walkUnit(current, relative, filter, variant).finally(() => {
        current.inFlight = undefined;
      });
      return current.inFlight;
    },
    async settle() {
      // inotify events read in the same loop turn as the request are dispatched before this resolves
      await yieldToLoop();
    },
    invalidate() {
      for (const unit of units.values()) touch(unit);
    },
    watchedDirectories: () => watches.size,
    close() {
      closed = true;
      for (const directory of [...watches.keys()]) drop(directory);
      units.clear();
    },
  };
}
