// Small file-system habits of the sync module (CONVENTIONS.md "Data on disk"): fsync of files and
// directories, atomic small-file writes, bounded parallelism.

import { rm } from 'node:fs/promises';

/** beside a unit being installed: its new tree while built, its old tree while switched (install.ts) */
export const BUILD_PREFIX = '.sync-build.';
export const OLD_PREFIX = '.sync-old.';

// durability primitives are the spool module's, shared by every writer of state
export { copyFileAtomically, fsyncDirectory, openAtomicFile, writeFileAtomically, writeStreamAtomically, type AtomicFile, type AtomicWriteOptions } from '../../spool/index.js';

export async function removeTree(path: string): Promise<void> {
  await rm(path, { recursive: true, force: true, maxRetries: 3 });
}

export function isErrno(error: unknown, ...codes: string[]): boolean {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  return code !== undefined && codes.includes(code);
}

/** runs `task` over `items` with at most `limit` in flight; the first failure rejects (others still settle) */
export async function forEachLimit<T>(items: Iterable<T>, limit: number, task: (item: T) => Promise<void>): Promise<void> {
  const iterator = items[Symbol.iterator]();
  let failure: { error: unknown } | undefined;
  const worker = async (): Promise<void> => {
    for (;;) {
      if (failure !== undefined) return;
      const next = iterator.next();
      if (next.done === true) return;
      try {
        await task(next.value);
      } catch (error) {
        failure ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, limit) }, worker));
  if (failure !== undefined) throw failure.error;
}
