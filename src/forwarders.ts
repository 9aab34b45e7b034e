// Part of the composition root: the shared-files forwarder, over a pinned HTTPS client per next hop
// (upstream: output.upstream.server_certificate_file; a sub-relay: its certificates in the nodes
// certificates file, as relayd pins them; spec-relayd.md §9.2).

import { createHash } from 'node:crypto';
import type { Config } from './config/index.js';
import type { NodesRegistry } from './nodes/index.js';
import type { SharedFilesForwarder } from './shared-files/index.js';
import { createPeerClient, readPinnedCertificate, type PeerClient } from './upstream/index.js';

export function createSharedFilesForwarder(config: Config, nodes: NodesRegistry): SharedFilesForwarder {
  const clients = new Map<string, { key: string; client: PeerClient }>();
  const common = {
    port: config.general.httpsPort,
    peerAuthentication: config.general.peerAuthentication,
    caPath: config.general.caPath,
    connectTimeoutMs: config.output.upstream.connectTimeoutMs,
    idleTimeoutMs: config.output.upstream.idleTimeoutMs,
    keepAliveMs: config.general.httpsIdleTimeoutMs,
  };

  /** one client per peer, rebuilt when its pinned certificates change (reload semantics of §2.7) */
  function clientFor(id: string, host: string, certificates: readonly import('node:crypto').X509Certificate[], description: string): PeerClient {
    const key = createHash('sha256').update(Buffer.concat(certificates.map((c) => c.raw))).update(host).digest('hex');
    const cached = clients.get(id);
    if (cached?.key === key) return cached.client;
    void cached?.client.close().catch(() => undefined);
    const client = createPeerClient({ ...common, host, pinned: { description, certificates } });
    clients.set(id, { key, client });
    return client;
  }

  return {
    async forward(nextHop, method, pathAndQuery, body) {
      let client: PeerClient;
      if (nextHop.kind === 'upstream') {
        const pinned = await readPinnedCertificate(config.output.upstream.serverCertificateFile);
        if (config.general.peerAuthentication === 'cert_pinning' && pinned.problem !== undefined) throw new Error(pinned.problem);
        client = clientFor(' upstream', config.output.upstream.host, pinned.certificates, config.output.upstream.serverCertificateFile);
      } else {
        client = clientFor(nextHop.nodeId, nextHop.hostname, nodes.certificatesOf(nextHop.nodeId), `the certificates of sub-relay ${nextHop.nodeId}`);
      }
      const response = await client.request(method, pathAndQuery, body, body === undefined ? {} : { 'content-type': 'application/octet-stream' });
      await response.body.dump();
      return response.status;
    },
  };
}
