// One agent download, the way rudder-client's curl fetches policies: a fresh TLS 1.3 connection (no
// keep-alive, no session resumption) with the agent's client certificate, `GET <path>`, optionally
// `If-None-Match` with the ETag saved by the previous download (curl --etag-compare).

import { createHash } from 'node:crypto';
import { request, type RequestOptions } from 'node:https';
import type { ConnectionOptions } from 'node:tls';
import type { UploadingAgent } from './upload-client.js';

export interface DownloadRequest {
  readonly port: number;
  readonly agent: UploadingAgent;
  readonly path: string;
  readonly ifNoneMatch?: string;
  /** keep the body's SHA-256 (verification); otherwise it is only counted */
  readonly hashBody?: boolean;
}

export interface DownloadOutcome {
  /** HTTP status, undefined when the request failed before a response */
  readonly status: number | undefined;
  readonly error: string | undefined;
  /** request start to the end of the response body */
  readonly latencyMs: number;
  readonly bytes: number;
  readonly etag: string | undefined;
  /** hex SHA-256 of the body, when asked */
  readonly sha256: string | undefined;
}

export function download(options: DownloadRequest): Promise<DownloadOutcome> {
  const started = performance.now();
  return new Promise((resolve) => {
    let settled = false;
    let bytes = 0;
    let etag: string | undefined;
    const hash = options.hashBody === true ? createHash('sha256') : undefined;
    const finish = (status: number | undefined, error: string | undefined): void => {
      if (settled) return;
      settled = true;
      resolve({ status, error, latencyMs: performance.now() - started, bytes, etag, sha256: hash?.digest('hex') });
    };
    // secureContext goes through to tls.connect; @types/node's https.RequestOptions omits it
    const requestOptions: RequestOptions & Pick<ConnectionOptions, 'secureContext'> = {
      host: '127.0.0.1',
      port: options.port,
      method: 'GET',
      path: options.path,
      agent: false, // a new connection per download, closed after it
      secureContext: options.agent.context,
      minVersion: 'TLSv1.3',
      maxVersion: 'TLSv1.3',
      rejectUnauthorized: false, // agents pin the key instead
      headers: {
        'user-agent': 'curl/7.88.1',
        accept: '*/*',
        ...(options.ifNoneMatch === undefined ? {} : { 'if-none-match': options.ifNoneMatch }),
      },
    };
    const req = request(requestOptions, (res) => {
      const header = res.headers.etag;
      etag = typeof header === 'string' ? header : undefined;
      res.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
        hash?.update(chunk);
      });
      res.on('error', (error) => finish(undefined, error.message));
      res.on('end', () => finish(res.statusCode, undefined));
    });
    req.setTimeout(30_000, () => req.destroy(new Error('no answer within 30 s')));
    req.on('error', (error) => finish(undefined, error.message));
    req.end();
  });
}
