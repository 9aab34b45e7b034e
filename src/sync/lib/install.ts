// Pulling side: putting a unit (a node directory, common/, the shared folder, a shared-files entry, or one
// of the two nodes files) in place so that readers only ever see a whole tree.
//
// Directory units: the new tree is built beside the old one as `.sync-build.<name>` (hard links into the
// blob store, every directory fsynced), then `<name>` → `.sync-old.<name>`, `.sync-build.<name>` →
// `<name>`, fsync of the parent, and the old tree is removed. Between the two renames (microseconds) the
// unit is absent, so a reader gets the whole old tree, a 404, or the whole new tree, never a mix; files
// already open keep their content. A symlink flip would avoid that instant but not work here: the
// CFEngine server and the static-file server realpath() every request and check the result against
// `<policies>/<node id>/`, so a tree served through a link to `.sync-…` would fail those checks. Linux's
// renameat2(RENAME_EXCHANGE) is not reachable from Node.
// A crash between the renames leaves `.sync-old.<name>` and no `<name>`: recover() renames it back.
// File units (nodeslist.json, nodescerts.pem) are copied (other modules must not share an inode with the
// store) with spool's atomic copy: temp name, fsync, rename over the target, fsync of the directory.

import { link, lstat, mkdir, open, readdir, rename } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { RelayError } from '../../errors.js';
import type { BlobStore } from './blob-store.js';
import { BUILD_PREFIX, OLD_PREFIX, copyFileAtomically, forEachLimit, fsyncDirectory, isErrno, removeTree } from './fs-util.js';
import type { SyncPaths } from '../index.js';
import { COMMON_NAME, NODES_CERTS_UNIT, NODES_LIST_UNIT, OWN_POLICIES_UNIT, unitOf, type ManifestEntry, type ManifestFile } from './manifest.js';

const LINK_CONCURRENCY = 32;

export interface UnitTarget {
  readonly unit: string;
  /** the path readers use */
  readonly destination: string;
  readonly kind: 'directory' | 'file';
}

/** where a unit of the manifest lives on this relay (spec-https-front-cfserverd-sync.md §3.2 a, c, g) */
export function targetOf(unit: string, paths: SyncPaths): UnitTarget {
  if (unit === NODES_LIST_UNIT) return { unit, destination: paths.nodesListFile, kind: 'file' };
  if (unit === NODES_CERTS_UNIT) return { unit, destination: paths.nodesCertsFile, kind: 'file' };
  if (unit === COMMON_NAME) return { unit, destination: join(paths.policiesDirectory, COMMON_NAME), kind: 'directory' };
  if (unit === 'shared-folder') return { unit, destination: paths.sharedFolderPath, kind: 'directory' };
  // the relay's own inputs: outside every tree served to nodes (spec-agentless-node.md §B.1)
  if (unit === OWN_POLICIES_UNIT && paths.ownInputsDirectory !== undefined) return { unit, destination: paths.ownInputsDirectory, kind: 'directory' };
  if (unit.startsWith('share/')) return { unit, destination: join(paths.policiesDirectory, unit.slice('share/'.length)), kind: 'directory' };
  if (unit.startsWith('shared-files/')) return { unit, destination: join(paths.sharedFilesPath, unit.slice('shared-files/'.length)), kind: 'directory' };
  throw new RelayError('RELAY_ERR_INTERNAL', `unknown sync unit ${unit}`);
}

/** the local path of a manifest path (for reusing files already on disk) */
export function localPathOf(path: string, paths: SyncPaths): string | undefined {
  const located = unitOf(path);
  if (located === undefined) return undefined;
  const target = targetOf(located.unit, paths);
  return located.rest === '' ? target.destination : join(target.destination, ...located.rest.split('/'));
}

/** the directories units are switched in */
export function parentsOf(paths: SyncPaths): string[] {
  const own = paths.ownInputsDirectory === undefined ? [] : [dirname(paths.ownInputsDirectory)];
  return [...new Set([paths.policiesDirectory, dirname(paths.sharedFolderPath), paths.sharedFilesPath, dirname(paths.nodesListFile), dirname(paths.nodesCertsFile), ...own])];
}

export async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch {
    return false;
  }
}

/** after a crash: put back a unit left aside mid-switch, drop half-built trees and old trees */
export async function recover(paths: SyncPaths): Promise<string[]> {
  return recoverParents(parentsOf(paths));
}

/** recover() in the given directories (units installed elsewhere, e.g. the library trees of a CFEngine pull) */
export async function recoverParents(parents: readonly string[]): Promise<string[]> {
  const actions: string[] = [];
  for (const parent of parents) {
    let names: string[];
    try {
      names = await readdir(parent);
    } catch {
      continue;
    }
    for (const name of names) {
      if (name.startsWith(OLD_PREFIX)) {
        const unit = join(parent, name.slice(OLD_PREFIX.length));
        if (await exists(unit)) {
          await removeTree(join(parent, name));
          actions.push(`removed ${join(parent, name)}`);
        } else {
          await rename(join(parent, name), unit);
          actions.push(`restored ${unit}`);
        }
      } else if (name.startsWith(BUILD_PREFIX)) {
        await removeTree(join(parent, name));
        actions.push(`removed ${join(parent, name)}`);
      }
    }
    if (actions.length > 0) await fsyncDirectory(parent);
  }
  return actions;
}

async function linkInto(source: string, destination: string, file: ManifestFile): Promise<void> {
  try {
    await link(source, destination);
  } catch (error) {
    if (!isErrno(error, 'EXDEV', 'EPERM', 'EMLINK')) throw error;
    // another file system (or too many links): a copy with the same metadata (its directory is fsynced by buildTree)
    await copyFileAtomically(source, destination, { mode: file.mode, mtimeMs: file.mtimeMs, syncDirectory: false });
  }
}

/** the tree of one directory unit at `build`: directories, hard links into the store, modes, fsyncs */
async function buildTree(build: string, entries: readonly ManifestEntry[], store: BlobStore): Promise<void> {
  // directories first (sorted paths: a parent comes before its children), writable while filled
  const directories: { path: string; mode: number }[] = [{ path: build, mode: 0o750 }];
  await mkdir(build, { mode: 0o700 });
  for (const entry of entries) {
    const rest = unitOf(entry.path)?.rest ?? '';
    if (entry.kind !== 'd') continue;
    if (rest === '') {
      directories[0] = { path: build, mode: entry.mode };
      continue;
    }
    const path = join(build, ...rest.split('/'));
    await mkdir(path, { recursive: true, mode: 0o700 });
    directories.push({ path, mode: entry.mode });
  }
  const files = entries.filter((e): e is ManifestFile => e.kind === 'f');
  // a manifest lists every directory; one that does not still gets a directory (0750, as on a Rudder root)
  const known = new Set(directories.map((d) => d.path));
  for (const file of files) {
    const parent = dirname(join(build, ...(unitOf(file.path)?.rest ?? '').split('/')));
    if (known.has(parent)) continue;
    await mkdir(parent, { recursive: true, mode: 0o700 });
    for (let missing = parent; !known.has(missing) && missing.startsWith(build); missing = dirname(missing)) {
      known.add(missing);
      directories.push({ path: missing, mode: 0o750 });
    }
  }
  await forEachLimit(files, LINK_CONCURRENCY, async (file) => {
    const rest = unitOf(file.path)?.rest ?? '';
    await linkInto(await store.linkSource(file), join(build, ...rest.split('/')), file);
  });
  // deepest level first (a directory's final mode may forbid what its children still need), each
  // directory given its mode and fsynced, so the switched-in tree is whole on disk
  const depth = (path: string): number => path.split('/').length;
  const levels = new Map<number, { path: string; mode: number }[]>();
  for (const directory of directories) {
    const level = levels.get(depth(directory.path));
    if (level === undefined) levels.set(depth(directory.path), [directory]);
    else level.push(directory);
  }
  for (const level of [...levels.keys()].sort((a, b) => b - a)) {
    await forEachLimit(levels.get(level) ?? [], LINK_CONCURRENCY, async (directory) => {
      const handle = await open(directory.path, 'r');
      try {
        await handle.chmod(directory.mode);
        await handle.sync();
      } finally {
        await handle.close();
      }
    });
  }
}

/** builds `entries` (all of one directory unit) beside `target` and switches it in */
export async function installDirectory(target: UnitTarget, entries: readonly ManifestEntry[], store: BlobStore, check?: (build: string) => Promise<void>): Promise<void> {
  const parent = dirname(target.destination);
  const name = basename(target.destination);
  const build = join(parent, `${BUILD_PREFIX}${name}`);
  await mkdir(parent, { recursive: true });
  await removeTree(build);
  try {
    await buildTree(build, entries, store);
    // the relay's own policies: a broken generation never replaces the one in force
    if (check !== undefined) await check(build);
  } catch (error) {
    await removeTree(build);
    throw error;
  }

  await switchDirectory(target.destination, build);
}

/** where the new tree of `destination` is built before switchDirectory() */
export function buildPathOf(destination: string): string {
  return join(dirname(destination), `${BUILD_PREFIX}${basename(destination)}`);
}

/** puts the whole tree built at `build` (buildPathOf) in place of `destination`, the old one aside then removed */
export async function switchDirectory(destination: string, build: string): Promise<void> {
  const parent = dirname(destination);
  const old = join(parent, `${OLD_PREFIX}${basename(destination)}`);
  await removeTree(old);
  const hadOld = await exists(destination);
  if (hadOld) await rename(destination, old);
  try {
    await rename(build, destination);
  } catch (error) {
    // the old tree goes back rather than leaving the unit absent
    if (hadOld) await rename(old, destination).catch(() => undefined);
    await removeTree(build);
    throw error;
  }
  await fsyncDirectory(parent);
  if (hadOld) await removeTree(old);
}

/** nodeslist.json, nodescerts.pem: a copy of the blob renamed over the target */
export async function installFile(target: UnitTarget, file: ManifestFile, store: BlobStore): Promise<void> {
  await mkdir(dirname(target.destination), { recursive: true });
  await copyFileAtomically(await store.linkSource(file), target.destination, { mode: file.mode });
}

/** a unit gone upstream: aside (one rename, so it disappears whole), then removed */
export async function removeUnit(target: UnitTarget): Promise<void> {
  const parent = dirname(target.destination);
  const old = join(parent, `${OLD_PREFIX}${basename(target.destination)}`);
  await removeTree(old);
  try {
    await rename(target.destination, old);
  } catch (error) {
    if (isErrno(error, 'ENOENT')) return;
    throw error;
  }
  await fsyncDirectory(parent);
  await removeTree(old);
}
