// The node-facing HTTPS endpoint (Apache httpd's part of a relay): TLS 1.3 only, client
// certificate requested but optional (Apache's optional_no_ca), WebDAV PUT uploads into the spool,
// /uuid, and a reverse proxy for local services. Runs in the primary and in every front-door worker, all
// accepting on the one listening socket the primary opened (app/cluster.ts). Upload PUTs are answered
// ahead of fastify (uploads.ts); everything else goes through fastify's routes.

import { constants } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createServer } from 'node:https';
import type { Server } from 'node:net';
import type { TLSSocket } from 'node:tls';
import Fastify, { LogController, type FastifyListenOptions, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { ListenAddress, ProxyRoute } from '../config/index.js';
import { RelayError, messageOf } from '../errors.js';
import { parserRefusalHandler } from './parser-refusal.js';
import type { FrontDoorMetrics } from '../metrics/index.js';
import type { NodesRegistry } from '../nodes/index.js';
import type { Spool, SpoolQueue } from '../spool/index.js';
import { authenticateUpload, type UploadAuthOptions } from './client-auth.js';
import { createNetworkAcl, type NetworkAcl } from '../config/index.js';
import { downloadRoutes } from './downloads.js';
import type { SharedFiles } from '../shared-files/index.js';
import type { RemoteRun } from '../remote-run/index.js';
import type { SyncServing } from '../sync/index.js';
import type { ActivitySink } from '../activity/index.js';
import { pathOf, recordAccess } from './access.js';
import { createUploadPath, peerCertificateDerOf, UPLOAD_QUEUES, uploadQueueOf } from './uploads.js';

export interface FrontDoorOptions {
  readonly listen: ListenAddress;
  readonly tls: { readonly key: string; readonly cert: string };
  readonly nodeId: string;
  readonly allowedNetworks: readonly string[];
  readonly maxUploadSize: number;
  readonly auth: UploadAuthOptions;
  readonly proxy: readonly ProxyRoute[];
  readonly shutdownTimeoutMs: number;
  /** https.body_timeout: a request body that sends no byte for this long is refused, 408 (0: none) */
  readonly bodyTimeoutMs: number;
  /** https.request_timeout: the whole request, headers and body, must arrive within this (0: none) */
  readonly requestTimeoutMs: number;
  readonly policiesDirectory: string;
  readonly sharedFolderPath: string;
  /** may call remote-run (Apache's rudder-networks-policy-server-24.conf) and see the status page */
  readonly policyServerNetworks: readonly string[];
  /** the local API, which renders the status page (it lives in the primary process) */
  readonly localApiUrl: string;
}

export interface FrontDoorDeps {
  readonly nodes: NodesRegistry;
  readonly spool: Spool;
  readonly metrics: FrontDoorMetrics;
  /** the primary says when a queue is over its disk budget */
  readonly isSpoolFull: (queue: SpoolQueue) => boolean;
  /**
   * admission of an upload of up to `bytes` against the queue's disk budget, counted from now on
   * (without it, only isSpoolFull is checked)
   */
  readonly admit?: (queue: SpoolQueue, bytes: number) => Promise<UploadAdmission>;
  readonly sharedFiles: SharedFiles;
  readonly remoteRun: RemoteRun;
  /** serving side of the data sync, when sync.serve */
  readonly syncServing: SyncServing | undefined;
  /** node activity and delivery ledger (batched to the primary); absent = not recorded */
  readonly activity?: ActivitySink;
  readonly log: Logger;
}

export interface UploadAdmission {
  readonly admitted: boolean;
  /** the upload ended: stored as `name`, or not stored at all */
  release(name?: string): void;
}

/** what the relay's own policies may change while the front door runs (agentless/settings.ts) */
export interface FrontDoorSettings {
  readonly allowedNetworks: readonly string[];
  readonly policyServerNetworks: readonly string[];
  /** the WebDAV Basic credentials checked on /reports and /inventory-updates */
  readonly user: string;
  readonly password: string | undefined;
}

export interface FrontDoor {
  /** listens on https.listen, or accepts on `shared`, the listening socket another process opened and handed over */
  start(shared?: Server): Promise<void>;
  /** the listening server once started: what the primary hands its workers */
  server(): Server | undefined;
  stop(): Promise<void>;
  /** applies new networks and credentials to the next requests */
  update(settings: FrontDoorSettings): void;
}

// answered 403 on the upload collections, as Apache's <LimitExcept PUT> Require all denied does
const WEBDAV_METHODS = ['PROPFIND', 'PROPPATCH', 'MKCOL', 'COPY', 'MOVE', 'LOCK', 'UNLOCK'];

declare module 'fastify' {
  interface FastifyRequest {
    relayNode?: string;
    relayError?: RelayError;
  }
}

function peerCertificateDer(request: FastifyRequest): Buffer | undefined {
  return peerCertificateDerOf(request.raw.socket as TLSSocket);
}

export function createFrontDoor(options: FrontDoorOptions, deps: FrontDoorDeps): FrontDoor {
  const log = deps.log.child({ module: 'http' });
  // changed in place by update(): the routes hold these two delegates
  let allowed = createNetworkAcl(options.allowedNetworks);
  let policyServerAcl = createNetworkAcl(options.policyServerNetworks);
  let auth: UploadAuthOptions = options.auth;
  const acl: NetworkAcl = { allows: (address) => allowed.allows(address) };
  const policyServers: NetworkAcl = { allows: (address) => policyServerAcl.allows(address) };
  let app: ReturnType<typeof build> | undefined;
  /** stop() has begun: uploads are answered 503, as fastify answers its routes */
  let closing = false;
  const accessDeps = { metrics: deps.metrics, activity: deps.activity, log };
  const uploadPath = createUploadPath({
    acl,
    auth: () => auth,
    nodes: deps.nodes,
    spool: deps.spool,
    maxUploadSize: options.maxUploadSize,
    bodyTimeoutMs: options.bodyTimeoutMs,
    isSpoolFull: deps.isSpoolFull,
    admit: deps.admit,
    closing: () => closing,
    ...accessDeps,
  });

  function fail(request: FastifyRequest, reply: FastifyReply, error: RelayError): FastifyReply {
    request.relayError = error;
    if (error.status === 401) reply.header('www-authenticate', 'Basic realm="WebDAV Storage"');
    return reply.code(error.status).type('text/plain; charset=utf-8').send(`${error.code}: ${error.message}\n`);
  }

  // refused by Node's HTTP parser or its request timer, and bodies that stall on fastify's routes: one coded answer
  const refuseUnparsed = parserRefusalHandler(
    log,
    (status) => deps.metrics.requests.inc({ route: 'unparsed', status: String(status) }),
    (response, refusal, clientGone) => uploadPath.adoptRefusal(response, refusal, clientGone),
  );

  /**
   * A body that stalls on a route of fastify's (shared-files PUT buffers up to its max_body_size in memory): the
   * same coded 408 and access line as Node's request timer gives, and the connection closed, which ends the
   * body read. Uploads have their own timer in the spool's receiver, which leaves their access line to them.
   */
  function watchBody(request: IncomingMessage, response: ServerResponse): void {
    if (options.bodyTimeoutMs <= 0) return;
    const length = request.headers['content-length'];
    if ((length === undefined || length === '0') && request.headers['transfer-encoding'] === undefined) return;
    const socket = request.socket;
    // (the socket's timer: any byte in or out pushes it back; while a body is read nothing goes out)
    request.setTimeout(options.bodyTimeoutMs, () => {
      if (request.complete) return;
      // answered before its body came (a 403, a 413): that answer and its line stand, only the connection goes
      if (response.headersSent) socket.destroy();
      else refuseUnparsed(new RelayError('RELAY_ERR_REQUEST_TIMEOUT', `no byte of the request body for ${options.bodyTimeoutMs / 1000} s (https.body_timeout)`), socket);
    });
    // the body is in: no timer while the answer is prepared (remote-run may be silent for minutes); once the
    // answer is out, the timer is Node's keep-alive one, left alone
    request.once('end', () => {
      if (!socket.destroyed && !response.writableFinished) socket.setTimeout(0);
    });
    // a body wholly received but not read by its route ('end' never comes): Node tells only the response then,
    // and with no listener it destroys the socket, answer and line lost; the timer is disarmed instead
    response.on('timeout', () => {
      if (request.complete && !socket.destroyed) socket.setTimeout(0);
    });
  }

  function build() {
    const fastify = Fastify({
      loggerInstance: log,
      logController: new LogController({ disableRequestLogging: true }),
      routerOptions: { ignoreDuplicateSlashes: true },
      // the server is ours so that upload PUTs reach uploads.ts before fastify's request path; `https` only
      // tells fastify the scheme of its "listening at" line (a server factory takes precedence over it)
      https: {},
      serverFactory: (handler) => {
        const server = createServer(
          {
            key: options.tls.key,
            cert: options.tls.cert,
            minVersion: 'TLSv1.3',
            requestCert: true,
            rejectUnauthorized: false,
            // Session tickets carry the session state (the client's certificate included) encrypted; OpenSSL 3.0
            // builds each of TLS 1.3's two by encoding the session and decoding it back, which parses the
            // client certificate again: ~0.45 ms of CPU per connection, 8 % of an upload. Agents open a fresh
            // connection per run and never resume (curl keeps no session across runs), so the tickets are
            // stateful instead (a session id, never stored: SSL_SESS_CACHE_NO_INTERNAL and no 'newSession'
            // listener): a client offering one gets a full handshake, as any client whose ticket expired.
            secureOptions: constants.SSL_OP_NO_TICKET,
            // Node's own timer on the whole request (answered 408 RELAY_ERR_REQUEST_TIMEOUT by parser-refusal.ts);
            // the headers' share of it stays Node's 60 s, never more than the whole
            requestTimeout: options.requestTimeoutMs,
            headersTimeout: options.requestTimeoutMs > 0 ? Math.min(60_000, options.requestTimeoutMs) : 60_000,
            // how often Node checks those two timers: their precision (30 s by default)
            connectionsCheckingInterval: options.requestTimeoutMs > 0 ? Math.min(30_000, Math.max(100, Math.floor(options.requestTimeoutMs / 10))) : 30_000,
          },
          (request, response) => {
            const queue = uploadQueueOf(request.method, request.url);
            if (queue === undefined) {
              watchBody(request, response);
              handler(request, response);
            } else uploadPath(queue, request, response);
          },
        );
        // what fastify sets on a server it makes itself
        server.keepAliveTimeout = 5_000;
        return server;
      },
      // an upload's body is never buffered; keep the ones we do parse small
      bodyLimit: 1024 * 1024,
      return503OnClosing: true,
      // undecodable URLs and the like: our error format, not fastify's JSON
      // refused by Node's HTTP parser, before any route: the same coded answer and access line
      clientErrorHandler: refuseUnparsed,
      frameworkErrors: (error: Error, request: FastifyRequest, reply: FastifyReply) => {
        const relayError = new RelayError('RELAY_ERR_BAD_REQUEST', `bad request: ${error.message}`);
        request.relayError = relayError;
        return reply.code(400).type('text/plain; charset=utf-8').send(`${relayError.code}: ${relayError.message}\n`);
      },
    });

    for (const method of WEBDAV_METHODS) fastify.addHttpMethod(method, { hasBody: true });

    fastify.server.on('tlsClientError', (error: NodeJS.ErrnoException, socket: { remoteAddress?: string | undefined }) => {
      const reason = /version|protocol/i.test(error.message) ? 'protocol_version' : error.code ?? 'other';
      deps.metrics.tlsFailures.inc({ reason });
      log.info({ event: 'tls_failure', reason, error: error.message }, 'TLS handshake refused');
      deps.activity?.record({ t: 'tls', at: Date.now(), ip: socket.remoteAddress ?? 'unknown', reason });
    });
    // Answer 401/403 before the client sends a body it announced with `Expect: 100-continue`.
    fastify.server.on('checkContinue', (request: IncomingMessage, response: ServerResponse) => {
      fastify.server.emit('request', request, response);
    });

    fastify.addHook('onResponse', (request, reply, done) => {
      recordAccess(accessDeps, {
        method: request.method,
        url: request.url,
        route: request.routeOptions.url ?? 'unmatched',
        status: reply.statusCode,
        node: request.relayNode,
        ip: request.ip,
        contentLength: request.headers['content-length'],
        elapsedMs: reply.elapsedTime,
        error: request.relayError,
        upload: undefined,
      });
      done();
    });

    fastify.route({
      method: ['GET', 'HEAD'],
      url: '/uuid',
      // open to all (Apache's `Require all granted`), but in cert_validation to verified clients only, as Rudder's
      // rudder-apache-relay-ssl.conf.j2 adds `Require expr "%{SSL_CLIENT_VERIFY} == 'SUCCESS'"` for uuid.hive.
      // Verified as for a new node's inventory: a known node's pinned certificate, or a new node's issued by the
      // configured CA (an agent asks /uuid before its first inventory, so before it is known).
      handler: async (request, reply) => {
        if (options.auth.mode === 'certificate') {
          try {
            request.relayNode = authenticateUpload('inventories', undefined, peerCertificateDer(request), deps.nodes, auth).nodeId;
          } catch (error) {
            if (error instanceof RelayError) return fail(request, reply, error);
            throw error;
          }
        }
        return reply.type('text/plain; charset=utf-8').send(`${options.nodeId}\n`);
      },
    });

    // The WebDAV endpoints' other methods (PUT is answered ahead of fastify, uploads.ts): a plugin of its
    // own so that its pass-through body parser does not leak into the proxy's context.
    fastify.register(async (uploads) => {
      uploads.removeAllContentTypeParsers();
      uploads.addContentTypeParser('*', (_request, _payload, done) => done(null, undefined));
      for (const queue of UPLOAD_QUEUES) {
        uploads.route({
          method: ['GET', 'HEAD', 'POST', 'DELETE', 'PATCH', 'OPTIONS', ...WEBDAV_METHODS],
          url: `/${queue}/*`,
          handler: async (request, reply) => {
            return fail(request, reply, new RelayError('RELAY_ERR_UPLOAD_METHOD', `${request.method} is not allowed here, only PUT`));
          },
        });
      }
    });

    fastify.register(downloadRoutes, {
      options: {
        policiesDirectory: options.policiesDirectory,
        sharedFolderPath: options.sharedFolderPath,
        requireCertificate: options.auth.mode === 'certificate',
      },
      deps: { acl, nodes: deps.nodes, metrics: deps.metrics, sharedFiles: deps.sharedFiles, fail },
    });

    // remote-run: only from the policy server's networks (and with a verified certificate in cert_validation)
    for (const prefix of ['/rudder/relay-api/remote-run', '/rudder/relay-api/1/remote-run']) {
      fastify.register(
        async (remote) => {
          remote.addHook('onRequest', async (request, reply) => {
            if (!policyServers.allows(request.socket.remoteAddress)) {
              return fail(request, reply, new RelayError('RELAY_ERR_AUTH_NETWORK', `client ${request.socket.remoteAddress} is not in https.policy_server_networks`));
            }
            if (options.auth.mode === 'certificate') {
              const der = peerCertificateDer(request);
              const match = der === undefined ? undefined : deps.nodes.matchCertificate(der);
              if (match?.kind !== 'match') return fail(request, reply, new RelayError('RELAY_ERR_AUTH_CERTIFICATE', 'remote-run needs a verified client certificate'));
            }
            return undefined;
          });
          await remote.register(deps.remoteRun.routes);
        },
        { prefix },
      );
    }

    // data sync for sub-relays: allowed networks here, the pinned relay certificate in the routes
    if (deps.syncServing) {
      const serving = deps.syncServing;
      for (const prefix of ['/rudder/relay-api/sync', '/rudder/relay-api/1/sync']) {
        fastify.register(
          async (sync) => {
            sync.addHook('onRequest', async (request, reply) => {
              if (!acl.allows(request.socket.remoteAddress)) {
                return fail(request, reply, new RelayError('RELAY_ERR_AUTH_NETWORK', `client ${request.socket.remoteAddress} is not in https.allowed_networks`));
              }
              return undefined;
            });
            await sync.register(serving.routes);
          },
          { prefix },
        );
      }
    }

    fastify.get('/', async (request, reply) => {
      if (!policyServers.allows(request.socket.remoteAddress)) {
        return fail(request, reply, new RelayError('RELAY_ERR_AUTH_NETWORK', `client ${request.socket.remoteAddress} is not in https.policy_server_networks`));
      }
      // the query string carries the nodes table's sort and filter
      const page = await fetch(`${options.localApiUrl}/${request.url.includes('?') ? request.url.slice(request.url.indexOf('?')) : ''}`, { signal: AbortSignal.timeout(10_000) });
      return reply.code(page.status).header('content-type', 'text/html; charset=utf-8').send(await page.text());
    });

    // Apache's `Require all denied` for every relay-api path not opened explicitly (spec §1.2).
    fastify.all('/rudder/relay-api/*', async (request, reply) =>
      fail(request, reply, new RelayError('RELAY_ERR_AUTH_NETWORK', 'this relay API path is not available on the public endpoint')),
    );

    // imported only when configured: the proxy and its HTTP client cost ~0.3 s of CPU at each worker's start
    for (const route of options.proxy) {
      const prefix = route.prefix.replace(/\/+$/, '');
      fastify.register(import('@fastify/http-proxy'), {
        upstream: route.target,
        prefix,
        rewritePrefix: prefix,
        http: { requestOptions: { timeout: route.timeoutMs } },
      });
    }

    fastify.setNotFoundHandler(async (request, reply) =>
      fail(request, reply, new RelayError('RELAY_ERR_NOT_FOUND', `no such path: ${pathOf(request.url)}`)),
    );
    fastify.setErrorHandler(async (error, request, reply) => {
      const relayError =
        error instanceof RelayError ? error : new RelayError('RELAY_ERR_INTERNAL', messageOf(error), { cause: error });
      if (relayError.status >= 500) log.error({ err: error, path: pathOf(request.url) }, 'request failed');
      return fail(request, reply, relayError);
    });
    return fastify;
  }

  return {
    update(settings) {
      allowed = createNetworkAcl(settings.allowedNetworks);
      policyServerAcl = createNetworkAcl(settings.policyServerNetworks);
      auth = { ...auth, user: settings.user, password: settings.password };
    },
    async start(shared) {
      if (app) return;
      closing = false;
      app = build();
      // with a handle, the host only keeps fastify from binding 'localhost''s other addresses itself
      if (shared === undefined) await app.listen({ host: options.listen.host, port: options.listen.port });
      // (net.Server.listen takes { handle }, which fastify passes through; its types do not list it)
      else await app.listen({ handle: (shared as Server & { _handle: unknown })._handle, host: '0.0.0.0' } as unknown as FastifyListenOptions);
    },
    server: () => app?.server,
    async stop() {
      if (!app) return;
      const stopping = app;
      app = undefined;
      closing = true;
      // fastify.close() waits for in-flight requests; bound it so a stuck client cannot hold shutdown
      await Promise.race([
        stopping.close(),
        new Promise<void>((resolve) =>
          setTimeout(() => {
            stopping.server.closeAllConnections();
            resolve();
          }, options.shutdownTimeoutMs).unref(),
        ),
      ]);
    },
  };
}
