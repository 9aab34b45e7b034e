// Durable intake: the body streams into <base>/.tmp/, is fsynced, then linked or renamed into
// place and the directory fsynced, all before the caller answers 2xx (CONVENTIONS.md "Data on disk").
// A crash at any instant leaves nothing or a whole file in the target directory.
//
// Cost matters here (every agent upload; bench/uploads): each asynchronous file-system call is a round trip
// through libuv's thread pool (a futex wake of a pool thread, an eventfd write back, an epoll wake-up: ~10 µs
// of CPU alone, several times that with concurrent uploads on a busy machine). So a body that fits in memory
// (run logs are ~15 KB) is gathered first, and the calls that only touch the page cache and the directory
// (open, write, close, link, unlink) are made synchronously, as nginx's workers make them; only the two
// calls that wait for the disk run in the pool: the file's fsync, and the target directory's fsync, shared
// by concurrent uploads (group commit, below) through a handle kept open. A large body streams to the file
// with asynchronous writes.

import { createHash, randomBytes, type Hash } from 'node:crypto';
import { closeSync, fsync, linkSync, openSync, renameSync, unlinkSync, write, writeSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
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

/**
 * temp names: this process's id and a random tag drawn once (a later process with a recycled pid cannot meet a
 * leftover of this one), then a counter; no random draw per upload
 */
const TMP_PREFIX = `${process.pid}.${randomBytes(4).toString('hex')}.`;
let tmpCount = 0;

/** bodies up to this size are gathered in memory and written with one call; larger ones stream to the file */
const GATHER_BYTES = 256 * 1024;

export async function receiveInto(
  tmpDirectory: string,
  targetDirectory: string,
  name: string,
  body: Readable,
  maxBytes: number,
  idleTimeoutMs = 0,
): Promise<ReceiveResult> {
  const tmpPath = join(tmpDirectory, `${name.slice(0, 64)}.${TMP_PREFIX}${(tmpCount += 1)}`);
  const finalPath = join(targetDirectory, name);
  let bytes = 0;
  let renamed = false;
  const hash = createHash('sha256');
  // the temp file's descriptor while it is open; `streamed`: a large body went to it as it came
  let fd: number | undefined;
  let streamed = false;
  try {
    const gathered = await readBody(body, maxBytes, idleTimeoutMs, hash, async (chunks) => {
      // a large body: to the file as it comes, memory stays bounded
      fd ??= openSync(tmpPath, 'wx', 0o640);
      streamed = true;
      await writeAll(fd, chunks);
    });
    bytes = gathered.bytes;
    fd ??= openSync(tmpPath, 'wx', 0o640);
    if (streamed) await writeAll(fd, gathered.chunks);
    else writeAllSync(fd, gathered.chunks);
    await fsyncFd(fd);
    const opened = fd;
    fd = undefined;
    closeSync(opened);
    let created = true;
    try {
      linkSync(tmpPath, finalPath);
      unlinkSync(tmpPath);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      created = false;
      renameSync(tmpPath, finalPath);
    }
    renamed = true;
    await directorySync(targetDirectory).sync();
    return { created, bytes, path: finalPath, sha256: hash.digest('hex') };
  } catch (error) {
    if (fd !== undefined) {
      try {
        closeSync(fd);
      } catch {
        // the error that brought us here is the one to report
      }
    }
    // the temp file exists once opened; unlinking a name never created is a harmless ENOENT
    if (!renamed) {
      try {
        unlinkSync(tmpPath);
      } catch {
        // ENOENT, or a file the start-up cleaning of .tmp/ removes
      }
    }
    if (error instanceof RelayError) throw error;
    throw new RelayError('RELAY_ERR_SPOOL_WRITE', `could not store ${name}: ${messageOf(error)}`, { cause: error });
  }
}

/**
 * The body, read through 'data' events rather than an async iterator (which costs a promise per chunk and an
 * end-of-stream watcher per upload, on every agent's run). Up to GATHER_BYTES it is gathered in memory;
 * beyond, what is gathered goes to `spill` with the stream paused meanwhile (bounded memory), and the
 * chunks left at the end are returned. After a refusal the rest of the body is read and dropped, as an async
 * iterator left by a throw did (it detached and destroyed the request, the parser went on): closing a socket
 * with unread data resets the connection, and the client would lose the answer (413) on its way.
 * `idleTimeoutMs` (0: none): a client that sends no byte for that long fails the read with
 * RELAY_ERR_REQUEST_TIMEOUT, the rest of the body left unread (the caller answers and closes), so that a stalled
 * upload frees its disk-budget reservation and its memory instead of holding them as long as it stays connected.
 */
function readBody(
  body: Readable,
  maxBytes: number,
  idleTimeoutMs: number,
  hash: Hash,
  spill: (chunks: Buffer[]) => Promise<void>,
): Promise<{ chunks: Buffer[]; bytes: number }> {
  return new Promise((resolve, reject) => {
    let chunks: Buffer[] = [];
    let gathered = 0;
    let bytes = 0;
    // the listeners stay until the request is gone: an event after the outcome (an 'error' after 'close') is ignored, never unhandled
    let settled = false;
    // a write of spilled chunks in flight: the caller closes the descriptor once this rejects, so never before it ends
    let spilling: Promise<void> | undefined;
    // one timer per upload, pushed back with refresh() on each chunk (no timer made per chunk)
    let idle: NodeJS.Timeout | undefined;
    const fail = (error: RelayError | Error, drain: boolean): void => {
      if (settled) return;
      settled = true;
      if (idle !== undefined) clearTimeout(idle);
      // the 'data' listener drops what comes now; a body paused for a write flows again
      if (drain) body.resume();
      if (spilling === undefined) reject(error);
      else spilling.then(() => reject(error), () => reject(error));
    };
    if (body.destroyed) {
      // gone before the first read (the client went away while the upload was being admitted): no event will come
      reject(new RelayError('RELAY_ERR_UPLOAD_INCOMPLETE', 'upload interrupted after 0 bytes', { cause: body.errored ?? undefined }));
      return;
    }
    if (idleTimeoutMs > 0) {
      idle = setTimeout(function expire() {
        // the stream is paused while a spilled part goes to disk: a slow disk is not a stalled client
        if (spilling !== undefined) {
          idle?.refresh();
          return;
        }
        fail(new RelayError('RELAY_ERR_REQUEST_TIMEOUT', `no byte of the body for ${idleTimeoutMs / 1000} s, after ${bytes} bytes`), false);
      }, idleTimeoutMs);
    }
    body.on('data', (chunk: Buffer) => {
      if (settled) return;
      idle?.refresh();
      bytes += chunk.length;
      if (bytes > maxBytes) {
        fail(new RelayError('RELAY_ERR_UPLOAD_TOO_LARGE', `body larger than the limit of ${maxBytes} bytes`), true);
        return;
      }
      hash.update(chunk);
      chunks.push(chunk);
      gathered += chunk.length;
      if (gathered > GATHER_BYTES) {
        const full = chunks;
        chunks = [];
        gathered = 0;
        body.pause();
        const writing = spill(full);
        spilling = writing;
        writing.then(
          () => {
            spilling = undefined;
            if (!settled) body.resume();
          },
          (error: unknown) => {
            spilling = undefined;
            fail(error as Error, true);
          },
        );
      }
    });
    body.on('end', () => {
      if (settled) return;
      settled = true;
      if (idle !== undefined) clearTimeout(idle);
      resolve({ chunks, bytes });
    });
    // (the error is built only when it is the outcome: every request closes once answered, and an Error's stack costs)
    body.on('error', (error) => {
      if (!settled) fail(new RelayError('RELAY_ERR_UPLOAD_INCOMPLETE', `upload interrupted after ${bytes} bytes`, { cause: error }), false);
    });
    // closed before its end without an error (a client gone away mid-body)
    body.on('close', () => {
      if (!settled) fail(new RelayError('RELAY_ERR_UPLOAD_INCOMPLETE', `upload interrupted after ${bytes} bytes`), false);
    });
  });
}

function concat(chunks: readonly Buffer[]): Buffer {
  return chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
}

function writeAllSync(fd: number, chunks: readonly Buffer[]): void {
  if (chunks.length === 0) return;
  const data = concat(chunks);
  let offset = 0;
  while (offset < data.length) offset += writeSync(fd, data, offset, data.length - offset);
}

// the callback API on a plain descriptor (the synchronous calls above take the same one), promisified
const writeAsync = promisify(write);
const fsyncFd = promisify(fsync);

async function writeAll(fd: number, chunks: readonly Buffer[]): Promise<void> {
  if (chunks.length === 0) return;
  const data = concat(chunks);
  let offset = 0;
  while (offset < data.length) offset += (await writeAsync(fd, data, offset, data.length - offset, null)).bytesWritten;
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
