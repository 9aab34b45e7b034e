// The nodes registry: the current snapshot of nodeslist.json + nodes certificates, the relations of
// spec-relayd.md §3.4, client-certificate attribution, and hot reload on file change.

import { X509Certificate, type KeyObject } from 'node:crypto';
import type { Logger } from 'pino';
import { RelayError, isRelayError, messageOf } from '../errors.js';
import { collectGarbage } from '../gc.js';
import { parseCertificateFacts, publicKeyOfSpki, type CertificateFacts } from '../der/index.js';
import type { CertificateMatch, NodeEntry, NodesOptions, NodesRegistry, NodesStatus, SignerKey } from './index.js';
import { hashSpki, keyHashIndexKeyOf } from './key-hash.js';
import { emptySnapshot, loadSnapshot, type NodesSnapshot, type SignerParts } from './snapshot.js';
import { watchFiles, type FilesWatcher } from './watch.js';

export { parseKeyHash } from './key-hash.js';

/** relayd's limit on the policy-server chain walked by next hop (§3.4) */
const MAX_DEPTH = 20;
const DEBOUNCE_MS = 200;
/** nodes + certificates from which a load's garbage is collected at once (src/gc.ts): ~20 MB per process at 10,000 nodes */
const COLLECT_AFTER_ITEMS = 1000;
const WATCH_RETRY_MS = 2000;
/**
 * X509Certificate objects kept, most recently asked for first. Each holds OpenSSL's parsed certificate,
 * ~5 KB of malloc: built for every node that reports (the reports' signature check), they made a relay of
 * 10,000 reporting nodes ~51 MB larger for good. The DER stays in the snapshot; an object evicted is built
 * again when asked for (~0.25 ms), which at Rudder's 5-minute run interval is a few per second at most.
 */
const CERTIFICATE_OBJECTS_KEPT = 1000;
/**
 * Nodes whose signer certificates are kept, most recently asked for first. The parts are read again from the
 * loaded file for the others (~11 µs for an RSA-4096 one: a page-cache read and a DER walk); kept for every node until the next
 * load they were ~5 MB of the primary at 10,000 nodes (bench/footprint), though each node reports once per
 * run interval. An inspection thread's cache of what it was sent is bounded on its own (inspect-pool.ts).
 */
const SIGNER_OBJECTS_KEPT = 1000;
/**
 * At most one reload per this long on account of certificates unreadable as loaded (signerCertificatesOf): the
 * file changed in place and no watch event reloaded it (missed, or its reload failed while the file was being
 * written); without one the reports of those nodes waited until the next change of the file, or their retention
 */
const RELOAD_AFTER_UNREADABLE_MS = 10_000;
/** and not before this long after the read that failed: longer than the watch's debounce (a writer at work) */
const UNREADABLE_RELOAD_DELAY_MS = 1_000;
const NO_CERTIFICATES: readonly X509Certificate[] = Object.freeze([]);
const NO_SIGNERS: readonly SignerKey[] = Object.freeze([]);

/**
 * A certificate as the signature check needs it: issuer, serial and SPKI (read again from the loaded file,
 * see NodesSnapshot.signersOf) and the public key, made on first use.
 */
class StoredSignerKey implements SignerKey {
  private key: KeyObject | undefined;
  readonly issuerDer: Buffer;
  readonly serialMagnitude: Buffer;
  readonly spki: Buffer;
  constructor(parts: SignerParts) {
    this.issuerDer = parts.issuer;
    this.serialMagnitude = parts.serial;
    this.spki = parts.spki;
  }
  get publicKey(): KeyObject {
    // an unreadable key throws, as X509Certificate's would: the signature check reports it as unusable
    this.key ??= publicKeyOfSpki(this.spki);
    return this.key;
  }
}

export function createNodesRegistry(options: NodesOptions & { log: Logger }): NodesRegistry {
  const log = options.log.child({ module: 'nodes' });
  const { myId } = options;
  let snapshot: NodesSnapshot = emptySnapshot();
  /** X509Certificate objects of the current snapshot, built when asked for, the last CERTIFICATE_OBJECTS_KEPT kept (insertion order = recency) */
  let certificateObjects = new Map<string, readonly X509Certificate[]>();
  /** signer certificates of the current snapshot, the last SIGNER_OBJECTS_KEPT nodes asked for (insertion order = recency) */
  let signerObjects = new Map<string, readonly SignerKey[]>();
  /**
   * stop() was called (it closed the snapshot's file) and no start() since: no reload reopens the file (one
   * asked after the stop), and a start() after it loads again
   */
  let stopped = false;
  let unreadableReloadAt = 0;
  let unreadableReloadTimer: NodeJS.Timeout | undefined;
  let loadedAt: string | undefined;
  let lastError: string | undefined;
  let queue: Promise<void> = Promise.resolve();
  let watcher: FilesWatcher | undefined;
  /** which files the last good snapshot came from: one of them vanishing is an error, not an empty list */
  let hadFiles: { list: boolean; certs: boolean; certificates?: number } = { list: false, certs: false };
  const changeListeners = new Set<() => void>();

  const load = async (): Promise<void> => {
    try {
      const next = await loadSnapshot(options, log, hadFiles);
      const previous = snapshot;
      snapshot = next;
      // its signer parts are no longer asked for (signerCertificatesOf reads `snapshot` synchronously)
      previous.close().catch((error: unknown) => log.warn({ code: 'RELAY_ERR_NODES_CERTS', err: messageOf(error) }, 'closing the previous nodes certificates file failed'));
      hadFiles = next.read;
      certificateObjects = new Map();
      signerObjects = new Map();
      loadedAt = new Date().toISOString();
      if (lastError !== undefined) log.info('nodes data valid again, error cleared');
      lastError = undefined;
      log.info(
        { nodes: next.nodes.size, certificates: next.certificateCount, managedNodes: next.neighbors.length },
        'nodes loaded',
      );
      if (next.nodes.size + next.certificateCount >= COLLECT_AFTER_ITEMS) setImmediate(collectGarbage);
      for (const listener of changeListeners) {
        try {
          listener();
        } catch (error) {
          log.error({ code: 'RELAY_ERR_INTERNAL', err: messageOf(error) }, 'nodes change listener failed');
        }
      }
    } catch (error) {
      const code = isRelayError(error) ? error.code : 'RELAY_ERR_INTERNAL';
      lastError = `${code}: ${messageOf(error)}`;
      log.error({ code, err: messageOf(error) }, 'nodes reload failed, keeping previous data');
      throw error;
    }
  };

  // reloads run one after the other, never interleaved; none after stop() (it would open the file again, for no one)
  const reload = (): Promise<void> => {
    const run = queue.then(() => (stopped ? undefined : load()));
    queue = run.catch(() => undefined);
    return run;
  };

  /**
   * a reload soon, at most one per RELOAD_AFTER_UNREADABLE_MS and never at once: the file may be being written
   * right now (what made it unreadable), and a reload then must not catch it half written. The reports waiting
   * on these certificates are retried by their queue
   */
  const reloadForUnreadable = (): void => {
    if (stopped || unreadableReloadTimer !== undefined) return;
    const wait = Math.max(UNREADABLE_RELOAD_DELAY_MS, unreadableReloadAt + RELOAD_AFTER_UNREADABLE_MS - Date.now());
    unreadableReloadTimer = setTimeout(() => {
      unreadableReloadTimer = undefined;
      unreadableReloadAt = Date.now();
      log.info({ event: 'nodes_reload_unreadable' }, 'nodes certificates unreadable as loaded: reloading the nodes files');
      reload().catch(() => undefined);
    }, wait);
    unreadableReloadTimer.unref();
  };

  const entry = (id: string): NodeEntry => {
    const node = snapshot.nodes.get(id);
    if (node === undefined) throw new RelayError('RELAY_ERR_NOT_FOUND', `unknown node: ${id}`);
    return node;
  };

  const registry: NodesRegistry = {
    myId,

    get: (id) => snapshot.nodes.get(id),

    certificatesOf(id) {
      const cached = certificateObjects.get(id);
      if (cached !== undefined) {
        // most recent last: the first key is the one to evict
        certificateObjects.delete(id);
        certificateObjects.set(id, cached);
        return cached;
      }
      const ders = snapshot.certificatesOf(id);
      if (ders.length === 0) return NO_CERTIFICATES;
      const certificates: X509Certificate[] = [];
      for (const der of ders) {
        try {
          certificates.push(new X509Certificate(der));
        } catch (error) {
          // the DER walk at load accepted it but OpenSSL does not: leave it out rather than fail the caller
          log.warn({ nodeId: id, err: messageOf(error) }, 'unusable node certificate skipped');
        }
      }
      certificateObjects.set(id, certificates);
      if (certificateObjects.size > CERTIFICATE_OBJECTS_KEPT) certificateObjects.delete(certificateObjects.keys().next().value!);
      return certificates;
    },

    signerCertificatesOf(id) {
      // [] would read as "no certificate known" and let a report through unverified (verify_signature = "direct")
      if (options.keepSigners === false) throw new RelayError('RELAY_ERR_INTERNAL', 'signer certificates asked of a registry that keeps none');
      const cached = signerObjects.get(id);
      if (cached !== undefined) {
        // most recent last: the first key is the one to evict
        signerObjects.delete(id);
        signerObjects.set(id, cached);
        return cached;
      }
      let parts: readonly SignerParts[];
      try {
        parts = snapshot.signersOf(id);
      } catch (error) {
        // thrown on (the queue retries the report): the certificates are known but unreadable now, which
        // must never read as "none known" (a report let through unverified); a reload of the changed file cures it
        log.error({ code: isRelayError(error) ? error.code : 'RELAY_ERR_INTERNAL', nodeId: id, err: messageOf(error) }, 'node certificate unreadable: its reports wait');
        // only for a file that no longer reads as loaded; another error is a defect a reload would not cure
        if (isRelayError(error) && error.code === 'RELAY_ERR_NODES_CERTS') reloadForUnreadable();
        throw error;
      }
      if (parts.length === 0) return NO_SIGNERS;
      const signers = parts.map((p) => new StoredSignerKey(p));
      signerObjects.set(id, signers);
      if (signerObjects.size > SIGNER_OBJECTS_KEPT) signerObjects.delete(signerObjects.keys().next().value!);
      return signers;
    },

    findByPublicKey(spkiDer) {
      const indexes = snapshot.keyIndexes();
      const sha256 = hashSpki('sha256', spkiDer);
      const found = indexes.byKeyHash.get(keyHashIndexKeyOf('sha256', sha256)) ?? indexes.byCertificateKey.get(sha256.toString('latin1'));
      if (found !== undefined || !indexes.hasSha512KeyHash) return found;
      return indexes.byKeyHash.get(keyHashIndexKeyOf('sha512', hashSpki('sha512', spkiDer)));
    },

    matchCertificate(certificateDer): CertificateMatch {
      let facts: CertificateFacts;
      try {
        facts = parseCertificateFacts(certificateDer);
      } catch (error) {
        throw new RelayError('RELAY_ERR_AUTH_CERTIFICATE', `client certificate is not valid X.509 DER: ${messageOf(error)}`, {
          cause: error,
        });
      }
      if (facts.uid === undefined) return { kind: 'no-uid' };
      const nodeId = facts.uid;
      const current = snapshot;
      const node = current.nodes.get(nodeId);
      if (node === undefined) return { kind: 'unknown-node', nodeId };
      const now = Date.now();
      if (now < facts.notBefore.getTime() || now > facts.notAfter.getTime()) return { kind: 'expired', nodeId };
      // the nodes-list key-hash is the pin when present; certificates pin only nodes without one
      if (node.keyHash !== undefined) {
        const presented = hashSpki(node.keyHash.type, facts.spki);
        return presented.equals(node.keyHash.bytes) ? { kind: 'match', nodeId } : { kind: 'mismatch', nodeId };
      }
      const keys = current.certificateKeys.get(nodeId);
      if (keys === undefined || keys.size === 0) return { kind: 'no-pin', nodeId };
      const presented = hashSpki('sha256', facts.spki).toString('latin1');
      return keys.has(presented) ? { kind: 'match', nodeId } : { kind: 'mismatch', nodeId };
    },

    isSubNode: (id) => snapshot.nodes.has(id),

    /** throws RelayError RELAY_ERR_NOT_FOUND for a node absent from the list (§3.4) */
    isNeighbor: (id) => entry(id).policyServer === myId,

    neighbors: () => snapshot.neighbors,

    subRelays: () => snapshot.subRelays,

    nextHop(id) {
      const current = snapshot;
      const target = entry(id);
      if (target.policyServer === myId) return undefined;
      let node = target;
      for (let depth = 0; depth < MAX_DEPTH; depth += 1) {
        if (node.policyServer === myId) return node;
        const parent = current.nodes.get(node.policyServer);
        if (parent === undefined) {
          throw new RelayError(
            'RELAY_ERR_NOT_FOUND',
            `unknown node: ${node.policyServer} (policy server of ${node.id}, on the way to ${id})`,
          );
        }
        node = parent;
      }
      throw new RelayError(
        'RELAY_ERR_NODES_LIST',
        `next hop not found for ${id}: no node with policy-server ${myId} within ${MAX_DEPTH} levels (loop in the nodes list?)`,
      );
    },

    status(): NodesStatus {
      return {
        ok: lastError === undefined,
        nodes: snapshot.nodes.size,
        certificates: snapshot.certificateCount,
        managedNodes: snapshot.neighbors.length,
        loadedAt,
        error: lastError,
      };
    },

    reload,

    onChange(listener) {
      changeListeners.add(listener);
      return () => changeListeners.delete(listener);
    },

    async start() {
      const wasStopped = stopped;
      stopped = false;
      if (watcher !== undefined) return;
      if (loadedAt === undefined || wasStopped) await reload();
      if (watcher !== undefined) return; // started concurrently
      watcher = watchFiles({
        files: [options.nodesListFile, options.nodesCertsFile],
        debounceMs: DEBOUNCE_MS,
        retryMs: WATCH_RETRY_MS,
        log,
        onChange: () => {
          log.info('nodes files changed, reloading');
          // failures are logged and kept in status(); the previous data stays in use
          reload().catch(() => undefined);
        },
      });
    },

    async stop() {
      stopped = true;
      if (unreadableReloadTimer !== undefined) clearTimeout(unreadableReloadTimer);
      unreadableReloadTimer = undefined;
      watcher?.close();
      watcher = undefined;
      await queue;
      // the loaded certificates file stays open for signerCertificatesOf until here
      signerObjects = new Map();
      await snapshot.close();
    },
  };
  return registry;
}
