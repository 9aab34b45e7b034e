// Face of the upstream module, the one peer layer: one pinned HTTPS client per peer (undici), the
// upstream's PUT forwarding of spool files and the classification of what came back (spec-relayd.md
// §9; issue 3 "Forwarding"), and createPeers: the clients to the upstream and each sub-relay for the
// relay API calls (sync, shared files, remote run). The upstream's one dispatcher carries both: peer().

import type { PeerAuthentication } from '../config/index.js';
import type { PeerClient } from './peer.js';

export type UpstreamEndpoint = 'reports' | 'inventories' | 'inventory-updates';

export interface UpstreamOptions {
  readonly host: string;
  /** general.https_port */
  readonly port: number;
  readonly peerAuthentication: PeerAuthentication;
  /** cert_pinning: the only trust anchor; exactly this certificate must be presented */
  readonly serverCertificateFile: string;
  /** cert_validation: extra CA (system CAs otherwise) */
  readonly caPath: string | undefined;
  readonly user: string;
  /** reports and inventory updates */
  readonly password: string | undefined;
  /** new inventories */
  readonly defaultPassword: string;
  /** the WebDAV credentials in force when they may change at run time (the relay's own policies); else user/password */
  readonly credentials?: () => { readonly user: string; readonly password: string | undefined };
  /** forwards in flight, and keep-alive connections (+2 for peer()) (output.upstream.max_concurrency) */
  readonly maxConcurrency: number;
  readonly connectTimeoutMs: number;
  /** no byte received for this long → transient failure */
  readonly idleTimeoutMs: number;
  /** whole request, body upload included */
  readonly requestTimeoutMs: number;
  /** keep-alive of pooled connections (general.https_idle_timeout) */
  readonly keepAliveMs: number;
  /** the relay's key and certificate, presented to an upstream that identifies relays by them (sync) */
  readonly clientCertificate?: { readonly key: string; readonly cert: string };
}

export interface UpstreamCredentials {
  readonly user: string;
  readonly password: string;
}

export type ForwardResult =
  | { readonly kind: 'ok'; readonly status: number; readonly ms: number }
  /** network error, timeout, 408, 429, 5xx, TLS pin refused: keep the file, retry later */
  | { readonly kind: 'transient'; readonly status: number | undefined; readonly reason: string; readonly ms: number }
  /** other 4xx: the upstream will never take it */
  | { readonly kind: 'permanent'; readonly status: number; readonly reason: string; readonly ms: number };

export interface UpstreamStatus {
  readonly host: string;
  readonly port: number;
  /** undefined until a request was tried */
  readonly reachable: boolean | undefined;
  readonly lastSuccessAt: string | undefined;
  /** duration of the last successful forward (round trip + upload), for the status page */
  readonly lastRequestMs: number | undefined;
  readonly lastError: { readonly at: string; readonly reason: string } | undefined;
  /** why nothing can be sent at all (e.g. pinned certificate missing), if so */
  readonly blocked: string | undefined;
}

export interface ForwardOptions {
  /** abort the request (the relay is stopping): the result is transient, the file stays */
  readonly signal?: AbortSignal;
  /** other Basic credentials than output.upstream's (the relay's own inventory updates: DAVUSER/DAVPASSWORD) */
  readonly credentials?: UpstreamCredentials;
}

export interface Upstream {
  /** PUT the file (streamed from disk) to /<endpoint>/<name> with the right Basic credentials */
  forward(
    endpoint: UpstreamEndpoint,
    name: string,
    file: { readonly path: string; readonly size: number; /** the bytes, when the caller already read them */ readonly content?: Buffer },
    options?: ForwardOptions,
  ): Promise<ForwardResult>;
  /** re-read the pinned certificate; rebuild the pool only if it changed (spec-relayd.md §2.7 step 3) */
  reload(): Promise<void>;
  /**
   * relay API requests to the upstream on the same dispatcher and trust as forward(); undefined while
   * nothing can be sent (pinned certificate missing or unusable). Its close() does nothing: close() does.
   */
  peer(): PeerClient | undefined;
  status(): UpstreamStatus;
  close(): Promise<void>;
}

export { createUpstream } from './client.js';
export { createPeerClient } from './peer.js';
export type { PeerClient, PeerClientOptions, PeerResponse } from './peer.js';
export { readPinnedCertificate, readPinnedCertificateSync } from './trust.js';
export { createPeers } from './peers.js';
export type { PeerAddress, Peers, PeersOptions } from './peers.js';
