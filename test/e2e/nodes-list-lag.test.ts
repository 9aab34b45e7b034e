// The nodes list lags or vanishes (issue 15): a missing nodeslist.json keeps the last good list, and a report
// from a node the list does not name is held (see forwarding.test.ts for its release), given up only at
// cleanup.retention with its reason.

import { readdir, readFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { cachedAgentIdentity, sampleRunlog, signedGzippedReport, type AgentIdentity } from '../support/agent.js';
import { putFile } from '../support/put.js';
import { DAV_PASSWORD, RELAY_ID, startRelay, systemStatus as status, until, type RunningRelay } from '../support/relay.js';
import { startUpstream } from '../support/upstream.js';

const NODE_COUNT = 3;
const nodeIds = Array.from({ length: NODE_COUNT }, (_, i) => `f0f0f0f0-0000-4000-8000-${String(i).padStart(12, '0')}`);

async function nodes(): Promise<AgentIdentity[]> {
  return Promise.all(nodeIds.map((id) => cachedAgentIdentity(id)));
}

function nodesList(identities: readonly AgentIdentity[]) {
  return Object.fromEntries(identities.map((a) => [a.nodeId, { hostname: `${a.nodeId.slice(-4)}.example`, 'key-hash': a.sha256Pin, 'policy-server': RELAY_ID }]));
}

t.test('a held report is given up at cleanup.retention, with its reason, logged and counted', async (t) => {
  const identities = await nodes();
  const stranger = await cachedAgentIdentity('f0f0f0f0-0000-4000-8000-00000000dead');
  const upstream = await startUpstream(t, { password: DAV_PASSWORD });
  const relay = await startRelay(t, {
    upstream,
    nodesList: nodesList(identities),
    nodesCerts: identities.map((x) => x.certificatePem).join(''),
    extraToml: '[processing.reporting.cleanup]\nfrequency = "1s"\nretention = "3s"\n',
  });
  const date = new Date(Date.UTC(2026, 10, 25, 12, 0, 0));
  const unknown = await signedGzippedReport(stranger, sampleRunlog(stranger.nodeId, { start: date }), date);
  t.equal(await putFile({ port: relay.httpsPort, endpoint: 'reports', name: unknown.name, body: unknown.body, password: DAV_PASSWORD }), 201);
  await relay.waitForLog((l) => l.event === 'held' && l['file'] === unknown.name);
  const gaveUp = await relay.waitForLog((l) => l.event === 'gave_up' && l['file'] === unknown.name, 20_000);
  t.equal(gaveUp['code'], 'unknown-node', 'logged with the reason');
  const failed = join(relay.dir, 'reports', 'failed');
  await until(async () => (await readdir(failed)).includes(`${unknown.name}.reason`), 10_000, 'reason written');
  t.match(await readFile(join(failed, `${unknown.name}.reason`), 'utf8'), /^unknown-node: .*given up at cleanup\.retention/);
  t.same(await readFile(join(failed, unknown.name)), unknown.body, 'the evidence is kept');
  const metrics = await (await fetch(`${relay.apiUrl}/metrics`)).text();
  t.match(metrics, /onerelay_spool_failed_total\{queue="reports",reason="unknown-node"\} 1/, 'counted');
  t.same(upstream.files('reports'), [], 'nothing forwarded');
});

t.test('a nodes list moved away keeps the last good list: status says so, agents still upload, reports still go', async (t) => {
  const identities = await nodes();
  const [a] = identities as [AgentIdentity];
  const upstream = await startUpstream(t, { password: DAV_PASSWORD });
  const relay = await startRelay(t, {
    upstream,
    nodesList: nodesList(identities),
    nodesCerts: identities.map((x) => x.certificatePem).join(''),
  });
  await rename(relay.nodesListFile, `${relay.nodesListFile}.away`);
  const refused = await relay.waitForLog((l) => l.msg === 'nodes reload failed, keeping previous data' && l['code'] === 'RELAY_ERR_NODES_LIST');
  t.match(String(refused['err']), /missing/, 'the log says the file is missing');
  // every process has its registry and logs this line: the primary, which serves the status, may be second
  await until(async () => (await status(relay))['nodes']?.status === 'error', 10_000, 'the status to say the list is missing');
  const s = await status(relay);
  t.equal(s['nodes']?.status, 'error', 'status says the list is missing');
  t.match(String(s['nodes']?.details), /missing.*keeping the last good list/);
  t.equal(s['nodes']?.['nodes'], NODE_COUNT, 'with the last good list in use');
  const date = new Date(Date.UTC(2026, 10, 25, 13, 0, 0));
  const report = await signedGzippedReport(a, sampleRunlog(a.nodeId, { start: date }), date);
  const code = await putFile({ port: relay.httpsPort, endpoint: 'reports', name: report.name, body: report.body, password: DAV_PASSWORD, identity: a });
  t.equal(code, 201, 'a certificate-authenticated agent still uploads');
  await upstream.waitFor(1, 20_000);
  t.same(upstream.files('reports').map((f) => f.name), [report.name], 'and its report goes upstream');
  t.same(await readdir(join(relay.dir, 'reports', 'failed')).catch(() => []), [], 'nothing failed');
  await rename(`${relay.nodesListFile}.away`, relay.nodesListFile);
  await relay.waitForLog((l) => l.msg === 'nodes data valid again, error cleared');
  // the line may come from a front-door worker before the primary has read the file again
  await until(async () => (await status(relay))['nodes']?.status === 'success', 10_000, 'the status to be back to success');
  t.equal((await status(relay))['nodes']?.status, 'success', 'back to success once the file is back');
});
