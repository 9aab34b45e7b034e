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
import { closeQuietly, direct, timed } from '../fs-direct/index.js';

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

/** a path with '.', '..' or empty segments, or a trailing '/': realpath has more to do than follow links */
const NOT_CANONICAL = /\/\/|\/\.\.?(?:\/|$)|.\/$/;

/**
 * resolveRequestPath on the event loop (the caller checked that the file system is in direct mode).
 * `early` is the caller's lstat of `requested`: when that is a file or directory and not a symlink, the
 * answer is its directory's realpath (from `directories`) plus its name, which costs one stat instead of
 * a readlink per path component.
 */
export function resolveRequestPathSync(requested: string, early: BigIntStats | undefined, directories: DirectoryCache): Resolved {
  if (!requested.startsWith('/')) return { kind: 'absent', reason: 'relative path' };
  if (early !== undefined && !early.isSymbolicLink() && requested.length > 1 && !NOT_CANONICAL.test(requested)) {
    const slash = requested.lastIndexOf('/');
    const directory = directories.resolve(slash === 0 ? '/' : requested.slice(0, slash));
    if (directory !== undefined) return { kind: 'ok', path: `${directory === '/' ? '' : directory}${requested.slice(slash)}` };
  }
  try {
    return { kind: 'ok', path: timed(() => realpathSync.native(fsPath(requested), { encoding: 'latin1' })) };
  } catch (error) {
    try {
      const link = timed(() => lstatSync(fsPath(requested), { bigint: true }));
      if (link.isSymbolicLink()) {
        const directory = timed(() => realpathSync.native(fsPath(posix.dirname(requested)), { encoding: 'latin1' }));
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
  resolve(directory: string): string | undefined {
    const bytes = fsPath(directory);
    let now: BigIntStats;
    try {
      now = timed(() => statSync(bytes, { bigint: true }));
    } catch {
      return undefined;
    }
    if (!now.isDirectory()) return undefined;
    const known = this.entries.get(directory);
    if (known !== undefined && known.ino === now.ino && known.dev === now.dev && known.ctime === now.ctimeNs) return known.resolved;
    let resolved: string;
    let after: BigIntStats;
    try {
      resolved = timed(() => realpathSync.native(bytes, { encoding: 'latin1' }));
      after = timed(() => statSync(bytes, { bigint: true }));
    } catch {
      return undefined;
    }
    // kept only if nothing moved while realpath walked it
    if (after.ino !== now.ino || after.dev !== now.dev || after.ctimeNs !== now.ctimeNs) return resolved;
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
    return await lstatBig(path);
  } catch {
    return undefined;
  }
}

/** lstatQuietly on the event loop */
export function lstatQuietlySync(path: string): BigIntStats | undefined {
  try {
    return timed(() => lstatSync(fsPath(path), { bigint: true }));
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
  if (!s.isSymbolicLink()) return statReply(path, s, '', undefined);
  const bytes = fsPath(path);
  let linkTarget: string;
  try {
    linkTarget = await direct(
      () => readlinkSync(bytes, { encoding: 'latin1' }),
      () => readlinkAsync(bytes, { encoding: 'latin1' }),
    );
  } catch {
    return { kind: 'error', message: 'BAD: unable to read link' };
  }
  const target = await direct(
    () => statSync(bytes, { bigint: true, throwIfNoEntry: false }),
    () => statAsync(bytes, { bigint: true }).catch(() => undefined),
  ).catch(() => undefined);
  return statReply(path, s, linkTarget, target);
}

/** statForReply on the event loop */
export function statForReplySync(path: string, early?: BigIntStats): StatResult {
  let s: BigIntStats;
  const bytes = fsPath(path);
  if (early !== undefined && !early.isSymbolicLink()) s = early;
  else {
    try {
      s = timed(() => lstatSync(bytes, { bigint: true }));
    } catch {
      return { kind: 'error', message: `BAD: unable to stat file ${path}` };
    }
  }
  if (!s.isSymbolicLink()) return statReply(path, s, '', undefined);
  let linkTarget: string;
  try {
    linkTarget = timed(() => readlinkSync(bytes, { encoding: 'latin1' }));
  } catch {
    return { kind: 'error', message: 'BAD: unable to read link' };
  }
  let target: BigIntStats | undefined;
  try {
    target = timed(() => statSync(bytes, { bigint: true, throwIfNoEntry: false }));
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

/** listDirectory on the event loop */
export function listDirectorySync(path: string): string[] | undefined {
  try {
    const names = timed(() => readdirSync(fsPath(path), { encoding: 'latin1' }));
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
 * md5OfFile on the event loop, in HASH_READ_BYTES reads (each bounded as fs-direct's reads are); the version
 * is that of what was read.
 */
export function md5OfFileSync(path: string, flags: number = OPEN_FOR_READING): { digest: Buffer; version: string | undefined } | undefined {
  let fd: number;
  try {
    fd = timed(() => openSync(fsPath(path), flags));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ELOOP') return undefined;
    return { digest: Buffer.alloc(16), version: undefined };
  }
  try {
    const hash = createHash('md5');
    const buffer = Buffer.allocUnsafe(HASH_READ_BYTES);
    for (let position = 0; ; ) {
      const bytesRead = timed(() => readSync(fd, buffer, 0, buffer.length, position));
      hash.update(buffer.subarray(0, bytesRead));
      position += bytesRead;
      if (bytesRead < buffer.length) break;
    }
    const digest = hash.digest();
    let version: string | undefined;
    try {
      version = fileVersion(timed(() => fstatSync(fd, { bigint: true })));
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
 * A small file's content on the event loop: up to `size` + 1 bytes (one more than expected, so that a file
 * that grew shows), and which file (fileIdentity) and version (fileVersion) was read. Undefined when it
 * cannot be opened.
 */
export function readWholeSync(
  path: string,
  flags: number,
  size: number,
): { bytes: Buffer; identity: string | undefined; version: string | undefined } | undefined {
  let fd: number;
  try {
    fd = timed(() => openSync(fsPath(path), flags));
  } catch {
    return undefined;
  }
  try {
    const buffer = Buffer.allocUnsafe(size + 1);
    let length = 0;
    for (;;) {
      const wanted = buffer.length - length;
      const bytesRead = timed(() => readSync(fd, buffer, length, wanted, length));
      length += bytesRead;
      // a short read of a regular file is its end: one read per small file
      if (bytesRead < wanted || length === buffer.length) break;
    }
    let opened: BigIntStats | undefined;
    try {
      opened = timed(() => fstatSync(fd, { bigint: true }));
    } catch {
      opened = undefined;
    }
    return {
      bytes: buffer.subarray(0, length),
      identity: opened === undefined ? undefined : fileIdentity(opened),
      version: opened === undefined ? undefined : fileVersion(opened),
    };
  } catch {
    return undefined;
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
