// Part of the composition root: pinned HTTPS clients to peers (upstream, sub-relays) for the relay
// API calls that are not spool forwarding — shared files, remote-run forwarding, data sync — and the
// small adapters each module takes. Trust as relayd (spec-relayd.md §9.2): upstream pinned to
// output.upstream.server_certificate_file, a sub-relay to its certificates in the nodes certificates.

import { createHash, type X509Certificate } from 'node:crypto';
import { relayError } from './errors.js';
import type { Config } from './config/index.js';
import type { NodeEntry, NodesRegistry } from './nodes/index.js';
import type { SubRelayCaller } from './remote-run/index.js';
import { RELAY_PATH_HEADER } from './remote-run/remote-run.js';
import type { SharedFilesForwarder } from './shared-files/index.js';
import { createPeerClient, readPinnedCertificateSync, type PeerClient, type Upstream } from './upstream/index.js';

export interface Peers {
  /** undefined when the pinned upstream certificate is missing or unreadable (cert_pinning) */
  upstream(): PeerClient | undefined;
  subRelay(relay: Pick<NodeEntry, 'id' | 'hostname'>): PeerClient;
  /** re-read the pinned upstream certificate (system/reload) */
  reload(): void;
  close(): Promise<void>;
}

/**
 * `upstream`: the forwarding client, when this process has one: its dispatcher serves the relay API calls
 * too, and close() closes it (after the pipelines and the sync puller are stopped)
 */
export function createPeers(config: Config, nodes: NodesRegistry, clientCertificate: { key: string; cert: string }, upstream?: Upstream): Peers {
  const clients = new Map<string, { key: string; client: PeerClient }>();
  const common = {
    port: config.general.httpsPort,
    peerAuthentication: config.general.peerAuthentication,
    caPath: config.general.caPath,
    connectTimeoutMs: config.output.upstream.connectTimeoutMs,
    idleTimeoutMs: config.output.upstream.idleTimeoutMs,
    keepAliveMs: config.general.httpsIdleTimeoutMs,
    clientCertificate,
  };
  // without a forwarding client here (front-door workers, outputs not "upstream"), a peer client of its own
  let upstreamPin = upstream === undefined ? readPinnedCertificateSync(config.output.upstream.serverCertificateFile) : undefined;

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
      if (config.output.upstream.host === '') return undefined;
      if (upstreamPin === undefined) return upstream?.peer();
      if (config.general.peerAuthentication === 'cert_pinning' && upstreamPin.problem !== undefined) return undefined;
      return clientFor('\0upstream', config.output.upstream.host, upstreamPin.certificates, config.output.upstream.serverCertificateFile);
    },
    subRelay: (relay) => clientFor(relay.id, relay.hostname, nodes.certificatesOf(relay.id), `the certificates of sub-relay ${relay.id}`),
    reload() {
      // the forwarding client re-reads its pin in its own reload()
      if (upstreamPin !== undefined) upstreamPin = readPinnedCertificateSync(config.output.upstream.serverCertificateFile);
    },
    async close() {
      await upstream?.close().catch(() => undefined);
      await Promise.all([...clients.values()].map(({ client }) => client.close().catch(() => undefined)));
      clients.clear();
    },
  };
}

export function sharedFilesForwarder(peers: Peers): SharedFilesForwarder {
  return {
    async forward(nextHop, method, pathAndQuery, body) {
      const client = nextHop.kind === 'upstream' ? peers.upstream() : peers.subRelay({ id: nextHop.nodeId, hostname: nextHop.hostname });
      if (client === undefined) throw relayError('RELAY_ERR_SHARED_FILES_NO_PEER');
      const response = await client.request(method, pathAndQuery, body, body === undefined ? {} : { 'content-type': 'application/octet-stream' });
      await response.body.dump();
      return response.status;
    },
  };
}

export function remoteRunCaller(peers: Peers): SubRelayCaller {
  return {
    async call(relay, target, form, path, signal) {
      const response = await peers.subRelay(relay).request(
        'POST',
        `/rudder/relay-api/remote-run/${target}`,
        new URLSearchParams(form).toString(),
        { 'content-type': 'application/x-www-form-urlencoded', [RELAY_PATH_HEADER]: path.join(',') },
      );
      if (response.status < 200 || response.status > 299) {
        await response.body.dump();
        throw relayError('RELAY_ERR_REMOTE_RUN_FORWARD', response.status);
      }
      signal.addEventListener('abort', () => response.body.destroy(relayError('RELAY_ERR_REMOTE_RUN_TIMEOUT')), { once: true });
      return response.body as AsyncIterable<Buffer>;
    },
  };
}
