// Durable intake: the body streams into <base>/.tmp/, is fsynced, then linked or renamed into
// place and the directory fsynced, all before the caller answers 2xx (CONVENTIONS.md "Data on disk").
// A crash at any instant leaves nothing or a whole file in the target directory.
//
// Cost matters here (every agent upload; bench/uploads): each file-system call is a round trip through
// libuv's thread pool, so a body that fits in memory (run logs are ~15 KB) is gathered first and written
// in one call, and the target directory's fsync is shared (group commit, below) through a handle kept open.

import { createHash, randomBytes } from 'node:crypto';
import { link, open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { RelayError, messageOf } from '../errors.js';

export interface ReceiveResult {
  /** true: a new file; false: an existing file of that name was replaced (WebDAV 204) */
  readonly created: boolean;
  readonly bytes: number;
  readonly path: string;
  /** hex sha256 of the body, hashed as it was written (the delivery ledger's proof of what arrived) */
  readonly sha256: string;
}

/** bodies up to this size are gathered in memory and written with one call; larger ones stream to the file */
const GATHER_BYTES = 256 * 1024;

export async function receiveInto(
  tmpDirectory: string,
  targetDirectory: string,
  name: string,
  body: Readable,
  maxBytes: number,
): Promise<ReceiveResult> {
  const tmpPath = join(tmpDirectory, `${name.slice(0, 64)}.${process.pid}.${randomBytes(6).toString('hex')}`);
  const finalPath = join(targetDirectory, name);
  let handle: FileHandle | undefined;
  let bytes = 0;
  let renamed = false;
  const hash = createHash('sha256');
  try {
    let gathered: Buffer[] = [];
    try {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        bytes += chunk.length;
        if (bytes > maxBytes) {
          throw new RelayError('RELAY_ERR_UPLOAD_TOO_LARGE', `body larger than the limit of ${maxBytes} bytes`);
        }
        hash.update(chunk);
        gathered.push(chunk);
        if (bytes > GATHER_BYTES) {
          // a large body: to the file as it comes, memory stays bounded
          handle ??= await open(tmpPath, 'wx', 0o640);
          await writeAll(handle, gathered);
          gathered = [];
        }
      }
    } catch (error) {
      if (error instanceof RelayError) throw error;
      throw new RelayError('RELAY_ERR_UPLOAD_INCOMPLETE', `upload interrupted after ${bytes} bytes`, { cause: error });
    }
    if (!body.readableEnded && body.readableAborted) {
      throw new RelayError('RELAY_ERR_UPLOAD_INCOMPLETE', `upload interrupted after ${bytes} bytes`);
    }
    handle ??= await open(tmpPath, 'wx', 0o640);
    await writeAll(handle, gathered);
    await handle.sync();
    await handle.close();
    handle = undefined;
    let created = true;
    try {
      await link(tmpPath, finalPath);
      await unlink(tmpPath);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      created = false;
      await rename(tmpPath, finalPath);
    }
    renamed = true;
    await directorySync(targetDirectory).sync();
    return { created, bytes, path: finalPath, sha256: hash.digest('hex') };
  } catch (error) {
    if (handle !== undefined) await handle.close().catch(() => undefined);
    // the temp file exists once opened; unlinking a name never created is a harmless ENOENT
    if (!renamed) await unlink(tmpPath).catch(() => undefined);
    if (error instanceof RelayError) throw error;
    throw new RelayError('RELAY_ERR_SPOOL_WRITE', `could not store ${name}: ${messageOf(error)}`, { cause: error });
  }
}

async function writeAll(handle: FileHandle, chunks: readonly Buffer[]): Promise<void> {
  if (chunks.length === 0) return;
  let data = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
  while (data.length > 0) {
    const { bytesWritten } = await handle.write(data, 0, data.length);
    data = data.subarray(bytesWritten);
  }
}

/**
 * Group commit of one directory's fsync: every caller gets an fsync that *started after* its call (so it
 * covers the rename the caller made before), and callers that arrive while one runs share the next one.
 * Concurrent uploads into one spool cost one directory fsync between them, not one each. The directory
 * stays open for the life of the process (one handle per spool directory).
 */
export interface DirectorySync {
  sync(): Promise<void>;
  /** fsyncs started so far (how much grouping saved: tests, diagnostics) */
  readonly fsyncs: number;
}

const directorySyncs = new Map<string, DirectorySync>();

export function directorySync(directory: string): DirectorySync {
  let existing = directorySyncs.get(directory);
  if (existing === undefined) {
    existing = createDirectorySync(directory);
    directorySyncs.set(directory, existing);
  }
  return existing;
}

function createDirectorySync(directory: string): DirectorySync {
  let handle: Promise<FileHandle> | undefined;
  let running: Promise<void> | undefined;
  let next: Promise<void> | undefined;
  let fsyncs = 0;
  const fsyncOnce = async (): Promise<void> => {
    fsyncs += 1;
    handle ??= open(directory, 'r');
    const opened = handle;
    try {
      await (await opened).sync();
    } catch (error) {
      // a failed open or fsync: the next caller opens the directory again
      if (handle === opened) handle = undefined;
      await opened.then((h) => h.close()).catch(() => undefined);
      throw error;
    }
  };
  const sync = (): Promise<void> => {
    if (next !== undefined) return next;
    if (running === undefined) {
      running = fsyncOnce().finally(() => {
        running = undefined;
      });
      return running;
    }
    // one is running, maybe started before this caller's rename: wait for it, then share a fresh one
    next = running.then(
      () => undefined,
      () => undefined,
    ).then(() => {
      next = undefined;
      return sync();
    });
    return next;
  };
  return {
    sync,
    get fsyncs() {
      return fsyncs;
    },
  };
}
