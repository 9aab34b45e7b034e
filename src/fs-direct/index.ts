// The file service of the servers that answer many small requests from files (CFEngine server, HTTPS policy
// downloads): every file-system call they make goes through `fileSystem`, which decides in ONE place
// (`call`) whether the call runs directly on the event loop or through libuv's thread pool.
//
// Why direct: on the local disk a policy tree lives on, with warm caches, realpath/lstat/open/fstat/a read of
// a few hundred KiB take microseconds; the same call through the thread pool costs a thread wake-up, an
// eventfd and an event-loop turn, and on a 2-core machine busy with TLS handshakes the main thread also
// waits for pool threads that are not scheduled (measured: a policy download spent more main-thread CPU in
// async realpath/read/close/open/fstat than in serving the bytes; cf-agent waits for each reply, so its run
// lasts the sum of our per-request latencies).
// The bounds, so that a slow disk cannot stall the other connections: reads are direct only up to
// SYNC_READ_MAX_BYTES per call, and every direct call is timed: SLOW_CALLS of them slower than SLOW_CALL_MS
// within SLOW_WINDOW_MS (a disk under pressure, a network file system) send every call of this process to the
// thread pool for ASYNC_HOLD_MS. Not one: the timing is wall time, and on a busy CPU a call preempted for a
// time slice or two looks as slow as a disk — one such call used to switch the whole process to the dearer
// pool for a minute (seen at busy starts: +60-100 ms of CPU per agent run). A slow disk repeats at once.
// The mode is process-wide on purpose: it describes the disk, which every server of the process shares.
//
// Each call returns its value directly or a promise of it (`Maybe<T>`): callers `await` it, so one
// implementation serves both modes, and a direct call costs a microtask, not a thread-pool round trip.
// A direct call that fails throws where it is awaited, exactly as a rejected promise does.

import { close, closeSync, fstat, fstatSync, lstat, lstatSync, open, openSync, read, readdir, readdirSync, readlink, readlinkSync, readSync, realpath, realpathSync, stat, statSync, type BigIntStats } from 'node:fs';

/** a synchronous call slower than this means the file system is not the fast local one we assumed */
const SLOW_CALL_MS = 10;
/** this many slow calls ... */
const SLOW_CALLS = 3;
/** ... within this long mean a slow file system */
const SLOW_WINDOW_MS = 10_000;
/** then everything goes through the thread pool for this long */
const ASYNC_HOLD_MS = 60_000;
/** larger reads always go through the thread pool */
export const SYNC_READ_MAX_BYTES = 256 * 1024;

export type Maybe<T> = T | Promise<T>;
/** a path as fs takes it: a string (UTF-8) or the bytes of a binary path */
export type FsPath = string | Buffer;
/** paths come back as UTF-8 strings, or as binary (latin1) strings for the CFEngine protocol */
export type PathEncoding = 'utf8' | 'latin1';

let asyncUntil = 0;
/** slow calls seen in the window that started at the first of them, and the slowest */
let slowCalls = 0;
let slowSince = 0;
let slowest = 0;
const listeners = new Set<(ms: number) => void>();

/** called (once per hold period, with the slowest call's ms) when slow synchronous calls switch calls to the thread pool */
export function onSlowFileSystem(listener: (ms: number) => void): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

/** true while calls go to the thread pool after a slow synchronous call */
export function inThreadPoolMode(): boolean {
  return asyncUntil !== 0 && performance.now() < asyncUntil;
}

/** back to direct calls: for tests, and after the CFEngine warm-up (a slow call there is the start's busy CPU, not the disk) */
export function resetFileSystemMode(): void {
  asyncUntil = 0;
  slowCalls = 0;
}

/** for tests and for an operator's "the disk is slow" switch: thread-pool calls for the hold period */
export function holdThreadPoolMode(): void {
  asyncUntil = performance.now() + ASYNC_HOLD_MS;
}

/**
 * The one decision: `direct` now (timed; a slow one switches the process to the thread pool), or `pooled`
 * through the thread pool while held or for a read larger than SYNC_READ_MAX_BYTES.
 */
export function call<T>(direct: () => T, pooled: () => Promise<T>, size = 0): Maybe<T> {
  if (size > SYNC_READ_MAX_BYTES || (asyncUntil !== 0 && inThreadPoolMode())) return pooled();
  return timed(direct);
}

/** a direct call, timed: a slow one switches the process to the thread pool (for the calls that follow) */
function timed<T>(direct: () => T): T {
  const start = performance.now();
  try {
    return direct();
  } finally {
    const took = performance.now() - start;
    if (took > SLOW_CALL_MS) slowCall(start + took, took);
  }
}

function slowCall(now: number, took: number): void {
  if (slowCalls === 0 || now - slowSince > SLOW_WINDOW_MS) {
    slowCalls = 0;
    slowSince = now;
    slowest = 0;
  }
  slowCalls += 1;
  slowest = Math.max(slowest, took);
  if (slowCalls < SLOW_CALLS) return;
  slowCalls = 0;
  asyncUntil = now + ASYNC_HOLD_MS;
  for (const listener of listeners) listener(slowest);
}

/** a node-style callback as a promise (one closure; util.promisify's wrappers cost more per call) */
function pooled<T>(start: (done: (error: NodeJS.ErrnoException | null, value: T) => void) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => start((error, value) => (error ? reject(error) : resolve(value))));
}

const BIGINT = { bigint: true } as const;
const BIGINT_QUIET = { bigint: true, throwIfNoEntry: false } as const;
const LATIN1 = { encoding: 'latin1' } as const;
const UTF8 = { encoding: 'utf8' } as const;

/** the file-system calls of the servers, each direct or pooled as `call` decides */
export const fileSystem = {
  /** realpath(3) */
  realpath(path: FsPath, encoding: PathEncoding = 'utf8'): Maybe<string> {
    const options = encoding === 'latin1' ? LATIN1 : UTF8;
    return call(
      () => realpathSync.native(path, options),
      () => pooled<string>((done) => realpath.native(path, options, done)),
    );
  },

  lstat(path: FsPath): Maybe<BigIntStats> {
    return call(
      () => lstatSync(path, BIGINT),
      () => pooled<BigIntStats>((done) => lstat(path, BIGINT, done)),
    );
  },

  /** stat following links; undefined when nothing is there */
  statIfExists(path: FsPath): Maybe<BigIntStats | undefined> {
    return call(
      () => statSync(path, BIGINT_QUIET),
      () =>
        pooled<BigIntStats | undefined>((done) =>
          stat(path, BIGINT, (error, stats) => (error?.code === 'ENOENT' || error?.code === 'ENOTDIR' ? done(null, undefined) : done(error, stats))),
        ),
    );
  },

  readlink(path: FsPath, encoding: PathEncoding = 'utf8'): Maybe<string> {
    const options = encoding === 'latin1' ? LATIN1 : UTF8;
    return call(
      () => readlinkSync(path, options),
      () => pooled<string>((done) => readlink(path, options, done)),
    );
  },

  readdir(path: FsPath, encoding: PathEncoding = 'utf8'): Maybe<string[]> {
    const options = encoding === 'latin1' ? LATIN1 : UTF8;
    return call(
      () => readdirSync(path, options),
      () => pooled<string[]>((done) => readdir(path, options, done)),
    );
  },

  /** a descriptor, to be closed with `close` */
  open(path: FsPath, flags: number): Maybe<number> {
    return call(
      () => openSync(path, flags),
      () => pooled<number>((done) => open(path, flags, done)),
    );
  },

  /** pread into buffer[offset..offset+length): the number of bytes read */
  read(fd: number, buffer: Buffer, offset: number, length: number, position: number): Maybe<number> {
    return call(
      () => readSync(fd, buffer, offset, length, position),
      () => pooled<number>((done) => read(fd, buffer, offset, length, position, done)),
      length,
    );
  },

  fstat(fd: number): Maybe<BigIntStats> {
    return call(
      () => fstatSync(fd, BIGINT),
      () => pooled<BigIntStats>((done) => fstat(fd, BIGINT, done)),
    );
  },

  /** closes a descriptor; errors are moot (the descriptor is gone either way) */
  close(fd: number): void {
    if (inThreadPoolMode()) {
      close(fd, () => undefined);
      return;
    }
    try {
      closeSync(fd);
    } catch {
      // already closed
    }
  },
};

/** closes a descriptor quietly (fileSystem.close) */
export const closeQuietly = (fd: number): void => fileSystem.close(fd);

/**
 * The same calls, always direct and timed, for a caller that chose the synchronous path for a whole request
 * (src/cfengine's answers: a request costs no promise or microtask then). The caller checks
 * `inThreadPoolMode()` before it starts and keeps each read within SYNC_READ_MAX_BYTES; a slow call here still
 * sends the calls that follow it (the next requests) to the thread pool.
 */
export const directFileSystem = {
  realpath(path: FsPath, encoding: PathEncoding = 'utf8'): string {
    const options = encoding === 'latin1' ? LATIN1 : UTF8;
    return timed(() => realpathSync.native(path, options));
  },
  lstat(path: FsPath): BigIntStats {
    return timed(() => lstatSync(path, BIGINT));
  },
  /** stat following links; undefined when nothing is there */
  statIfExists(path: FsPath): BigIntStats | undefined {
    return timed(() => statSync(path, BIGINT_QUIET));
  },
  readlink(path: FsPath, encoding: PathEncoding = 'utf8'): string {
    const options = encoding === 'latin1' ? LATIN1 : UTF8;
    return timed(() => readlinkSync(path, options));
  },
  readdir(path: FsPath, encoding: PathEncoding = 'utf8'): string[] {
    const options = encoding === 'latin1' ? LATIN1 : UTF8;
    return timed(() => readdirSync(path, options));
  },
  open(path: FsPath, flags: number): number {
    return timed(() => openSync(path, flags));
  },
  read(fd: number, buffer: Buffer, offset: number, length: number, position: number): number {
    return timed(() => readSync(fd, buffer, offset, length, position));
  },
  fstat(fd: number): BigIntStats {
    return timed(() => fstatSync(fd, BIGINT));
  },
};
