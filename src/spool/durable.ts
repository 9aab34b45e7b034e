// The durability primitives every module that writes state uses (CONVENTIONS.md "Data on disk"):
// temp file in the same directory (or one on the same file system), fsync, rename, fsync of the directory.
// One writer (openAtomicFile) and three shapes of input over it: a buffer, a stream, a local file.

import { randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { copyFile, link, open, rename, unlink, utimes, type FileHandle } from 'node:fs/promises';
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
  /**
   * where the temp file is made (default: the target's directory). Must be on the target's file system; a
   * directory of its own (emptied at start by its owner) keeps a crash's leftovers out of the target's.
   */
  readonly tempDirectory?: string;
  /** fsync the directory after the rename (false when the caller renames several files, then syncs once) */
  readonly syncDirectory?: boolean;
  /**
   * an existing file at the target is kept and the new one dropped (link, not rename): for content-addressed
   * names, where both have the same content by construction and the existing inode may be linked elsewhere
   */
  readonly keepExisting?: boolean;
  /** the file's mtime (ms since the epoch), set before the fsync */
  readonly mtimeMs?: number;
}

/** a file being written: nothing is visible at the target until commit() */
export interface AtomicFile {
  /** appends the chunk (a failure discards the temp file) */
  write(chunk: Uint8Array): Promise<void>;
  /** fsync, close, rename into place, fsync of the directory (unless syncDirectory is false) */
  commit(): Promise<void>;
  /** closes and removes the temp file; nothing reaches the target (idempotent, never throws) */
  discard(): Promise<void>;
}

const writeError = (path: string, error: unknown): RelayError =>
  error instanceof RelayError ? error : new RelayError('RELAY_ERR_SPOOL_WRITE', `cannot write ${basename(path)} in ${dirname(path)}: ${messageOf(error)}`, { cause: error });

function tempPathOf(path: string, options: AtomicWriteOptions): string {
  const random = randomBytes(8).toString('hex');
  return join(options.tempDirectory ?? dirname(path), options.tempPrefix === undefined ? `.${random}.tmp` : `${options.tempPrefix}${random}.part`);
}

/** temp → target, then the directory (the temp file is already fsynced and closed) */
async function place(temp: string, path: string, options: AtomicWriteOptions): Promise<void> {
  if (options.keepExisting === true) {
    try {
      await link(temp, path);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    await unlink(temp);
  } else {
    await rename(temp, path);
  }
  if (options.syncDirectory ?? true) await fsyncDirectory(dirname(path));
}

/** opens a temp file for `path`; errors (here and from its methods) are RELAY_ERR_SPOOL_WRITE */
export async function openAtomicFile(path: string, options: AtomicWriteOptions = {}): Promise<AtomicFile> {
  const temp = tempPathOf(path, options);
  let handle: FileHandle | undefined;
  try {
    handle = await open(temp, 'wx', options.mode ?? 0o640);
  } catch (error) {
    throw writeError(path, error);
  }
  let state: 'open' | 'committed' | 'discarded' = 'open';
  const discard = async (): Promise<void> => {
    if (state !== 'open') return;
    state = 'discarded';
    await handle?.close().catch(() => undefined);
    handle = undefined;
    await unlink(temp).catch(() => undefined);
  };
  return {
    async write(chunk) {
      if (handle === undefined) throw new RelayError('RELAY_ERR_INTERNAL', `${basename(path)}: write after commit or discard`);
      try {
        let offset = 0;
        while (offset < chunk.length) offset += (await handle.write(chunk, offset)).bytesWritten;
      } catch (error) {
        await discard();
        throw writeError(path, error);
      }
    },
    async commit() {
      if (handle === undefined) throw new RelayError('RELAY_ERR_INTERNAL', `${basename(path)}: commit after commit or discard`);
      try {
        if (options.mtimeMs !== undefined) await handle.utimes(options.mtimeMs / 1000, options.mtimeMs / 1000);
        await handle.sync();
        await handle.close();
        handle = undefined;
        state = 'committed';
        await place(temp, path, options);
      } catch (error) {
        state = 'open';
        await discard();
        throw writeError(path, error);
      }
    },
    discard,
  };
}

/** a whole file or the previous one, whatever the instant of a crash */
export async function writeFileAtomically(path: string, data: Uint8Array | string, options: AtomicWriteOptions = {}): Promise<void> {
  const file = await openAtomicFile(path, options);
  await file.write(typeof data === 'string' ? Buffer.from(data) : data);
  await file.commit();
}

export interface StreamWriteOptions extends AtomicWriteOptions {
  /** more bytes than this: the write fails (RELAY_ERR_SPOOL_WRITE) and nothing reaches the target */
  readonly maxBytes?: number;
}

/** the whole of `source` written atomically to `path`; resolves with its byte count. An error of `source` is rethrown as is. */
export async function writeStreamAtomically(path: string, source: AsyncIterable<Uint8Array>, options: StreamWriteOptions = {}): Promise<number> {
  const file = await openAtomicFile(path, options);
  let bytes = 0;
  try {
    for await (const chunk of source) {
      bytes += chunk.length;
      if (options.maxBytes !== undefined && bytes > options.maxBytes) throw new RelayError('RELAY_ERR_SPOOL_WRITE', `${basename(path)}: larger than ${options.maxBytes} bytes, not written`);
      await file.write(chunk);
    }
  } catch (error) {
    await file.discard();
    throw error;
  }
  await file.commit();
  return bytes;
}

export interface CopyOptions extends AtomicWriteOptions {
  /** a copy-on-write clone where the file system can (same bytes, no data copied) */
  readonly clone?: boolean;
}

/** a copy of the local file `source` at `path`, atomically (the kernel copies the bytes: copy_file_range or a clone) */
export async function copyFileAtomically(source: string, path: string, options: CopyOptions = {}): Promise<void> {
  const temp = tempPathOf(path, options);
  try {
    await copyFile(source, temp, fsConstants.COPYFILE_EXCL | (options.clone === true ? fsConstants.COPYFILE_FICLONE : 0));
  } catch (error) {
    throw writeError(path, error);
  }
  try {
    if (options.mtimeMs !== undefined) await utimes(temp, options.mtimeMs / 1000, options.mtimeMs / 1000);
    const handle = await open(temp, 'r+');
    try {
      if (options.mode !== undefined) await handle.chmod(options.mode);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await place(temp, path, options);
  } catch (error) {
    await unlink(temp).catch(() => undefined);
    throw writeError(path, error);
  }
}
