// File-system side of the commands (spec-cfengine-protocol.md §7): request path resolution, the STAT
// fields, directory listings, file reads and digests. Paths are binary strings (latin1); fsPath() gives the
// bytes to the fs calls.
//
// Synchronous calls, bounded (src/fs-direct). cf-agent sends one request at a time and waits for the reply,
// so the agent's run time is the sum of our per-request latencies; through the thread pool a call costs
// ~50-100 µs more (measured with strace and per-request timings: STAT 250 µs vs cf-serverd's 140 µs, and
// cf-serverd itself makes blocking calls).

import { createHash } from 'node:crypto';
import {
  constants,
  fstat,
  fstatSync,
  lstat,
  lstatSync,
  open,
  openSync,
  read,
  readdir,
  readdirSync,
  readlink,
  readlinkSync,
  readSync,
  realpath,
  realpathSync,
  stat,
  statSync,
  type BigIntStats,
} from 'node:fs';
import { posix } from 'node:path';
import { promisify } from 'node:util';
import { FileType, type StatFields } from './codec.js';
import { fsPath } from './access.js';
import { closeQuietly, direct } from '../fs-direct/index.js';

const HASH_READ_BYTES = 64 * 1024;
/** O_NONBLOCK: opening a FIFO that sits in a served tree must not hold a thread (or the event loop) forever */
export const OPEN_FOR_READING = constants.O_RDONLY | constants.O_NONBLOCK;
/** for a path resolved by an earlier STAT: fail (ELOOP) if its last component has become a symlink */
export const OPEN_RESOLVED_FOR_READING = OPEN_FOR_READING | constants.O_NOFOLLOW;

export { SYNC_READ_MAX_BYTES, closeQuietly, onSlowFileSystem } from '../fs-direct/index.js';

const lstatAsync = promisify(lstat);
const statAsync = promisify(stat);
const readlinkAsync = promisify(readlink);
const readdirAsync = promisify(readdir);
const openAsync = promisify(open);
const readAsync = promisify(read);
const fstatAsync = promisify(fstat);

function realpathLatin1(path: string): Promise<string> {
  const bytes = fsPath(path);
  return direct(
    () => realpathSync.native(bytes, { encoding: 'latin1' }),
    () =>
      new Promise<string>((resolve, reject) =>
        realpath.native(bytes, { encoding: 'latin1' }, (error, resolved) => (error ? reject(error) : resolve(resolved))),
      ),
  );
}

function lstatBig(path: string): Promise<BigIntStats> {
  const bytes = fsPath(path);
  return direct(
    () => lstatSync(bytes, { bigint: true }),
    () => lstatAsync(bytes, { bigint: true }),
  );
}

/** open for reading: a file descriptor, to be closed with closeQuietly */
export function openForReading(path: string, flags: number = OPEN_FOR_READING): Promise<number> {
  const bytes = fsPath(path);
  return direct(
    () => openSync(bytes, flags),
    () => openAsync(bytes, flags),
  );
}

/** pread into buffer[0..length): the number of bytes read */
export function readAt(fd: number, buffer: Buffer, length: number, position: number): Promise<number> {
  return direct(
    () => readSync(fd, buffer, 0, length, position),
    () => readAsync(fd, buffer, 0, length, position).then((r) => r.bytesRead),
    length,
  );
}

export function fstatBig(fd: number): Promise<BigIntStats> {
  return direct(
    () => fstatSync(fd, { bigint: true }),
    () => fstatAsync(fd, { bigint: true }),
  );
}


export type Resolved =
  | { readonly kind: 'ok'; readonly path: string }
  /** the path does not exist, or is relative: cf-serverd answers the generic refusal */
  | { readonly kind: 'absent'; readonly reason: string };

/**
 * PreprocessRequestPath: absolute only, then realpath (symlinks, '.', '..', '//' resolved). A dead
 * symlink is kept, canonicalised through its directory.
 */
export async function resolveRequestPath(requested: string): Promise<Resolved> {
  if (!requested.startsWith('/')) return { kind: 'absent', reason: 'relative path' };
  try {
    return { kind: 'ok', path: await realpathLatin1(requested) };
  } catch (error) {
    try {
      const link = await lstatBig(requested);
      if (link.isSymbolicLink()) {
        const directory = await realpathLatin1(posix.dirname(requested));
        return { kind: 'ok', path: posix.join(directory, posix.basename(requested)) };
      }
    } catch {
      // fall through: missing
    }
    return { kind: 'absent', reason: (error as NodeJS.ErrnoException).code ?? 'realpath failed' };
  }
}

function fileType(s: BigIntStats): number {
  if (s.isDirectory()) return FileType.directory;
  if (s.isFile()) return FileType.regular;
  if (s.isSocket()) return FileType.socket;
  if (s.isCharacterDevice()) return FileType.character;
  if (s.isBlockDevice()) return FileType.block;
  if (s.isFIFO()) return FileType.fifo;
  return FileType.link;
}

const seconds = (ms: bigint): bigint => (ms >= 0n ? ms / 1000n : -((-ms + 999n) / 1000n));

export type StatResult =
  | {
      readonly kind: 'ok';
      readonly fields: StatFields;
      readonly linkTarget: string;
      readonly isDirectory: boolean;
    }
  | { readonly kind: 'error'; readonly message: string };

/**
 * Device, inode, size, mtime and ctime in ns: any write to the file changes its ctime, so two equal versions
 * have the same content (what lets a digest be reused).
 */
export function fileVersion(s: BigIntStats): string {
  return `${s.dev}:${s.ino}:${s.size}:${s.mtimeNs}:${s.ctimeNs}`;
}

/** lstat, undefined on any error */
export async function lstatQuietly(path: string): Promise<BigIntStats | undefined> {
  try {
    return await lstatBig(path);
  } catch {
    return undefined;
  }
}

/**
 * StatFile: the 13 fields and the link target ('' unless a dead symlink was asked for). `early` is an
 * lstat of the requested path made alongside its realpath: when it is not a symlink it describes the
 * same file, which saves a file-system round trip per STAT.
 */
export async function statForReply(path: string, early?: BigIntStats): Promise<StatResult> {
  let s: BigIntStats;
  if (early !== undefined && !early.isSymbolicLink()) s = early;
  else {
    try {
      s = await lstatBig(path);
    } catch {
      return { kind: 'error', message: `BAD: unable to stat file ${path}` };
    }
  }
  let linkMode = 0;
  let linkTarget = '';
  let nlink = s.nlink;
  let type = fileType(s);
  let { mode, uid, gid, size, mtimeMs, ctimeMs } = s;
  if (s.isSymbolicLink()) {
    linkMode = Number(s.mode & 0o7777n);
    try {
      const bytes = fsPath(path);
      linkTarget = await direct(
        () => readlinkSync(bytes, { encoding: 'latin1' }),
        () => readlinkAsync(bytes, { encoding: 'latin1' }),
      );
    } catch {
      return { kind: 'error', message: 'BAD: unable to read link' };
    }
    try {
      const bytes = fsPath(path);
      const target = await direct(
        () => statSync(bytes, { bigint: true }),
        () => statAsync(bytes, { bigint: true }),
      );
      ({ mode, uid, gid, size, mtimeMs, ctimeMs } = target);
      type = fileType(target);
    } catch {
      // dead link: its own fields
    }
  }
  if (type !== FileType.directory && Buffer.byteLength(posix.basename(path), 'latin1') > 256) {
    return { kind: 'error', message: `BAD: Filename suspiciously long [${path}]` };
  }
  return {
    kind: 'ok',
    isDirectory: type === FileType.directory,
    linkTarget,
    fields: {
      type,
      mode: Number(mode & 0o7777n),
      linkMode,
      uid,
      gid,
      size,
      atime: seconds(s.atimeMs),
      mtime: seconds(mtimeMs),
      ctime: seconds(ctimeMs),
      makeHoles: size > s.blocks * 512n,
      ino: s.ino,
      nlink,
      dev: s.dev,
    },
  };
}

/** entry names with '.' and '..' (the client treats an empty list as an error), undefined if unreadable */
export async function listDirectory(path: string): Promise<string[] | undefined> {
  try {
    const bytes = fsPath(path);
    const names = await direct(
      () => readdirSync(bytes, { encoding: 'latin1' }),
      () => readdirAsync(bytes, { encoding: 'latin1' }),
    );
    return ['.', '..', ...names];
  } catch {
    return undefined;
  }
}

export interface HashedFile {
  readonly digest: Buffer;
  /** the version of what was hashed (fstat after reading), undefined when unknown */
  readonly version: Promise<string | undefined>;
}

/**
 * MD5 of the file; all zeros when it cannot be read (HashFile leaves the digest zeroed, so the client sees
 * "different"); undefined when opened with O_NOFOLLOW and the path has become a symlink. The version of
 * what was read is checked after the digest is returned, off the reply's path.
 */
export async function md5OfFile(path: string, flags: number = OPEN_FOR_READING): Promise<HashedFile | undefined> {
  let fd: number;
  try {
    fd = await openForReading(path, flags);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ELOOP') return undefined;
    return { digest: Buffer.alloc(16), version: Promise.resolve(undefined) };
  }
  let digest: Buffer;
  try {
    const hash = createHash('md5');
    const buffer = Buffer.allocUnsafe(HASH_READ_BYTES);
    for (let position = 0; ; ) {
      const bytesRead = await readAt(fd, buffer, buffer.length, position);
      hash.update(buffer.subarray(0, bytesRead));
      position += bytesRead;
      // a short read of a regular file is its end: saves one read round trip per small file
      if (bytesRead < buffer.length) break;
    }
    digest = hash.digest();
  } catch {
    closeQuietly(fd);
    return { digest: Buffer.alloc(16), version: Promise.resolve(undefined) };
  }
  const version = fstatBig(fd)
    .then(fileVersion, () => undefined)
    .finally(() => closeQuietly(fd));
  return { digest, version };
}

/**
 * Digests of file versions already hashed, shared by all connections: an agent's no-change run asks for
 * the digest of every file, every run; a file whose version (fileVersion) did not change is not read again.
 */
export class DigestCache {
  private readonly entries = new Map<string, Buffer>();

  constructor(private readonly maxEntries = 50_000) {}

  get(path: string, version: string): Buffer | undefined {
    const key = `${path}\0${version}`;
    const digest = this.entries.get(key);
    if (digest !== undefined) {
      this.entries.delete(key); // most recently used last
      this.entries.set(key, digest);
    }
    return digest;
  }

  set(path: string, version: string, digest: Buffer): void {
    const key = `${path}\0${version}`;
    this.entries.delete(key);
    this.entries.set(key, digest);
    if (this.entries.size > this.maxEntries) {
      const oldest = this.entries.keys().next().value;
      if (oldest !== undefined) this.entries.delete(oldest);
    }
  }

  get size(): number {
    return this.entries.size;
  }
}
