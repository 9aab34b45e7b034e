// One agent upload, the way a Rudder agent's curl does it: a fresh TLS 1.3 connection (no keep-alive,
// no session resumption) with the agent's client certificate, basic auth, `PUT /reports/<file>`,
// the file name percent-encoded as curl does when it appends it to an upload URL ending in '/'.

import { request, type RequestOptions } from 'node:https';
import { connect, createSecureContext, type ConnectionOptions, type SecureContext, type TLSSocket } from 'node:tls';
import { keyHashOf } from './identities.js';

export interface AgentKeys {
  readonly nodeId: string;
  readonly privateKeyPem: string;
  readonly certificatePem: string;
}

/** An agent ready to connect: its key and certificate parsed once, not once per upload. */
export interface UploadingAgent {
  readonly nodeId: string;
  readonly context: SecureContext;
}

export function uploadingAgent(keys: AgentKeys): UploadingAgent {
  const context = createSecureContext({
    key: keys.privateKeyPem,
    cert: keys.certificatePem,
    minVersion: 'TLSv1.3',
    maxVersion: 'TLSv1.3',
  });
  return { nodeId: keys.nodeId, context };
}

export interface UploadRequest {
  readonly port: number;
  readonly agent: UploadingAgent;
  /** decoded file name; sent percent-encoded */
  readonly fileName: string;
  readonly body: Buffer;
  /** "Basic <base64 user:password>" */
  readonly authorization: string;
  /** when given, the server key's pin is compared with it (agents pin the relay key) */
  readonly expectedServerKeyHash?: string;
}

export interface UploadOutcome {
  /** HTTP status, undefined when the request failed before a response */
  readonly status: number | undefined;
  readonly error: string | undefined;
  /** request start to the end of the response body */
  readonly latencyMs: number;
  /** only when expectedServerKeyHash was given */
  readonly serverKeyMatches: boolean | undefined;
}

export function basicAuthorization(user: string, password: string): string {
  return `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
}

/** Runlog file name as agents build it: <YYYY-MM-DDThh:mm:ss+00:00>@<node id>.log.gz */
export function runlogFileName(epochSeconds: number, nodeId: string): string {
  const timestamp = `${new Date(epochSeconds * 1000).toISOString().slice(0, 19)}+00:00`;
  return `${timestamp}@${nodeId}.log.gz`;
}

export function upload(options: UploadRequest): Promise<UploadOutcome> {
  const started = performance.now();
  return new Promise((resolve) => {
    let settled = false;
    const finish = (status: number | undefined, error: string | undefined, serverKeyMatches?: boolean): void => {
      if (settled) return;
      settled = true;
      resolve({ status, error, latencyMs: performance.now() - started, serverKeyMatches });
    };
    // secureContext goes through to tls.connect; @types/node's https.RequestOptions omits it
    const requestOptions: RequestOptions & Pick<ConnectionOptions, 'secureContext'> = {
      host: '127.0.0.1',
      port: options.port,
      method: 'PUT',
      path: `/reports/${encodeURIComponent(options.fileName)}`,
      agent: false, // a new connection per upload, closed after it
      secureContext: options.agent.context,
      minVersion: 'TLSv1.3',
      maxVersion: 'TLSv1.3',
      rejectUnauthorized: false, // agents pin the key instead (checked below when asked)
      headers: {
        'user-agent': 'curl/7.88.1',
        accept: '*/*',
        authorization: options.authorization,
        'content-length': options.body.length,
      },
    };
    const req = request(requestOptions, (res) => {
      let serverKeyMatches: boolean | undefined;
      if (options.expectedServerKeyHash !== undefined) {
        const peer = (res.socket as TLSSocket).getPeerX509Certificate();
        serverKeyMatches = peer !== undefined && keyHashOf(peer) === options.expectedServerKeyHash;
      }
      res.on('error', (error) => finish(undefined, error.message));
      res.on('end', () => finish(res.statusCode, undefined, serverKeyMatches));
      res.resume();
    });
    req.setTimeout(30_000, () => req.destroy(new Error('no answer within 30 s')));
    req.on('error', (error) => finish(undefined, error.message));
    req.end(options.body);
  });
}

/**
 * The same upload with the least client work: a raw TLS 1.3 socket, the request written in one go, the
 * answer read only as far as its status line and its (empty or short) body. node:https's agent and HTTP
 * parser cost the load generator as much CPU as a lean server spends on the request; a load lighter than
 * the servers lets their difference show in uploads/s. Same bytes on the wire as `upload()`.
 */
export function lightUpload(options: UploadRequest): Promise<UploadOutcome> {
  const started = performance.now();
  const head =
    `PUT /reports/${encodeURIComponent(options.fileName)} HTTP/1.1\r\nHost: 127.0.0.1:${options.port}\r\n` +
    `User-Agent: curl/7.88.1\r\nAccept: */*\r\nAuthorization: ${options.authorization}\r\n` +
    `Content-Length: ${options.body.length}\r\n\r\n`;
  return new Promise((resolve) => {
    let settled = false;
    let received = '';
    const socket = connect({
      host: '127.0.0.1',
      port: options.port,
      secureContext: options.agent.context,
      minVersion: 'TLSv1.3',
      maxVersion: 'TLSv1.3',
      rejectUnauthorized: false, // agents pin the key instead; the bench checks the pin with upload()
    });
    const finish = (status: number | undefined, error: string | undefined): void => {
      if (settled) return;
      settled = true;
      socket.destroy();
      resolve({ status, error, latencyMs: performance.now() - started, serverKeyMatches: undefined });
    };
    socket.setTimeout(30_000, () => finish(undefined, 'no answer within 30 s'));
    socket.once('secureConnect', () => {
      socket.write(head);
      socket.write(options.body);
    });
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => {
      received += chunk;
      const endOfHead = received.indexOf('\r\n\r\n');
      if (endOfHead < 0) return;
      const status = /^HTTP\/1\.[01] (\d{3})/.exec(received);
      if (status === null) return finish(undefined, 'not an HTTP answer');
      if (status[1] === '204' || status[1] === '304') return finish(Number(status[1]), undefined);
      const length = /\r\ncontent-length: *(\d+)/i.exec(received.slice(0, endOfHead));
      // an answer without a length ends with the connection
      if (length !== null && received.length - endOfHead - 4 >= Number(length[1])) finish(Number(status[1]), undefined);
    });
    socket.on('end', () => {
      const status = /^HTTP\/1\.[01] (\d{3})/.exec(received);
      finish(status === null ? undefined : Number(status[1]), status === null ? 'connection closed before an answer' : undefined);
    });
    socket.on('error', (error) => finish(undefined, error.message));
  });
}
