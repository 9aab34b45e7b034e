// Issue 19: why is node X silent? Real agents' behaviour against a relay started as a user starts it:
// curl uploads (a good node, a wrong password, a wrong key), a node that never reports, a TLS handshake a
// node cannot complete, a policy download, and a stock cf-agent copying its policies on port 5309. Then the
// node records, the delivery ledger, the local API, the CLI, and the metrics are checked.

import { createHash } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { cachedAgentIdentity, curlDownload, curlUpload, run, sampleRunlog, signedGzippedReport, type AgentIdentity } from '../support/agent.js';
import { createCfWorkdir, errorLines, hasCfengine, runCopy, type CfWorkdir } from '../support/cfengine.js';
import { DAV_PASSWORD, RELAY_ID, runCli, startRelay, type RunningRelay } from '../support/relay.js';
import { tempDir } from '../support/tmp.js';
import { putFile } from '../support/put.js';
import { startUpstream } from '../support/upstream.js';

const GOOD = 'a7000000-0000-4000-8000-000000000001';
const BAD_PASSWORD = 'a7000000-0000-4000-8000-000000000002';
const WRONG_KEY = 'a7000000-0000-4000-8000-000000000003';
const STOPPED = 'a7000000-0000-4000-8000-000000000004';
const CF_NODE = 'a7000000-0000-4000-8000-000000000005';

interface Envelope<T> {
  result: string;
  code?: string;
  data: T;
}
interface ActionView {
  at: string | null;
  outcome: string | null;
  ok_at: string | null;
}
interface NodeView {
  id: string;
  hostname: string | null;
  silent: boolean;
  last_ip: string | null;
  agent_version: string | null;
  report: ActionView;
  policy: ActionView;
  cfengine: ActionView;
  shared_files: ActionView;
  refusal: { at: string; code: string; ip: string | null; action: string | null } | null;
}
interface LedgerFile {
  queue: string;
  file: string;
  node: string | null;
  size: number;
  sha256: string;
  state: string;
  attempts: number;
  upstream_status: number | null;
  reason: string | null;
}
interface Ledger {
  files: LedgerFile[];
  hours: Array<{ received: number; forwarded: number; failed: number; pending: number }>;
  balance: { received: number; forwarded: number; failed: number; pending: number; queued_now: number; balanced: boolean };
}

async function api<T>(relay: RunningRelay, path: string): Promise<{ status: number; body: Envelope<T> }> {
  const response = await fetch(`${relay.apiUrl}/rudder/relay-api/1${path}`);
  return { status: response.status, body: (await response.json()) as Envelope<T> };
}

/** polls until the check passes: the recording is asynchronous (batches every 250-500 ms) */
async function eventually<T>(what: string, probe: () => Promise<T>, ok: (value: T) => boolean, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (ok(value)) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(value).slice(0, 2000)}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

const nodeOf = async (relay: RunningRelay, id: string) => (await api<{ node: NodeView; events: unknown[]; files: LedgerFile[] }>(relay, `/nodes/${id}`)).body.data;

t.test('node activity, delivery ledger, API, CLI and metrics from real agents', async (t) => {
  const base = tempDir(t, 'onerelay-activity-');
  const [good, badPassword, wrongKey, stopped] = (await Promise.all([GOOD, BAD_PASSWORD, WRONG_KEY, STOPPED].map((id) => cachedAgentIdentity(id)))) as [AgentIdentity, AgentIdentity, AgentIdentity, AgentIdentity];
  const cf: CfWorkdir | undefined = hasCfengine() ? await createCfWorkdir(join(base, 'cf-node')) : undefined;
  const upstream = await startUpstream(t, { password: DAV_PASSWORD });
  const entry = (a: AgentIdentity, keyHash = a.sha256Pin) => ({ hostname: `${a.nodeId.slice(-4)}.example`, 'key-hash': keyHash, 'policy-server': RELAY_ID });
  const nodesList = {
    [GOOD]: entry(good),
    [BAD_PASSWORD]: entry(badPassword),
    // the nodes list pins another key than the one this node presents
    [WRONG_KEY]: entry(wrongKey, good.sha256Pin),
    [STOPPED]: entry(stopped),
    ...(cf ? { [CF_NODE]: { hostname: 'cf.example', 'key-hash': cf.sha256Pin, 'policy-server': RELAY_ID } } : {}),
  };
  const relay = await startRelay(t, {
    workers: 1,
    upstream,
    nodesList,
    nodesCerts: [good, badPassword, stopped].map((a) => a.certificatePem).join(''),
    activityToml: 'run_interval = "4s"\n',
  });
  const policyFile = join(relay.dir, 'share', GOOD, 'rules', 'cfengine-community', 'promises.cf');
  await mkdir(join(relay.dir, 'share', GOOD, 'rules', 'cfengine-community'), { recursive: true });
  await writeFile(policyFile, 'bundle agent main {}\n');

  // the good node: a signed report with curl as rudder-client sends it, then its policies (200, then 304)
  const date = new Date();
  const report = await signedGzippedReport(good, sampleRunlog(GOOD, { start: date }), date);
  const reportFile = join(base, report.name);
  await writeFile(reportFile, report.body);
  const upload = await curlUpload({ url: `${relay.httpsUrl}/reports/`, file: reportFile, user: 'rudder', password: DAV_PASSWORD, identity: good });
  t.equal(upload.status, 201, 'the good report is stored');
  const etag = join(base, 'etag');
  const policyUrl = `${relay.httpsUrl}/policies/${GOOD}/rules/cfengine-community/promises.cf`;
  t.equal((await curlDownload({ url: policyUrl, output: join(base, 'p1'), identity: good, etagFile: etag })).status, 200);
  t.equal((await curlDownload({ url: policyUrl, output: join(base, 'p2'), identity: good, etagFile: etag })).status, 304);

  // a shared file asked for by the good node (none there: 404), as rudder's shared-files check does
  const sharedUrl = `${relay.httpsUrl}/rudder/relay-api/shared-files/${STOPPED}/${GOOD}/some-file?hash=${'0'.repeat(64)}`;
  const shared = await run('curl', ['-sk', '-I', '--tlsv1.3', '--cert', good.certificateFile, '--key', good.privateKeyFile, '-o', '/dev/null', '-w', '%{http_code}', sharedUrl]);
  t.match(shared.stdout.toString(), /^\d{3}$/, `shared files answered ${shared.stdout.toString()}`);

  // a refused password, and a certificate whose key is not the one pinned for its node
  const refusedReport = await signedGzippedReport(badPassword, sampleRunlog(BAD_PASSWORD, { start: date }), date);
  const refusedFile = join(base, refusedReport.name);
  await writeFile(refusedFile, refusedReport.body);
  const refused = await curlUpload({ url: `${relay.httpsUrl}/reports/`, file: refusedFile, user: 'rudder', password: 'not-the-password' });
  t.equal(refused.status, 401, 'wrong password: 401');
  const wrongKeyReport = await signedGzippedReport(wrongKey, sampleRunlog(WRONG_KEY, { start: date }), date);
  const wrongKeyFile = join(base, wrongKeyReport.name);
  await writeFile(wrongKeyFile, wrongKeyReport.body);
  const forbidden = await curlUpload({ url: `${relay.httpsUrl}/reports/`, file: wrongKeyFile, user: 'rudder', password: DAV_PASSWORD, identity: wrongKey });
  t.equal(forbidden.status, 403, 'wrong key: 403');
  // an agent that cannot do TLS 1.3: the handshake fails before any node is known
  const oldTls = await run('curl', ['-sk', '--tls-max', '1.2', '-o', '/dev/null', '-w', '%{http_code}', `${relay.httpsUrl}/uuid`]);
  t.equal(oldTls.stdout.toString(), '000', 'TLS 1.2 handshake refused');
  // checked now: a client address keeps only its last failure's reason, and later steps may add others
  const clientFailures = await eventually(
    'the failed handshake',
    async () => (await api<{ client_failures: Array<{ ip: string; count: number; last_reason: string }> }>(relay, '/nodes')).body.data.client_failures,
    (failures) => failures.some((f) => f.ip === '127.0.0.1' && /^tls/.test(f.last_reason)),
  );
  t.ok(clientFailures.find((f) => f.ip === '127.0.0.1')!.count >= 1, 'the failed handshake is counted for its client address');

  // a stock cf-agent copies its policies on port 5309
  if (cf) {
    const cfSource = join(relay.dir, 'share', CF_NODE, 'rules');
    await mkdir(cfSource, { recursive: true });
    await writeFile(join(cfSource, 'promises.cf'), 'bundle agent main {}\n');
    const copy = await runCopy(cf, { port: relay.cfenginePort, copies: [{ source: cfSource, dest: join(base, 'cf-inputs') }] });
    t.equal(copy.code, 0, 'cf-agent copy ran');
    t.same(errorLines(copy.stdout), [], 'no cf-agent error');
  }

  await t.test('the good report: received, verified, forwarded, with its size and sha256', async (t) => {
    await upstream.waitFor(1);
    const ledger = await eventually(
      'the forward in the ledger',
      async () => (await api<Ledger>(relay, `/ledger?file=${encodeURIComponent(report.name)}`)).body.data,
      (l) => l.files[0]?.state === 'forwarded',
    );
    const row = ledger.files[0] as LedgerFile;
    t.equal(row.node, GOOD);
    t.equal(row.queue, 'reports');
    t.equal(row.size, report.body.length, 'size as received');
    t.equal(row.sha256, createHash('sha256').update(report.body).digest('hex'), 'sha256 of the bytes received');
    t.equal(row.attempts, 1);
    t.ok(row.upstream_status !== null && row.upstream_status >= 200 && row.upstream_status < 300, `upstream answered ${row.upstream_status}`);
    t.same(upstream.received[0]?.body, report.body, 'upstream has the same bytes');
    t.equal(ledger.balance.received, 1, 'one file received');
    t.equal(ledger.balance.forwarded, 1);
    t.equal(ledger.balance.pending, 0);
    t.equal(ledger.balance.queued_now, 0);
    t.ok(ledger.balance.balanced, 'received = forwarded + failed + still queued');
    const byNode = (await api<Ledger>(relay, `/ledger?node=${GOOD}&since=${new Date(Date.now() - 3_600_000).toISOString()}`)).body.data;
    t.equal(byNode.files.length, 1, 'the ledger by node');
    const since = await api<Ledger>(relay, '/ledger?since=yesterday');
    t.equal(since.status, 400, 'a bad since is refused');
    t.equal(since.body.code, 'RELAY_ERR_BAD_REQUEST');
  });

  await t.test('node records: last report, policy download, refusals with code and address', async (t) => {
    const goodNode = await eventually('the policy download', () => nodeOf(relay, GOOD), (n) => n.node.policy.outcome === '304');
    t.equal(goodNode.node.report.outcome, '201');
    t.ok(goodNode.node.report.ok_at, 'last report time');
    t.equal(goodNode.node.last_ip, '127.0.0.1');
    t.ok(goodNode.node.policy.ok_at, 'HTTPS policy download recorded');
    t.equal(goodNode.node.refusal, null, 'never refused');
    t.equal(goodNode.node.shared_files.outcome, shared.stdout.toString(), 'the shared-files request, with its status');

    const refusedNode = await eventually('the 401', () => nodeOf(relay, BAD_PASSWORD), (n) => n.node.refusal !== null);
    t.equal(refusedNode.node.refusal?.code, 'RELAY_ERR_AUTH_REQUIRED', 'refused password: its code');
    t.equal(refusedNode.node.refusal?.ip, '127.0.0.1', 'and the client address');
    t.equal(refusedNode.node.report.ok_at, null, 'no report got through');
    t.match(refusedNode.node.report.outcome, /^401 RELAY_ERR_AUTH_REQUIRED$/);

    const wrongKeyNode = await eventually('the 403', () => nodeOf(relay, WRONG_KEY), (n) => n.node.refusal !== null);
    t.equal(wrongKeyNode.node.refusal?.code, 'RELAY_ERR_AUTH_CERTIFICATE', 'wrong key: its code');

    const nodes = await api<{ nodes: NodeView[]; client_failures: Array<{ ip: string; count: number; last_reason: string }> }>(relay, '/nodes');
    t.equal(nodes.status, 200);
    t.ok(nodes.body.data.client_failures.some((f) => f.ip === '127.0.0.1' && f.count >= 1), 'client failures by address in the answer');
  });

  await t.test('CFEngine connection: the agent version from its version line', { skip: cf ? false : 'cf-agent is not installed' }, async (t) => {
    const cfNode = await eventually('the cfengine connection', () => nodeOf(relay, CF_NODE), (n) => n.node.cfengine.at !== null);
    t.equal(cfNode.node.cfengine.outcome, 'ok');
    t.match(cfNode.node.agent_version, /^cf-agent 3\.\d+/, `agent version ${cfNode.node.agent_version}`);
  });

  await t.test('silent nodes: no report for twice the run interval', async (t) => {
    const nodes = await eventually(
      'the stopped node to turn silent',
      async () => (await api<{ nodes: NodeView[] }>(relay, '/nodes')).body.data.nodes,
      (list) => list.find((n) => n.id === STOPPED)?.silent === true,
    );
    // the good node reports again: it is not silent, the stopped one still is
    const again = await signedGzippedReport(good, sampleRunlog(GOOD), new Date(Date.now() + 1000));
    t.equal(await putFile({ port: relay.httpsPort, endpoint: 'reports', name: again.name, body: again.body, password: DAV_PASSWORD, identity: good }), 201);
    const fresh = await eventually(
      'the good node to report again',
      async () => (await api<{ nodes: NodeView[] }>(relay, '/nodes')).body.data.nodes,
      (list) => list.find((n) => n.id === GOOD)?.silent === false,
    );
    t.equal(fresh.find((n) => n.id === STOPPED)?.silent, true, 'the stopped node is still silent');
    t.ok(fresh.findIndex((n) => n.id === GOOD) > fresh.findIndex((n) => n.id === STOPPED), 'listed after the silent ones');
    const stoppedNode = nodes.find((n) => n.id === STOPPED) as NodeView;
    t.equal(stoppedNode.report.at, null, 'never reported');
    t.equal(stoppedNode.hostname, `${STOPPED.slice(-4)}.example`, 'listed from the nodes list');
    const firstNotSilent = nodes.findIndex((n) => !n.silent);
    t.ok(nodes.slice(0, firstNotSilent === -1 ? nodes.length : firstNotSilent).every((n) => n.silent), 'silent nodes first');
    const silentOnly = await api<{ nodes: NodeView[] }>(relay, '/nodes?silent=true');
    t.ok(silentOnly.body.data.nodes.every((n) => n.silent) && silentOnly.body.data.nodes.some((n) => n.id === STOPPED), '?silent=true');
    const everyone = await api<{ nodes: NodeView[]; total: number }>(relay, '/nodes');
    t.equal(everyone.body.data.total, everyone.body.data.nodes.length, 'total: every node without a page');
    const page = await api<{ nodes: NodeView[]; total: number; offset: number }>(relay, '/nodes?limit=2&offset=1');
    t.same(
      page.body.data.nodes.map((n) => n.id),
      everyone.body.data.nodes.slice(1, 3).map((n) => n.id),
      '?limit=2&offset=1: the second and third nodes, in the same order',
    );
    t.equal(page.body.data.total, everyone.body.data.total, 'with the total');
    t.equal(page.body.data.offset, 1);
    const badPage = await api<unknown>(relay, '/nodes?limit=-1');
    t.equal(badPage.status, 400, 'a limit that is not a whole number: 400');
    t.equal(badPage.body.code, 'RELAY_ERR_BAD_REQUEST');
    const unknown = await api<unknown>(relay, '/nodes/not-a-node');
    t.equal(unknown.status, 404);
    t.equal(unknown.body.code, 'RELAY_ERR_NOT_FOUND');
  });

  await t.test('CLI: onerelay nodes and onerelay trace', async (t) => {
    const nodes = await runCli(['nodes', '--config', relay.configFile]);
    t.equal(nodes.code, 0, nodes.stderr);
    t.match(nodes.stdout, /^NODE\s+HOST\s+STATE/m, 'a table');
    t.match(nodes.stdout, new RegExp(`${STOPPED}\\s+\\S+\\s+SILENT`), 'the stopped node is SILENT');
    t.match(nodes.stdout, new RegExp(`${BAD_PASSWORD}.*RELAY_ERR_AUTH_REQUIRED from 127\\.0\\.0\\.1`), 'the refusal with its code and address');
    const silent = await runCli(['nodes', '--silent', '--config', relay.configFile]);
    t.equal(silent.code, 0);
    const lines = silent.stdout.split('\n').filter((line) => line !== '' && !/^NODE|nodes,/.test(line));
    t.ok(lines.length > 0 && lines.every((line) => /^\S+\s+\S+\s+SILENT\s/.test(line)), 'only silent nodes');
    const traceNode = await runCli(['trace', GOOD, '--config', relay.configFile]);
    t.equal(traceNode.code, 0, traceNode.stderr);
    t.match(traceNode.stdout, /policy: 304 from 127\.0\.0\.1/, 'the policy download in the timeline');
    t.match(traceNode.stdout, new RegExp(`${report.name.replace(/[.+]/g, '\\$&')}: received, ${report.body.length} bytes, sha256 [0-9a-f]{64}`), 'the report received');
    t.match(traceNode.stdout, /: forwarded after 1 attempt, upstream 20\d in \d+ ms/, 'and forwarded');
    const traceFile = await runCli(['trace', report.name, '--config', relay.configFile]);
    t.equal(traceFile.code, 0);
    t.match(traceFile.stdout, /received[\s\S]*verified, sent upstream[\s\S]*forwarded/, 'a file: received, verified, forwarded in order');
    const missing = await runCli(['trace', 'nothing.log.gz', '--config', relay.configFile]);
    t.match(missing.stdout, /not in the ledger/);
  });

  await t.test('metrics: silent nodes and refusals by code', async (t) => {
    const text = await (await fetch(`${relay.apiUrl}/metrics`)).text();
    const silent = /^onerelay_nodes_silent (\d+)$/m.exec(text);
    t.ok(silent && Number(silent[1]) >= 1, `onerelay_nodes_silent ${silent?.[1]}`);
    t.match(text, /^onerelay_refusals_total\{code="RELAY_ERR_AUTH_REQUIRED"\} 1$/m);
    t.match(text, /^onerelay_refusals_total\{code="RELAY_ERR_AUTH_CERTIFICATE"\} 1$/m);
    t.match(text, /^onerelay_refusals_total\{code="TLS"\} [1-9]/m);
  });

  await t.test('no secrets in the database', async (t) => {
    relay.child.kill('SIGTERM');
    await relay.exited;
    const { default: Database } = await import('better-sqlite3');
    const db = new Database(join(relay.dir, 'state', 'activity.sqlite'), { readonly: true });
    t.teardown(() => db.close());
    const dump = JSON.stringify(['nodes', 'node_events', 'ledger', 'client_failures'].map((table) => db.prepare(`SELECT * FROM ${table}`).all()));
    t.notMatch(dump, /not-the-password|dav-secret/, 'no password, right or wrong');
    t.equal(db.pragma('integrity_check', { simple: true }), 'ok');
  });
});
