// One load of nodeslist.json + the nodes certificates file into immutable indexes (spec-relayd.md §3).
// Everything a lookup needs is computed here, once per load, so lookups are O(1) at 50k nodes.

import { promises as fs, readSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import type { Logger } from 'pino';
import { RelayError, messageOf } from '../errors.js';
import { DerError, isPemBody, parseCertificateFacts, pemBodyRanges, pemBodyToDer, type CertificateFacts } from '../der/index.js';
import type { KeyHash, NodeEntry, NodesOptions } from './index.js';
import { PackedKeyHash, hashSpki, keyHashIndexKey, parseKeyHash } from './key-hash.js';

export interface NodesSnapshot {
  readonly nodes: ReadonlyMap<string, NodeEntry>;
  /** the DER of the node's certificates kept (see NodesOptions.keepCertificates), in file order: views on the store's slabs */
  certificatesOf(id: string): readonly Buffer[];
  /**
   * issuer, serial and SPKI of the node's certificates (see NodesOptions.keepSigners), in file order, read
   * again from the loaded file (see SignerPlaces) each time: [] only for a node without certificates. Throws
   * RelayError RELAY_ERR_NODES_CERTS when they cannot be read as they were loaded (the file changed in place,
   * the snapshot closed): never "no certificate", which would let a report through unverified.
   */
  signersOf(id: string): readonly SignerParts[];
  /** closes the loaded certificates file that signersOf reads: when the next load replaces this one, and at stop */
  close(): Promise<void>;
  /** per node pinned by its certificates (no key-hash): sha256 of the SPKI of each of its certificates, as latin1 */
  readonly certificateKeys: ReadonlyMap<string, ReadonlySet<string>>;
  readonly certificateCount: number;
  /** the reverse indexes of findByPublicKey, built on first use (see KeyIndexes) */
  keyIndexes(): KeyIndexes;
  readonly neighbors: readonly NodeEntry[];
  readonly subRelays: readonly NodeEntry[];
}

/**
 * Public key → node, for the CFEngine server (findByPublicKey). Built on first use, once per load: a
 * front-door worker never asks, and these indexes are ~1.5 MB of strings and tables at 10,000 nodes
 * (bench/footprint). Keys are the hash bytes as latin1 text (one byte a character): half the size of hex.
 */
export interface KeyIndexes {
  /** `<type>:` + the key-hash's bytes as latin1 → node */
  readonly byKeyHash: ReadonlyMap<string, NodeEntry>;
  /** sha256 of a certificate SPKI as latin1 → node, only for nodes pinned by certificates (no key-hash) */
  readonly byCertificateKey: ReadonlyMap<string, NodeEntry>;
  readonly hasSha512KeyHash: boolean;
}

export interface SignerParts {
  readonly issuer: Buffer;
  readonly serial: Buffer;
  readonly spki: Buffer;
}

export function emptySnapshot(): NodesSnapshot {
  return buildSnapshot(new Map(), new Map(), new DerStore(), '', undefined);
}

/** bytes of a certificate's SPKI sha256 kept to check what is read again at its place */
const CHECK_BYTES = 8;

/**
 * Where each certificate whose signer parts may be asked for is in the loaded file: its PEM body's offset and
 * length, and the first bytes of its SPKI's sha256 (already computed at load) to check what is read there
 * later. 24 bytes per certificate in two typed arrays instead of its issuer, serial and SPKI (~0.5 KB of an
 * RSA-4096 agent certificate: ~5 MB of the primary at 10,000 nodes, which kept them all until the next load
 * though a relay checks a node's signature once per run interval; bench/footprint).
 */
export class SignerPlaces {
  /** per certificate: offset, length */
  private places = new Float64Array(2 * 64);
  private checks = Buffer.allocUnsafeSlow(CHECK_BYTES * 64);
  count = 0;

  add(offset: number, length: number, spkiSha256: Buffer): number {
    if (2 * (this.count + 1) > this.places.length) {
      const places = new Float64Array(this.places.length * 2);
      places.set(this.places);
      this.places = places;
      const checks = Buffer.allocUnsafeSlow(this.checks.length * 2);
      this.checks.copy(checks);
      this.checks = checks;
    }
    this.places[2 * this.count] = offset;
    this.places[2 * this.count + 1] = length;
    spkiSha256.copy(this.checks, CHECK_BYTES * this.count, 0, CHECK_BYTES);
    return this.count++;
  }

  offset(index: number): number {
    return this.places[2 * index]!;
  }

  length(index: number): number {
    return this.places[2 * index + 1]!;
  }

  check(index: number): Buffer {
    return this.checks.subarray(CHECK_BYTES * index, CHECK_BYTES * (index + 1));
  }
}

/** the certificates file as loaded, kept open for signersOf: a sync replaces the file by rename, so this inode keeps the loaded bytes */
interface LoadedFile {
  readonly path: string;
  readonly handle: FileHandle;
  readonly places: SignerPlaces;
}

/** one PEM body read back and decoded at a time (signersOf is synchronous): no allocation but the parts kept */
const pemScratch = Buffer.allocUnsafeSlow(8 * 1024);
const derScratch = Buffer.allocUnsafeSlow(8 * 1024);

/** a PEM body as DER, decoded into `scratch` when it fits (base64 decodes to at most 3/4 of its length), else a buffer of its own */
function derOfBody(body: string, scratch: Buffer): Buffer {
  if (!isPemBody(body)) throw new DerError('invalid base64 in PEM');
  return body.length * 0.75 <= scratch.length ? scratch.subarray(0, scratch.write(body, 'base64')) : pemBodyToDer(body);
}

/**
 * The signer parts of certificate `index` of `file`, read at its place with a synchronous positional read (a
 * page-cache hit: ~2 KB) and checked against what was loaded: the node's id and its SPKI's hash. Anything
 * else (a short read, other bytes, a closed file) throws RELAY_ERR_NODES_CERTS.
 */
function readSigner(file: LoadedFile, closed: boolean, id: string, index: number): SignerParts {
  let facts: CertificateFacts;
  try {
    if (closed) throw new Error('the snapshot was closed (a newer load or a stop)');
    const offset = file.places.offset(index);
    const length = file.places.length(index);
    const pem = length <= pemScratch.length ? pemScratch : Buffer.allocUnsafe(length);
    const read = readSync(file.handle.fd, pem, 0, length, offset);
    if (read !== length) throw new Error(`${read} of its ${length} bytes at offset ${offset}: the file is shorter than it was`);
    const body = pem.toString('latin1', 0, length);
    facts = parseCertificateFacts(derOfBody(body, derScratch));
    if (facts.uid !== id) throw new Error(`the certificate there is ${facts.uid === undefined ? 'of no node' : `of node ${facts.uid}`}`);
    if (!hashSpki('sha256', facts.spki).subarray(0, CHECK_BYTES).equals(file.places.check(index))) {
      throw new Error('the certificate there has another public key');
    }
  } catch (error) {
    throw new RelayError(
      'RELAY_ERR_NODES_CERTS',
      `cannot read node ${id}'s certificate again from ${file.path} as it was loaded (changed in place?): ${messageOf(error)}`,
      { cause: error },
    );
  }
  // one buffer of their own: the scratch is overwritten by the next read, and a view on a pool slab would keep the slab
  const { issuer, serial, spki } = facts;
  const parts = Buffer.allocUnsafeSlow(issuer.length + serial.length + spki.length);
  issuer.copy(parts, 0);
  serial.copy(parts, issuer.length);
  spki.copy(parts, issuer.length + serial.length);
  return {
    issuer: parts.subarray(0, issuer.length),
    serial: parts.subarray(issuer.length, issuer.length + serial.length),
    spki: parts.subarray(issuer.length + serial.length),
  };
}

/** slab size of the DER store: above glibc's mmap threshold, so a reload gives the old slabs back to the system whole */
const SLAB_BYTES = 256 * 1024;

/**
 * The kept DER of one load, packed end to end in a few large slabs. One Buffer per certificate cost a JS
 * object and an 8 KB pool slab shared with whatever else was allocated meanwhile: the slabs of 10,000
 * certificates stayed scattered in malloc's heap after a reload freed them (bench/footprint).
 */
export class DerStore {
  private readonly slabs: Buffer[] = [];
  /** per certificate index: slab, offset, length */
  private places = new Int32Array(3 * 64);
  private count = 0;
  private used = SLAB_BYTES;

  /** a copy of `der` in the store; returns its index */
  add(der: Buffer): number {
    if (this.used + der.length > SLAB_BYTES) {
      this.slabs.push(Buffer.allocUnsafeSlow(Math.max(SLAB_BYTES, der.length)));
      this.used = 0;
    }
    const slab = this.slabs.length - 1;
    der.copy(this.slabs[slab]!, this.used);
    if (3 * (this.count + 1) > this.places.length) {
      const grown = new Int32Array(this.places.length * 2);
      grown.set(this.places);
      this.places = grown;
    }
    const at = 3 * this.count;
    this.places[at] = slab;
    this.places[at + 1] = this.used;
    this.places[at + 2] = der.length;
    this.used += der.length;
    return this.count++;
  }

  get(index: number): Buffer {
    const at = 3 * index;
    const offset = this.places[at + 1]!;
    return this.slabs[this.places[at]!]!.subarray(offset, offset + this.places[at + 2]!);
  }
}

/**
 * `hadFiles`: which files the last good snapshot was read from. A file that existed and is now missing is
 * an error (moved away, a sync replacing it, a bad deployment): the caller keeps the last good data, as for
 * a broken file. Only a file that never existed since start counts as empty (a new relay, relayd's rule).
 */
export async function loadSnapshot(
  options: NodesOptions,
  log: Logger,
  hadFiles: { readonly list: boolean; readonly certs: boolean; readonly certificates?: number } = { list: false, certs: false },
): Promise<NodesSnapshot & { readonly read: { readonly list: boolean; readonly certs: boolean; readonly certificates: number } }> {
  const listText = await readOptional(options.nodesListFile, 'RELAY_ERR_NODES_LIST');
  if (listText === undefined && hadFiles.list) {
    throw new RelayError('RELAY_ERR_NODES_LIST', `nodes list ${options.nodesListFile} is missing (it was there before): keeping the last good list`);
  }
  let nodes: Map<string, NodeEntry>;
  if (listText === undefined) {
    log.info({ file: options.nodesListFile }, 'Nodes list file does not exist, considering it as empty');
    nodes = new Map();
  } else {
    nodes = parseNodesList(listText, options.nodesListFile, options.myId);
  }

  const certsFile = await openOptional(options.nodesCertsFile);
  if (certsFile === undefined && hadFiles.certs) {
    throw new RelayError('RELAY_ERR_NODES_CERTS', `nodes certificates ${options.nodesCertsFile} are missing (they were there before): keeping the last good ones`);
  }
  let certificates = new Map<string, NodeCertificate[]>();
  const store = new DerStore();
  let loaded: LoadedFile | undefined;
  if (certsFile === undefined) {
    log.info({ file: options.nodesCertsFile }, 'Nodes certificates file does not exist, skipping');
  } else {
    const places = (options.keepSigners ?? true) ? new SignerPlaces() : undefined;
    try {
      certificates = await parseNodesCertificates(certsFile, options.nodesCertsFile, nodes, keepDerOf(nodes, options), places, store, log);
      // emptied (an in-place rewrite opens it truncated): not "every node lost its certificates", which would
      // let their reports through unverified; a relay started on an empty file still loads it as empty
      if (certificates.size === 0 && (hadFiles.certificates ?? 0) > 0 && (await certsFile.stat()).size === 0) {
        throw new RelayError('RELAY_ERR_NODES_CERTS', `nodes certificates ${options.nodesCertsFile} are empty (they held certificates before): keeping the last good ones`);
      }
      // kept open while signer parts may be read from it (the snapshot closes it)
      if (places !== undefined && places.count > 0) loaded = { path: options.nodesCertsFile, handle: certsFile, places };
    } finally {
      if (loaded === undefined) await certsFile.close();
    }
  }
  const snapshot = buildSnapshot(nodes, certificates, store, options.myId, loaded);
  return { ...snapshot, read: { list: listText !== undefined, certs: certsFile !== undefined, certificates: snapshot.certificateCount } };
}

/** `myId`: the relay's own id, whose string the nodes it serves share (see below) */
export function parseNodesList(text: string, file: string, myId?: string): Map<string, NodeEntry> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new RelayError('RELAY_ERR_NODES_LIST', `invalid nodes list ${file}: ${messageOf(error)}`, { cause: error });
  }
  if (!isObject(parsed)) {
    throw new RelayError('RELAY_ERR_NODES_LIST', `invalid nodes list ${file}: expected a JSON object of node id → node`);
  }
  const nodes = new Map<string, NodeEntry>();
  for (const [id, value] of Object.entries(parsed)) {
    if (!isObject(value)) {
      throw new RelayError('RELAY_ERR_NODES_LIST', `invalid nodes list ${file}: node ${id} is not an object`);
    }
    const hostname = value['hostname'];
    const policyServer = value['policy-server'];
    const keyHash = value['key-hash'];
    if (typeof hostname !== 'string') {
      throw new RelayError('RELAY_ERR_NODES_LIST', `invalid nodes list ${file}: node ${id} has no "hostname" string`);
    }
    if (typeof policyServer !== 'string') {
      throw new RelayError('RELAY_ERR_NODES_LIST', `invalid nodes list ${file}: node ${id} has no "policy-server" string`);
    }
    // anything unparseable (including "sha256:" of nodes without a key) counts as absent (§3.1)
    nodes.set(id, { id, hostname, policyServer, keyHash: typeof keyHash === 'string' ? parseKeyHash(keyHash) : undefined });
  }
  // JSON.parse makes a string of every "policy-server" value: 10,000 copies of a few ids (~0.5 MB per
  // process at 10,000 nodes). Each node shares its policy server's own id string instead.
  let keyHashBytes = 0;
  for (const node of nodes.values()) {
    const same = node.policyServer === myId ? myId : nodes.get(node.policyServer)?.id;
    if (same !== undefined) (node as { policyServer: string }).policyServer = same;
    keyHashBytes += node.keyHash?.bytes.length ?? 0;
  }
  // the key-hashes' bytes end to end in one buffer: a Buffer per node is a ~100-byte object and a slice of a
  // pool slab (~1.2 MB per process at 10,000 nodes, bench/footprint)
  const packed = Buffer.allocUnsafeSlow(keyHashBytes);
  let at = 0;
  for (const node of nodes.values()) {
    if (node.keyHash === undefined) continue;
    node.keyHash.bytes.copy(packed, at);
    (node as { keyHash: KeyHash }).keyHash = new PackedKeyHash(node.keyHash.type, packed, at);
    at += node.keyHash.bytes.length;
  }
  return nodes;
}

interface NodeCertificate {
  /** index of its DER in the load's DerStore, or -1 when not kept (NodesOptions.keepCertificates); X509Certificate objects are built on demand (≈0.3 ms each: too slow for 50k per reload) */
  readonly der: number;
  /** index of its place in the file (SignerPlaces); -1 when not kept (NodesOptions.keepSigners) */
  readonly signer: number;
  /** sha256 of its SubjectPublicKeyInfo as latin1 text (half the size of hex) */
  readonly spkiSha256: string;
}

/** whose DER to keep: see NodesOptions.keepCertificates */
function keepDerOf(nodes: ReadonlyMap<string, NodeEntry>, options: NodesOptions): (id: string) => boolean {
  if ((options.keepCertificates ?? 'all') === 'all') return () => true;
  const parents = new Set<string>();
  for (const node of nodes.values()) parents.add(node.policyServer);
  return (id) => nodes.get(id)?.policyServer !== options.myId || parents.has(id);
}

/** certificates parsed between two yields to the event loop */
const CERTIFICATES_PER_SLICE = 2000;
const READ_CHUNK = 256 * 1024;
const PEM_END = Buffer.from('-----END CERTIFICATE-----', 'latin1');
const PEM_BEGIN = Buffer.from('-----BEGIN CERTIFICATE-----', 'latin1');
/** room for the DER of one certificate decoded to be read, hashed and copied (into the store) or dropped */
const SCRATCH_BYTES = 64 * 1024;

/**
 * The file is read 256 KB at a time into one buffer and walked as bytes, never whole and never as one
 * string: each PEM body becomes a small short-lived string. A whole 10,000-certificate file is an 18 MB
 * buffer, and chunks of 1 MB as strings are malloc'd external strings: either stays in the process's heap
 * until V8's next full collection, which an idle relay may not run for a long time (bench/footprint).
 */
export async function parseNodesCertificates(
  handle: FileHandle,
  file: string,
  nodes: ReadonlyMap<string, NodeEntry>,
  keepDer: (id: string) => boolean,
  /** where each certificate is, when signer parts are to be read again (NodesOptions.keepSigners) */
  places: SignerPlaces | undefined,
  store: DerStore,
  log: Logger,
): Promise<Map<string, NodeCertificate[]>> {
  const certificates = new Map<string, NodeCertificate[]>();
  let buffer = Buffer.allocUnsafeSlow(2 * READ_CHUNK);
  let length = 0;
  const scratch = Buffer.allocUnsafe(SCRATCH_BYTES);
  let index = 0;
  let blank = true;
  /** file offset of buffer[0] */
  let base = 0;
  const take = (body: string, offset: number): void => {
    index += 1;
    let der: Buffer;
    let uid: string | undefined;
    let spkiSha256: string;
    let spkiDigest: Buffer;
    let facts: CertificateFacts;
    try {
      der = derOfBody(body, scratch);
      facts = parseCertificateFacts(der);
      uid = facts.uid;
      spkiDigest = hashSpki('sha256', facts.spki);
      spkiSha256 = spkiDigest.toString('latin1');
    } catch (error) {
      throw new RelayError(
        'RELAY_ERR_NODES_CERTS',
        `invalid nodes certificates file ${file}: certificate #${index}: ${messageOf(error)}`,
        { cause: error },
      );
    }
    if (uid === undefined) {
      log.warn({ file, certificate: index }, 'missing id in certificate');
      return;
    }
    if (!nodes.has(uid)) {
      log.warn({ file, certificate: index, nodeId: uid }, 'certificate for unknown node');
      return;
    }
    const signer = places === undefined ? -1 : places.add(offset, body.length, spkiDigest);
    const kept = { der: keepDer(uid) ? store.add(der) : -1, signer, spkiSha256 };
    const list = certificates.get(uid);
    if (list === undefined) certificates.set(uid, [kept]);
    else list.push(kept);
  };
  for (;;) {
    if (buffer.length - length < READ_CHUNK) {
      // one block longer than what the buffer holds: room for it
      const bigger = Buffer.allocUnsafeSlow(buffer.length * 2);
      buffer.copy(bigger, 0, 0, length);
      buffer = bigger;
    }
    let bytesRead: number;
    try {
      ({ bytesRead } = await handle.read(buffer, length, READ_CHUNK, null));
    } catch (error) {
      throw new RelayError('RELAY_ERR_NODES_CERTS', `cannot read ${file}: ${messageOf(error)}`, { cause: error });
    }
    if (bytesRead === 0) break;
    if (blank && hasNonSpace(buffer, length, length + bytesRead)) blank = false;
    length += bytesRead;
    // whole blocks only: the rest waits for the next chunk
    const end = buffer.subarray(0, length).lastIndexOf(PEM_END);
    if (end < 0) continue;
    const before = index;
    const through = end + PEM_END.length;
    for (const [start, stop] of pemBodyRanges(buffer.subarray(0, through))) take(buffer.toString('latin1', start, stop), base + start);
    buffer.copy(buffer, 0, through, length);
    length -= through;
    base += through;
    if (Math.floor(index / CERTIFICATES_PER_SLICE) > Math.floor(before / CERTIFICATES_PER_SLICE)) {
      await new Promise((resolve) => setImmediate(resolve));
    }
  }
  for (const [start, stop] of pemBodyRanges(buffer.subarray(0, length))) take(buffer.toString('latin1', start, stop), base + start);
  // a block begun and not ended: the file cut short, or read while being written in place; loading what came
  // before would forget the nodes after it (their reports then read as "no certificate known")
  if (buffer.subarray(0, length).lastIndexOf(PEM_BEGIN) > buffer.subarray(0, length).lastIndexOf(PEM_END)) {
    throw new RelayError('RELAY_ERR_NODES_CERTS', `invalid nodes certificates file ${file}: it ends in an unfinished certificate (being written?): keeping the last good ones`);
  }
  if (index === 0 && !blank) {
    throw new RelayError('RELAY_ERR_NODES_CERTS', `invalid nodes certificates file ${file}: no PEM certificate found`);
  }
  return certificates;
}

/** whether bytes [from, to) hold anything but ASCII white space (as /\S/ on the text) */
function hasNonSpace(buffer: Buffer, from: number, to: number): boolean {
  for (let at = from; at < to; at += 1) {
    const byte = buffer[at]!;
    if (byte !== 0x20 && (byte < 0x09 || byte > 0x0d)) return true;
  }
  return false;
}

function buildSnapshot(
  nodes: Map<string, NodeEntry>,
  nodeCertificates: Map<string, NodeCertificate[]>,
  store: DerStore,
  myId: string,
  file: LoadedFile | undefined,
): NodesSnapshot {
  const certificateKeys = new Map<string, Set<string>>();
  /** per node: the store index of its one kept certificate, or of each when it has several */
  const certificates = new Map<string, number | number[]>();
  /** per node: the place (SignerPlaces) of its one certificate, or of each when it has several */
  const signers = new Map<string, number | number[]>();
  const neighbors: NodeEntry[] = [];
  const parents = new Set<string>();
  let certificateCount = 0;

  for (const node of nodes.values()) {
    if (node.policyServer === myId) neighbors.push(node);
    parents.add(node.policyServer);
  }

  for (const [id, list] of nodeCertificates) {
    const node = nodes.get(id);
    if (node === undefined) continue;
    // a node with a key-hash is pinned by it alone (matchCertificate): 10,000 sets nobody reads otherwise
    if (node.keyHash === undefined) certificateKeys.set(id, new Set(list.map((c) => c.spkiSha256)));
    const kept = list.flatMap((c) => (c.der < 0 ? [] : [c.der]));
    if (kept.length > 0) certificates.set(id, kept.length === 1 ? kept[0]! : kept);
    const keptSigners = list.flatMap((c) => (c.signer < 0 ? [] : [c.signer]));
    if (keptSigners.length > 0) signers.set(id, keptSigners.length === 1 ? keptSigners[0]! : keptSigners);
    certificateCount += list.length;
  }

  // §3.4: S has children, is itself an entry, is not me, and is my direct child
  const subRelays: NodeEntry[] = [];
  for (const id of parents) {
    const relay = nodes.get(id);
    if (relay !== undefined && id !== myId && relay.policyServer === myId) subRelays.push(relay);
  }

  let keyIndexes: KeyIndexes | undefined;
  let closed = false;
  return {
    nodes,
    certificatesOf(id) {
      const kept = certificates.get(id);
      if (kept === undefined) return [];
      return typeof kept === 'number' ? [store.get(kept)] : kept.map((index) => store.get(index));
    },
    signersOf(id) {
      const kept = signers.get(id);
      if (kept === undefined || file === undefined) return [];
      return typeof kept === 'number' ? [readSigner(file, closed, id, kept)] : kept.map((index) => readSigner(file, closed, id, index));
    },
    async close() {
      if (closed) return;
      closed = true;
      await file?.handle.close();
    },
    certificateKeys,
    certificateCount,
    keyIndexes: () => (keyIndexes ??= buildKeyIndexes(nodes, certificateKeys)),
    neighbors,
    subRelays,
  };
}

function buildKeyIndexes(nodes: ReadonlyMap<string, NodeEntry>, certificateKeys: ReadonlyMap<string, ReadonlySet<string>>): KeyIndexes {
  const byKeyHash = new Map<string, NodeEntry>();
  const byCertificateKey = new Map<string, NodeEntry>();
  let hasSha512KeyHash = false;
  for (const node of nodes.values()) {
    if (node.keyHash === undefined) continue;
    const key = keyHashIndexKey(node.keyHash);
    if (!byKeyHash.has(key)) byKeyHash.set(key, node);
    if (node.keyHash.type === 'sha512') hasSha512KeyHash = true;
  }
  // certificates pin only nodes without a key-hash (certificateKeys holds only those), first in file order wins
  for (const [id, keys] of certificateKeys) {
    const node = nodes.get(id)!;
    for (const key of keys) if (!byCertificateKey.has(key)) byCertificateKey.set(key, node);
  }
  return { byKeyHash, byCertificateKey, hasSha512KeyHash };
}

async function readOptional(file: string, code: 'RELAY_ERR_NODES_LIST'): Promise<string | undefined> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (error) {
    if (isMissing(error)) return undefined;
    throw new RelayError(code, `cannot read ${file}: ${messageOf(error)}`, { cause: error });
  }
}

async function openOptional(file: string): Promise<FileHandle | undefined> {
  try {
    return await fs.open(file, 'r');
  } catch (error) {
    if (isMissing(error)) return undefined;
    throw new RelayError('RELAY_ERR_NODES_CERTS', `cannot read ${file}: ${messageOf(error)}`, { cause: error });
  }
}

function isMissing(error: unknown): boolean {
  return typeof error === 'object' && error !== null && (error as { code?: unknown }).code === 'ENOENT';
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
