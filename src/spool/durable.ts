// The durability primitives every module that writes state uses (CONVENTIONS.md "Data on disk"):
// temp file in the same directory, fsync, rename, fsync of the directory.

import { randomBytes } from 'node:crypto';
import { open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { RelayError, messageOf } from '../errors.js';

export async function fsyncDirectory(directory: string): Promise<void> {
  const handle = await open(directory, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export interface AtomicWriteOptions {
  readonly mode?: number;
  /** temp names start with this, so a cleaner can recognise leftovers (default ".<random>.tmp") */
  readonly tempPrefix?: string;
  /** fsync the directory after the rename (false when the caller renames several files, then syncs once) */
  readonly syncDirectory?: boolean;
}

/** a whole file or the previous one, whatever the instant of a crash */
export async function writeFileAtomically(path: string, data: Buffer | string, options: AtomicWriteOptions = {}): Promise<void> {
  const directory = dirname(path);
  const random = randomBytes(8).toString('hex');
  const temp = join(directory, options.tempPrefix === undefined ? `.${random}.tmp` : `${options.tempPrefix}${random}.part`);
  const handle = await open(temp, 'wx', options.mode ?? 0o640);
  try {
    await handle.writeFile(data);
    await handle.sync();
    await handle.close();
    await rename(temp, path);
  } catch (error) {
    await handle.close().catch(() => undefined);
    await unlink(temp).catch(() => undefined);
    throw new RelayError('RELAY_ERR_SPOOL_WRITE', `cannot write ${basename(path)} in ${directory}: ${messageOf(error)}`, { cause: error });
  }
  if (options.syncDirectory ?? true) await fsyncDirectory(directory);
}
