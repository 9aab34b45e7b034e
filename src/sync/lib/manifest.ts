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
import { relayError } from '../../errors.js';

export const MANIFEST_HEADER = 'onerelay-sync-manifest 1';
export const NODES_LIST_UNIT = 'nodeslist.json';
export const NODES_CERTS_UNIT = 'nodescerts.pem';
/**
 * the requesting relay's own policies (/var/rudder/share/<relay>/rules/cfengine-community on the root), sent only
 * when asked for (`?own=1`), so that a puller that does not know this unit never meets it
 */
export const OWN_POLICIES_UNIT = 'own-policies';
/** the local `common/` of policies.directory: never purged as a node directory */
export const COMMON_NAME = 'common';

/** a manifest's mtime (ms) of a file's st_mtime in ns, rounded to nearest: utimes() through a double may store …122999999 ns for …123 ms */
export const mtimeMsOfNs = (mtimeNs: bigint): number => Number((mtimeNs + 500_000n) / 1_000_000n);

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
    case OWN_POLICIES_UNIT:
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

const entryLine = (entry: ManifestEntry): string =>
  entry.kind === 'd'
    ? `d ${entry.mode.toString(8)} ${encodePath(entry.path)}`
    : `f ${entry.sha256} ${entry.size} ${entry.mode.toString(8)} ${entry.mtimeMs} ${encodePath(entry.path)}`;

export function serializeManifest(entries: ManifestEntry[]): Manifest {
  entries.sort(byPath);
  const lines = [MANIFEST_HEADER];
  for (const entry of entries) lines.push(entryLine(entry));
  const text = Buffer.from(`${lines.join('\n')}\n`, 'utf8');
  return { generation: generationOf(text), entries, text };
}

// A delta from a generation the puller has (GET manifest?base=<generation>), so that a small change does
// not cost the whole manifest:
//
//   onerelay-sync-delta 1 <base generation> <new generation> <n>\n
//   <n bytes: "- <unit>" for every unit dropped or replaced, then the manifest lines of the replaced units>
//   <a blob batch (frames.ts): new blobs of those units, possibly not all of them>
//
// The puller rebuilds the whole manifest from its own and checks the new generation (the sha256 of the
// rebuilt text), so a delta can never make it install something the upstream did not describe.

export const DELTA_MAGIC = 'onerelay-sync-delta 1 ';
const DELTA_LINE = /^onerelay-sync-delta 1 ([0-9a-f]{64}) ([0-9a-f]{64}) (\d{1,10})$/;
/** the delta's first line is at most this long */
export const MAX_DELTA_HEADER = 160;

export function serializeDelta(base: string, generation: string, dropped: readonly string[], entries: readonly ManifestEntry[]): Buffer {
  const lines = [...dropped.map((unit) => `- ${encodePath(unit)}`), ...entries.map(entryLine)];
  const body = Buffer.from(lines.length === 0 ? '' : `${lines.join('\n')}\n`, 'utf8');
  return Buffer.concat([Buffer.from(`${DELTA_MAGIC}${base} ${generation} ${body.length}\n`, 'latin1'), body]);
}

export interface DeltaHeader {
  readonly base: string;
  readonly generation: string;
  readonly length: number;
}

export function parseDeltaHeader(line: string): DeltaHeader {
  const match = DELTA_LINE.exec(line);
  if (match === null) throw relayError('RELAY_ERR_SYNC_FORMAT', `malformed delta header ${JSON.stringify(line.slice(0, 80))}`);
  return { base: match[1] ?? '', generation: match[2] ?? '', length: Number(match[3]) };
}

/** `base` with the delta's changes, checked against the generation the delta announces */
export function applyDelta(base: Manifest, header: DeltaHeader, body: Buffer): Manifest {
  if (base.generation !== header.base) throw relayError('RELAY_ERR_SYNC_FORMAT', 'delta from another generation');
  const dropped = new Set<string>();
  const lines = body.toString('utf8').split('\n');
  if (lines.at(-1) !== '') throw relayError('RELAY_ERR_SYNC_FORMAT', 'delta truncated (no final newline)');
  let first = 0;
  while (first < lines.length - 1 && (lines[first] ?? '').startsWith('- ')) {
    dropped.add(decodePath((lines[first] ?? '').slice(2)));
    first += 1;
  }
  // the same validation as a whole manifest
  const added = parseManifest(Buffer.from(`${MANIFEST_HEADER}\n${lines.slice(first).join('\n')}`, 'utf8'));
  for (const entry of added.entries) {
    if (!dropped.has(unitOf(entry.path)?.unit ?? '')) throw relayError('RELAY_ERR_SYNC_FORMAT', `delta: ${entry.path} is in a unit the delta does not replace`);
  }
  const entries = base.entries.filter((entry) => !dropped.has(unitNameOf(entry.path)));
  const rebuilt = serializeManifest([...entries, ...added.entries]);
  if (rebuilt.generation !== header.generation) throw relayError('RELAY_ERR_SYNC_FORMAT', 'delta does not rebuild the announced generation');
  // both parts were validated when parsed; what remains is a file of one part above an entry of the other
  const files = new Set<string>();
  for (const entry of rebuilt.entries) if (entry.kind === 'f') files.add(entry.path);
  checkNothingBelowFiles(added.entries, files);
  const addedFiles = new Set<string>();
  for (const entry of added.entries) if (entry.kind === 'f') addedFiles.add(entry.path);
  checkNothingBelowFiles(entries, addedFiles);
  return rebuilt;
}

export function generationOf(text: Buffer): string {
  return createHash('sha256').update(text).digest('hex');
}

const DIRECTORY_LINE = /^d ([0-7]{1,5}) (.+)$/;
const FILE_LINE = /^f ([0-9a-f]{64}) (\d{1,15}) ([0-7]{1,5}) (-?\d{1,15}) (.+)$/;

/** validates everything a puller will turn into paths and links; throws Error with the reason */
export function parseManifest(text: Buffer): Manifest {
  const lines = text.toString('utf8').split('\n');
  if (lines[0] !== MANIFEST_HEADER) throw relayError('RELAY_ERR_SYNC_FORMAT', `not a sync manifest (first line ${JSON.stringify(lines[0]?.slice(0, 60))})`);
  if (lines.at(-1) !== '') throw relayError('RELAY_ERR_SYNC_FORMAT', 'manifest truncated (no final newline)');
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
      throw relayError('RELAY_ERR_SYNC_FORMAT', `manifest line ${index + 1} malformed`);
    }
    if (entry.path <= previous) throw relayError('RELAY_ERR_SYNC_FORMAT', `manifest line ${index + 1}: paths not sorted or repeated`);
    previous = entry.path;
    const unit = unitOf(entry.path);
    if (unit === undefined) throw relayError('RELAY_ERR_SYNC_FORMAT', `manifest line ${index + 1}: path not allowed: ${JSON.stringify(entry.path)}`);
    if (isFileUnit(unit.unit) !== (entry.kind === 'f' && unit.rest === '')) {
      throw relayError('RELAY_ERR_SYNC_FORMAT', `manifest line ${index + 1}: ${entry.path} has the wrong type`);
    }
    entries.push(entry);
  }
  checkNothingBelowFiles(entries, files);
  return { generation: generationOf(text), entries, text };
}

/** a file cannot also be a directory on the way to another entry */
function checkNothingBelowFiles(entries: readonly ManifestEntry[], files: ReadonlySet<string>): void {
  for (const entry of entries) {
    for (let slash = entry.path.indexOf('/'); slash >= 0; slash = entry.path.indexOf('/', slash + 1)) {
      if (files.has(entry.path.slice(0, slash))) throw relayError('RELAY_ERR_SYNC_FORMAT', `manifest: ${entry.path} lies below the file ${entry.path.slice(0, slash)}`);
    }
  }
}

/** the unit of a path of a parsed (validated) manifest: the first one or two segments */
export function unitNameOf(path: string): string {
  const first = path.indexOf('/');
  if (first < 0) return path;
  const top = path.slice(0, first);
  if (top !== 'share' && top !== 'shared-files') return top;
  const second = path.indexOf('/', first + 1);
  return second < 0 ? path : path.slice(0, second);
}

/** entries grouped, in manifest order, with a digest of each unit's lines to spot unchanged units */
export interface ManifestUnit {
  readonly name: string;
  readonly entries: ManifestEntry[];
  readonly digest: string;
}

const unitsCache = new WeakMap<Manifest, Map<string, ManifestUnit>>();

/** the units of a manifest (computed once per manifest object; callers must not change the result) */
export function unitsOf(manifest: Manifest): Map<string, ManifestUnit> {
  const known = unitsCache.get(manifest);
  if (known !== undefined) return new Map(known);
  const grouped = new Map<string, ManifestEntry[]>();
  for (const entry of manifest.entries) {
    const name = unitNameOf(entry.path);
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
  unitsCache.set(manifest, units);
  return new Map(units);
}
