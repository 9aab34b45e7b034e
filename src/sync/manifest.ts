// The sync manifest: one line per file or directory of what a relay is entitled to, sorted by path;
// its sha256 is the generation id (and the ETag). Text, so it gzips well and can be read with less.
//
//   onerelay-sync-manifest 1
//   d <mode octal> <path>
//   f <sha256 hex> <size> <mode octal> <mtime ms> <path>
//
// Paths are relative, `/`-separated, with `%`, CR and LF percent-encoded; the first segments name the
// unit that is switched as a whole on the pulling side (see unitOf).

import { createHash } from 'node:crypto';

export const MANIFEST_HEADER = 'onerelay-sync-manifest 1';
export const NODES_LIST_UNIT = 'nodeslist.json';
export const NODES_CERTS_UNIT = 'nodescerts.pem';
/** the local `common/` of policies.directory: never purged as a node directory */
export const COMMON_NAME = 'common';

export interface ManifestFile {
  readonly kind: 'f';
  readonly path: string;
  readonly sha256: string;
  readonly size: number;
  readonly mode: number;
  readonly mtimeMs: number;
}

export interface ManifestDirectory {
  readonly kind: 'd';
  readonly path: string;
  readonly mode: number;
}

export type ManifestEntry = ManifestFile | ManifestDirectory;

export interface Manifest {
  readonly generation: string;
  readonly entries: readonly ManifestEntry[];
  readonly text: Buffer;
}

/** what the pulling side switches atomically, and where the path lies inside it ('' = the unit itself) */
export interface UnitPath {
  readonly unit: string;
  readonly rest: string;
}

const SHA256_HEX = /^[0-9a-f]{64}$/;

export function isSha256Hex(value: string): boolean {
  return SHA256_HEX.test(value);
}

function encodePath(path: string): string {
  return path.replace(/[%\r\n]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase().padStart(2, '0')}`);
}

function decodePath(encoded: string): string {
  return encoded.replace(/%([0-9A-Fa-f]{2})/g, (_, hex: string) => String.fromCharCode(parseInt(hex, 16)));
}

/** a segment a walker may emit and a puller may create: no dot files (as CFEngine's recurse_visible), no separators */
export function isSafeSegment(segment: string): boolean {
  return segment !== '' && !segment.startsWith('.') && !segment.includes('/') && !segment.includes('\0');
}

export function unitOf(path: string): UnitPath | undefined {
  const segments = path.split('/');
  if (!segments.every(isSafeSegment)) return undefined;
  const [top, second] = segments;
  switch (top) {
    case 'share':
    case 'shared-files':
      if (second === undefined || (top === 'share' && second === COMMON_NAME)) return undefined;
      return { unit: `${top}/${second}`, rest: segments.slice(2).join('/') };
    case COMMON_NAME:
    case 'shared-folder':
      return { unit: top, rest: segments.slice(1).join('/') };
    case NODES_LIST_UNIT:
    case NODES_CERTS_UNIT:
      return segments.length === 1 ? { unit: top, rest: '' } : undefined;
    default:
      return undefined;
  }
}

export function isFileUnit(unit: string): boolean {
  return unit === NODES_LIST_UNIT || unit === NODES_CERTS_UNIT;
}

const byPath = (a: ManifestEntry, b: ManifestEntry): number => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0);

export function serializeManifest(entries: ManifestEntry[]): Manifest {
  entries.sort(byPath);
  const lines = [MANIFEST_HEADER];
  for (const entry of entries) {
    lines.push(
      entry.kind === 'd'
        ? `d ${entry.mode.toString(8)} ${encodePath(entry.path)}`
        : `f ${entry.sha256} ${entry.size} ${entry.mode.toString(8)} ${entry.mtimeMs} ${encodePath(entry.path)}`,
    );
  }
  const text = Buffer.from(`${lines.join('\n')}\n`, 'utf8');
  return { generation: generationOf(text), entries, text };
}

export function generationOf(text: Buffer): string {
  return createHash('sha256').update(text).digest('hex');
}

const DIRECTORY_LINE = /^d ([0-7]{1,5}) (.+)$/;
const FILE_LINE = /^f ([0-9a-f]{64}) (\d{1,15}) ([0-7]{1,5}) (-?\d{1,15}) (.+)$/;

/** validates everything a puller will turn into paths and links; throws Error with the reason */
export function parseManifest(text: Buffer): Manifest {
  const lines = text.toString('utf8').split('\n');
  if (lines[0] !== MANIFEST_HEADER) throw new Error(`not a sync manifest (first line ${JSON.stringify(lines[0]?.slice(0, 60))})`);
  if (lines.at(-1) !== '') throw new Error('manifest truncated (no final newline)');
  const entries: ManifestEntry[] = [];
  const files = new Set<string>();
  let previous = '';
  for (let index = 1; index < lines.length - 1; index += 1) {
    const line = lines[index] ?? '';
    const directory = DIRECTORY_LINE.exec(line);
    const file = directory === null ? FILE_LINE.exec(line) : null;
    let entry: ManifestEntry;
    if (directory !== null) {
      entry = { kind: 'd', mode: parseInt(directory[1] ?? '', 8), path: decodePath(directory[2] ?? '') };
    } else if (file !== null) {
      entry = {
        kind: 'f',
        sha256: file[1] ?? '',
        size: Number(file[2]),
        mode: parseInt(file[3] ?? '', 8),
        mtimeMs: Number(file[4]),
        path: decodePath(file[5] ?? ''),
      };
      files.add(entry.path);
    } else {
      throw new Error(`manifest line ${index + 1} malformed`);
    }
    if (entry.path <= previous) throw new Error(`manifest line ${index + 1}: paths not sorted or repeated`);
    previous = entry.path;
    const unit = unitOf(entry.path);
    if (unit === undefined) throw new Error(`manifest line ${index + 1}: path not allowed: ${JSON.stringify(entry.path)}`);
    if (isFileUnit(unit.unit) !== (entry.kind === 'f' && unit.rest === '')) {
      throw new Error(`manifest line ${index + 1}: ${entry.path} has the wrong type`);
    }
    entries.push(entry);
  }
  // a file cannot also be a directory on the way to another entry
  for (const entry of entries) {
    for (let slash = entry.path.indexOf('/'); slash >= 0; slash = entry.path.indexOf('/', slash + 1)) {
      if (files.has(entry.path.slice(0, slash))) throw new Error(`manifest: ${entry.path} lies below the file ${entry.path.slice(0, slash)}`);
    }
  }
  return { generation: generationOf(text), entries, text };
}

/** entries grouped by unit, in manifest order, with a digest of each unit's lines to spot unchanged units */
export interface ManifestUnit {
  readonly name: string;
  readonly entries: ManifestEntry[];
  readonly digest: string;
}

export function unitsOf(manifest: Manifest): Map<string, ManifestUnit> {
  const grouped = new Map<string, ManifestEntry[]>();
  for (const entry of manifest.entries) {
    const name = unitOf(entry.path)?.unit ?? '';
    const list = grouped.get(name);
    if (list === undefined) grouped.set(name, [entry]);
    else list.push(entry);
  }
  const units = new Map<string, ManifestUnit>();
  for (const [name, entries] of grouped) {
    const hash = createHash('sha256');
    for (const e of entries) hash.update(e.kind === 'd' ? `d ${e.mode} ${e.path}\n` : `f ${e.sha256} ${e.size} ${e.mode} ${e.mtimeMs} ${e.path}\n`);
    units.set(name, { name, entries, digest: hash.digest('hex') });
  }
  return units;
}
