// The status page as a person sees it: rendered by headless Chromium (Debian's), with live figures,
// and a screenshot kept in test/output/ for a human to look at.

import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { DAV_PASSWORD, ROOT, startRelay } from '../support/relay.js';
import { putFile } from '../support/put.js';
import { startUpstream } from '../support/upstream.js';
import { run } from '../support/agent.js';

const CHROMIUM = '/usr/bin/chromium';

t.test('status page in headless Chromium', { skip: existsSync(CHROMIUM) ? false : `${CHROMIUM} is missing (apt-get install chromium; .ci/run installs it)` }, async (t) => {
  const { chromium } = await import('playwright-core');
  const upstream = await startUpstream(t, { password: DAV_PASSWORD });
  await upstream.setMode('down');
  const relay = await startRelay(t, { workers: 1, upstream });
  for (let i = 0; i < 3; i += 1) {
    await putFile({ port: relay.httpsPort, endpoint: 'inventories', name: `n_2026-11-25T10:00:0${i}+00:00.ocs.gz`, body: Buffer.from('x'), password: 'rudder' });
  }
  // the page is read once forwarding has failed: a fixed sleep was too short on a loaded CI machine
  await relay.waitForLog((line) => line.msg === 'forward to upstream failed, will retry', 30_000);
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  t.teardown(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const requests: string[] = [];
  page.on('request', (request) => requests.push(request.url()));
  const response = await page.goto(`${relay.apiUrl}/`);
  t.equal(response?.status(), 200);
  t.match(await page.title(), /^onerelay 37817c4d-fbf7-4850-a985-50021f4e8f41 — attention needed$/, 'the title says something needs attention');
  const text = await page.locator('body').innerText();
  t.match(text, /sha256\/\/[A-Za-z0-9+/]{43}=/, 'key digest shown');
  t.match(text, /MD5=[0-9a-f]{32}|SHA=[0-9a-f]{64}/);
  t.match(await page.locator('#queues').innerText(), /inventories\s+3\b/, 'queue depth of inventories');
  t.match(await page.locator('#upstream').innerText(), /reachable\s+no/, 'upstream down is visible');
  t.match(await page.locator('#errors').innerText(), /upstream/i, 'recent errors listed');
  t.ok(requests.every((url) => url.startsWith(relay.apiUrl)), 'no external assets');
  t.match(await page.locator('meta[http-equiv="refresh"]').getAttribute('content'), /^\d+$/, 'refreshes itself');
  const outputDir = join(ROOT, 'test', 'output');
  await mkdir(outputDir, { recursive: true });
  const screenshot = join(outputDir, 'status-page.png');
  await page.screenshot({ path: screenshot, fullPage: true });
  t.comment(`screenshot: ${screenshot}`);

  // the same page through the front door, for the policy server's networks only
  const front = await run('curl', ['-sk', '-o', '/dev/null', '-w', '%{http_code}', `${relay.httpsUrl}/`]);
  t.equal(front.stdout.toString(), '200');
  const outside = await run('curl', ['-sk', '--interface', '127.0.0.2', '-o', '/dev/null', '-w', '%{http_code}', `${relay.httpsUrl}/`]);
  t.equal(outside.stdout.toString(), '403');
});
