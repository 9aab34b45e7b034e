// Bounded synchronous file access, shared by the servers that answer many small requests from files
// (CFEngine server, HTTPS policy downloads). On the local disk a policy tree lives on, with warm caches,
// realpath/lstat/open/fstat/a read of a few hundred KiB take microseconds; the same call through libuv's
// thread pool costs a thread wake-up, an eventfd and an event-loop turn, and on a 2-core machine busy with
// TLS handshakes the main thread also waits for pool threads that are not scheduled (measured: a policy
// download spent more main-thread CPU in async realpath/read/close/open/fstat than in serving the bytes).
// So calls run synchronously, with two bounds so that a slow disk cannot stall the other connections:
// reads are synchronous only up to SYNC_READ_MAX_BYTES per call, and every synchronous call is timed: one
// slower than SLOW_CALL_MS (a disk under pressure, a network file system) sends every call of this process
// to the thread pool for ASYNC_HOLD_MS. A slow disk thus costs the event loop at most one slow call per
// hold period.

import { close, closeSync } from 'node:fs';

/** a synchronous call slower than this means the file system is not the fast local one we assumed */
const SLOW_CALL_MS = 10;
/** then everything goes through the thread pool for this long */
const ASYNC_HOLD_MS = 60_000;
/** larger reads always go through the thread pool */
export const SYNC_READ_MAX_BYTES = 256 * 1024;

let asyncUntil = 0;
const listeners = new Set<(ms: number) => void>();

/** called (once per hold period) when a synchronous call was slow and calls switch to the thread pool */
export function onSlowFileSystem(listener: (ms: number) => void): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

/** true while calls go to the thread pool after a slow synchronous call */
export function inThreadPoolMode(): boolean {
  return asyncUntil !== 0 && performance.now() < asyncUntil;
}

/** runs `sync` on the event loop while the file system is fast, else `async` through the thread pool */
export async function direct<T>(sync: () => T, async: () => Promise<T>, size = 0): Promise<T> {
  if (size > SYNC_READ_MAX_BYTES || inThreadPoolMode()) return async();
  return timed(sync);
}

/**
 * For code that has already checked inThreadPoolMode() and answers a whole request synchronously (a promise
 * per call costs more than the call itself): runs `sync` now and, like direct(), a slow call switches this
 * process to the thread pool for the requests that follow.
 */
export function timed<T>(sync: () => T): T {
  const start = performance.now();
  try {
    return sync();
  } finally {
    const took = performance.now() - start;
    if (took > SLOW_CALL_MS) {
      asyncUntil = performance.now() + ASYNC_HOLD_MS;
      for (const listener of listeners) listener(took);
    }
  }
}

/** closes a descriptor; errors are moot (the descriptor is gone either way) */
export function closeQuietly(fd: number): void {
  if (inThreadPoolMode()) {
    close(fd, () => undefined);
    return;
  }
  try {
    closeSync(fd);
  } catch {
    // already closed
  }
}

/** for tests: back to synchronous calls */
export function resetFileSystemMode(): void {
  asyncUntil = 0;
}
