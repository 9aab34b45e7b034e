// One load of nodeslist.json + the nodes certificates file into immutable indexes (spec-relayd.md §3).
// Everything a lookup needs is computed here, once per load, so lookups are O(1) at 50k nodes.

import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import type { Logger } from 'pino';
import { RelayError, messageOf } from '../errors.js';
import { parseCertificateFacts, pemBodies, pemBodyToDer } from '../der/index.js';
import type { NodeEntry, NodesOptions } from './index.js';
import { keyHashIndexKey, parseKeyHash } from './key-hash.js';

export interface NodesSnapshot {
  readonly nodes: ReadonlyMap<string, NodeEntry>;
  /** per node: DER of its certificates, in file order (see NodesOptions.keepCertificates) */
  readonly certificates: ReadonlyMap<string, readonly Buffer[]>;
  /** per node pinned by its certificates (no key-hash): sha256 hex of the SPKI of each of its certificates */
  readonly certificateKeys: ReadonlyMap<string, ReadonlySet<string>>;
  readonly certificateCount: number;
  /** `<type>:<hex>` of a key-hash → node */
  readonly byKeyHash: ReadonlyMap<string, NodeEntry>;
  /** sha256 hex of a certificate SPKI → node, only for nodes pinned by certificates (no key-hash) */
  readonly byCertificateKey: ReadonlyMap<string, NodeEntry>;
  readonly hasSha512KeyHash: boolean;
  readonly neighbors: readonly NodeEntry[];
  readonly subRelays: readonly NodeEntry[];
}

export function emptySnapshot(): NodesSnapshot {
  return buildSnapshot(new Map(), new Map(), '', 'all');
}

/**
 * `hadFiles`: which files the last good snapshot was read from. A file that existed and is now missing is
 * an error (moved away, a sync replacing it, a bad deployment): the caller keeps the last good data, as for
 * a broken file. Only a file that never existed since start counts as empty (a new relay, relayd's rule).
 */
export async function loadSnapshot(
  options: NodesOptions,
  log: Logger,
  hadFiles: { readonly list: boolean; readonly certs: boolean } = { list: false, certs: false },
): Promise<NodesSnapshot & { readonly read: { readonly list: boolean; readonly certs: boolean } }> {
  const listText = await readOptional(options.nodesListFile, 'RELAY_ERR_NODES_LIST');
  if (listText === undefined && hadFiles.list) {
    throw new RelayError('RELAY_ERR_NODES_LIST', `nodes list ${options.nodesListFile} is missing (it was there before): keeping the last good list`);
  }
  let nodes: Map<string, NodeEntry>;
  if (listText === undefined) {
    log.info({ file: options.nodesListFile }, 'Nodes list file does not exist, considering it as empty');
    nodes = new Map();
  } else {
    nodes = parseNodesList(listText, options.nodesListFile);
  }

  // bytes, not text: see pemBodies
  const certsText = await readOptional(options.nodesCertsFile, 'RELAY_ERR_NODES_CERTS', null);
  if (certsText === undefined && hadFiles.certs) {
    throw new RelayError('RELAY_ERR_NODES_CERTS', `nodes certificates ${options.nodesCertsFile} are missing (they were there before): keeping the last good ones`);
  }
  let certificates = new Map<string, NodeCertificate[]>();
  if (certsText === undefined) {
    log.info({ file: options.nodesCertsFile }, 'Nodes certificates file does not exist, skipping');
  } else {
    certificates = await parseNodesCertificates(certsText, options.nodesCertsFile, nodes, log);
  }
  return { ...buildSnapshot(nodes, certificates, options.myId, options.keepCertificates ?? 'all'), read: { list: listText !== undefined, certs: certsText !== undefined } };
}

export function parseNodesList(text: string, file: string): Map<string, NodeEntry> {
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
  return nodes;
}

interface NodeCertificate {
  /** DER; X509Certificate objects are built on demand (≈0.3 ms each: too slow for 50k per reload) */
  readonly der: Buffer;
  /** sha256 hex of its SubjectPublicKeyInfo */
  readonly spkiSha256: string;
}

/** certificates parsed between two yields to the event loop */
const CERTIFICATES_PER_SLICE = 2000;

export async function parseNodesCertificates(
  text: string | Buffer,
  file: string,
  nodes: ReadonlyMap<string, NodeEntry>,
  log: Logger,
): Promise<Map<string, NodeCertificate[]>> {
  const certificates = new Map<string, NodeCertificate[]>();
  let index = 0;
  for (const body of pemBodies(text)) {
    index += 1;
    if (index % CERTIFICATES_PER_SLICE === 0) await new Promise((resolve) => setImmediate(resolve));
    let der: Buffer;
    let uid: string | undefined;
    let spkiSha256: string;
    try {
      der = pemBodyToDer(body);
      const facts = parseCertificateFacts(der);
      uid = facts.uid;
      spkiSha256 = createHash('sha256').update(facts.spki).digest('hex');
    } catch (error) {
      throw new RelayError(
        'RELAY_ERR_NODES_CERTS',
        `invalid nodes certificates file ${file}: certificate #${index}: ${messageOf(error)}`,
        { cause: error },
      );
    }
    if (uid === undefined) {
      log.warn({ file, certificate: index }, 'missing id in certificate');
      continue;
    }
    if (!nodes.has(uid)) {
      log.warn({ file, certificate: index, nodeId: uid }, 'certificate for unknown node');
      continue;
    }
    const list = certificates.get(uid);
    if (list === undefined) certificates.set(uid, [{ der, spkiSha256 }]);
    else list.push({ der, spkiSha256 });
  }
  if (index === 0 && text.toString('latin1').trim() !== '') {
    throw new RelayError('RELAY_ERR_NODES_CERTS', `invalid nodes certificates file ${file}: no PEM certificate found`);
  }
  return certificates;
}

function buildSnapshot(
  nodes: Map<string, NodeEntry>,
  nodeCertificates: Map<string, NodeCertificate[]>,
  myId: string,
  keep: NonNullable<NodesOptions['keepCertificates']>,
): NodesSnapshot {
  const byKeyHash = new Map<string, NodeEntry>();
  const byCertificateKey = new Map<string, NodeEntry>();
  const certificateKeys = new Map<string, Set<string>>();
  const certificates = new Map<string, Buffer[]>();
  const neighbors: NodeEntry[] = [];
  const parents = new Set<string>();
  let hasSha512KeyHash = false;
  let certificateCount = 0;

  for (const node of nodes.values()) {
    if (node.policyServer === myId) neighbors.push(node);
    parents.add(node.policyServer);
    if (node.keyHash !== undefined) {
      const key = keyHashIndexKey(node.keyHash);
      if (!byKeyHash.has(key)) byKeyHash.set(key, node);
      if (node.keyHash.type === 'sha512') hasSha512KeyHash = true;
    }
  }

  for (const [id, list] of nodeCertificates) {
    const node = nodes.get(id);
    if (node === undefined) continue;
    const keys = new Set<string>();
    for (const { spkiSha256 } of list) {
      keys.add(spkiSha256);
      // the key-hash, when present, is the node's pin; its certificates only pin nodes without one
      if (node.keyHash === undefined && !byCertificateKey.has(spkiSha256)) byCertificateKey.set(spkiSha256, node);
    }
    // a node with a key-hash is pinned by it alone (matchCertificate): 10,000 sets nobody reads otherwise
    if (node.keyHash === undefined) certificateKeys.set(id, keys);
    if (keep === 'all' || node.policyServer !== myId || parents.has(id)) certificates.set(id, list.map((c) => c.der));
    certificateCount += list.length;
  }

  // §3.4: S has children, is itself an entry, is not me, and is my direct child
  const subRelays: NodeEntry[] = [];
  for (const id of parents) {
    const relay = nodes.get(id);
    if (relay !== undefined && id !== myId && relay.policyServer === myId) subRelays.push(relay);
  }

  return {
    nodes,
    certificates,
    certificateKeys,
    certificateCount,
    byKeyHash,
    byCertificateKey,
    hasSha512KeyHash,
    neighbors,
    subRelays,
  };
}

async function readOptional(file: string, code: 'RELAY_ERR_NODES_LIST' | 'RELAY_ERR_NODES_CERTS'): Promise<string | undefined>;
async function readOptional(file: string, code: 'RELAY_ERR_NODES_LIST' | 'RELAY_ERR_NODES_CERTS', encoding: null): Promise<Buffer | undefined>;
async function readOptional(
  file: string,
  code: 'RELAY_ERR_NODES_LIST' | 'RELAY_ERR_NODES_CERTS',
  encoding: 'utf8' | null = 'utf8',
): Promise<string | Buffer | undefined> {
  try {
    return encoding === null ? await fs.readFile(file) : await fs.readFile(file, encoding);
  } catch (error) {
    if (typeof error === 'object' && error !== null && (error as { code?: unknown }).code === 'ENOENT') return undefined;
    throw new RelayError(code, `cannot read ${file}: ${messageOf(error)}`, { cause: error });
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
