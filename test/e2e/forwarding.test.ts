// Store-and-forward against a real HTTPS upstream: verified at the first hop, original bytes
// upstream, nothing lost through upstream outages, 503s, or a SIGKILL of the relay.

import { readdir, readFile, writeFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { cachedAgentIdentity, sampleRunlog, signedGzippedReport, type AgentIdentity } from '../support/agent.js';
import { inParallel, putFile } from '../support/put.js';
import { DAV_PASSWORD, FIXTURE_KEYS, RELAY_ID, startRelay, systemStatus as status, until, type RunningRelay } from '../support/relay.js';
import { startUpstream } from '../support/upstream.js';

const NODE_COUNT = 10;
const nodeIds = Array.from({ length: NODE_COUNT }, (_, i) => `f0f0f0f0-0000-4000-8000-${String(i).padStart(12, '0')}`);

async function nodes(): Promise<AgentIdentity[]> {
  return Promise.all(nodeIds.map((id) => cachedAgentIdentity(id)));
}

function nodesList(identities: readonly AgentIdentity[]) {
  return Object.fromEntries(identities.map((a) => [a.nodeId, { hostname: `${a.nodeId.slice(-4)}.example`, 'key-hash': a.sha256Pin, 'policy-server': RELAY_ID }]));
}

/** `count` signed gzipped reports spread over the nodes, each with a distinct name */
async function makeReports(identities: readonly AgentIdentity[], count: number, offset = 0) {
  const reports: Array<{ name: string; body: Buffer; node: AgentIdentity }> = [];
  await inParallel(
    Array.from({ length: count }, (_, i) => i),
    8,
    async (i) => {
      const node = identities[i % identities.length] as AgentIdentity;
      const date = new Date(Date.UTC(2026, 10, 25, 10, 0, 0) + (offset + i) * 1000);
      const report = await signedGzippedReport(node, sampleRunlog(node.nodeId, { start: date }), date);
      reports[i] = { ...report, node };
    },
  );
  return reports;
}

async function upload(relay: RunningRelay, reports: ReadonlyArray<{ name: string; body: Buffer; node: AgentIdentity }>) {
  await inParallel(reports, 8, async (r) => {
    const status = await putFile({ port: relay.httpsPort, endpoint: 'reports', name: r.name, body: r.body, password: DAV_PASSWORD, identity: r.node });
    if (status !== 201 && status !== 204) throw new Error(`upload of ${r.name}: ${status}`);
  });
}

t.test('200 reports from 10 nodes arrive upstream byte-identical; the spool empties', async (t) => {
  const identities = await nodes();
  const upstream = await startUpstream(t, { password: DAV_PASSWORD });
  const relay = await startRelay(t, {
    upstream,
    nodesList: nodesList(identities),
    nodesCerts: identities.map((a) => a.certificatePem).join(''),
  });
  const reports = await makeReports(identities, 200);
  await upload(relay, reports);
  await upstream.waitFor(200, 60_000);
  const received = new Map(upstream.files('reports').map((f) => [f.name, f.body]));
  let identical = 0;
  for (const r of reports) if (received.get(r.name)?.equals(r.body)) identical += 1;
  t.equal(identical, 200, 'every report upstream, byte for byte');
  t.ok(upstream.received.every((f) => f.user === 'rudder' && f.password === DAV_PASSWORD), 'with the DAV credentials');
  await until(async () => (await readdir(relay.reportsIncoming)).length === 0, 10_000, 'spool empty');
  t.same(await readdir(join(relay.dir, 'reports', 'failed')), []);
  const metrics = await (await fetch(`${relay.apiUrl}/metrics`)).text();
  t.match(metrics, /rudder_relayd_reports_total\{status="forward_ok"\} 200/);
  t.match(metrics, /rudder_relayd_reports_total\{status="ok"\} 200/);
  t.match(metrics, /onerelay_upstream_request_duration_seconds_count\{endpoint="reports",result="ok"\} 200/);
  const s = await status(relay);
  t.equal(s['upstream']?.status, 'success');
  t.equal(s['upstream']?.['reachable'], true);
});

t.test('bad signature, truncated gzip → failed/ with a reason; unknown node held, forwarded once the list names it', async (t) => {
  const identities = await nodes();
  const [a, b] = identities as [AgentIdentity, AgentIdentity];
  const stranger = await cachedAgentIdentity('f0f0f0f0-0000-4000-8000-00000000dead');
  const upstream = await startUpstream(t, { password: DAV_PASSWORD });
  const relay = await startRelay(t, {
    upstream,
    nodesList: nodesList(identities),
    nodesCerts: identities.map((x) => x.certificatePem).join(''),
  });
  const date = new Date(Date.UTC(2026, 10, 25, 12, 0, 0));
  // b signs a log named for a: the signature does not verify with a's certificate
  const forged = await signedGzippedReport(b, sampleRunlog(a.nodeId, { start: date }), date);
  const forgedName = forged.name.replace(b.nodeId, a.nodeId);
  const unknown = await signedGzippedReport(stranger, sampleRunlog(stranger.nodeId, { start: date }), date);
  const good = await signedGzippedReport(a, sampleRunlog(a.nodeId, { start: date }), new Date(date.getTime() + 1000));
  const truncatedName = `2026-11-25T12:00:05+00:00@${a.nodeId}.log.gz`;
  const truncated = good.body.subarray(0, Math.floor(good.body.length / 2));
  for (const [name, body] of [[forgedName, forged.body], [unknown.name, unknown.body], [truncatedName, truncated]] as const) {
    t.equal(await putFile({ port: relay.httpsPort, endpoint: 'reports', name, body, password: DAV_PASSWORD }), 201, `${name} accepted by the front door`);
  }
  t.equal(await putFile({ port: relay.httpsPort, endpoint: 'reports', name: good.name, body: good.body, password: DAV_PASSWORD }), 201);
  await upstream.waitFor(1, 20_000);
  const failed = join(relay.dir, 'reports', 'failed');
  await until(async () => (await readdir(failed)).length === 4, 20_000, 'two files and their reasons in failed/');
  t.match(await readFile(join(failed, `${forgedName}.reason`), 'utf8'), /^bad-signature: /);
  t.match(await readFile(join(failed, `${truncatedName}.reason`), 'utf8'), /^undecodable: /);
  const held = await relay.waitForLog((l) => l.event === 'held' && l['file'] === unknown.name && l['code'] === 'unknown-node');
  t.ok(held, 'the report of a node absent from the list is held, not failed');
  t.notOk((await readdir(failed)).includes(unknown.name), 'not in failed/');
  t.ok((await readdir(relay.reportsIncoming)).includes(unknown.name), 'still in incoming/');
  t.same(await readFile(join(failed, forgedName)), forged.body, 'the evidence is kept as it came');
  await new Promise((r) => setTimeout(r, 500));
  t.same(upstream.files('reports').map((f) => f.name), [good.name], 'only the good report went upstream');
  t.ok(relay.logs.some((l) => l.event === 'failed' && l['code'] === 'bad-signature'), 'a log line per refusal');
  const metrics = await (await fetch(`${relay.apiUrl}/metrics`)).text();
  t.match(metrics, /rudder_relayd_reports_total\{status="error"\} 2/);
  t.match(metrics, /onerelay_spool_failed_total\{queue="reports",reason="bad-signature"\} 1/);
  t.notMatch(metrics, /onerelay_spool_failed_total\{queue="reports",reason="unknown-node"\}/, 'the held report is not counted as failed');

  // the root accepted the node; the list reaches the relay a moment later
  await writeFile(`${relay.nodesListFile}.new`, JSON.stringify(nodesList([...identities, stranger])));
  await writeFile(relay.nodesCertsFile, [...identities, stranger].map((x) => x.certificatePem).join(''));
  await rename(`${relay.nodesListFile}.new`, relay.nodesListFile);
  await upstream.waitFor(2, 20_000);
  t.same(upstream.files('reports').map((f) => f.name).sort(), [good.name, unknown.name].sort(), 'the held report went upstream once the list named its node');
  t.same(upstream.files('reports').find((f) => f.name === unknown.name)?.body, unknown.body, 'byte for byte');
  await until(async () => !(await readdir(relay.reportsIncoming)).includes(unknown.name), 10_000, 'gone from incoming/');
});

t.test('upstream down 10 s, then up: everything arrives', async (t) => {
  const identities = await nodes();
  const upstream = await startUpstream(t, { password: DAV_PASSWORD });
  await upstream.setMode('down');
  const relay = await startRelay(t, { upstream, nodesList: nodesList(identities), nodesCerts: identities.map((a) => a.certificatePem).join('') });
  const reports = await makeReports(identities, 30, 1000);
  await upload(relay, reports);
  // a positive signal that the relay tried and was refused, instead of a fixed wait
  await until(() => relay.logs.some((l) => l.event === 'retry_later' || l.event === 'queue_paused'), 30_000, 'a forward attempt failed');
  await until(async () => (await status(relay))['upstream']?.status === 'error', 30_000, 'status says upstream is unreachable');
  t.equal((await readdir(relay.reportsIncoming)).length, 30, 'kept while upstream is down');
  const down = await status(relay);
  t.equal(down['upstream']?.status, 'error', 'status says upstream is unreachable');
  t.equal(down['upstream']?.['reachable'], false);
  await upstream.setMode('ok');
  await upstream.waitFor(30, 60_000);
  await until(async () => (await readdir(relay.reportsIncoming)).length === 0, 10_000, 'spool empty');
  t.pass('all arrived after the outage');
});

t.test('upstream refuses the relay (403) until its rules catch up: the reports are held, not failed, and all arrive', async (t) => {
  const identities = await nodes();
  const upstream = await startUpstream(t, { password: DAV_PASSWORD });
  await upstream.setMode({ status: 403 });
  const relay = await startRelay(t, { upstream, nodesList: nodesList(identities), nodesCerts: identities.map((a) => a.certificatePem).join('') });
  const reports = await makeReports(identities, 20, 3000);
  await upload(relay, reports);
  await until(() => upstream.requests.filter((r) => r.status === 403).length >= 20, 30_000, 'each report refused at least once');
  await until(() => relay.logs.some((l) => l.code === 'RELAY_ERR_UPSTREAM_REFUSED' && l.kind === 'transient' && l.level === 50), 10_000, 'an error line with the refusal code');
  t.equal((await readdir(relay.reportsIncoming)).length, 20, 'all held in incoming/');
  t.same((await readdir(join(relay.reportsIncoming, '..', 'failed'))).filter((n) => !n.startsWith('.')), [], 'nothing failed for good');
  await upstream.setMode('ok');
  await until(() => upstream.files('reports').length === 20, 90_000, 'all 20 arrive once the upstream accepts');
  await until(async () => (await readdir(relay.reportsIncoming)).length === 0, 10_000, 'spool empty');
  t.pass('held through the refusal');
});

t.test('upstream answers 503 to every other request: everything arrives', async (t) => {
  const identities = await nodes();
  const upstream = await startUpstream(t, { password: DAV_PASSWORD });
  await upstream.setMode('fail-503-always');
  const relay = await startRelay(t, { upstream, nodesList: nodesList(identities), nodesCerts: identities.map((a) => a.certificatePem).join('') });
  const refused = (endpoint: string) => upstream.requests.filter((r) => r.status === 503 && r.url.startsWith(`/${endpoint}/`)).length;
  // the inventory is refused at least once for sure, then everything meets an upstream failing every other PUT
  const inventory = 'f0f0f0f0-0000-4000-8000-00000000beef_2026-11-25T10:00:00+00:00.ocs';
  t.equal(await putFile({ port: relay.httpsPort, endpoint: 'inventories', name: `${inventory}.gz`, body: Buffer.from('inventory'), password: 'rudder' }), 201);
  t.equal(await putFile({ port: relay.httpsPort, endpoint: 'inventories', name: `${inventory}.sign`, body: Buffer.from('signature'), password: 'rudder' }), 201);
  await until(() => refused('inventories') > 0, 20_000, 'an inventory refused');
  await upstream.setMode('fail-503-every-other');
  const reports = await makeReports(identities, 40, 2000);
  await upload(relay, reports);
  await upstream.waitFor(42, 60_000);
  const names = new Set(upstream.files('reports').map((f) => f.name));
  t.equal(names.size, 40);
  await until(async () => (await readdir(relay.reportsIncoming)).length === 0, 10_000, 'spool empty');
  await until(async () => (await readdir(relay.inventoriesIncoming)).length === 0, 10_000, 'inventory spool empty');
  // relayd's counters count every failed forward, not only the permanent ones
  t.ok(refused('reports') > 0 && refused('inventories') > 0, `the upstream refused ${refused('reports')} report and ${refused('inventories')} inventory forwards`);
  const metrics = await (await fetch(`${relay.apiUrl}/metrics`)).text();
  t.match(metrics, new RegExp(`rudder_relayd_reports_total\\{status="forward_error"\\} ${refused('reports')}\n`));
  t.match(metrics, /rudder_relayd_reports_total\{status="forward_ok"\} 40\n/);
  t.match(metrics, new RegExp(`rudder_relayd_inventories_total\\{status="forward_error"\\} ${refused('inventories')}\n`));
  t.match(metrics, /rudder_relayd_inventories_total\{status="forward_ok"\} 2\n/);
});

t.test('SIGKILL in the middle of forwarding, restart: everything arrives', async (t) => {
  const identities = await nodes();
  const upstream = await startUpstream(t, { password: DAV_PASSWORD });
  await upstream.setMode({ delayMs: 300 });
  const options = { upstream, nodesList: nodesList(identities), nodesCerts: identities.map((a) => a.certificatePem).join('') };
  const relay = await startRelay(t, options);
  const reports = await makeReports(identities, 60, 3000);
  await upload(relay, reports);
  await until(() => upstream.received.length >= 5, 30_000, 'forwarding started');
  await relay.killAll();
  t.ok(upstream.received.length < 60, `killed in the middle (${upstream.received.length} of 60 upstream)`);
  await upstream.setMode('ok');
  const restarted = await startRelay(t, { ...options, dir: relay.dir });
  await until(() => new Set(upstream.files('reports').map((f) => f.name)).size === 60, 60_000, 'all 60 upstream');
  await until(async () => (await readdir(restarted.reportsIncoming)).length === 0, 10_000, 'spool empty');
  const received = new Map(upstream.files('reports').map((f) => [f.name, f.body]));
  t.ok(reports.every((r) => received.get(r.name)?.equals(r.body)), 'byte-identical, none lost');
});

t.test('an upstream presenting another certificate gets nothing; status says why', async (t) => {
  const identities = await nodes();
  const impostor = {
    key: await readFile(join(FIXTURE_KEYS, '37817c4d-fbf7-4850-a985-50021f4e8f41.nopass.priv'), 'utf8'),
    cert: await readFile(join(FIXTURE_KEYS, '37817c4d-fbf7-4850-a985-50021f4e8f41.cert'), 'utf8'),
  };
  const upstream = await startUpstream(t, { password: DAV_PASSWORD, certificate: impostor });
  // the relay pins the genuine upstream certificate (e745…), the server presents 37817…
  const relay = await startRelay(t, {
    upstream: { port: upstream.port, certificateFile: join(FIXTURE_KEYS, 'e745a140-40bc-4b86-b6dc-084488fc906b.cert') },
    nodesList: nodesList(identities),
    nodesCerts: identities.map((a) => a.certificatePem).join(''),
  });
  await upload(relay, await makeReports(identities, 3, 4000));
  await until(async () => (await status(relay))['upstream']?.status === 'error', 20_000, 'status error');
  const s = await status(relay);
  t.match(String(s['upstream']?.details), /pinned/i, `status explains: ${s['upstream']?.details}`);
  t.equal(upstream.received.length, 0, 'nothing sent');
  t.equal((await readdir(relay.reportsIncoming)).length, 3, 'files kept');
});

t.test('inventory and its .sign go to the right endpoint with the right password', async (t) => {
  const upstream = await startUpstream(t, { password: DAV_PASSWORD });
  const relay = await startRelay(t, { upstream });
  const base = 'f0f0f0f0-0000-4000-8000-00000000beef_2026-11-25T10:00:00+00:00.ocs';
  t.equal(await putFile({ port: relay.httpsPort, endpoint: 'inventories', name: `${base}.gz`, body: Buffer.from('inventory'), password: 'rudder' }), 201);
  t.equal(await putFile({ port: relay.httpsPort, endpoint: 'inventories', name: `${base}.sign`, body: Buffer.from('signature'), password: 'rudder' }), 201);
  const update = 'f0f0f0f0-0000-4000-8000-00000000beef_2026-11-25T11:00:00+00:00.ocs';
  t.equal(await putFile({ port: relay.httpsPort, endpoint: 'inventory-updates', name: `${update}.gz`, body: Buffer.from('update'), password: DAV_PASSWORD }), 201);
  t.equal(await putFile({ port: relay.httpsPort, endpoint: 'inventory-updates', name: `${update}.sign`, body: Buffer.from('update-sign'), password: DAV_PASSWORD }), 201);
  await upstream.waitFor(4, 20_000);
  const fresh = upstream.files('inventories');
  t.same(fresh.map((f) => f.name), [`${base}.gz`, `${base}.sign`], 'inventory first, then its signature');
  t.ok(fresh.every((f) => f.password === 'rudder'), 'new inventories with default_password');
  const updates = upstream.files('inventory-updates');
  t.same(updates.map((f) => f.name), [`${update}.gz`, `${update}.sign`]);
  t.ok(updates.every((f) => f.password === DAV_PASSWORD), 'updates with the DAV password');
  t.same(fresh[0]?.body, Buffer.from('inventory'));
  await until(async () => (await readdir(relay.inventoriesIncoming)).length === 0, 10_000, 'spool empty');
  const metrics = await (await fetch(`${relay.apiUrl}/metrics`)).text();
  t.match(metrics, /rudder_relayd_inventories_total\{status="forward_ok"\} 4/);
});

t.test('over the disk budget, uploads get 507 and nothing is deleted', async (t) => {
  const upstream = await startUpstream(t, { password: DAV_PASSWORD });
  await upstream.setMode('down');
  const relay = await startRelay(t, { upstream, maxSpoolSize: 4096 });
  const body = Buffer.alloc(3000, 1);
  const name = (i: number) => `a_2026-11-25T10:00:${String(i).padStart(2, '0')}+00:00.ocs.gz`;
  const accepted: string[] = [];
  let refused = 0;
  // keep uploading until refused
  await until(async () => {
    const next = name(accepted.length + 1);
    const status = await putFile({ port: relay.httpsPort, endpoint: 'inventories', name: next, body, password: 'rudder' });
    if (status === 201) accepted.push(next);
    else refused = status;
    return status !== 201;
  }, 10_000, '507 once over budget');
  t.equal(refused, 507);
  t.ok(accepted.length >= 1 && accepted.length * body.length <= 4096, `${accepted.length} accepted before the budget was reached, none over it`);
  t.same((await readdir(relay.inventoriesIncoming)).sort(), accepted.sort(), 'nothing deleted');
  await upstream.setMode('ok');
  await upstream.waitFor(accepted.length, 30_000);
  await until(async () => (await putFile({ port: relay.httpsPort, endpoint: 'inventories', name: name(99), body, password: 'rudder' })) === 201, 20_000, 'accepted again once drained');
  t.pass('accepted again once the queue drained');
});
