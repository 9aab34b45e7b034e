// File-system side of the commands (spec-cfengine-protocol.md §7): request path resolution, the STAT
// fields, directory listings, file reads and digests. Paths are binary strings (latin1); fsPath() gives the
// bytes to the fs calls.
//
// One implementation: every call goes through src/fs-direct's file service, which runs it directly on the
// event loop (bounded and timed) or through the thread pool, and decides which in one place. cf-agent sends
// one request at a time and waits for the reply, so the agent's run time is the sum of our per-request
// latencies; through the thread pool a call costs ~50-100 µs more (measured with strace and per-request
// timings: STAT 250 µs vs cf-serverd's 140 µs, and cf-serverd itself makes blocking calls).

import { createHash } from 'node:crypto';
import { constants, type BigIntStats } from 'node:fs';
import { posix } from 'node:path';
import { FileType, type StatFields } from './codec.js';
import { fsPath } from '../access/index.js';
import { closeQuietly, directFileSystem, fileSystem } from '../fs-direct/index.js';

const HASH_READ_BYTES = 64 * 1024;
/** O_NONBLOCK: opening a FIFO that sits in a served tree must not hold a thread (or the event loop) forever */
export const OPEN_FOR_READING = constants.O_RDONLY | constants.O_NONBLOCK;
/** for a path resolved by an earlier STAT: fail (ELOOP) if its last component has become a symlink */
export const OPEN_RESOLVED_FOR_READING = OPEN_FOR_READING | constants.O_NOFOLLOW;

export { closeQuietly, directFileSystem, inThreadPoolMode, onSlowFileSystem, resetFileSystemMode, SYNC_READ_MAX_BYTES } from '../fs-direct/index.js';

/** open for reading: a file descriptor, to be closed with closeQuietly */
export async function openForReading(path: string, flags: number = OPEN_FOR_READING): Promise<number> {
  return fileSystem.open(fsPath(path), flags);
}

/** pread into buffer[0..length): the number of bytes read */
export async function readAt(fd: number, buffer: Buffer, length: number, position: number): Promise<number> {
  return fileSystem.read(fd, buffer, 0, length, position);
}

export async function fstatBig(fd: number): Promise<BigIntStats> {
  return fileSystem.fstat(fd);
}

export type Resolved =
  | { readonly kind: 'ok'; readonly path: string }
  /** the path does not exist, or is relative: cf-serverd answers the generic refusal */
  | { readonly kind: 'absent'; readonly reason: string };

/** a path with '.', '..' or empty segments, or a trailing '/': realpath has more to do than follow links */
const NOT_CANONICAL = /\/\/|\/\.\.?(?:\/|$)|.\/$/;

/**
 * PreprocessRequestPath: absolute only, then realpath (symlinks, '.', '..', '//' resolved). A dead
 * symlink is kept, canonicalised through its directory. `early` is the caller's lstat of `requested`: when
 * that is a file or directory and not a symlink, the answer is its directory's realpath (from `directories`)
 * plus its name, which costs one stat instead of a readlink per path component.
 */
export async function resolveRequestPath(requested: string, early: BigIntStats | undefined, directories: DirectoryCache): Promise<Resolved> {
  if (!requested.startsWith('/')) return { kind: 'absent', reason: 'relative path' };
  if (early !== undefined && !early.isSymbolicLink() && requested.length > 1 && !NOT_CANONICAL.test(requested)) {
    const slash = requested.lastIndexOf('/');
    const directory = await directories.resolve(slash === 0 ? '/' : requested.slice(0, slash));
    if (directory !== undefined) return { kind: 'ok', path: `${directory === '/' ? '' : directory}${requested.slice(slash)}` };
  }
  try {
    return { kind: 'ok', path: await fileSystem.realpath(fsPath(requested), 'latin1') };
  } catch (error) {
    try {
      const link = await fileSystem.lstat(fsPath(requested));
      if (link.isSymbolicLink()) {
        const directory = await fileSystem.realpath(fsPath(posix.dirname(requested)), 'latin1');
        return { kind: 'ok', path: posix.join(directory, posix.basename(requested)) };
      }
    } catch {
      // fall through: missing
    }
    return { kind: 'absent', reason: (error as NodeJS.ErrnoException).code ?? 'realpath failed' };
  }
}

/** resolveRequestPath with direct calls (the synchronous request path, see commands.ts) */
export function resolveRequestPathSync(requested: string, early: BigIntStats | undefined, directories: DirectoryCache): Resolved {
  if (!requested.startsWith('/')) return { kind: 'absent', reason: 'relative path' };
  if (early !== undefined && !early.isSymbolicLink() && requested.length > 1 && !NOT_CANONICAL.test(requested)) {
    const slash = requested.lastIndexOf('/');
    const directory = directories.resolveSync(slash === 0 ? '/' : requested.slice(0, slash));
    if (directory !== undefined) return { kind: 'ok', path: `${directory === '/' ? '' : directory}${requested.slice(slash)}` };
  }
  try {
    return { kind: 'ok', path: directFileSystem.realpath(fsPath(requested), 'latin1') };
  } catch (error) {
    try {
      const link = directFileSystem.lstat(fsPath(requested));
      if (link.isSymbolicLink()) {
        const directory = directFileSystem.realpath(fsPath(posix.dirname(requested)), 'latin1');
        return { kind: 'ok', path: posix.join(directory, posix.basename(requested)) };
      }
    } catch {
      // fall through: missing
    }
    return { kind: 'absent', reason: (error as NodeJS.ErrnoException).code ?? 'realpath failed' };
  }
}

/**
 * Realpaths of the directories requests name, each kept with the identity (device, inode, ctime) of the
 * directory it named, and used again only while a stat of the same path, following links as realpath
 * does, finds that same directory unchanged: a directory has one place in the tree, and moving it changes
 * its ctime. The one case a stat cannot see is an ancestor moved and replaced by a link to its new place:
 * the answer is then the directory's old name, and what is read is still that same directory.
 */
export class DirectoryCache {
  private readonly entries = new Map<string, { readonly resolved: string; readonly dev: bigint; readonly ino: bigint; readonly ctime: bigint }>();

  constructor(private readonly maxEntries = 10_000) {}

  /** the realpath of `directory` (absolute, canonical form), undefined when it is not a reachable directory */
  async resolve(directory: string): Promise<string | undefined> {
    const bytes = fsPath(directory);
    let now: BigIntStats | undefined;
    try {
      now = await fileSystem.statIfExists(bytes);
    } catch {
      return undefined;
    }
    if (now === undefined || !now.isDirectory()) return undefined;
    const known = this.known(directory, now);
    if (known !== undefined) return known;
    let resolved: string;
    let after: BigIntStats | undefined;
    try {
      resolved = await fileSystem.realpath(bytes, 'latin1');
      after = await fileSystem.statIfExists(bytes);
    } catch {
      return undefined;
    }
    return this.keep(directory, now, resolved, after);
  }

  /** resolve() with direct calls (the synchronous request path) */
  resolveSync(directory: string): string | undefined {
    const bytes = fsPath(directory);
    let now: BigIntStats | undefined;
    try {
      now = directFileSystem.statIfExists(bytes);
    } catch {
      return undefined;
    }
    if (now === undefined || !now.isDirectory()) return undefined;
    const known = this.known(directory, now);
    if (known !== undefined) return known;
    let resolved: string;
    let after: BigIntStats | undefined;
    try {
      resolved = directFileSystem.realpath(bytes, 'latin1');
      after = directFileSystem.statIfExists(bytes);
    } catch {
      return undefined;
    }
    return this.keep(directory, now, resolved, after);
  }

  /** the realpath kept for `directory`, while `now` (its stat) shows the same directory unchanged */
  private known(directory: string, now: BigIntStats): string | undefined {
    const known = this.entries.get(directory);
    if (known !== undefined && known.ino === now.ino && known.dev === now.dev && known.ctime === now.ctimeNs) return known.resolved;
    return undefined;
  }

  /** `resolved`, kept only if nothing moved while realpath walked it (`now` before, `after` after) */
  private keep(directory: string, now: BigIntStats, resolved: string, after: BigIntStats | undefined): string {
    if (after === undefined || after.ino !== now.ino || after.dev !== now.dev || after.ctimeNs !== now.ctimeNs) return resolved;
    this.entries.delete(directory);
    this.entries.set(directory, { resolved, dev: now.dev, ino: now.ino, ctime: now.ctimeNs });
    if (this.entries.size > this.maxEntries) {
      const oldest = this.entries.keys().next().value;
      if (oldest !== undefined) this.entries.delete(oldest);
    }
    return resolved;
  }

  get size(): number {
    return this.entries.size;
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

/** device:inode, which file a stat describes */
export function fileIdentity(s: { readonly dev: bigint; readonly ino: bigint }): string {
  return `${s.dev}:${s.ino}`;
}

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
    return await fileSystem.lstat(fsPath(path));
  } catch {
    return undefined;
  }
}

/** lstatQuietly with a direct call */
export function lstatQuietlySync(path: string): BigIntStats | undefined {
  try {
    return directFileSystem.lstat(fsPath(path));
  } catch {
    return undefined;
  }
}

/**
 * StatFile: the 13 fields and the link target ('' unless a dead symlink was asked for). `early` is an
 * lstat of the requested path made before its realpath: when it is not a symlink it describes the
 * same file, which saves a file-system call per STAT.
 */
export async function statForReply(path: string, early?: BigIntStats): Promise<StatResult> {
  let s: BigIntStats;
  const bytes = fsPath(path);
  if (early !== undefined && !early.isSymbolicLink()) s = early;
  else {
    try {
      s = await fileSystem.lstat(bytes);
    } catch {
      return { kind: 'error', message: `BAD: unable to stat file ${path}` };
    }
  }
  if (!s.isSymbolicLink()) return statReply(path, s, '', undefined);
  let linkTarget: string;
  try {
    linkTarget = await fileSystem.readlink(bytes, 'latin1');
  } catch {
    return { kind: 'error', message: 'BAD: unable to read link' };
  }
  let target: BigIntStats | undefined;
  try {
    target = await fileSystem.statIfExists(bytes);
  } catch {
    target = undefined;
  }
  return statReply(path, s, linkTarget, target);
}

/** statForReply with direct calls */
export function statForReplySync(path: string, early?: BigIntStats): StatResult {
  let s: BigIntStats;
  const bytes = fsPath(path);
  if (early !== undefined && !early.isSymbolicLink()) s = early;
  else {
    try {
      s = directFileSystem.lstat(bytes);
    } catch {
      return { kind: 'error', message: `BAD: unable to stat file ${path}` };
    }
  }
  if (!s.isSymbolicLink()) return statReply(path, s, '', undefined);
  let linkTarget: string;
  try {
    linkTarget = directFileSystem.readlink(bytes, 'latin1');
  } catch {
    return { kind: 'error', message: 'BAD: unable to read link' };
  }
  let target: BigIntStats | undefined;
  try {
    target = directFileSystem.statIfExists(bytes);
  } catch {
    target = undefined;
  }
  return statReply(path, s, linkTarget, target);
}

/** the reply to STAT from an lstat, and for a symlink its target and what it points to (undefined: dead link) */
function statReply(path: string, s: BigIntStats, linkTarget: string, target: BigIntStats | undefined): StatResult {
  let linkMode = 0;
  const nlink = s.nlink;
  let type = fileType(s);
  let { mode, uid, gid, size, mtimeMs, ctimeMs } = s;
  if (s.isSymbolicLink()) {
    linkMode = Number(s.mode & 0o7777n);
    if (target !== undefined) {
      ({ mode, uid, gid, size, mtimeMs, ctimeMs } = target);
      type = fileType(target);
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
    const names = await fileSystem.readdir(fsPath(path), 'latin1');
    return ['.', '..', ...names];
  } catch {
    return undefined;
  }
}

/** listDirectory with a direct call */
export function listDirectorySync(path: string): string[] | undefined {
  try {
    return ['.', '..', ...directFileSystem.readdir(fsPath(path), 'latin1')];
  } catch {
    return undefined;
  }
}

export interface HashedFile {
  readonly digest: Buffer;
  /** the version of what was hashed (fstat after reading), undefined when unknown */
  readonly version: string | undefined;
}

/**
 * MD5 of the file, in HASH_READ_BYTES reads; all zeros when it cannot be read (HashFile leaves the digest
 * zeroed, so the client sees "different"); undefined when opened with O_NOFOLLOW and the path has become a
 * symlink. The version is that of what was read.
 */
export async function md5OfFile(path: string, flags: number = OPEN_FOR_READING): Promise<HashedFile | undefined> {
  let fd: number;
  try {
    fd = await fileSystem.open(fsPath(path), flags);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ELOOP') return undefined;
    return { digest: Buffer.alloc(16), version: undefined };
  }
  try {
    const hash = createHash('md5');
    const buffer = Buffer.allocUnsafe(HASH_READ_BYTES);
    for (let position = 0; ; ) {
      const bytesRead = await fileSystem.read(fd, buffer, 0, buffer.length, position);
      hash.update(buffer.subarray(0, bytesRead));
      position += bytesRead;
      // a short read of a regular file is its end: saves one read per small file
      if (bytesRead < buffer.length) break;
    }
    const digest = hash.digest();
    let version: string | undefined;
    try {
      version = fileVersion(await fileSystem.fstat(fd));
    } catch {
      version = undefined;
    }
    return { digest, version };
  } catch {
    return { digest: Buffer.alloc(16), version: undefined };
  } finally {
    closeQuietly(fd);
  }
}

/**
 * md5OfFile with direct calls, for a file the caller knows to be at most SYNC_READ_MAX_BYTES (a larger one
 * read so far, or grown meanwhile, is read to its end all the same: what the digest must cover).
 */
export function md5OfFileSync(path: string, flags: number = OPEN_FOR_READING): HashedFile | undefined {
  let fd: number;
  try {
    fd = directFileSystem.open(fsPath(path), flags);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ELOOP') return undefined;
    return { digest: Buffer.alloc(16), version: undefined };
  }
  try {
    const hash = createHash('md5');
    const buffer = Buffer.allocUnsafe(HASH_READ_BYTES);
    for (let position = 0; ; ) {
      const bytesRead = directFileSystem.read(fd, buffer, 0, buffer.length, position);
      hash.update(buffer.subarray(0, bytesRead));
      position += bytesRead;
      if (bytesRead < buffer.length) break;
    }
    const digest = hash.digest();
    let version: string | undefined;
    try {
      version = fileVersion(directFileSystem.fstat(fd));
    } catch {
      version = undefined;
    }
    return { digest, version };
  } catch {
    return { digest: Buffer.alloc(16), version: undefined };
  } finally {
    closeQuietly(fd);
  }
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
