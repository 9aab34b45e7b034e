// Shared-files storage in relayd's layout `<root>/<target>/files/<source>/<fileId>` + `<fileId>.metadata`
// (spec-relayd.md §4.7), written atomically, and the expiry walk (§8).

import { mkdir, readdir, readFile, stat, unlink } from 'node:fs/promises';
import { fsyncDirectory, writeFileAtomically } from '../spool/index.js';
import path from 'node:path';
import type { Logger } from 'pino';
import { messageOf } from '../errors.js';
import { parseMetadata } from './metadata.js';

// '~' is outside relayd's id pattern [A-Za-z0-9._-]: no share id can ever be taken for a temporary file
// (an id ".onerelay-tmp-keep" was, and the cleanup removed it before its TTL)
const TEMP_PREFIX = '.onerelay~tmp-';
/** temp files older than this are leftovers of a crash */
const STALE_TEMP_MS = 3_600_000;

export function shareDirectory(root: string, target: string, source: string): string {
  return path.join(root, target, 'files', source);
}

export function metadataPath(root: string, target: string, source: string, fileId: string): string {
  return path.join(shareDirectory(root, target, source), `${fileId}.metadata`);
}

/**
 * Stores a share: content first, metadata last, each atomically, so a HEAD never answers yes for content
 * that is not complete on disk (relayd writes metadata first, non-atomically: §15.13).
 */
export async function writeShare(
  root: string,
  share: { target: string; source: string; fileId: string },
  content: Buffer,
  metadataText: string,
): Promise<void> {
  const directory = shareDirectory(root, share.target, share.source);
  await mkdir(directory, { recursive: true });
  // temp names never end in `.metadata`, and carry TEMP_PREFIX so the cleanup removes leftovers
  const options = { mode: 0o644, tempPrefix: TEMP_PREFIX, syncDirectory: false };
  await writeFileAtomically(path.join(directory, share.fileId), content, options);
  await writeFileAtomically(path.join(directory, `${share.fileId}.metadata`), metadataText, options);
  await fsyncDirectory(directory);
}

export interface CleanupResult {
  readonly removed: number;
  readonly kept: number;
  readonly invalid: number;
}

async function removeIfExists(file: string): Promise<void> {
  try {
    await unlink(file);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
}

/**
 * Walks `root` (no symlink following, walk errors ignored); for each `*.metadata` whose `expires` is before
 * `nowSec`, removes the content then the metadata (a crash in between leaves an expired metadata that the
 * next pass removes). Unparseable metadata or no `expires`: warned about and kept.
 */
export async function removeExpired(
  root: string,
  nowSec: bigint,
  log: Logger,
  onRemoved: () => void,
): Promise<CleanupResult> {
  let removed = 0;
  let kept = 0;
  let invalid = 0;
  const walk = async (directory: string): Promise<void> => {
    let entries;
    try {
      entries = await readdir(directory, { withFileTypes: true });
    } catch {
      return;
    }
    for (const entry of entries) {
      const file = path.join(directory, entry.name);
      if (entry.isDirectory()) {
        await walk(file);
        continue;
      }
      if (!entry.isFile()) continue;
      if (entry.name.startsWith(TEMP_PREFIX)) {
        await removeStaleTemp(file, log);
        continue;
      }
      // Rust Path::extension(): the text after the last dot, when that dot is not the first character
      const dot = entry.name.lastIndexOf('.');
      if (dot <= 0 || entry.name.slice(dot + 1) !== 'metadata') continue;
      let expires: bigint | undefined;
      try {
        expires = parseMetadata(await readFile(file)).expires;
      } catch (error) {
        invalid += 1;
        log.warn({ code: 'RELAY_ERR_BAD_REQUEST', file, err: messageOf(error) }, 'unparseable shared-file metadata kept');
        continue;
      }
      if (expires === undefined) {
        invalid += 1;
        log.warn({ code: 'RELAY_ERR_BAD_REQUEST', file }, 'shared-file metadata without expires kept');
        continue;
      }
      if (expires >= nowSec) {
        kept += 1;
        continue;
      }
      const content = path.join(directory, entry.name.slice(0, dot));
      try {
        await removeIfExists(content);
        await removeIfExists(file);
        removed += 1;
        onRemoved();
        log.info({ file: content, expires: Number(expires) }, 'removing expired shared-file');
      } catch (error) {
        log.error({ code: 'RELAY_ERR_INTERNAL', file: content, err: messageOf(error) }, 'could not remove expired shared-file');
      }
    }
  };
  await walk(root);
  return { removed, kept, invalid };
}

async function removeStaleTemp(file: string, log: Logger): Promise<void> {
  try {
    const info = await stat(file);
    if (Date.now() - info.mtimeMs < STALE_TEMP_MS) return;
    await unlink(file);
    log.info({ file }, 'removing stale shared-file temporary file');
  } catch {
    // gone meanwhile, or not ours to remove: nothing to do
  }
}
