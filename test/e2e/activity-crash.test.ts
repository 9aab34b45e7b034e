// The activity database never costs the relay its job: a SIGKILL during writes loses no relay data and at
// most the last batch of events (the ledger still balances once the spool drains), a corrupt database is
// moved aside and recreated, and a relay whose database cannot be opened (or is switched off) runs without it.

import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readdir, writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { cachedAgentIdentity, sampleRunlog, signedGzippedReport, type AgentIdentity } from '../support/agent.js';
import { inParallel, putFile } from '../support/put.js';
import { DAV_PASSWORD, RELAY_ID, startRelay, type RunningRelay } from '../support/relay.js';
import { startUpstream } from '../support/upstream.js';

const NODES = ['c7000000-0000-4000-8000-000000000001', 'c7000000-0000-4000-8000-000000000002'];

interface Ledger {
  files: Array<{ file: string; state: string; sha256: string | null }>;
  balance: { received: number; forwarded: number; failed: number; pending: number; queued_now: number; balanced: boolean };
}

async function ledger(relay: RunningRelay, query = ''): Promise<{ status: number; body: { code?: string; data: Ledger } }> {
  const response = await fetch(`${relay.apiUrl}/rudder/relay-api/1/ledger${query}`);
  return { status: response.status, body: (await response.json()) as { code?: string; data: Ledger } };
}

async function eventually<T>(what: string, probe: () => Promise<T>, ok: (value: T) => boolean, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (ok(value)) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(value).slice(0, 1500)}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function reports(identities: readonly AgentIdentity[], count: number, offset: number) {
  return Promise.all(
    Array.from({ length: count }, async (_, i) => {
      const node = identities[i % identities.length] as AgentIdentity;
      const date = new Date(Date.UTC(2026, 11, 6, 6, 0, 0) + (offset + i) * 1000);
      return { ...(await signedGzippedReport(node, sampleRunlog(node.nodeId, { start: date }), date)), node };
    }),
  );
}

t.test('SIGKILL during writes: no relay data lost, the ledger balances after restart', async (t) => {
  const identities = await Promise.all(NODES.map((id) => cachedAgentIdentity(id)));
  const nodesList = Object.fromEntries(identities.map((a) => [a.nodeId, { hostname: 'n.example', 'key-hash': a.sha256Pin, 'policy-server': RELAY_ID }]));
  const upstream = await startUpstream(t, { password: DAV_PASSWORD });
  await upstream.setMode('down');
  const options = { workers: 1, upstream, nodesList, nodesCerts: identities.map((a) => a.certificatePem).join('') };
  let relay = await startRelay(t, options);
  const first = await reports(identities, 20, 0);
  const upload = (r: { name: string; body: Buffer; node: AgentIdentity }) =>
    putFile({ port: relay.httpsPort, endpoint: 'reports', name: r.name, body: r.body, password: DAV_PASSWORD, identity: r.node });
  await inParallel(first, 4, async (r) => {
    t.equal(await upload(r), 201);
  });
  await eventually('20 files in the ledger', () => ledger(relay), (l) => l.body.data.balance.received === 20);
  // and their upload details (a front-door worker sends its events in batches: the kill below may only cost the last one)
  await eventually('the first 20 files with their upload details', () => ledger(relay), (l) => l.body.data.files.filter((f) => f.sha256 !== null).length === 20);

  // more uploads, and a SIGKILL of every process in the middle of them
  const second = await reports(identities, 30, 100);
  const acknowledged: string[] = [];
  const uploading = inParallel(second, 4, async (r) => {
    const status = await upload(r).catch(() => 0);
    if (status === 201) acknowledged.push(r.name);
  });
  await eventually('some of the second batch stored', async () => acknowledged.length, (n) => n >= 5);
  await relay.killAll();
  await uploading;
  t.ok(acknowledged.length < second.length, `killed during the uploads (${acknowledged.length} of ${second.length} acknowledged)`);

  await upstream.setMode('ok');
  relay = await startRelay(t, { ...options, dir: relay.dir });
  t.notOk(relay.logs.some((l) => l.event === 'activity_database_moved'), 'the database survived the SIGKILL');
  const expected = new Set([...first.map((r) => r.name), ...acknowledged]);
  await upstream.waitFor(expected.size, 60_000);
  const stored = new Set(upstream.files('reports').map((f) => f.name));
  t.ok([...expected].every((name) => stored.has(name)), 'every acknowledged report reached upstream');

  const after = await eventually('the ledger to drain', () => ledger(relay), (l) => l.body.data.balance.pending === 0 && l.body.data.balance.forwarded >= expected.size);
  const balance = after.body.data.balance;
  t.ok(balance.balanced, `received ${balance.received} = forwarded ${balance.forwarded} + failed ${balance.failed} + queued ${balance.pending}`);
  t.equal(balance.queued_now, 0);
  const recorded = new Set(after.body.data.files.map((f) => f.file));
  t.ok(first.every((r) => recorded.has(r.name)), 'the events recorded before the kill are all there');
  t.ok([...expected].every((name) => recorded.has(name)), 'files whose upload event was lost are recorded as they leave the spool');
  const complete = after.body.data.files.filter((f) => f.sha256 !== null).length;
  t.ok(expected.size - complete <= acknowledged.length, `at most the last batch lacks its upload details (${expected.size - complete})`);
  t.ok(after.body.data.files.every((f) => f.state === 'forwarded'), 'all forwarded');
});

t.test('a corrupt database is moved aside and recreated', async (t) => {
  let relay = await startRelay(t, { workers: 1 });
  await relay.stop();
  const state = join(relay.dir, 'state');
  await writeFile(join(state, 'activity.sqlite'), Buffer.alloc(8192, 'not a database '));
  for (const suffix of ['-wal', '-shm']) await writeFile(join(state, `activity.sqlite${suffix}`), '').catch(() => undefined);
  relay = await startRelay(t, { workers: 1, dir: relay.dir });
  const moved = relay.logs.find((l) => l.event === 'activity_database_moved');
  t.ok(moved, 'one log line says so');
  t.equal(moved?.['code'], 'RELAY_ERR_ACTIVITY_DATABASE');
  t.ok((await readdir(state)).some((name) => /^activity\.sqlite\.broken-/.test(name)), 'the broken file is kept aside');
  t.equal((await ledger(relay)).status, 200, 'a new database answers');
  const body = (await (await fetch(`${relay.apiUrl}/rudder/relay-api/1/system/status`)).json()) as { data: { activity: { status: string; recording: boolean } } };
  t.equal(body.data.activity.status, 'success');
  t.equal(body.data.activity.recording, true);
});

t.test('the relay runs without its database: unusable state directory, or recording off', async (t) => {
  const dir = join(t.testdirName, 'x');
  await mkdir(dir, { recursive: true });
  const file = join(dir, 'not-a-directory');
  await writeFile(file, 'x');
  const broken = await startRelay(t, { workers: 1, activityToml: `state_directory = "${file}"\n` });
  t.ok(broken.logs.find((l) => l.event === 'activity_unavailable' && l['code'] === 'RELAY_ERR_ACTIVITY_DATABASE'), 'it says so');
  const refused = await ledger(broken);
  t.equal(refused.status, 503);
  t.equal(refused.body.code, 'RELAY_ERR_ACTIVITY_DATABASE');
  t.equal(await putFile({ port: broken.httpsPort, endpoint: 'inventories', name: 'h-c7000000-0000-4000-8000-000000000009.ocs', body: Buffer.from('<x/>'), password: 'rudder' }), 201, 'uploads still work');
  const page = await (await fetch(`${broken.apiUrl}/`)).text();
  t.match(page, /activity recording is not available/, 'the status page says so');

  const off = await startRelay(t, { workers: 1, activityToml: 'enabled = false\n' });
  t.equal(await putFile({ port: off.httpsPort, endpoint: 'inventories', name: 'h-c7000000-0000-4000-8000-000000000009.ocs', body: Buffer.from('<x/>'), password: 'rudder' }), 201);
  t.equal((await ledger(off)).status, 503, 'recording off: the API says so');
  t.notOk(existsSync(join(off.dir, 'state', 'activity.sqlite')), 'and no database is made');
});

t.test('SIGTERM right after an upload: its event is written before the relay exits', async (t) => {
  const relay = await startRelay(t, { workers: 1 });
  const name = 'h-c7000000-0000-4000-8000-00000000000a.ocs';
  const body = Buffer.from('<inventory/>');
  t.equal(await putFile({ port: relay.httpsPort, endpoint: 'inventories', name, body, password: 'rudder' }), 201);
  // at once: the upload's event is still in the worker's batch
  t.equal(await relay.stop(), 0);
  const restarted = await startRelay(t, { workers: 1, dir: relay.dir });
  const row = (await ledger(restarted, `?file=${name}`)).body.data.files[0];
  t.equal(row?.state, 'received', 'recorded, still queued (outputs disabled)');
  t.equal(row?.sha256, createHash('sha256').update(body).digest('hex'), 'with its sha256');
});
