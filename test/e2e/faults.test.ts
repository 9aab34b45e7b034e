// The relay under faults (issue 16): a SIGTERM while upstream holds a forward and never answers, many
// uploads at once against a small disk budget, a backlog on long backoffs when upstream comes back.

import { readdir } from 'node:fs/promises';
import t from 'tap';
import { inParallel, putFile } from '../support/put.js';
import { DAV_PASSWORD, startRelay } from '../support/relay.js';
import { startUpstream } from '../support/upstream.js';

async function until(predicate: () => Promise<boolean> | boolean, timeoutMs: number, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

t.test('SIGTERM with a forward in flight to an upstream that never answers: stops within its bound, the file stays', async (t) => {
  const upstream = await startUpstream(t, { password: DAV_PASSWORD, mode: 'hang' });
  // timeouts far beyond the shutdown bound: only the shutdown may end this forward
  const options = { upstream, workers: 1, shutdownTimeout: '2s', upstreamToml: 'idle_timeout = "300s"\nrequest_timeout = "300s"' };
  const relay = await startRelay(t, options);
  const base = 'f0f0f0f0-0000-4000-8000-00000000beef_2026-11-25T10:00:00+00:00.ocs';
  t.equal(await putFile({ port: relay.httpsPort, endpoint: 'inventories', name: `${base}.gz`, body: Buffer.from('inventory'), password: 'rudder' }), 201);
  t.equal(await putFile({ port: relay.httpsPort, endpoint: 'inventories', name: `${base}.sign`, body: Buffer.from('signature'), password: 'rudder' }), 201);
  await until(async () => upstream.requests.some((r) => r.status === undefined), 20_000);
  const signalledAt = Date.now();
  relay.child.kill('SIGTERM');
  const code = await Promise.race([relay.exited, new Promise<'still running'>((resolve) => setTimeout(() => resolve('still running'), 30_000).unref())]);
  const ms = Date.now() - signalledAt;
  t.equal(code, 0, 'the primary exits 0');
  // shutdown_timeout (2 s) for the forward in flight, then the abort: far below the 300 s request timeout
  t.ok(ms < 8_000, `stopped in ${ms} ms`);
  t.ok(relay.logs.some((l) => l.event === 'queue_interrupting' && JSON.stringify(l['files']).includes(`${base}.gz`)), 'the interrupted forward is logged by name');
  const steps = relay.logs.filter((l) => l.event === 'stop_step_done').map((l) => l['step']);
  t.ok(['front-door workers', 'forwarding queues', 'local API'].every((step) => steps.includes(step)), `each step logged: ${steps.join(', ')}`);
  t.ok(relay.logs.some((l) => l.event === 'stopped'), '"onerelay stopped" is logged');
  t.same((await readdir(relay.inventoriesIncoming)).sort(), [`${base}.gz`, `${base}.sign`], 'the interrupted files stay in the spool');
  await upstream.setMode('ok');
  await startRelay(t, { ...options, dir: relay.dir });
  await upstream.waitFor(2, 20_000);
  t.same(upstream.files('inventories').map((f) => f.body.toString()), ['inventory', 'signature'], 'delivered after the restart');
});

// workers: 2 is the primary and one forked worker (IPC leases); workers: 1 the primary alone (in-process leases)
for (const workers of [2, 1]) {
  t.test(`the disk budget holds under concurrent uploads: counted at admission (${workers} front-door process${workers > 1 ? 'es' : ''})`, async (t) => {
    const upstream = await startUpstream(t, { password: DAV_PASSWORD });
    await upstream.setMode('down');
    const budget = 64_000;
    const maxUpload = 16_384;
    const relay = await startRelay(t, { upstream, maxSpoolSize: budget, maxUploadSize: maxUpload, workers });
    const body = Buffer.alloc(8_000, 1);
    const names = Array.from({ length: 40 }, (_, i) => `a_2026-11-25T11:${String(Math.floor(i / 60)).padStart(2, '0')}:${String(i % 60).padStart(2, '0')}+00:00.ocs.gz`);
    const statuses = new Map<string, number>();
    // all at once, as 40 agents whose runs end together
    await inParallel(names, 40, async (name) => {
      statuses.set(name, await putFile({ port: relay.httpsPort, endpoint: 'inventories', name, body, password: 'rudder' }));
    });
    const accepted = [...statuses].filter(([, status]) => status === 201).map(([name]) => name);
    const refused = [...statuses.values()].filter((status) => status !== 201);
    t.ok(refused.every((status) => status === 507), 'the others get 507 (agents keep the file and retry)');
    t.ok(accepted.length > 0, `${accepted.length} accepted`);
    const onDisk = accepted.length * body.length;
    // the promise: within one maximum upload per worker (here it is exact: every admission counts in the primary)
    t.ok(onDisk <= budget + 2 * maxUpload, `${onDisk} bytes accepted for a budget of ${budget}`);
    t.ok(onDisk <= budget, 'not a byte over the budget');
    t.same((await readdir(relay.inventoriesIncoming)).sort(), accepted.sort(), 'exactly the accepted files are in the spool');
  });
}

t.test('after an outage, a file on a long backoff goes within seconds of the first 2xx', async (t) => {
  const upstream = await startUpstream(t, { password: DAV_PASSWORD });
  await upstream.setMode('fail-503-always');
  const relay = await startRelay(t, { upstream });
  const waiting = 'f0f0f0f0-0000-4000-8000-00000000beef_2026-11-25T10:00:00+00:00.ocs.gz';
  t.equal(await putFile({ port: relay.httpsPort, endpoint: 'inventories', name: waiting, body: Buffer.from('waiting'), password: 'rudder' }), 201);
  // the outage lasts until the file failed 7 times: its own backoff is then 16–32 s
  const refusals = () => upstream.requests.filter((r) => r.status === 503 && r.url.includes(encodeURIComponent(waiting))).length;
  await until(() => refusals() >= 7, 120_000, '7 refusals of the waiting file');
  await upstream.setMode('ok');
  const recoveredAt = Date.now();
  // agents keep uploading: the next upload is the first 2xx
  const fresh = 'f0f0f0f0-0000-4000-8000-00000000beef_2026-11-25T11:00:00+00:00.ocs.gz';
  t.equal(await putFile({ port: relay.httpsPort, endpoint: 'inventories', name: fresh, body: Buffer.from('fresh'), password: 'rudder' }), 201);
  await upstream.waitFor(2, 60_000);
  const firstOk = upstream.received[0]!.at.getTime();
  const arrived = upstream.files('inventories').find((f) => f.name === waiting)!.at.getTime();
  t.ok(arrived - firstOk < 3_000, `the waiting file went ${arrived - firstOk} ms after upstream's first 2xx (after ${refusals()} refusals)`);
  t.ok(arrived - recoveredAt < 30_000, `drained ${arrived - recoveredAt} ms after upstream recovered`);
});
