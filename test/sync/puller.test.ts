// Pulling side of the data sync (issue 7): crash recovery, restart, trigger route, schedule.

import { mkdir, readdir, rename } from 'node:fs/promises';
import { join } from 'node:path';
import Fastify from 'fastify';
import { createSyncPuller, syncTriggerRoutes } from '../../src/sync/index.js';
import t from 'tap';
import {
  NODES,
  RELAY_ID,
  readTree,
  sameTree,
  startSyncPair,
} from '../support/sync.js';

t.test('a switch interrupted by a crash is undone, and a restarted puller answers 304 in one request', async (t) => {
  const s = await startSyncPair(t, { nodes: 2 });
  const first = await s.puller.trigger();
  t.equal(first.lastError, undefined);
  await s.puller.stop();
  const n0 = join(s.down.policiesDirectory, NODES[0] ?? '');
  const expected = await readTree(n0);
  // as if the process died between the two renames of a switch, and while building another unit
  await rename(n0, join(s.down.policiesDirectory, `.sync-old.${NODES[0]}`));
  await mkdir(join(s.down.policiesDirectory, `.sync-build.${NODES[1]}`, 'rules'), { recursive: true });

  const restarted = s.newPuller();
  const requestsBefore = s.server.requests.length;
  const status = await restarted.trigger();
  t.equal(status.lastError, undefined);
  t.equal(status.generation, first.generation, 'generation from the saved state');
  t.equal(s.server.requests.length - requestsBefore, 1, 'one request');
  t.equal(s.server.requests.at(-1)?.status, 304);
  sameTree(t, await readTree(n0), expected, 'the unit is back');
  t.same((await readdir(s.down.policiesDirectory)).filter((n) => n.startsWith('.')), [], 'leftovers removed');
});

t.test('POST /rudder/relay-api/1/sync pulls now and answers the status', async (t) => {
  const s = await startSyncPair(t, { nodes: 2 });
  const api = Fastify();
  await api.register(syncTriggerRoutes, { prefix: '/rudder/relay-api/1/sync', puller: s.puller });
  t.teardown(() => api.close());
  const triggered = await api.inject({ method: 'POST', url: '/rudder/relay-api/1/sync' });
  t.equal(triggered.statusCode, 200);
  const body = triggered.json() as { result: string; data: { generation: string; lastFiles: number } };
  t.equal(body.result, 'success');
  t.match(body.data.generation, /^[0-9a-f]{64}$/);
  t.ok(body.data.lastFiles > 200);
  const statusAnswer = (await api.inject({ method: 'GET', url: '/rudder/relay-api/1/sync' })).json() as { data: { generation: string } };
  t.equal(statusAnswer.data.generation, body.data.generation);
  // triggers during a pull are coalesced into one more pull
  const [a, b, c] = await Promise.all([s.puller.trigger(), s.puller.trigger(), s.puller.trigger()]);
  t.equal(a.lastError, undefined);
  t.equal(b, c, 'the two later triggers share the queued pull');
});

t.test('start() pulls at once and on schedule; stop() aborts', async (t) => {
  const s = await startSyncPair(t, { nodes: 2 });
  const puller = createSyncPuller(
    { paths: s.down, myId: RELAY_ID, frequencyMs: 200 },
    { upstream: () => s.client, onNodesChanged: async () => undefined, counters: { synced: () => undefined }, log: s.logs.log },
  );
  await puller.start();
  const deadline = Date.now() + 60_000;
  while (s.server.requests.filter((r) => r.status === 304).length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  t.ok(s.server.requests.filter((r) => r.status === 304).length >= 2, 'first pull then periodic no-change polls');
  await puller.stop();
  const after = s.server.requests.length;
  await new Promise((r) => setTimeout(r, 500));
  t.equal(s.server.requests.length, after, 'nothing after stop');
  t.equal(puller.status().lastError, undefined);
});
