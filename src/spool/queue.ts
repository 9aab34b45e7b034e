// A durable directory queue (spec-relayd.md §5, with its weaknesses fixed): fs.watch plus a
// catch-up scan (oldest first) so nothing is missed after a restart or a lost event; bounded
// concurrency; per-file exponential backoff for transient failures and a queue-wide pause when the
// peer keeps failing; failed/ with a .reason sidecar; retention that logs and counts every removal.
// A file leaves incoming/ only when its handler said so: a crash at any instant loses nothing.

import { linkSync, mkdirSync, renameSync, statSync, unlinkSync, watch, type FSWatcher, type Stats } from 'node:fs';
import { mkdir, readdir, rename, stat, unlink, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { threadId } from 'node:worker_threads';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import type { Logger } from 'pino';
import { messageOf } from '../errors.js';

export interface QueueFile {
  readonly name: string;
  readonly path: string;
  readonly size: number;
  readonly mtimeMs: number;
  /** transient failures so far */
  readonly attempts: number;
}

export type QueueOutcome =
  /** handled: delete the file (and the partners the handler claimed and handled with it) */
  | { readonly kind: 'done'; readonly also?: readonly string[] }
  /** transient: keep the file, try again later */
  | { readonly kind: 'retry'; readonly reason: string }
  /** not ready yet (e.g. waiting for its signature): look again after delayMs */
  | { readonly kind: 'defer'; readonly delayMs: number }
  /**
   * may pass later, on an event rather than a delay (a node the nodes list does not name yet): keep it, look
   * again at releaseHeld(), and give up only at retention (then failed/ with the reason)
   */
  | { readonly kind: 'hold'; readonly code: string; readonly reason: string }
  /** permanent: move to failed/ with the reason beside it */
  | { readonly kind: 'failed'; readonly code: string; readonly reason: string }
  /** leave it where it is and do not look again until it changes (output disabled, unknown extension) */
  | { readonly kind: 'ignore' }
  /** already handled together with a partner; nothing to do */
  | { readonly kind: 'gone' };

export interface QueueContext {
  /** take a partner file (e.g. an inventory's .sign) out of the queue while handling this one */
  claim(name: string): QueueFile | undefined;
  /** aborted when the queue stops and this file's grace is over: give up and answer 'retry' (the file stays) */
  readonly signal: AbortSignal;
}

export type QueueHandler = (file: QueueFile, context: QueueContext) => Promise<QueueOutcome>;

export interface QueueEvents {
  onOutcome?(file: QueueFile, outcome: QueueOutcome): void;
  onExpired?(name: string, where: 'incoming' | 'failed'): void;
  onFullChange?(full: boolean): void;
}

export interface QueueOptions {
  readonly name: string;
  readonly directory: string;
  readonly failedDirectory: string;
  readonly catchupFrequencyMs: number;
  /** entries taken per catch-up tick; 0 = all (relayd's 0 disables catch-up and loses files: not here) */
  readonly catchupLimit: number;
  readonly cleanupFrequencyMs: number;
  readonly retentionMs: number;
  readonly failedRetentionMs: number;
  readonly concurrency: number;
  /** disk budget of this directory in bytes; 0 = none */
  readonly maxBytes: number;
  /** quiet time after the last watch event before a file is taken (files not written atomically) */
  readonly settleMs?: number;
  /**
   * removes a handled file if the name still holds that very file (inode, size, mtime), e.g. on a thread that
   * already does the file's other I/O (src/reports); default: a stat and an unlink through libuv's thread pool
   */
  readonly remove?: FileRemover;
  /**
   * a file left in the taken folder this long (by its ctime: the take's rename) is put back by a tick of its own
   * while running, not only at the next start; default STALE_TAKE_MS
   */
  readonly staleTakeMs?: number;
}

/** the identity of a file as the queue saw it: another file put under the same name since differs in one of them */
export interface FileIdentity {
  readonly ino: number;
  readonly size: number;
  readonly mtimeMs: number;
}

/**
 * 'replaced': the name holds another file now (not removed); 'gone': nothing there (removed by someone else).
 * Without `expected` (a file the queue did not track), whatever the name holds is removed.
 */
export type FileRemover = (path: string, expected: FileIdentity | undefined) => Promise<'removed' | 'replaced' | 'gone'>;

/** whether the file a name holds `now` is the one `expected` (undefined: any file is) */
export function isSameFile(now: FileIdentity, expected: FileIdentity | undefined): boolean {
  return expected === undefined || (now.ino === expected.ino && now.size === expected.size && now.mtimeMs === expected.mtimeMs);
}

/**
 * The folder, beside a queue directory (in its parent, as the spool's .tmp/ where uploads are written: the same
 * file system), where a file is taken before it is removed or moved to failed/ (see takeIfSame), in a sub-folder
 * named as the queue directory. The queue's start puts back what a crash left there.
 */
export const TAKEN_FOLDER = '.taken';

const takenFolderOf = (directory: string): string => join(dirname(directory), TAKEN_FOLDER, basename(directory));
/**
 * each take its own name, `<pid>-<thread>-<seq>.<name>`: two takes of one name at once (a retention expiry and a
 * dispatch of the same file, a new upload taken while the last one's unlink is pending) must not rename over each
 * other's file. The prefix holds no dot: the queue file's name is what follows the first one
 */
const takePrefix = `${process.pid}-${threadId}-`;
let takes = 0;
const takenPathOf = (path: string): string => {
  takes += 1;
  return join(takenFolderOf(dirname(path)), `${takePrefix}${takes.toString(36)}.${basename(path)}`);
};
const queueNameOfTaken = (entry: string): string => entry.slice(entry.indexOf('.') + 1);

/**
 * Takes the file a name holds out of its directory when it is the `expected` one, for the caller to unlink or
 * move: its path in the taken folder; 'replaced' (another file holds the name, left in place) or 'gone'.
 * Checking the name's identity and then unlinking it would delete a file renamed over the name between the two
 * (the same report uploaded again, answered 204, while the first was being forwarded: lost unforwarded). So the
 * file is first moved out by a rename (atomic: whatever the name held at that instant), its identity checked where
 * nothing else writes, and a file that is not the expected one is put back — unless a newer one took the name
 * meanwhile: the one taken had then been overwritten, as the newer one's rename would have done anyway.
 */
export async function takeIfSame(path: string, expected: FileIdentity): Promise<string | 'replaced' | 'gone'> {
  const taken = takenPathOf(path);
  try {
    await rename(path, taken);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    // the name is gone, or the taken folder is (removed by hand): made again, and one more try
    if (statSync(path, { throwIfNoEntry: false }) === undefined) return 'gone';
    mkdirSync(dirname(taken), { recursive: true, mode: 0o770 });
    try {
      await rename(path, taken);
    } catch (again) {
      if ((again as NodeJS.ErrnoException).code === 'ENOENT') return 'gone';
      throw again;
    }
  }
  // synchronous: a dentry- and inode-cache hit of the file just renamed
  const now = statSync(taken, { throwIfNoEntry: false });
  if (now !== undefined && isSameFile(now, expected)) return taken;
  if (now !== undefined) putBack(taken, path);
  return 'replaced';
}

/**
 * A taken file back under its name. When another file has the name (EEXIST), the newer of the two by mtime keeps
 * it, as the uploads' own renames would have left it: most often the one there (an upload since the take); but
 * the taken one when it is newer (what the recovery of `.taken/` puts back while running may be older than a
 * take in progress of the same name), renamed over the older one.
 */
function putBack(taken: string, path: string): 'placed' | 'superseded' {
  try {
    linkSync(taken, path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    const holder = statSync(path, { throwIfNoEntry: false });
    if (holder === undefined || statSync(taken).mtimeMs > holder.mtimeMs) {
      renameSync(taken, path);
      return 'placed';
    }
    unlinkSync(taken);
    return 'superseded';
  }
  unlinkSync(taken);
  return 'placed';
}

/**
 * `act` on the file a name holds, taken out first when it is the `expected` one (takeIfSame); if `act` fails,
 * the file goes back under its name for the queue's next try (if that fails too, recoverStaleTakes puts it back)
 */
async function actOnTaken<T>(path: string, expected: FileIdentity, act: (taken: string) => Promise<T>): Promise<T | 'replaced' | 'gone'> {
  const taken = await takeIfSame(path, expected);
  if (taken === 'replaced' || taken === 'gone') return taken;
  try {
    return await act(taken);
  } catch (error) {
    try {
      putBack(taken, path);
    } catch {
      // left in the taken folder: recoverStaleTakes puts it back once it is STALE_TAKE_MS old
    }
    throw error;
  }
}

/**
 * The default remover: the file taken out (takeIfSame), then unlinked, each through libuv's thread pool (an ext4
 * rename or unlink waits for the journal while other writers fsync). Without `expected` (a file the queue did not
 * track), whatever the name holds is removed.
 */
export async function removeIfSame(path: string, expected: FileIdentity | undefined): Promise<'removed' | 'replaced' | 'gone'> {
  try {
    if (expected !== undefined) {
      return await actOnTaken(path, expected, async (taken) => {
        await unlink(taken);
        return 'removed' as const;
      });
    }
    await unlink(path);
    return 'removed';
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return 'gone';
    throw error;
  }
}

/**
 * A take's rename, check and unlink or move last milliseconds; one still in the taken folder after this long was
 * left there: its put-back failed (a full or read-only file system at that instant), or the thread doing it ended.
 * This assumes that a rename updates the file's ctime (Linux's local file systems do; POSIX does not say) and that
 * the clock does not jump ahead by this much; if either fails, a take in progress may be put back: the file is
 * then handled twice (forwarded twice at worst), never lost.
 */
export const STALE_TAKE_MS = 5 * 60_000;

/**
 * What a stop at the wrong instant left in a queue directory's taken folder goes back under its name (forwarded
 * again: at least once, never lost); where the name holds a file, the newer of the two by mtime keeps it
 * (putBack). At the start (`olderThanMs` undefined) everything there was left by an earlier process; while
 * running, only the names whose every entry was taken at least `olderThanMs` ago (ctime: the take's rename), so
 * that no take in progress, on this thread or another, is undone under its feet.
 */
async function recoverTaken(directory: string, log: Logger, olderThanMs?: number): Promise<void> {
  const folder = takenFolderOf(directory);
  await mkdir(folder, { recursive: true, mode: 0o770 });
  const now = Date.now();
  const entries: Array<{ entry: string; name: string; mtimeMs: number; young: boolean }> = [];
  for (const entry of await readdir(folder)) {
    const info = await stat(join(folder, entry)).catch(() => undefined);
    if (info === undefined) continue; // its take ended meanwhile
    entries.push({ entry, name: queueNameOfTaken(entry), mtimeMs: info.mtimeMs, young: olderThanMs !== undefined && now - info.ctimeMs < olderThanMs });
  }
  const youngNames = new Set(entries.filter((e) => e.young).map((e) => e.name));
  // newest first: when a name was taken more than once (a re-upload taken while the forwarded copy's unlink was
  // pending), the name gets the last upload and the older copies are dropped (putBack: the newer keeps the name)
  const due = entries.filter((e) => !youngNames.has(e.name)).sort((a, b) => b.mtimeMs - a.mtimeMs);
  let restored = 0;
  let superseded = 0;
  for (const { entry } of due) {
    const taken = join(folder, entry);
    try {
      if (putBack(taken, join(directory, queueNameOfTaken(entry))) === 'placed') restored += 1;
      else superseded += 1;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') continue; // its (slow) take ended meanwhile
      log.error(
        { event: 'taken_recovery_error', code: 'RELAY_ERR_SPOOL_WRITE', file: entry, error: messageOf(error) },
        `cannot put ${TAKEN_FOLDER}/${basename(directory)}/${entry} back: it stays there for the next try`,
      );
    }
  }
  if (restored + superseded > 0) {
    log.warn(
      { event: 'taken_recovered', restored, superseded, while_running: olderThanMs !== undefined },
      olderThanMs === undefined
        ? 'files an earlier stop left half-removed: put back to be handled again (a forwarded one may be forwarded twice), or dropped where a newer upload has the name'
        : 'files left half-removed by a failed put-back: put back to be handled again (a forwarded one may be forwarded twice), or dropped where a newer upload has the name',
    );
  }
}

export interface QueueStats {
  readonly files: number;
  readonly bytes: number;
  readonly oldestMtimeMs: number | undefined;
  readonly inFlight: number;
  readonly paused: boolean;
  readonly full: boolean;
  /** files held until releaseHeld() */
  readonly held: number;
}

export interface QueueStopOptions {
  /** how long files in flight may take to finish before their handlers are aborted (default 10 s) */
  readonly graceMs?: number;
}

export interface Queue {
  start(): Promise<void>;
  /** ends within graceMs + ABORT_SETTLE_MS whatever the handlers do; a file interrupted stays in the directory */
  stop(options?: QueueStopOptions): Promise<void>;
  stats(): QueueStats;
  /** scan now (tests, reload) */
  scan(): Promise<void>;
  /** look again at every held file (the condition they wait for may have changed); returns how many */
  releaseHeld(): number;
  /**
   * Admission of an upload of up to `bytes`: counted against the disk budget from now on, so that
   * uploads received at the same time cannot together overshoot it. Undefined = over budget.
   */
  reserve(bytes: number): number | undefined;
  /** the upload ended; when it was stored as `name`, the file is tracked before its reservation is dropped */
  release(reservation: number, name?: string): Promise<void>;
  /** `bytes` leave a reservation (a worker's lease, http/admission.ts), after the files `names` are tracked */
  settle(reservation: number, bytes: number, names: readonly string[]): Promise<void>;
}

interface Tracked {
  size: number;
  mtimeMs: number;
  /** inode: with size and mtime, tells the file handled from one put under the same name since */
  ino: number;
  attempts: number;
  state: 'pending' | 'in-flight' | 'deferred' | 'ignored' | 'claimed' | 'held';
  timer?: NodeJS.Timeout;
  /** why it is held (state 'held'), for the give-up at retention */
  held?: { readonly code: string; readonly reason: string; readonly since: number };
  /** when a file waiting on its retry backoff is due */
  dueAt?: number;
}

const BASE_BACKOFF_MS = 500;
/** per-file backoff cap while upstream is failing (no 2xx since the queue last paused, or failures in a row) */
const MAX_FILE_BACKOFF_MS = 5 * 60_000;
/**
 * per-file backoff cap while upstream answers 2xx: a file that failed then is bad luck on a flapping
 * upstream (or a file upstream refuses alone), not a reason to sit for minutes behind a working upstream
 */
export const ANSWERING_MAX_BACKOFF_MS = 2_000;
/** at most this often, a 2xx pulls in the files whose backoff was set while upstream was failing */
const PULL_IN_INTERVAL_MS = 1_000;
const MAX_QUEUE_PAUSE_MS = 30_000;
/** consecutive transient failures before the whole queue pauses (the peer is down, not one file), at least */
const PAUSE_AFTER = 3;
const DEFAULT_STOP_GRACE_MS = 10_000;
/** after the abort, how long handlers get to come back before stop() returns without them */
export const ABORT_SETTLE_MS = 2_000;

/** files stat'ed synchronously between two turns of the event loop (a few µs each: far cheaper than a promise per file) */
const STAT_BATCH = 256;

interface Listed {
  readonly name: string;
  readonly size: number;
  readonly mtimeMs: number;
  readonly ino: number;
}

/** regular files among `names`, with size and mtime; vanished ones are left out */
async function statFiles(directory: string, names: readonly string[]): Promise<Listed[]> {
  const listed: Listed[] = [];
  for (let start = 0; start < names.length; start += STAT_BATCH) {
    if (start > 0) await yieldToLoop();
    for (const name of names.slice(start, start + STAT_BATCH)) {
      const info = statSync(join(directory, name), { throwIfNoEntry: false });
      if (info?.isFile()) listed.push({ name, size: info.size, mtimeMs: info.mtimeMs, ino: info.ino });
    }
  }
  return listed;
}

/** undefined when the file is gone; any other error is thrown (the outcome is then applied again later) */
async function statIfPresent(path: string): Promise<Stats | undefined> {
  try {
    return await stat(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
}

function backoff(attempt: number, max: number): number {
  const ideal = Math.min(max, BASE_BACKOFF_MS * 2 ** Math.max(0, attempt - 1));
  return Math.round(ideal * (0.5 + Math.random() * 0.5));
}

export function createQueue(options: QueueOptions, handler: QueueHandler, events: QueueEvents, parentLog: Logger): Queue {
  const log = parentLog.child({ module: 'spool', queue: options.name });
  const settleMs = options.settleMs ?? 100;
  const remove = options.remove ?? removeIfSame;
  const staleTakeMs = options.staleTakeMs ?? STALE_TAKE_MS;
  // a whole window of files in flight (or every file there is) failing in a row: upstream is down. Fewer (3 of
  // 32 at once) is what an upstream failing half of its requests gives all the time; pausing then left it idle
  // most of the time while it took every other request (bench/faults), and max_concurrency bounds its load
  const pauseAfter = () => Math.max(PAUSE_AFTER, Math.min(options.concurrency, files.size));
  const files = new Map<string, Tracked>();
  /** dispatch order: oldest first as discovered */
  const ready = new Set<string>();
  const settling = new Map<string, NodeJS.Timeout>();
  let inFlight = 0;
  /** outcomes being applied (a removal, a move to failed/): stop() waits for them as for the handlers */
  let applyingOutcomes = 0;
  let consecutiveFailures = 0;
  let pausedUntil = 0;
  let pauseTimer: NodeJS.Timeout | undefined;
  let halfOpen = false;
  /** the last 2xx (a 'done'), and the last time the queue judged upstream to be failing (a pause) */
  let lastOkAt = 0;
  let lastPausedAt = 0;
  let lastPullInAt = 0;
  /** files waiting on their retry backoff (not the ones deferred for another reason) */
  const backingOff = new Set<string>();
  let bytes = 0;
  let full = false;
  /** bytes of uploads being received (admitted by reserve(), not yet tracked) */
  let reserved = 0;
  const reservations = new Map<number, number>();
  let lastReservation = 0;
  let running = false;
  let watcher: FSWatcher | undefined;
  const timers: NodeJS.Timeout[] = [];
  let scanning: Promise<void> | undefined;
  const idle: Array<() => void> = [];
  /** the names of the files in flight (for the stop's log lines) */
  const inFlightNames = new Set<string>();
  /**
   * one controller for every file in flight, not one per file: stop() aborts all the files still in flight at
   * once, so a per-file AbortController (and its signal, an EventTarget) bought nothing but allocations on the
   * path of every forwarded report (bench/pipeline). A new one at each start() (a stopped queue may start again)
   */
  let abort = new AbortController();
  /** names this queue removed from the directory itself: their watch event needs no stat (cleared at each catch-up) */
  const removedHere = new Set<string>();
  /**
   * names told by release()/settle() (an upload renamed into place): their arrival event needs no second
   * stat. Cleared at each catch-up as removedHere: a name left over (its event lost) costs at worst one
   * arrival of that name seen by the next catch-up instead of the watch
   */
  const announced = new Set<string>();
  /**
   * names seen arriving (announced, or by the watch) while the file they held was in flight: a new upload under
   * that name. Its one event is taken then, so the name is looked at again once the file in flight is settled
   * and forgotten; otherwise the new file waited for the next catch-up scan
   */
  const lookAgain = new Set<string>();

  // a file name is one path component (readdir's, or an upload's validated name): no join()'s normalisation per file
  const directoryPrefix = join(options.directory, '/');
  const pathOf = (name: string) => directoryPrefix + name;

  function updateFull(): void {
    const now = options.maxBytes > 0 && bytes >= options.maxBytes;
    if (now !== full) {
      full = now;
      log.warn({ event: now ? 'spool_full' : 'spool_not_full', bytes, max: options.maxBytes }, now ? 'spool budget reached: new uploads are refused' : 'spool back under budget');
      events.onFullChange?.(now);
    }
  }

  function forget(name: string): void {
    const tracked = files.get(name);
    if (!tracked) return;
    if (tracked.timer) clearTimeout(tracked.timer);
    bytes -= tracked.size;
    files.delete(name);
    ready.delete(name);
    backingOff.delete(name);
    updateFull();
  }

  function track(name: string, size: number, mtimeMs: number, ino: number): Tracked {
    let tracked = files.get(name);
    if (tracked) {
      bytes += size - tracked.size;
      tracked.size = size;
      tracked.mtimeMs = mtimeMs;
      tracked.ino = ino;
    } else {
      tracked = { size, mtimeMs, ino, attempts: 0, state: 'pending' };
      files.set(name, tracked);
      bytes += size;
    }
    updateFull();
    return tracked;
  }

  function makeReady(name: string): void {
    const tracked = files.get(name);
    if (!tracked) return;
    tracked.state = 'pending';
    backingOff.delete(name);
    ready.add(name);
    pump();
  }

  // a 2xx since upstream was last judged down, and not a few failures in a row since
  const isUpstreamAnswering = () => lastOkAt > lastPausedAt && consecutiveFailures < PAUSE_AFTER;

  /** upstream answered 2xx: files told to wait longer than a working upstream warrants are retried now */
  function pullIn(now: number): void {
    if (backingOff.size === 0 || now - lastPullInAt < PULL_IN_INTERVAL_MS) return;
    lastPullInAt = now;
    const late: string[] = [];
    for (const name of backingOff) {
      const tracked = files.get(name);
      if (tracked?.state === 'deferred' && (tracked.dueAt ?? 0) > now + ANSWERING_MAX_BACKOFF_MS) late.push(name);
    }
    if (late.length === 0) return;
    log.info({ event: 'backoff_shortened', files: late.length }, 'upstream answers again: retrying the files waiting on a long backoff');
    for (const name of late) {
      const tracked = files.get(name);
      if (tracked?.timer) clearTimeout(tracked.timer);
      if (tracked) tracked.timer = undefined;
      makeReady(name);
    }
  }

  /** the probe of a paused queue when no file is due: the one due soonest, so that recovery is seen within the pause */
  function promoteProbe(): void {
    let soonest: string | undefined;
    let soonestAt = Infinity;
    for (const name of backingOff) {
      const tracked = files.get(name);
      if (tracked?.state === 'deferred' && (tracked.dueAt ?? 0) < soonestAt) {
        soonest = name;
        soonestAt = tracked.dueAt ?? 0;
      }
    }
    const tracked = soonest === undefined ? undefined : files.get(soonest);
    if (soonest === undefined || tracked === undefined) return;
    if (tracked.timer) clearTimeout(tracked.timer);
    tracked.timer = undefined;
    tracked.state = 'pending';
    backingOff.delete(soonest);
    ready.add(soonest);
  }

  function pause(): void {
    const delay = backoff(consecutiveFailures - pauseAfter() + 1, MAX_QUEUE_PAUSE_MS);
    pausedUntil = Date.now() + delay;
    lastPausedAt = Date.now();
    halfOpen = false;
    if (pauseTimer) clearTimeout(pauseTimer);
    pauseTimer = setTimeout(() => {
      pauseTimer = undefined;
      halfOpen = true;
      pump();
    }, delay);
    pauseTimer.unref();
    log.warn({ event: 'queue_paused', ms: delay, failures: consecutiveFailures }, 'upstream keeps failing: pausing this queue');
  }

  function pump(): void {
    if (!running) return;
    if (Date.now() < pausedUntil && !halfOpen) return;
    const limit = halfOpen ? 1 : options.concurrency;
    if (halfOpen && ready.size === 0 && inFlight === 0) promoteProbe();
    for (const name of ready) {
      if (inFlight >= limit) break;
      ready.delete(name);
      const tracked = files.get(name);
      if (!tracked || tracked.state !== 'pending') continue;
      void dispatch(name, tracked);
    }
    wakeIfIdle();
  }

  function wakeIfIdle(): void {
    // also when stopped: stop() waits here for the files in flight (pump() returns early then)
    if (inFlight === 0 && applyingOutcomes === 0 && (ready.size === 0 || !running)) for (const wake of idle.splice(0)) wake();
  }

  async function dispatch(name: string, tracked: Tracked): Promise<void> {
    tracked.state = 'in-flight';
    inFlight += 1;
    const claimed: string[] = [];
    inFlightNames.add(name);
    const file: QueueFile = { name, path: pathOf(name), size: tracked.size, mtimeMs: tracked.mtimeMs, attempts: tracked.attempts };
    const context: QueueContext = {
      claim(partner) {
        const other = files.get(partner);
        if (!other || (other.state !== 'pending' && other.state !== 'deferred' && other.state !== 'ignored')) return undefined;
        if (other.timer) clearTimeout(other.timer);
        ready.delete(partner);
        backingOff.delete(partner);
        other.state = 'claimed';
        claimed.push(partner);
        return { name: partner, path: pathOf(partner), size: other.size, mtimeMs: other.mtimeMs, attempts: other.attempts };
      },
      signal: abort.signal,
    };
    let outcome: QueueOutcome;
    try {
      outcome = await handler(file, context);
    } catch (error) {
      outcome = { kind: 'retry', reason: `internal error: ${messageOf(error)}` };
      log.error({ event: 'handler_error', file: name, err: error }, 'queue handler failed');
    }
    inFlight -= 1;
    const releaseClaims = () => {
      for (const partner of claimed) makeReady(partner);
    };
    applyingOutcomes += 1;
    try {
      await settle(name, tracked, outcome, claimed, releaseClaims);
    } catch (error) {
      // after a backoff, as a transient failure: at once, an error that lasts (a folder not writable, a full
      // disk) would have the file handled again, and forwarded again, as fast as the loop turns
      if (files.get(name) === tracked) {
        tracked.attempts += 1;
        const delay = backoff(tracked.attempts, MAX_FILE_BACKOFF_MS);
        tracked.state = 'deferred';
        tracked.timer = setTimeout(() => {
          tracked.timer = undefined;
          if (files.get(name) === tracked) makeReady(name);
        }, delay);
        tracked.timer.unref();
        log.error({ event: 'outcome_error', file: name, error: messageOf(error), ms: delay }, 'could not apply the outcome; will look again');
      } else {
        log.error({ event: 'outcome_error', file: name, error: messageOf(error) }, 'could not apply the outcome');
      }
    } finally {
      applyingOutcomes -= 1;
    }
    inFlightNames.delete(name);
    events.onOutcome?.(file, outcome);
    pump();
    wakeIfIdle();
  }

  async function settle(name: string, tracked: Tracked, outcome: QueueOutcome, claimed: string[], releaseClaims: () => void): Promise<void> {
    switch (outcome.kind) {
      case 'done': {
        consecutiveFailures = 0;
        halfOpen = false;
        pausedUntil = 0;
        lastOkAt = Date.now();
        pullIn(lastOkAt);
        const replaced: string[] = [];
        for (const done of [name, ...(outcome.also ?? [])]) {
          const handled = done === name ? tracked : files.get(done);
          // the name may hold another file by now (the same report uploaded again, renamed over it while this
          // one was in flight): removing it would lose it unhandled. The remover checks the identity just
          // before its unlink. The name goes into removedHere before: the unlink's watch event may be read
          // before the remover's answer
          removedHere.add(done);
          let removed: 'removed' | 'replaced' | 'gone';
          try {
            removed = await remove(pathOf(done), handled);
          } catch (error) {
            removedHere.delete(done);
            throw error;
          }
          if (removed === 'removed') {
            forget(done);
            if (lookAgain.delete(done)) consider(done);
            continue;
          }
          lookAgain.delete(done);
          // no unlink of ours, so no event to skip; one that came meanwhile (a new arrival) may have been
          // swallowed, so the name is looked at again either way
          removedHere.delete(done);
          replaced.push(done);
        }
        for (const again of replaced) {
          // a new arrival: tracked afresh (attempts from 0) and handled like any other
          forget(again);
          consider(again);
        }
        for (const partner of claimed) if (!(outcome.also ?? []).includes(partner)) makeReady(partner);
        return;
      }
      case 'gone':
        forget(name);
        releaseClaims();
        if (lookAgain.delete(name)) consider(name);
        return;
      case 'ignore':
        tracked.state = 'ignored';
        releaseClaims();
        return;
      case 'hold':
        releaseClaims();
        tracked.held = { code: outcome.code, reason: outcome.reason, since: tracked.held?.since ?? Date.now() };
        tracked.state = 'held';
        log.warn({ event: 'held', file: name, code: outcome.code, reason: outcome.reason }, 'kept: will look again when the condition may have changed, gives up at cleanup.retention');
        return;
      case 'defer':
        releaseClaims();
        tracked.state = 'deferred';
        tracked.timer = setTimeout(() => {
          tracked.timer = undefined;
          if (files.get(name) === tracked) makeReady(name);
        }, outcome.delayMs);
        tracked.timer.unref();
        return;
      case 'retry': {
        releaseClaims();
        tracked.attempts += 1;
        consecutiveFailures += 1;
        const delay = backoff(tracked.attempts, isUpstreamAnswering() ? ANSWERING_MAX_BACKOFF_MS : MAX_FILE_BACKOFF_MS);
        log.warn({ event: 'retry_later', file: name, attempts: tracked.attempts, ms: delay, reason: outcome.reason }, 'transient error, will retry');
        tracked.state = 'deferred';
        tracked.dueAt = Date.now() + delay;
        backingOff.add(name);
        tracked.timer = setTimeout(() => {
          tracked.timer = undefined;
          if (files.get(name) === tracked) makeReady(name);
        }, delay);
        tracked.timer.unref();
        if (halfOpen || (consecutiveFailures >= pauseAfter() && Date.now() >= pausedUntil)) pause();
        return;
      }
      case 'failed': {
        releaseClaims();
        await mkdir(options.failedDirectory, { recursive: true });
        // as for 'done': a file put under this name since is a new arrival, not the one judged here; taken out
        // first, so that the move to failed/ cannot catch such a file (see takeIfSame)
        removedHere.add(name);
        let moved: 'moved' | 'replaced' | 'gone';
        try {
          moved = await actOnTaken(pathOf(name), tracked, async (taken) => {
            const reason = `${outcome.code}: ${outcome.reason}\nfile: ${name}\nat: ${new Date().toISOString()}\n`;
            await writeFile(join(options.failedDirectory, `${name}.reason`), reason);
            await rename(taken, join(options.failedDirectory, name));
            return 'moved' as const;
          });
        } catch (error) {
          // failed/ cannot take it (full, removed): back in incoming/ (actOnTaken), judged again later
          removedHere.delete(name);
          throw error;
        }
        if (moved !== 'moved') {
          removedHere.delete(name);
          forget(name);
          if (moved === 'replaced') consider(name);
          return;
        }
        log.error({ event: 'failed', file: name, code: outcome.code, reason: outcome.reason }, 'moved to failed/');
        forget(name);
        if (lookAgain.delete(name)) consider(name);
        return;
      }
    }
  }

  function consider(name: string): void {
    if (name.startsWith('.')) return;
    const existing = files.get(name);
    // ignored and held files are looked at again when they change (a held report uploaded again, fixed)
    const waiting = (tracked: Tracked | undefined): boolean => tracked?.state === 'ignored' || tracked?.state === 'held';
    if (existing && !waiting(existing)) {
      if (existing.state === 'in-flight' || existing.state === 'claimed') lookAgain.add(name);
      return;
    }
    // synchronous, as the scans' stats (statFiles): the name was just renamed into place or just changed, so
    // the stat is a dentry- and inode-cache hit of a few microseconds, where a hand-off to libuv's thread pool
    // costs ~0.1 ms of CPU (the pool thread's wake-up, the completion's, a promise) for every upload
    let info;
    try {
      info = statSync(pathOf(name), { throwIfNoEntry: false });
    } catch {
      info = undefined;
    }
    if (info === undefined) {
      if (existing?.state !== 'in-flight' && existing?.state !== 'claimed') forget(name);
      return;
    }
    if (!info.isFile()) return;
    if (existing && existing.mtimeMs === info.mtimeMs && existing.size === info.size) return;
    track(name, info.size, info.mtimeMs, info.ino);
    makeReady(name);
  }

  function onWatchEvent(name: string | null): void {
    if (!name || name.startsWith('.')) return;
    // the event of our own unlink or move to failed/ (a name goes in just before the call and out at its
    // event, or at once when the call found nothing to remove). A file renamed in under the same name
    // before our unlink is not removed (the identity check in settle()); one arriving after it brings a
    // second event, which is not swallowed
    if (removedHere.delete(name)) return;
    if (announced.delete(name)) return;
    const previous = settling.get(name);
    if (previous) clearTimeout(previous);
    const timer = setTimeout(() => {
      settling.delete(name);
      consider(name);
    }, settleMs);
    timer.unref();
    settling.set(name, timer);
  }

  function startWatcher(): void {
    if (!running || watcher) return;
    try {
      watcher = watch(options.directory, { persistent: false }, (_event, name) => onWatchEvent(name));
      watcher.on('error', (error) => {
        log.error({ event: 'watch_error', error: messageOf(error) }, 'directory watch failed; restarting it');
        watcher?.close();
        watcher = undefined;
        const retry = setTimeout(() => {
          startWatcher();
          void scan();
        }, 1_000);
        retry.unref();
      });
    } catch (error) {
      log.error({ event: 'watch_error', error: messageOf(error) }, 'cannot watch directory; relying on catch-up');
    }
  }

  /** list the directory, resync sizes, take untracked files oldest first */
  async function scanOnce(limit: number): Promise<void> {
    let names: string[];
    try {
      names = (await readdir(options.directory)).filter((n) => !n.startsWith('.'));
    } catch (error) {
      log.error({ event: 'scan_error', error: messageOf(error) }, 'cannot list spool directory');
      return;
    }
    const present = new Set(names);
    for (const name of [...files.keys()]) {
      const tracked = files.get(name);
      if (!present.has(name) && tracked && tracked.state !== 'in-flight' && tracked.state !== 'claimed') forget(name);
    }
    removedHere.clear();
    announced.clear();
    const found = await statFiles(
      options.directory,
      names.filter((name) => !files.has(name)),
    );
    found.sort((a, b) => a.mtimeMs - b.mtimeMs);
    const take = limit > 0 ? found.slice(0, limit) : found;
    for (const entry of take) {
      if (files.has(entry.name)) continue;
      track(entry.name, entry.size, entry.mtimeMs, entry.ino);
      ready.add(entry.name);
    }
    pump();
  }

  /**
   * an upload the caller has just renamed into place: tracked now. Its one watch event (the rename) is
   * skipped when it comes later, or its settle timer dropped when it came first: either way one stat per
   * file, not two (the second one, once the file was forwarded and removed, found nothing)
   */
  function announce(name: string): void {
    if (name.startsWith('.')) return;
    const early = settling.get(name);
    if (early !== undefined) {
      clearTimeout(early);
      settling.delete(name);
    } else if (watcher !== undefined) {
      announced.add(name);
    }
    consider(name);
  }

  function scan(limit = options.catchupLimit): Promise<void> {
    scanning ??= scanOnce(limit).finally(() => {
      scanning = undefined;
    });
    return scanning;
  }

  async function expire(directory: string, retentionMs: number, where: 'incoming' | 'failed'): Promise<void> {
    let names: string[];
    try {
      names = await readdir(directory);
    } catch {
      return;
    }
    const limit = Date.now() - retentionMs;
    const candidates = names.filter((name) => {
      if (name.startsWith('.')) return false;
      const tracked = where === 'incoming' ? files.get(name) : undefined;
      // a tracked file's mtime is known: only old ones are looked at again
      return tracked === undefined || (tracked.state !== 'in-flight' && tracked.state !== 'claimed' && tracked.mtimeMs < limit);
    });
    for (const { name } of (await statFiles(directory, candidates)).filter((entry) => entry.mtimeMs < limit)) {
      const tracked = where === 'incoming' ? files.get(name) : undefined;
      if (tracked && (tracked.state === 'in-flight' || tracked.state === 'claimed')) continue;
      try {
        const info = await stat(join(directory, name));
        if (!info.isFile() || info.mtimeMs >= limit) continue;
        if (tracked?.state === 'held' && tracked.held !== undefined) {
          await giveUp(name, tracked, tracked.held);
          continue;
        }
        if (where === 'incoming') {
          // as for a forwarded file: one uploaded again under this name since the stat is not the expired one
          const removed = await removeIfSame(join(directory, name), info);
          forget(name);
          if (removed === 'replaced') {
            consider(name);
            continue;
          }
          if (removed === 'gone') continue;
        } else {
          await unlink(join(directory, name));
        }
        if (!name.endsWith('.reason')) {
          log.warn({ event: 'expired', file: name, directory: where, age_s: Math.round((Date.now() - info.mtimeMs) / 1000) }, `removing old file: ${name}`);
          events.onExpired?.(name, where);
        }
      } catch {
        // vanished meanwhile
      }
    }
  }

  /** a held file at retention: failed/ with the reason it was held for (the evidence is kept, not deleted) */
  async function giveUp(name: string, tracked: Tracked, held: { code: string; reason: string; since: number }): Promise<void> {
    const outcome: QueueOutcome = {
      kind: 'failed',
      code: held.code,
      reason: `${held.reason} (held since ${new Date(held.since).toISOString()}, given up at cleanup.retention)`,
    };
    log.error({ event: 'gave_up', file: name, code: held.code, reason: held.reason }, 'held file given up at cleanup.retention');
    await settle(name, tracked, outcome, [], () => undefined);
    events.onOutcome?.({ name, path: pathOf(name), size: tracked.size, mtimeMs: tracked.mtimeMs, attempts: tracked.attempts }, outcome);
  }

  async function cleanup(): Promise<void> {
    await expire(options.directory, options.retentionMs, 'incoming');
    await expire(options.failedDirectory, options.failedRetentionMs, 'failed');
  }

  /** a put-back that failed (actOnTaken) left its file in the taken folder: back in the queue once stale, not at the next start */
  async function recoverStaleTakes(): Promise<void> {
    await recoverTaken(options.directory, log, staleTakeMs).catch((error: unknown) => {
      log.error({ event: 'taken_recovery_error', code: 'RELAY_ERR_SPOOL_READ', error: messageOf(error) }, `cannot look into ${TAKEN_FOLDER}/: files left there wait for the next look`);
    });
  }

  /** true when nothing is in flight any more, false when `ms` passed first */
  function idleWithin(ms: number): Promise<boolean> {
    if (inFlight === 0 && applyingOutcomes === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        const at = idle.indexOf(wake);
        if (at >= 0) idle.splice(at, 1);
        resolve(false);
      }, ms);
      const wake = () => {
        clearTimeout(timer);
        resolve(true);
      };
      idle.push(wake);
    });
  }

  function every(ms: number, job: () => Promise<void>): void {
    const timer = setInterval(() => void job(), Math.max(ms, 100));
    timer.unref();
    timers.push(timer);
  }

  return {
    async start() {
      if (running) return;
      running = true;
      if (abort.signal.aborted) abort = new AbortController();
      await mkdir(options.directory, { recursive: true });
      await recoverTaken(options.directory, log).catch((error: unknown) => {
        log.error(
          { event: 'taken_recovery_error', code: 'RELAY_ERR_SPOOL_READ', error: messageOf(error) },
          `cannot look into ${TAKEN_FOLDER}/: files an earlier stop left there are looked at again once they are ${staleTakeMs / 1000} s old`,
        );
      });
      startWatcher();
      // the first scan takes everything, whatever the limit: a restart must not lose files
      await scan(0);
      every(options.catchupFrequencyMs, () => scan());
      await cleanup();
      every(options.cleanupFrequencyMs, cleanup);
      // on its own tick, not the cleanup's (cleanup.frequency is an hour by default)
      every(Math.min(staleTakeMs / 5, 60_000), recoverStaleTakes);
    },

    async stop(stopOptions = {}) {
      if (!running) return;
      running = false;
      watcher?.close();
      watcher = undefined;
      for (const timer of timers.splice(0)) clearInterval(timer);
      for (const timer of settling.values()) clearTimeout(timer);
      if (pauseTimer) clearTimeout(pauseTimer);
      for (const tracked of files.values()) if (tracked.timer) clearTimeout(tracked.timer);
      if (inFlight === 0 && applyingOutcomes === 0) return;
      const graceMs = stopOptions.graceMs ?? DEFAULT_STOP_GRACE_MS;
      log.info({ event: 'queue_stopping', in_flight: inFlight, grace_ms: graceMs }, 'waiting for the files in flight');
      if (await idleWithin(graceMs)) return;
      // e.g. an upstream that took the request and never answers: the file stays for the next start
      const interrupted = [...inFlightNames];
      log.warn({ event: 'queue_interrupting', files: interrupted, grace_ms: graceMs }, 'files still in flight at the end of the grace: interrupted, they stay in the spool');
      abort.abort();
      if (await idleWithin(ABORT_SETTLE_MS)) return;
      log.error({ event: 'queue_abandoned', files: [...inFlightNames] }, 'handlers did not return after the abort: stopping without them (the files stay in the spool)');
    },

    stats() {
      let oldest: number | undefined;
      let held = 0;
      for (const tracked of files.values()) {
        if (oldest === undefined || tracked.mtimeMs < oldest) oldest = tracked.mtimeMs;
        if (tracked.state === 'held') held += 1;
      }
      return { files: files.size, bytes, oldestMtimeMs: oldest, inFlight, paused: Date.now() < pausedUntil, full, held };
    },

    scan: () => scan(),

    releaseHeld() {
      let released = 0;
      for (const [name, tracked] of files) {
        if (tracked.state !== 'held') continue;
        released += 1;
        makeReady(name);
      }
      if (released > 0) log.info({ event: 'released', files: released }, 'looking again at held files');
      return released;
    },

    reserve(request) {
      if (options.maxBytes > 0 && bytes + reserved + request > options.maxBytes) return undefined;
      lastReservation += 1;
      reservations.set(lastReservation, request);
      reserved += request;
      return lastReservation;
    },

    async release(reservation, name) {
      if (!reservations.has(reservation)) return;
      try {
        // tracked at once (not ~settleMs later by the watch event): its bytes move from reserved to the budget without a gap
        if (name !== undefined) announce(name);
      } finally {
        // read after the await: a settle() may have shrunk it meanwhile
        const request = reservations.get(reservation);
        if (request !== undefined) {
          reservations.delete(reservation);
          reserved -= request;
        }
      }
    },

    async settle(reservation, shrink, names) {
      if (!reservations.has(reservation)) return;
      try {
        for (const name of names) announce(name);
      } finally {
        const request = reservations.get(reservation);
        if (request !== undefined) {
          const taken = Math.min(shrink, request);
          reserved -= taken;
          if (request - taken <= 0) reservations.delete(reservation);
          else reservations.set(reservation, request - taken);
        }
      }
    },
  };
}
