// The local API on general.listen (plain HTTP, loopback): relayd's system endpoints and /metrics,
// with relayd's envelopes and its plain-text 404 (spec-relayd.md §4.1).

import Fastify, { LogController } from 'fastify';
import type { Logger } from 'pino';
import type { ListenAddress } from '../config/index.js';
import { messageOf } from '../errors.js';
import { parserRefusalHandler } from './parser-refusal.js';
import { envelope, errorEnvelope, type System } from '../system/index.js';
import type { SharedFiles } from '../shared-files/index.js';
import type { RemoteRun } from '../remote-run/index.js';
import { syncTriggerRoutes, type SyncPuller } from '../sync/index.js';
import { sharedFolderRoutes } from '../shared-folder/index.js';

export interface LocalApiDeps {
  readonly system: System;
  readonly sharedFiles: SharedFiles;
  readonly remoteRun: RemoteRun;
  /** the data sync puller, when this relay pulls from an upstream onerelay */
  readonly puller: SyncPuller | undefined;
  readonly sharedFolderPath: string;
  readonly renderMetrics: () => Promise<{ contentType: string; body: string }>;
  /** GET nodes, nodes/:id, ledger (src/activity) */
  readonly activityRoutes?: import('fastify').FastifyPluginAsync;
  readonly log: Logger;
}

export interface LocalApi {
  start(): Promise<void>;
  stop(): Promise<void>;
}

const API = '/rudder/relay-api/1';

export function createLocalApi(listen: ListenAddress, deps: LocalApiDeps): LocalApi {
  const log = deps.log.child({ module: 'local-api' });
  const app = Fastify({
    loggerInstance: log,
    logController: new LogController({ disableRequestLogging: true }),
    routerOptions: { ignoreTrailingSlash: true },
    // what Node's HTTP parser refuses: the coded answer and access line of the front door's refusals
    clientErrorHandler: parserRefusalHandler(log, () => undefined),
  });
  app.addHook('onResponse', async (request, reply) => {
    log.info(
      { event: 'access', method: request.method, path: request.url, status: reply.statusCode, ip: request.ip, ms: Math.round(reply.elapsedTime) },
      'request',
    );
  });
  const json = 'application/json';
  // relayd performs no authentication on its API: the local API listens on loopback only
  app.register(sharedFolderRoutes, { prefix: `${API}/shared-folder`, path: deps.sharedFolderPath });
  app.register(deps.sharedFiles.routes, { prefix: `${API}/shared-files` });
  app.register(deps.remoteRun.routes, { prefix: `${API}/remote-run` });
  if (deps.activityRoutes) app.register(deps.activityRoutes, { prefix: API });
  if (deps.puller) app.register(syncTriggerRoutes, { prefix: `${API}/sync`, puller: deps.puller });
  app.get(`${API}/system/info`, async (_request, reply) => reply.header('content-type', json).send(envelope('getSystemInfo', deps.system.info())));
  app.get(`${API}/system/status`, async (_request, reply) => {
    try {
      return reply.header('content-type', json).send(envelope('getStatus', await deps.system.status()));
    } catch (error) {
      return reply.code(500).header('content-type', json).send(errorEnvelope('getStatus', messageOf(error)));
    }
  });
  app.post(`${API}/system/reload`, async (_request, reply) => {
    try {
      await deps.system.reload();
      return reply.header('content-type', json).send(envelope('reloadConfiguration'));
    } catch (error) {
      return reply.code(500).header('content-type', json).send(errorEnvelope('reloadConfiguration', messageOf(error)));
    }
  });
  app.get('/', async (request, reply) => reply.header('content-type', 'text/html; charset=utf-8').send(await deps.system.statusPage(request.query as Record<string, string | undefined>)));
  app.get('/metrics', async (_request, reply) => {
    const { contentType, body } = await deps.renderMetrics();
    return reply.type(contentType).send(body);
  });
  app.setNotFoundHandler(async (_request, reply) => reply.code(404).type('text/plain; charset=utf-8').send('NOT FOUND'));

  let started = false;
  return {
    async start() {
      if (started) return;
      await app.listen({ host: listen.host, port: listen.port });
      started = true;
    },
    async stop() {
      if (!started) return;
      started = false;
      await app.close();
    },
  };
}
