// A pinned HTTPS client to any peer relay API (upstream or a sub-relay), for requests that are not
// spool forwarding: shared-files now, remote-run later. Same trust model as the upstream client
// (spec-relayd.md §9.2): cert_pinning = exactly the given certificates, no hostname check.

import type { X509Certificate } from 'node:crypto';
import type { Dispatcher, Pool } from 'undici';
import type { PeerAuthentication } from '../config/index.js';
import { RelayError, relayError } from '../errors.js';
import { VERSION } from '../version.js';
import { buildTrustingConnector, readCaPath, type PinnedCertificate } from './trust.js';
import { loadUndici } from './undici.js';

export interface PeerClientOptions {
  readonly host: string;
  readonly port: number;
  readonly peerAuthentication: PeerAuthentication;
  /** cert_pinning: the certificates this peer may present (from a file, or the nodes certificates) */
  readonly pinned: { readonly description: string; readonly certificates: readonly X509Certificate[] };
  readonly caPath: string | undefined;
  readonly connectTimeoutMs: number;
  readonly idleTimeoutMs: number;
  readonly keepAliveMs: number;
  /** the relay's key and certificate, for peers that identify relays by client certificate (sync) */
  readonly clientCertificate?: { readonly key: string; readonly cert: string };
}

export interface PeerResponse {
  readonly status: number;
  readonly body: Dispatcher.ResponseData['body'];
  /** the response headers (lower-case names), for validators such as ETag */
  readonly headers?: Dispatcher.ResponseData['headers'];
}

export interface PeerClient {
  /** pathAndQuery starts with "/"; the caller consumes or dumps the body */
  request(method: 'GET' | 'HEAD' | 'PUT' | 'POST', pathAndQuery: string, body?: Buffer | string, headers?: Record<string, string>): Promise<PeerResponse>;
  close(): Promise<void>;
}

export function createPeerClient(options: PeerClientOptions): PeerClient {
  const hostInUrl = options.host.includes(':') ? `[${options.host}]` : options.host;
  const pinned: PinnedCertificate = {
    file: options.pinned.description,
    bytes: undefined,
    certificates: options.pinned.certificates,
    problem: options.pinned.certificates.length === 0 ? `no certificate known for ${options.pinned.description}` : undefined,
  };
  const extraCa = options.peerAuthentication === 'cert_validation' && options.caPath !== undefined ? readCaPath(options.caPath) : undefined;
  // made on the first request (see undici.ts)
  let pool: Promise<Pool> | undefined;
  let closed = false;
  const poolOf = (): Promise<Pool> =>
    (pool ??= loadUndici().then(
      (undici) =>
        new undici.Pool(`https://${hostInUrl}:${options.port}`, {
          connections: 4,
          allowH2: false,
          keepAliveTimeout: Math.max(1, options.keepAliveMs),
          keepAliveMaxTimeout: Math.max(1, options.keepAliveMs),
          headersTimeout: options.idleTimeoutMs,
          bodyTimeout: options.idleTimeoutMs,
          connect: buildTrustingConnector(
            undici,
            { peerAuthentication: options.peerAuthentication, caPath: options.caPath, connectTimeoutMs: options.connectTimeoutMs, clientCertificate: options.clientCertificate },
            options.peerAuthentication === 'cert_pinning' ? pinned : undefined,
            extraCa,
          ),
        }),
    ));
  return {
    async request(method, pathAndQuery, body, headers = {}) {
      if (options.peerAuthentication === 'cert_pinning' && pinned.problem !== undefined) throw new RelayError('RELAY_ERR_UPSTREAM_CERTIFICATE', pinned.problem);
      // as a closed undici pool would: no new pool that nothing would close
      if (closed) throw relayError('RELAY_ERR_UPSTREAM_CLOSED', `${options.host}:${options.port}`);
      const response = await (await poolOf()).request({
        method,
        path: pathAndQuery,
        headers: { 'user-agent': `onerelay/${VERSION}`, ...headers },
        ...(body === undefined ? {} : { body }),
      });
      return { status: response.statusCode, body: response.body, headers: response.headers };
    },
    close: async () => {
      closed = true;
      if (pool !== undefined) await (await pool).close();
    },
  };
}
