// The relay as an administrator runs it: CLI, exit codes, identity on first start, reload,
// crash safety of uploads, graceful shutdown, the local API.

import { createServer as createHttpServer } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { readdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { createServer as createNetServer } from 'node:net';
import { join } from 'node:path';
import t from 'tap';
import { cachedAgentIdentity, curlUpload, run } from '../support/agent.js';
import { DAV_PASSWORD, relayConfigToml, runCli, startRelay, type RunningRelay } from '../support/relay.js';
import { freePort, tempDir } from '../support/tmp.js';

const NODE = 'a1b2c3d4-0000-4000-8000-00000000c0d1';
const LATE = 'a1b2c3d4-0000-4000-8000-00000000c0d2';
const RELAY = '37817c4d-fbf7-4850-a985-50021f4e8f41';
const FIRST_PART = 300_000;
const LAST_PART = 10_000;

/**
 * starts a PUT and sends the body slowly; returns controls to finish or abandon it. The first part is larger
 * than what the receiver gathers in memory (256 KB, spool/receive.ts), so the upload in flight has its
 * temporary file in the spool's .tmp/ for the tests to see.
 */
function slowUpload(relay: RunningRelay, name: string) {
  let answered: (status: number) => void = () => undefined;
  const status = new Promise<number>((resolve) => (answered = resolve));
  const request = httpsRequest({
    host: '127.0.0.1',
    port: relay.httpsPort,
    path: `/reports/${encodeURIComponent(name)}`,
    method: 'PUT',
    rejectUnauthorized: false,
    headers: { authorization: `Basic ${Buffer.from(`rudder:${DAV_PASSWORD}`).toString('base64')}`, 'content-length': String(FIRST_PART + LAST_PART) },
  });
  request.on('response', (response) => {
    response.resume();
    answered(response.statusCode ?? 0);
  });
  request.on('error', () => answered(0));
  request.write(Buffer.alloc(FIRST_PART, 1));
  return {
    status,
    finish: () => request.end(Buffer.alloc(LAST_PART, 2)),
  };
}

async function until(predicate: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 100));
  }
}

t.test('CLI: --help, --version, check and init', async (t) => {
  const help = await runCli(['--help']);
  t.equal(help.code, 0);
  t.match(help.stdout, /onerelay .*start.*init.*check/s);
  const version = await runCli(['--version']);
  t.match(version.stdout, /^onerelay \d+\.\d+\.\d+/);

  const dir = tempDir(t);
  const file = join(dir, 'onerelay.toml');
  await writeFile(
    file,
    `${relayConfigToml(dir, { https: 1, api: 2 }, {})}`.replace('shutdown_timeout = "5s"', 'shutdown_timeout = "5s"\ncertificate_file = "/nonexistent/https.cert"\nkey_file = "/nonexistent/https.key"').replace(
      'peer_authentication',
      'https_idle_timeout = "10 parsecs"\npeer_authentication',
    ),
  );
  const check = await runCli(['check', '--config', file]);
  t.equal(check.code, 2, 'a wrong duration is a type error: exit 2');
  t.match(check.stdout, /general\.https_idle_timeout = "10 parsecs": expected a duration/);
  t.match(check.stdout, /\/nonexistent\/https\.cert cannot be read \(ENOENT\)/, 'a missing file is named too');
  t.match(check.stdout, /\/nonexistent\/https\.key does not exist/);
  t.match(check.stdout, /identity: .*onerelay init/, 'a missing identity is named');
  t.equal((await runCli(['--test', '-c', file])).code, 2, "relayd's --test is check");

  await writeFile(file, relayConfigToml(dir, { https: 1, api: 2 }, {}));
  const init = await runCli(['init', '--config', file]);
  t.equal(init.code, 0, init.stderr);
  t.match(init.stdout, /node id: +[0-9a-f-]{36}/);
  t.match(init.stdout, /sha256\/\/[A-Za-z0-9+/]{43}=/);
  t.match(init.stdout, /SHA=[0-9a-f]{64}/);
  t.match(init.stdout, /MD5=[0-9a-f]{32}/);
  const key = await stat(join(dir, 'ppkeys', 'localhost.priv'));
  t.equal(key.mode & 0o777, 0o600, 'private key is 0600');
  const again = await runCli(['init', '--config', file]);
  t.equal(again.code, 0);
  t.notMatch(again.stdout, /created/, 'init is idempotent');
  t.equal(again.stdout.split('\n').slice(-8).join('\n'), init.stdout.split('\n').slice(-8).join('\n'), 'same digests');
  const cfKey = await run('cf-key', ['-p', join(dir, 'ppkeys', 'localhost.pub')]).catch(() => undefined);
  if (cfKey && cfKey.code === 0) {
    t.match(init.stdout, cfKey.stdout.toString().trim(), 'cf-key prints the digest init printed');
  }
  const ok = await runCli(['check', '--config', file]);
  t.equal(ok.code, 0, ok.stdout);
  t.match(ok.stdout, /Syntax: OK/);
});

t.test('exit codes: 2 for TOML syntax, 3 for validation and for a port in use', async (t) => {
  const dir = tempDir(t);
  const file = join(dir, 'bad.toml');
  await writeFile(file, '[general\n');
  t.equal((await runCli(['start', '--config', file])).code, 2);
  await writeFile(file, '[general]\nnode_id = "a1b2c3d4-0000-4000-8000-000000000001"\n');
  const missingHost = await runCli(['start', '--config', file]);
  t.equal(missingHost.code, 3);
  t.match(missingHost.stdout, /missing upstream server configuration/);

  const blocker = createNetServer();
  const port = await freePort();
  await new Promise<void>((r) => blocker.listen(port, '127.0.0.1', r));
  t.teardown(() => blocker.close());
  const relay = await startRelay(t, { expectFailure: true, extraToml: '' });
  await relay.stop('SIGKILL');
  const config = (await readFile(relay.configFile, 'utf8')).replace(/listen = "127\.0\.0\.1:(\d+)"\nallowed/, `listen = "127.0.0.1:${port}"\nallowed`);
  await writeFile(relay.configFile, config);
  const busy = await runCli(['start', '--config', relay.configFile]);
  t.equal(busy.code, 3, 'HTTPS port in use');
  t.match(busy.stdout, /https\.listen/);
});

t.test('identity generated on first start, reused across restarts', async (t) => {
  const first = await startRelay(t, { freshIdentity: true, workers: 1 });
  const uuid1 = (await readFile(join(first.dir, 'uuid.hive'), 'utf8')).trim();
  const key1 = await readFile(join(first.dir, 'ppkeys', 'localhost.priv'), 'utf8');
  const cert1 = await readFile(join(first.dir, 'agent.cert'), 'utf8');
  t.match(key1, /^-----BEGIN RSA PRIVATE KEY-----/);
  t.ok(first.logs.some((l) => l.event === 'identity_created'), 'logged what it generated');
  const ready1 = first.logs.find((l) => l.event === 'ready');
  t.equal(ready1?.['node_id'], uuid1, 'the ready line names the node id');
  t.equal(await first.stop(), 0, 'SIGTERM exits 0');

  const second = await startRelay(t, { dir: first.dir, workers: 1 });
  t.equal(await readFile(join(first.dir, 'ppkeys', 'localhost.priv'), 'utf8'), key1, 'key unchanged');
  t.equal(await readFile(join(first.dir, 'agent.cert'), 'utf8'), cert1, 'certificate unchanged');
  t.notOk(second.logs.some((l) => l.event === 'identity_created'), 'nothing generated the second time');
  t.equal(second.logs.find((l) => l.event === 'ready')?.['key_hash'], ready1?.['key_hash']);
  const served = await fetch(`${second.apiUrl}/rudder/relay-api/1/system/status`).then((r) => r.json()) as { data: { identity: { node_id: string } } };
  t.equal(served.data.identity.node_id, uuid1);
});

t.test('status: a broken nodes list is the nodes part, the configuration check does not parse it again', async (t) => {
  const relay = await startRelay(t, { workers: 1 });
  type Status = { data: Record<string, { status: string; details?: string } | undefined> };
  const status = async () => (await fetch(`${relay.apiUrl}/rudder/relay-api/1/system/status`).then((r) => r.json())) as Status;
  await writeFile(join(relay.dir, 'nodeslist.json'), '{ not json');
  // the live registry re-reads the file on change and keeps the error in its status
  await until(async () => (await status()).data['nodes']?.status === 'error');
  const now = await status();
  t.match(now.data['nodes']?.details, /invalid nodes list/);
  // a whole parse per status request is what left ~30 MB of malloc heap in the primary (README, Memory)
  t.equal(now.data['configuration']?.status, 'success', now.data['configuration']?.details ?? 'configuration');
  const check = await runCli(['check', '--config', relay.configFile]);
  t.equal(check.code, 3, '`onerelay check` still parses the nodes files');
  t.match(check.stdout, /nodes: invalid nodes list/);
});

t.test('SIGKILL during a slow upload leaves no partial file in incoming/', async (t) => {
  const relay = await startRelay(t, { workers: 1 });
  const upload = slowUpload(relay, `2026-11-25T10:00:00+00:00@${NODE}.log.gz`);
  await until(async () => (await readdir(join(relay.dir, 'reports', '.tmp'))).length > 0);
  await relay.killAll();
  await upload.status;
  t.same(await readdir(relay.reportsIncoming), [], 'incoming/ is empty');
  const restarted = await startRelay(t, { dir: relay.dir, workers: 1 });
  t.ok(restarted.logs.some((l) => /partial uploads/.test(l.msg)), 'the partial temp file is cleaned at start and said so');
  t.same(await readdir(join(relay.dir, 'reports', '.tmp')), []);
});

t.test('SIGTERM lets an in-flight upload finish, then exits 0', async (t) => {
  const relay = await startRelay(t, { workers: 1 });
  const name = `2026-11-25T10:00:00+00:00@${NODE}.log.gz`;
  const upload = slowUpload(relay, name);
  await until(async () => (await readdir(join(relay.dir, 'reports', '.tmp'))).length > 0);
  relay.child.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 300));
  upload.finish();
  t.equal(await upload.status, 201, 'the upload in flight completes');
  t.equal((await readFile(join(relay.reportsIncoming, name))).length, FIRST_PART + LAST_PART);
  t.equal(await relay.exited, 0);
});

t.test('nodes registry: reload, SIGHUP, file changes, broken files keep the last good list', async (t) => {
  const agent = await cachedAgentIdentity(NODE);
  const late = await cachedAgentIdentity(LATE);
  const entry = (pin: string) => ({ hostname: 'agent.example', 'key-hash': pin, 'policy-server': RELAY });
  const relay = await startRelay(t, { nodesList: { [NODE]: entry(agent.sha256Pin) } });
  const work = tempDir(t);
  const file = join(work, `2026-11-25T10:00:00+00:00@${NODE}.log.gz`);
  await writeFile(file, 'report');
  const upload = (identity = agent, path = file) =>
    curlUpload({ url: `${relay.httpsUrl}/reports/`, file: path, user: 'rudder', password: DAV_PASSWORD, identity }).then((r) => r.status);
  t.equal(await upload(), 201);

  const goodList = await readFile(relay.nodesListFile, 'utf8');
  await writeFile(`${relay.nodesListFile}.new`, '{ "broken": ');
  await rename(`${relay.nodesListFile}.new`, relay.nodesListFile);
  const reload = await fetch(`${relay.apiUrl}/rudder/relay-api/1/system/reload`, { method: 'POST' });
  t.equal(reload.status, 500);
  const body = (await reload.json()) as { result: string; action: string; errorDetails: string };
  t.equal(body.result, 'error');
  t.equal(body.action, 'reloadConfiguration');
  t.match(body.errorDetails, /nodeslist|JSON|nodes list/i);
  const status = (await fetch(`${relay.apiUrl}/rudder/relay-api/1/system/status`).then((r) => r.json())) as {
    data: { nodes: { status: string; details: string; nodes: number } };
  };
  t.equal(status.data.nodes.status, 'error', 'status shows the broken file');
  t.equal(status.data.nodes.nodes, 1, 'and still the last good list');
  await new Promise((r) => setTimeout(r, 500));
  t.equal(await upload(), 204, 'workers kept the old list too');

  await writeFile(relay.nodesListFile, goodList);
  const fixed = await fetch(`${relay.apiUrl}/rudder/relay-api/1/system/reload`, { method: 'POST' });
  t.same(await fixed.json(), { result: 'success', action: 'reloadConfiguration' });

  // a node added by the next policy generation: picked up from the file change alone
  const lateFile = join(work, `2026-11-25T10:00:00+00:00@${LATE}.log.gz`);
  await writeFile(lateFile, 'report');
  t.equal(await upload(late, lateFile), 403, 'not known yet');
  await writeFile(`${relay.nodesListFile}.new`, JSON.stringify({ [NODE]: entry(agent.sha256Pin), [LATE]: entry(late.sha256Pin) }));
  await rename(`${relay.nodesListFile}.new`, relay.nodesListFile);
  await until(async () => (await upload(late, lateFile)) === 201);
  t.pass('file change reloaded the workers');

  relay.child.kill('SIGHUP');
  await relay.waitForLog((l) => l.msg === 'Configuration reload requested');
  t.pass('SIGHUP reloads');
});

t.test('local API: relayd envelopes, plain 404, metrics', async (t) => {
  const relay = await startRelay(t, { workers: 1 });
  const info = await fetch(`${relay.apiUrl}/rudder/relay-api/1/system/info`);
  t.match(info.headers.get('content-type'), /^application\/json/);
  t.match(await info.text(), /^\{"data":\{"major-version":"\d+\.\d+","full-version":"[^"]+"\},"result":"success","action":"getSystemInfo"\}$/);
  const status = (await fetch(`${relay.apiUrl}/rudder/relay-api/1/system/status/`).then((r) => r.json())) as {
    result: string;
    data: Record<string, { status: string }>;
  };
  t.equal(status.result, 'success');
  for (const part of ['configuration', 'identity', 'nodes', 'spool', 'https']) t.equal(status.data[part]?.status, 'success', part);
  const missing = await fetch(`${relay.apiUrl}/rudder/relay-api/1/nothing`);
  t.equal(missing.status, 404);
  t.equal(await missing.text(), 'NOT FOUND');
  const metrics = await fetch(`${relay.apiUrl}/metrics`);
  t.match(metrics.headers.get('content-type'), /text\/plain/);
  const text = await metrics.text();
  t.match(text, /# HELP rudder_relayd_reports_total Agent run reports/);
  t.match(text, /rudder_relayd_reports_total\{status="forward_ok"\} 0/);
  t.match(text, /rudder_relayd_sub_nodes_total 0/);
  t.match(text, /process_resident_memory_bytes \d+/, 'worker process metrics aggregated');
});

t.test('reverse proxy: a prefix streams to a local service, relay paths stay the relay', async (t) => {
  const backendPort = await freePort();
  const seen: string[] = [];
  const backend = createHttpServer((request, response) => {
    seen.push(`${request.method} ${request.url}`);
    let size = 0;
    request.on('data', (chunk: Buffer) => (size += chunk.length));
    request.on('end', () => {
      response.writeHead(200, { 'content-type': 'text/plain' });
      response.write(`first ${size}\n`);
      setTimeout(() => response.end('second\n'), 200);
    });
  });
  await new Promise<void>((r) => backend.listen(backendPort, '127.0.0.1', r));
  t.teardown(() => backend.close());
  const relay = await startRelay(t, {
    workers: 1,
    extraToml: `[[https.proxy]]\nprefix = "/rudder/"\ntarget = "http://127.0.0.1:${backendPort}"\ntimeout = "5s"\n`,
  });
  const response = await run('curl', ['-sk', '--data-binary', 'hello', `${relay.httpsUrl}/rudder/api/latest/info?x=1`]);
  t.equal(response.stdout.toString(), 'first 5\nsecond\n');
  t.same(seen, ['POST /rudder/api/latest/info?x=1'], 'path and query kept');
  const relayApi = await run('curl', ['-sk', '-o', '/dev/null', '-w', '%{http_code}', `${relay.httpsUrl}/rudder/relay-api/1/system/info`]);
  t.equal(relayApi.stdout.toString(), '403', "/rudder/relay-api/ is the relay's, not proxied");
  t.equal(seen.length, 1);
});

t.test('CFEngine warm-up: done at an idle start, skipped when the spool has a backlog to forward first', async (t) => {
  const first = await startRelay(t, { workers: 1 });
  t.ok(first.logs.some((l) => l.msg === 'cfengine request path warmed up'), 'an idle start warms the request path up');
  first.child.kill('SIGTERM');
  t.equal(await first.exited, 0);
  // reports of a node the list does not know yet: held in the spool, not forwarded, not failed
  for (let i = 0; i < 150; i += 1) {
    const minute = String(i % 60).padStart(2, '0');
    await writeFile(join(first.reportsIncoming, `2026-11-25T10:${minute}:${String(Math.floor(i / 60)).padStart(2, '0')}+00:00@${LATE}.log.gz`), 'backlog');
  }
  const second = await startRelay(t, { dir: first.dir, workers: 1 });
  const skipped = second.logs.find((l) => l.msg === 'cfengine warm-up skipped: the spool has a backlog to forward first');
  t.ok(skipped, 'the restart onto a backlog skips it');
  t.ok(Number(skipped?.['backlog']) >= 100, `backlog counted: ${String(skipped?.['backlog'])}`);
  t.notOk(second.logs.some((l) => l.msg === 'cfengine request path warmed up'));
});

t.test('front-door processes: the primary and its workers accept on one socket; a worker killed is replaced and accepts again', async (t) => {
  const agent = await cachedAgentIdentity(NODE);
  const relay = await startRelay(t, { workers: 3, nodesList: { [NODE]: { hostname: 'agent.example', 'key-hash': agent.sha256Pin, 'policy-server': RELAY } } });
  type Https = { data: { https: { status: string; workers: number; ready: number } } };
  const https = async () => ((await fetch(`${relay.apiUrl}/rudder/relay-api/1/system/status`).then((r) => r.json())) as Https).data.https;
  t.match(await https(), { status: 'success', workers: 3, ready: 3 }, 'three front-door processes: the primary and two workers');
  const workers = (await run('ps', ['-o', 'pid=', '--ppid', String(relay.child.pid)])).stdout.toString().split('\n').map(Number).filter((pid) => pid > 0);
  t.equal(workers.length, 2, 'two worker processes');
  process.kill(workers[0]!, 'SIGKILL');
  await relay.waitForLog((line) => line.event === 'worker_died');
  // a replacement reports ready only once it accepts on the primary's socket (cluster.ts 'listen-handle')
  await until(async () => (await https()).ready === 3, 15_000);
  const replacement = (await run('ps', ['-o', 'pid=', '--ppid', String(relay.child.pid)])).stdout.toString().split('\n').map(Number).filter((pid) => pid > 0);
  t.equal(replacement.length, 2);
  t.notOk(replacement.includes(workers[0]!), 'a new process');
  const work = tempDir(t);
  const statuses = await Promise.all(
    Array.from({ length: 12 }, async (_, i) => {
      const file = join(work, `2026-11-25T10:00:${String(i).padStart(2, '0')}+00:00@${NODE}.log.gz`);
      await writeFile(file, 'report');
      return (await curlUpload({ url: `${relay.httpsUrl}/reports/`, file, user: 'rudder', password: DAV_PASSWORD, identity: agent })).status;
    }),
  );
  t.same(statuses, statuses.map(() => 201), 'uploads accepted');
});
