// The status page's node activity as a person sees it, in headless Chromium with JavaScript off: the nodes
// table (silent and refused first, sorted and filtered by plain links and a form), and the 24-hour charts
// drawn as inline SVG. A screenshot is kept in test/output/activity-page.png.

import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { cachedAgentIdentity, run, sampleRunlog, signedGzippedReport, type AgentIdentity } from '../support/agent.js';
import { inParallel, putFile } from '../support/put.js';
import { DAV_PASSWORD, RELAY_ID, ROOT, startRelay } from '../support/relay.js';
import { startUpstream } from '../support/upstream.js';

const CHROMIUM = '/usr/bin/chromium';
const REPORTING = Array.from({ length: 4 }, (_, i) => `b7000000-0000-4000-8000-00000000000${i + 1}`);
const REFUSED = 'b7000000-0000-4000-8000-000000000008';
const STOPPED = 'b7000000-0000-4000-8000-000000000009';

t.test('node activity on the status page', { skip: existsSync(CHROMIUM) ? false : `${CHROMIUM} is missing` }, async (t) => {
  const { chromium } = await import('playwright-core');
  const identities = await Promise.all(REPORTING.map((id) => cachedAgentIdentity(id)));
  const hostname = (id: string) => (id === STOPPED ? 'stopped.example' : id === REFUSED ? 'refused.example' : `web-${id.slice(-1)}.example`);
  const nodesList = Object.fromEntries(
    [...REPORTING, REFUSED, STOPPED].map((id, i) => [id, { hostname: hostname(id), 'key-hash': identities[i]?.sha256Pin ?? identities[0]?.sha256Pin ?? '', 'policy-server': RELAY_ID }]),
  );
  const upstream = await startUpstream(t, { password: DAV_PASSWORD, mode: { delayMs: 20 } });
  const relay = await startRelay(t, {
    workers: 1,
    upstream,
    nodesList,
    nodesCerts: identities.map((a) => a.certificatePem).join(''),
    activityToml: 'run_interval = "5s"\n',
  });
  // the stopped node turns silent after two run intervals; the others keep reporting
  const reports = await Promise.all(
    Array.from({ length: 24 }, async (_, i) => {
      const node = identities[i % identities.length] as AgentIdentity;
      const date = new Date(Date.now() - (24 - i) * 1000);
      return { ...(await signedGzippedReport(node, sampleRunlog(node.nodeId, { start: date }), date)), node };
    }),
  );
  await inParallel(reports, 4, async (r) => {
    t.equal(await putFile({ port: relay.httpsPort, endpoint: 'reports', name: r.name, body: r.body, password: DAV_PASSWORD, identity: r.node }), 201);
  });
  const refused = await signedGzippedReport(identities[0] as AgentIdentity, 'x', new Date());
  const name = refused.name.replace(REPORTING[0] as string, REFUSED);
  t.equal(await putFile({ port: relay.httpsPort, endpoint: 'reports', name, body: refused.body, password: 'wrong' }), 401);
  await upstream.waitFor(reports.length);
  // until the stopped node is silent and the reporting ones are not
  const deadline = Date.now() + 30_000;
  for (;;) {
    const body = (await (await fetch(`${relay.apiUrl}/rudder/relay-api/1/nodes`)).json()) as { data: { nodes: Array<{ id: string; silent: boolean; report: { ok_at: string | null } }> } };
    const byId = new Map(body.data.nodes.map((n) => [n.id, n]));
    if (byId.get(STOPPED)?.silent && REPORTING.every((id) => byId.get(id)?.report.ok_at !== null)) break;
    if (Date.now() > deadline) throw new Error(`nodes never settled: ${JSON.stringify(body.data.nodes)}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  // one more round so that the reporting nodes are fresh when the page is read
  const fresh = await Promise.all(identities.map(async (node) => ({ ...(await signedGzippedReport(node, sampleRunlog(node.nodeId), new Date())), node })));
  await inParallel(fresh, 4, async (r) => {
    t.equal(await putFile({ port: relay.httpsPort, endpoint: 'reports', name: r.name, body: r.body, password: DAV_PASSWORD, identity: r.node }), 201);
  });
  await upstream.waitFor(reports.length + fresh.length);

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  t.teardown(() => browser.close());
  const context = await browser.newContext({ javaScriptEnabled: false, viewport: { width: 1400, height: 1000 } });
  const page = await context.newPage();
  const requests: string[] = [];
  page.on('request', (request) => requests.push(request.url()));
  t.equal((await page.goto(`${relay.apiUrl}/`))?.status(), 200);

  const rows = page.locator('#nodes-table tbody tr');
  t.equal(await rows.count(), 6, 'every node of the nodes list');
  // both never reported: silent, the refused one first
  t.equal(await rows.first().getAttribute('data-node'), REFUSED, 'silent and refused first');
  t.match(await rows.first().innerText(), /silent[\s\S]*refused\.example[\s\S]*RELAY_ERR_AUTH_REQUIRED from 127\.0\.0\.1/, 'with the refusal code and address');
  t.equal(await rows.nth(1).getAttribute('data-node'), STOPPED, 'then the silent one');
  t.match(await rows.nth(1).innerText(), /silent[\s\S]*stopped\.example[\s\S]*never/);
  t.match(await rows.nth(2).innerText(), /^ok/, 'then the reporting ones');
  t.match(await page.locator('#activity h2').innerText(), /6 nodes · 2 silent/);

  t.equal(await page.locator('#charts svg').count(), 4, 'four charts');
  t.match(await page.locator('#charts').innerText(), /uploads\s+(2[89]|[3-9]\d)\b/, 'uploads of the last 24 h counted');
  t.match(await page.locator('#charts').innerText(), /RELAY_ERR_AUTH_REQUIRED\s+1/, 'refusals by code');
  t.match(await page.locator('#charts').innerText(), /balanced/, 'the ledger balances');
  const screenshot = join(ROOT, 'test', 'output', 'activity-page.png');
  await mkdir(join(ROOT, 'test', 'output'), { recursive: true });
  await page.screenshot({ path: screenshot, fullPage: true });
  t.comment(`screenshot: ${screenshot}`);

  // sorted by a plain link, filtered by a plain form: no script needed
  await page.locator('#nodes-table th a', { hasText: 'node' }).click();
  await page.waitForURL(/sort=id/);
  const sorted = await page.locator('#nodes-table tbody tr').evaluateAll((trs) => trs.map((tr) => tr.getAttribute('data-node')));
  t.same(sorted, [...sorted].sort(), 'sorted by node id');
  await page.fill('#activity input[name="q"]', 'web-2');
  await page.locator('#activity form button').click();
  await page.waitForURL(/q=web-2/);
  t.equal(await page.locator('#nodes-table tbody tr').count(), 1, 'filtered by host');
  t.equal(await page.locator('#nodes-table tbody tr').first().getAttribute('data-node'), REPORTING[1]);
  t.ok(requests.every((url) => url.startsWith(relay.apiUrl)), 'nothing loaded from elsewhere');
  // the same page through the HTTPS front door (policy server's networks) keeps the filter
  const front = await run('curl', ['-sk', `${relay.httpsUrl}/?q=web-2`]);
  t.equal((front.stdout.toString().match(/<tr data-node=/g) ?? []).length, 1, 'filtered through the front door too');
});
