// WebDAV PUT uploads into the spool (/reports/, /inventories/, /inventory-updates/), the request every agent
// makes every run. Answered on Node's own request and response objects, ahead of fastify: an upload needs none
// of fastify's per-request machinery (routing, a Request and a Reply object, a child logger, hook runners,
// promise chains around each step), which cost ~0.2 ms of CPU per upload in bench/uploads. Every other method
// on these paths, and every other path, still goes through fastify. What an upload leaves behind is the same as
// for any route (access.ts): the metric, the access line, the activity event; the answers are the same bytes as
// the fastify route gave (201/204 with Content-Length 0 or none, coded text refusals, Connection: close when the
// body is left unread).

import type { IncomingMessage, ServerResponse } from 'node:http';
import type { TLSSocket } from 'node:tls';
import type { NetworkAcl } from '../config/index.js';
import { RelayError, messageOf } from '../errors.js';
import type { NodesRegistry } from '../nodes/index.js';
import type { Spool, SpoolQueue } from '../spool/index.js';
import { pathOf, recordAccess, type AccessDeps } from './access.js';
import { authenticateUpload, mayUploadReportOf, type UploadAuthOptions } from './client-auth.js';
import { parseRunInfo } from '../reports/index.js';
import { decodeUploadName } from './upload-name.js';

export const UPLOAD_QUEUES: readonly SpoolQueue[] = ['reports', 'inventories', 'inventory-updates'];

/** what an upload needs; functions where the value changes while the front door runs */
export interface UploadPathDeps extends AccessDeps {
  readonly acl: NetworkAcl;
  readonly auth: () => UploadAuthOptions;
  readonly nodes: NodesRegistry;
  readonly spool: Spool;
  readonly maxUploadSize: number;
  /** https.body_timeout: no byte of the body for this long refuses the upload (0: none) */
  readonly bodyTimeoutMs: number;
  readonly isSpoolFull: (queue: SpoolQueue) => boolean;
  readonly admit: ((queue: SpoolQueue, bytes: number) => Promise<{ readonly admitted: boolean; release(name?: string): void }>) | undefined;
  /** the front door is stopping: answer 503 and close (fastify's return503OnClosing, same body) */
  readonly closing: () => boolean;
}

/** the queue a `PUT` targets, or undefined for any other request (fastify's routes take it) */
export function uploadQueueOf(method: string | undefined, url: string | undefined): SpoolQueue | undefined {
  if (method !== 'PUT' || url === undefined) return undefined;
  // the common case first: a single slash, as agents send; relayd's //reports/ goes through pathOf
  const path = url.startsWith('//') ? pathOf(url) : url;
  if (path.startsWith('/reports/')) return 'reports';
  if (path.startsWith('/inventories/')) return 'inventories';
  if (path.startsWith('/inventory-updates/')) return 'inventory-updates';
  return undefined;
}

export function peerCertificateDerOf(socket: TLSSocket): Buffer | undefined {
  // getPeerX509Certificate parses lazily; getPeerCertificate() would build a whole JS object with
  // three fingerprints on every handshake, and only the DER is needed
  if (typeof socket.getPeerX509Certificate !== 'function') return undefined;
  return socket.getPeerX509Certificate()?.raw;
}

/** what the access line tells about one upload */
interface UploadState {
  node: string | undefined;
  error: RelayError | undefined;
  upload: { bytes: number; sha256: string; created: boolean } | undefined;
  /** the refusal Node's HTTP layer answered on the socket meanwhile (request_timeout): the line's reason */
  adopted?: RelayError;
}

export interface UploadPath {
  (queue: SpoolQueue, request: IncomingMessage, response: ServerResponse): void;
  /**
   * Node's HTTP layer refused an upload under way (its request timer, a bad chunk, the client gone mid-body;
   * parser-refusal.ts answers it on the socket): the upload's own access line tells it, instead of a second line
   * beside it. False: no upload in flight there.
   */
  adoptRefusal(response: ServerResponse, refusal: RelayError, clientGone: boolean): boolean;
}

const TEXT = 'text/plain; charset=utf-8';

export function createUploadPath(deps: UploadPathDeps): UploadPath {
  const { metrics, log } = deps;
  const inFlight = new WeakMap<ServerResponse, UploadState>();

  function answer(response: ServerResponse, status: number, headers: Record<string, string>, body?: string): void {
    if (response.headersSent || response.destroyed) {
      // the client went away (or an answer is already out): the access line still tells which answer was due
      if (!response.headersSent) response.statusCode = status;
      response.end();
      return;
    }
    if (body === undefined) {
      // as fastify: no Content-Length on 204, 0 on the other empty answers
      if (status !== 204) headers['content-length'] = '0';
      response.writeHead(status, headers);
      response.end();
    } else {
      headers['content-length'] = String(Buffer.byteLength(body));
      response.writeHead(status, headers);
      response.end(body);
    }
  }

  function refuse(queue: SpoolQueue, response: ServerResponse, state: UploadState, error: RelayError, close: boolean): void {
    state.error = error;
    metrics.uploads.inc({ endpoint: queue, status: String(error.status) });
    const headers: Record<string, string> = { 'content-type': TEXT };
    if (error.status === 401) headers['www-authenticate'] = 'Basic realm="WebDAV Storage"';
    // the unread body is not worth receiving: close the connection after the answer
    if (close) headers['connection'] = 'close';
    answer(response, error.status, headers, `${error.code}: ${error.message}\n`);
  }

  async function receive(queue: SpoolQueue, request: IncomingMessage, response: ServerResponse, state: UploadState): Promise<void> {
    const socket = request.socket as TLSSocket;
    const ip = socket.remoteAddress;
    if (!deps.acl.allows(ip)) {
      refuse(queue, response, state, new RelayError('RELAY_ERR_AUTH_NETWORK', `client ${ip} is not in https.allowed_networks`), false);
      return;
    }
    let name: string;
    let admission: { readonly admitted: boolean; release(name?: string): void } | undefined;
    try {
      const identity = authenticateUpload(queue, request.headers.authorization, peerCertificateDerOf(socket), deps.nodes, deps.auth());
      if (identity.nodeId !== undefined) state.node = identity.nodeId;
      const path = pathOf(request.url ?? '');
      name = decodeUploadName(path.slice(queue.length + 2));
      // the node id the reports pipeline will read from this name (every form it accepts), not a stricter reading
      // of our own: a name this check did not understand but the pipeline did would go through unchecked
      const reportNode = queue === 'reports' ? parseRunInfo(name)?.nodeId : undefined;
      if (identity.nodeId !== undefined && reportNode !== undefined && !mayUploadReportOf(identity.nodeId, reportNode, deps.nodes)) {
        throw new RelayError('RELAY_ERR_AUTH_CERTIFICATE', `node ${identity.nodeId} may not upload reports of node ${reportNode}`);
      }
      const declared = Number(request.headers['content-length']);
      if (Number.isFinite(declared) && declared > deps.maxUploadSize) {
        throw new RelayError('RELAY_ERR_UPLOAD_TOO_LARGE', `body of ${declared} bytes is larger than https.max_upload_size (${deps.maxUploadSize})`);
      }
      // a body of unknown length counts as the largest allowed until it is stored
      admission = deps.admit ? await deps.admit(queue, Number.isFinite(declared) ? declared : deps.maxUploadSize) : undefined;
      if (admission?.admitted === false || (admission === undefined && deps.isSpoolFull(queue))) {
        throw new RelayError('RELAY_ERR_SPOOL_FULL', `the ${queue} spool is over its disk budget (max_spool_size): try again later`);
      }
    } catch (error) {
      if (error instanceof RelayError) {
        refuse(queue, response, state, error, true);
        return;
      }
      throw error;
    }
    if (String(request.headers.expect).toLowerCase() === '100-continue') response.writeContinue();
    let stored = false;
    try {
      const result = await deps.spool.receive(queue, name, request, deps.maxUploadSize, deps.bodyTimeoutMs);
      stored = true;
      metrics.uploads.inc({ endpoint: queue, status: result.created ? '201' : '204' });
      metrics.uploadBytes.inc({ endpoint: queue }, result.bytes);
      log.debug({ event: 'stored', queue, file: name, bytes: result.bytes, node: state.node }, 'upload stored');
      state.upload = { bytes: result.bytes, sha256: result.sha256, created: result.created };
      answer(response, result.created ? 201 : 204, {});
    } catch (error) {
      if (error instanceof RelayError) {
        if (error.status >= 500) log.error({ err: error, queue, file: name }, 'upload not stored');
        // (the body broke off because the request timer's answer closed the connection: that is the reason)
        refuse(queue, response, state, state.adopted ?? error, true);
        return;
      }
      throw error;
    } finally {
      admission?.release(stored ? name : undefined);
    }
  }

  const handle = (queue: SpoolQueue, request: IncomingMessage, response: ServerResponse): void => {
    const started = performance.now();
    // read now: the socket is detached from the request once an answer with Connection: close is sent
    const ip = request.socket.remoteAddress;
    const state: UploadState = { node: undefined, error: undefined, upload: undefined };
    inFlight.set(response, state);
    // once the handler is done and the answer is sent, or the connection closed first (a client that went away
    // mid-body): the line then has the status and reason of the answer the handler tried to give
    let handled = false;
    let ended = false;
    let recorded = false;
    const record = (): void => {
      if (recorded || !handled || !ended) return;
      recorded = true;
      try {
        recordAccess(deps, {
          method: 'PUT',
          url: request.url ?? '',
          route: `/${queue}/*`,
          status: response.statusCode,
          node: state.node,
          ip,
          contentLength: request.headers['content-length'],
          elapsedMs: performance.now() - started,
          error: state.error,
          upload: state.upload,
        });
      } catch (error) {
        // an event handler must not take the worker down with it
        log.error({ err: error }, 'access line not recorded');
      }
    };
    const onEnd = (): void => {
      ended = true;
      record();
    };
    response.once('finish', onEnd);
    response.once('close', onEnd);
    if (deps.closing()) {
      handled = true;
      answer(response, 503, { 'content-type': 'application/json', connection: 'close' }, '{"error":"Service Unavailable","message":"Service Unavailable","statusCode":503}');
      return;
    }
    receive(queue, request, response, state)
      .catch((error: unknown) => {
        // what fastify's error handler did for a route: logged, answered 500 with a code
        const relayError = error instanceof RelayError ? error : new RelayError('RELAY_ERR_INTERNAL', messageOf(error), { cause: error });
        log.error({ err: error, path: pathOf(request.url ?? '') }, 'request failed');
        refuse(queue, response, state, relayError, true);
      })
      .finally(() => {
        handled = true;
        record();
      })
      .catch((error: unknown) => log.error({ err: error }, 'upload not answered'));
  };

  return Object.assign(handle, {
    adoptRefusal(response: ServerResponse, refusal: RelayError, clientGone: boolean): boolean {
      const state = inFlight.get(response);
      if (state === undefined || state.upload !== undefined || state.error !== undefined) return false;
      // a client gone mid-body: the upload's own reason (RELAY_ERR_UPLOAD_INCOMPLETE, bytes received) says it better
      if (!clientGone) state.adopted = refusal;
      return true;
    },
  });
}
