// Face of the nodes module: nodeslist.json + nodes certificates → registry (spec-relayd.md §3).

import type { KeyObject, X509Certificate } from 'node:crypto';

export interface KeyHash {
  readonly type: 'sha256' | 'sha512';
  readonly bytes: Buffer;
}

export interface NodeEntry {
  readonly id: string;
  readonly hostname: string;
  readonly policyServer: string;
  readonly keyHash: KeyHash | undefined;
}

/**
 * What checking a node's signature needs of one of its certificates (reports' S/MIME): the issuer and
 * serial that name the signer, and the public key. Either a whole certificate (its DER, issuer and serial
 * are read from it: an X509Certificate is one) or only those parts (SignerKey: what the registry keeps).
 */
export type SignerCertificate = { readonly raw: Buffer; readonly publicKey: KeyObject } | SignerKey;

/**
 * The parts of a certificate a signature check needs, without the rest (validity, extensions, the issuer's
 * signature): ~45 % of an agent's RSA-4096 certificate, for every node the relay checks reports of.
 */
export interface SignerKey {
  /** the issuer Name as encoded */
  readonly issuerDer: Buffer;
  /** the serial number's magnitude (no leading zero byte) */
  readonly serialMagnitude: Buffer;
  /** the SubjectPublicKeyInfo as encoded */
  readonly spki: Buffer;
  /** made from spki on first use */
  readonly publicKey: KeyObject;
}

export type CertificateMatch =
  | { readonly kind: 'match'; readonly nodeId: string }
  | { readonly kind: 'no-uid' }
  | { readonly kind: 'unknown-node'; readonly nodeId: string }
  | { readonly kind: 'mismatch'; readonly nodeId: string }
  | { readonly kind: 'no-pin'; readonly nodeId: string }
  | { readonly kind: 'expired'; readonly nodeId: string };

export interface NodesStatus {
  readonly ok: boolean;
  readonly nodes: number;
  readonly certificates: number;
  readonly managedNodes: number;
  readonly loadedAt: string | undefined;
  /** last reload error, kept until a reload succeeds */
  readonly error: string | undefined;
}

export interface NodesRegistry {
  readonly myId: string;
  get(id: string): NodeEntry | undefined;
  /** X509Certificate objects (~4 KB of OpenSSL memory each): the last 1,000 nodes asked for are kept, the others built again when asked for */
  certificatesOf(id: string): readonly X509Certificate[];
  /**
   * the node's certificates for signature checks: issuer, serial and public key (SignerKey), read again from
   * the loaded certificates file (where each is was kept at load) and kept for the last 1,000 nodes asked
   * for (the same objects while kept; a reload or an eviction: new objects), the KeyObject made on first use.
   * [] only for a node without certificates. Throws RELAY_ERR_NODES_CERTS (logged) when they cannot be read
   * as loaded (the file changed in place before its reload), RELAY_ERR_INTERNAL in a registry made with
   * keepSigners: false: never "none known", which would let a report through unverified.
   */
  signerCertificatesOf(id: string): readonly SignerKey[];
  findByPublicKey(spkiDer: Buffer): NodeEntry | undefined;
  /** attribute a client certificate to a node by its subject UID and check it against the node's pin */
  matchCertificate(certificateDer: Buffer): CertificateMatch;
  isSubNode(id: string): boolean;
  isNeighbor(id: string): boolean;
  neighbors(): readonly NodeEntry[];
  subRelays(): readonly NodeEntry[];
  /** undefined when the node is handled here; throws RelayError for unknown nodes and loops */
  nextHop(id: string): NodeEntry | undefined;
  status(): NodesStatus;
  /** re-read both files; on error (a broken file, or one that was there and is now missing) keeps the last good data and rethrows */
  reload(): Promise<void>;
  /** called after each successful (re)load, e.g. to look again at reports of nodes the list did not name; returns the unsubscribe */
  onChange(listener: () => void): () => void;
  /** watch both files and reload on change */
  start(): Promise<void>;
  stop(): Promise<void>;
}

export interface NodesOptions {
  readonly myId: string;
  readonly nodesListFile: string;
  readonly nodesCertsFile: string;
  /**
   * whose certificates (DER, for certificatesOf) are kept: 'all' (default), or only the sub-relays' and the
   * nodes behind them, all the relay asks for (peers of sub-relays, sync serving of their nodes'
   * certificates); certificatesOf answers [] for the others. ~13 MB less per process at 10,000 nodes
   * (bench/footprint); signature checks use the signer parts (keepSigners). Pins (key-hash, certificate keys) are always kept for every node.
   */
  readonly keepCertificates?: 'all' | 'behind-sub-relays';
  /**
   * whether signerCertificatesOf answers (default true): the loaded certificates file is then kept open until
   * the next load or stop(), with each certificate's place in it. The primary checks reports' signatures, a
   * front-door worker never does
   */
  readonly keepSigners?: boolean;
}

export { createNodesRegistry, parseKeyHash } from './registry.js';
