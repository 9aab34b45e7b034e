// Pulling side: the content-addressed store under <state>/blobs/<2 hex>/<sha256>. A blob enters it only
// whole, verified and fsynced (spool's atomic write: temp file in <store>/.tmp, fsync, link), so what an
// interrupted pull fetched is reused by the next one. The shard directories are fsynced once per batch
// (sync()), not once per blob: a pull stores thousands of small blobs. Trees are built from hard links to
// store entries; an entry's inode carries one mode and mtime, so a file wanted with other metadata links to
// a copy `<sha256>.<mode>.<mtime ms>` instead.

import { createHash } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { chmod, link, lstat, mkdir, open, readdir, unlink, utimes, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { copyFileAtomically, fsyncDirectory, forEachLimit, isErrno, openAtomicFile, removeTree, writeFileAtomically, type AtomicWriteOptions } from './fs-util.js';
import type { BlobWriter, FrameSink } from './frames.js';
import { mtimeMsOfNs, type ManifestFile } from './manifest.js';

/** blobs up to this size are assembled in memory and written in the background */
const SMALL_BLOB = 1024 * 1024;
/** background writes (fsync + rename) in flight before a receiver waits: fsyncs in parallel share journal commits */
const MAX_PENDING_WRITES = 256;
/** bytes of small blobs held in memory by those writes */
const MAX_PENDING_BYTES = 64 * 1024 * 1024;

export interface ReceiveStats {
  blobs: number;
  bytes: number;
}

export interface BlobReceiver extends FrameSink {
  /** waits for the background writes; rethrows the first write error */
  flush(): Promise<void>;
  /** the batch broke off: drops the blob being received (its temp file) */
  abandon(): Promise<void>;
}

export interface BlobStore {
  readonly root: string;
  init(): Promise<void>;
  has(sha256: string, size: number): Promise<boolean>;
  /**
   * A sink for one blob batch. Verified blobs are stored; a blob whose bytes do not hash to its name is
   * dropped and reported to `rejected`; `missing` frames are reported to `unavailable`.
   */
  receiver(handlers: { rejected(sha256: string): void; unavailable(sha256: string): void; received(sha256: string, size: number): void }): BlobReceiver;
  /** takes a local file (e.g. of the current tree) into the store if its content hashes to `sha256` */
  adopt(sha256: string, size: number, candidate: string): Promise<boolean>;
  /** a path whose inode has the file's content, mode and mtime, to hard-link into a tree */
  linkSource(file: ManifestFile): Promise<string>;
  /** fsync of the shard directories that received entries */
  sync(): Promise<void>;
  /** removes entries no file of the current manifest needs; returns how many */
  collect(files: readonly ManifestFile[]): Promise<number>;
}

const metadataMatches = (s: { mode: number | bigint; mtimeNs: bigint }, file: ManifestFile): boolean =>
  (Number(s.mode) & 0o777) === file.mode && mtimeMsOfNs(s.mtimeNs) === file.mtimeMs;

export function createBlobStore(root: string): BlobStore {
  const tmp = join(root, '.tmp');
  const touched = new Set<string>();
  /** canonical entries whose metadata a tree file already relies on in this process */
  const claimed = new Set<string>();

  const shard = (sha256: string): string => join(root, sha256.slice(0, 2));
  const canonicalPath = (sha256: string): string => join(shard(sha256), sha256);
  const variantPath = (file: ManifestFile): string => join(shard(file.sha256), `${file.sha256}.${file.mode.toString(8)}.${file.mtimeMs}`);
  /** an entry: temp in .tmp/, fsynced, linked in (an existing entry wins: same content by construction); shards fsynced by sync() */
  const placed: AtomicWriteOptions = { tempDirectory: tmp, tempPrefix: '', syncDirectory: false, keepExisting: true };
  const blobWrite: AtomicWriteOptions = { ...placed, mode: 0o600 };

  async function ensureShard(sha256: string): Promise<void> {
    const directory = shard(sha256);
    if (touched.has(directory)) return;
    await mkdir(directory, { recursive: true, mode: 0o700 });
    touched.add(directory);
  }

  async function writeSmall(sha256: string, data: Buffer): Promise<void> {
    await ensureShard(sha256);
    await writeFileAtomically(canonicalPath(sha256), data, blobWrite);
  }

  return {
    root,

    async init() {
      await removeTree(tmp);
      await mkdir(tmp, { recursive: true, mode: 0o700 });
    },

    async has(sha256, size) {
      try {
        const s = await lstat(canonicalPath(sha256));
        return s.isFile() && s.size === size;
      } catch {
        return false;
      }
    },

    receiver(handlers) {
      const pending = new Set<Promise<void>>();
      /** discards the large blob being written, if any */
      let partial: (() => Promise<void>) | undefined;
      let failure: { error: unknown } | undefined;
      let pendingBytes = 0;
      const background = async (task: Promise<void>, bytes: number): Promise<void> => {
        pendingBytes += bytes;
        const tracked = task.then(
          () => undefined,
          (error: unknown) => {
            failure ??= { error };
          },
        );
        pending.add(tracked);
        void tracked.finally(() => {
          pending.delete(tracked);
          pendingBytes -= bytes;
        });
        while (pending.size >= MAX_PENDING_WRITES || pendingBytes > MAX_PENDING_BYTES) await Promise.race(pending);
        if (failure !== undefined) throw failure.error;
      };

      return {
        async blob(sha256, size): Promise<BlobWriter> {
          if (failure !== undefined) throw failure.error;
          const hash = createHash('sha256');
          let received = 0;
          const verified = (): boolean => {
            const ok = received === size && hash.digest('hex') === sha256;
            if (!ok) handlers.rejected(sha256);
            return ok;
          };
          if (size <= SMALL_BLOB) {
            const chunks: Buffer[] = [];
            return {
              write(chunk) {
                hash.update(chunk);
                received += chunk.length;
                chunks.push(Buffer.from(chunk));
              },
              async end() {
                if (!verified()) return;
                handlers.received(sha256, size);
                await background(writeSmall(sha256, Buffer.concat(chunks)), size);
              },
            };
          }
          await ensureShard(sha256);
          const file = await openAtomicFile(canonicalPath(sha256), blobWrite);
          const discard = async (): Promise<void> => {
            if (partial === discard) partial = undefined;
            await file.discard();
          };
          partial = discard;
          return {
            async write(chunk) {
              hash.update(chunk);
              received += chunk.length;
              try {
                await file.write(chunk);
              } catch (error) {
                if (partial === discard) partial = undefined;
                throw error;
              }
            },
            async end() {
              partial = undefined;
              if (!verified()) {
                await file.discard();
                return;
              }
              handlers.received(sha256, size);
              await background(file.commit(), 0);
            },
          };
        },
        missing(sha256) {
          handlers.unavailable(sha256);
        },
        async flush() {
          await Promise.all(pending);
          if (failure !== undefined) throw failure.error;
        },
        async abandon() {
          await partial?.();
          await Promise.all(pending);
        },
      };
    },

    async adopt(sha256, size, candidate) {
      let handle: FileHandle;
      try {
        handle = await open(candidate, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK);
      } catch {
        return false;
      }
      try {
        const s = await handle.stat();
        if (!s.isFile() || s.size !== size) return false;
        const hash = createHash('sha256');
        for await (const chunk of handle.createReadStream({ autoClose: false })) hash.update(chunk as Buffer);
        if (hash.digest('hex') !== sha256) return false;
      } finally {
        await handle.close();
      }
      await ensureShard(sha256);
      try {
        await link(candidate, canonicalPath(sha256));
      } catch (error) {
        if (isErrno(error, 'EEXIST')) return true;
        if (!isErrno(error, 'EXDEV', 'EPERM')) throw error;
        await copyFileAtomically(candidate, canonicalPath(sha256), placed);
      }
      // a live tree's inode: its metadata is not ours to change
      claimed.add(sha256);
      return true;
    },

    async linkSource(file) {
      const canonical = canonicalPath(file.sha256);
      const s = await lstat(canonical, { bigint: true });
      if (metadataMatches(s, file)) {
        claimed.add(file.sha256);
        return canonical;
      }
      const variant = variantPath(file);
      const v = await lstat(variant, { bigint: true }).catch(() => undefined);
      if (v !== undefined && metadataMatches(v, file)) return variant;
      // not linked anywhere yet: give the canonical inode this file's metadata
      if (s.nlink === 1n && !claimed.has(file.sha256)) {
        claimed.add(file.sha256);
        await chmod(canonical, file.mode);
        await utimes(canonical, file.mtimeMs / 1000, file.mtimeMs / 1000);
        return canonical;
      }
      await ensureShard(file.sha256);
      await copyFileAtomically(canonical, variant, { ...blobWrite, keepExisting: false, clone: true, mode: file.mode, mtimeMs: file.mtimeMs });
      return variant;
    },

    async sync() {
      const directories = [...touched];
      touched.clear();
      await forEachLimit(directories, 16, fsyncDirectory);
      if (directories.length > 0) await fsyncDirectory(root);
    },

    async collect(files) {
      const wanted = new Set<string>();
      for (const file of files) {
        wanted.add(file.sha256);
        wanted.add(`${file.sha256}.${file.mode.toString(8)}.${file.mtimeMs}`);
      }
      let removed = 0;
      let shards: string[];
      try {
        shards = (await readdir(root)).filter((name) => /^[0-9a-f]{2}$/.test(name));
      } catch {
        return 0;
      }
      await forEachLimit(shards, 8, async (name) => {
        const directory = join(root, name);
        for (const entry of await readdir(directory)) {
          if (wanted.has(entry)) continue;
          await unlink(join(directory, entry)).catch(() => undefined);
          claimed.delete(entry);
          removed += 1;
        }
      });
      return removed;
    },
  };
}
