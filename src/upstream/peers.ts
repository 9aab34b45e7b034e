// The peer layer: one pinned HTTPS client per peer (the upstream, each sub-relay), made once and kept
// while its trust and address hold, for the relay API calls that are not spool forwarding (shared
// files, remote-run forwarding, data sync). Trust as relayd (spec-relayd.md §9.2): the upstream pinned
// to output.upstream.server_certificate_file, a sub-relay to its certificates in the nodes certificates.

import { createHash, type X509Certificate } from 'node:crypto';
import type { PeerAuthentication } from '../config/index.js';
import type { Upstream } from './index.js';
import { createPeerClient, type PeerClient } from './peer.js';
import { readPinnedCertificateSync } from './trust.js';

/** a sub-relay as the peer layer needs it: its id (whose certificates are pinned) and its address */
export interface PeerAddress {
  readonly id: string;
  readonly hostname: string;
}

export interface PeersOptions {
  /** output.upstream.host; '' = this relay has no upstream */
  readonly upstreamHost: string;
  /** output.upstream.server_certificate_file: the upstream's pin */
  readonly serverCertificateFile: string;
  /** general.https_port: every peer's HTTPS port */
  readonly port: number;
  readonly peerAuthentication: PeerAuthentication;
  readonly caPath: string | undefined;
  readonly connectTimeoutMs: number;
  readonly idleTimeoutMs: number;
  /** keep-alive of pooled connections (general.https_idle_timeout) */
  readonly keepAliveMs: number;
  /** the relay's key and certificate, for peers that identify relays by client certificate (sync) */
  readonly clientCertificate: { readonly key: string; readonly cert: string };
}

export interface Peers {
  /** undefined when there is no upstream, or its pinned certificate is missing or unreadable (cert_pinning) */
  upstream(): PeerClient | undefined;
  subRelay(relay: PeerAddress): PeerClient;
  /** re-read the pinned upstream certificate (system/reload) */
  reload(): void;
  close(): Promise<void>;
}

/**
 * `upstream`: the forwarding client, when this process has one: its dispatcher serves the relay API calls
 * too (one dispatcher per peer), and close() closes it (after the pipelines and the sync puller are stopped)
 */
export function createPeers(
  options: PeersOptions,
  deps: { readonly certificatesOf: (nodeId: string) => readonly X509Certificate[]; readonly upstream?: Upstream },
): Peers {
  const clients = new Map<string, { key: string; client: PeerClient }>();
  const common = {
    port: options.port,
    peerAuthentication: options.peerAuthentication,
    caPath: options.caPath,
    connectTimeoutMs: options.connectTimeoutMs,
    idleTimeoutMs: options.idleTimeoutMs,
    keepAliveMs: options.keepAliveMs,
    clientCertificate: options.clientCertificate,
  };
  const { upstream } = deps;
  // without a forwarding client here (front-door workers, outputs not "upstream"), a peer client of its own
  let upstreamPin = upstream === undefined ? readPinnedCertificateSync(options.serverCertificateFile) : undefined;

  /** one client per peer, rebuilt when its pinned certificates or address change */
  function clientFor(id: string, host: string, certificates: readonly X509Certificate[], description: string): PeerClient {
    const key = createHash('sha256').update(Buffer.concat(certificates.map((c) => c.raw))).update(host).digest('hex');
    const cached = clients.get(id);
    if (cached?.key === key) return cached.client;
    void cached?.client.close().catch(() => undefined);
    const client = createPeerClient({ ...common, host, pinned: { description, certificates } });
    clients.set(id, { key, client });
    return client;
  }

  return {
    upstream() {
      if (options.upstreamHost === '') return undefined;
      if (upstreamPin === undefined) return upstream?.peer();
      if (options.peerAuthentication === 'cert_pinning' && upstreamPin.problem !== undefined) return undefined;
      return clientFor('\0upstream', options.upstreamHost, upstreamPin.certificates, options.serverCertificateFile);
    },
    subRelay: (relay) => clientFor(relay.id, relay.hostname, deps.certificatesOf(relay.id), `the certificates of sub-relay ${relay.id}`),
    reload() {
      // the forwarding client re-reads its pin in its own reload()
      if (upstreamPin !== undefined) upstreamPin = readPinnedCertificateSync(options.serverCertificateFile);
    },
    async close() {
      await upstream?.close().catch(() => undefined);
      await Promise.all([...clients.values()].map(({ client }) => client.close().catch(() => undefined)));
      clients.clear();
    },
  };
}
