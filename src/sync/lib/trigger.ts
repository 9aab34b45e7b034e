// POST /rudder/relay-api/1/sync (issue 7): pull now and answer the sync status once that pull is done,
// in relayd's envelope; GET answers the status. Mounted by the composition root next to system/reload.

import type { FastifyPluginAsync } from 'fastify';
import type { SyncPuller } from '../index.js';

export const syncTriggerRoutes: FastifyPluginAsync<{ puller: SyncPuller }> = async (app, { puller }) => {
  app.post('/', async (_request, reply) => {
    const status = await puller.trigger();
    if (status.lastError !== undefined) {
      return reply.code(502).send({ result: 'error', action: 'triggerSync', errorDetails: status.lastError, data: status });
    }
    return reply.send({ data: status, result: 'success', action: 'triggerSync' });
  });
  app.get('/', async (_request, reply) => reply.send({ data: puller.status(), result: 'success', action: 'getSyncStatus' }));
};
