// Remote run through the relay API: relayd's parameters and answers, the command fallback, and
// forwarding to a sub-relay that is a second onerelay (the native EXEC path is tested with real
// cf-serverd nodes in remote-run-native.test.ts).

import { chmod, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { run } from '../support/agent.js';
import { FIXTURE_KEYS, RELAY_ID, startRelay } from '../support/relay.js';
import { tempDir } from '../support/tmp.js';

const SUB_RELAY = 'e745a140-40bc-4b86-b6dc-084488fc906b';
const NODE = 'c0c0c0c0-0000-4000-8000-000000000001';
const FAR = 'c0c0c0c0-0000-4000-8000-000000000002';

/** relayd's fake agent: records its argv, prints OK … END */
async function fakeAgent(dir: string, name: string): Promise<{ script: string; argsFile: string }> {
  const script = join(dir, `${name}.sh`);
  const argsFile = join(dir, `${name}.args`);
  await writeFile(script, `#!/bin/sh\necho -n "$@" > ${argsFile}\nsleep 0.3\necho "${name} OK"\nsleep 0.2\necho "${name} END"\n`);
  await chmod(script, 0o755);
  return { script, argsFile };
}

function remoteRunToml(script: string): string {
  return `[remote_run]\nenabled = true\nmode = "command"\ncommand = "${script}"\nuse_sudo = false\n`;
}

async function post(url: string, form: string): Promise<{ status: number; body: string; ms: number }> {
  const started = Date.now();
  const response = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: form });
  return { status: response.status, body: await response.text(), ms: Date.now() - started };
}

t.test('remote run: parameters, local command, forwarding to a second onerelay', async (t) => {
  const work = tempDir(t);
  const subAgent = await fakeAgent(work, 'sub');
  const subRelay = await startRelay(t, {
    workers: 1,
    relayId: SUB_RELAY,
    nodesList: { [FAR]: { hostname: 'far.example', 'policy-server': SUB_RELAY } },
    extraToml: remoteRunToml(subAgent.script),
  });
  const agent = await fakeAgent(work, 'top');
  const relay = await startRelay(t, {
    workers: 1,
    peerHttpsPort: subRelay.httpsPort,
    nodesList: {
      [NODE]: { hostname: 'node1.example', 'policy-server': RELAY_ID },
      [SUB_RELAY]: { hostname: '127.0.0.1', 'policy-server': RELAY_ID },
      [FAR]: { hostname: 'far.example', 'policy-server': SUB_RELAY },
    },
    nodesCerts: await readFile(join(FIXTURE_KEYS, `${SUB_RELAY}.cert`), 'utf8'),
    extraToml: remoteRunToml(agent.script),
  });
  const api = `${relay.apiUrl}/rudder/relay-api/1/remote-run`;

  await t.test('one node, synchronous with output: the command runs with hostnames and classes', async (t) => {
    const result = await post(`${api}/nodes/${NODE}`, 'classes=class2,class3&keep_output=true&asynchronous=false');
    t.equal(result.status, 200);
    t.equal(result.body, 'top OK\ntop END\n');
    t.equal(await readFile(agent.argsFile, 'utf8'), 'remote run -D class2,class3 -- node1.example');
  });

  await t.test('a node behind the sub-relay: forwarded over pinned HTTPS, its output streamed back', async (t) => {
    const result = await post(`${api}/nodes`, `nodes=${FAR}&conditions=&keep_output=true&asynchronous=false`);
    t.equal(result.status, 200);
    t.equal(result.body, 'sub OK\nsub END\n');
    t.equal(await readFile(subAgent.argsFile, 'utf8'), 'remote run -- far.example', 'the sub-relay ran it for its node');
  });

  await t.test('all: local nodes and the sub-relay, concurrently', async (t) => {
    const result = await post(`${api}/all`, 'keep_output=true&asynchronous=false');
    t.equal(result.status, 200);
    t.same(result.body.split('\n').filter(Boolean).sort(), ['sub END', 'sub OK', 'top END', 'top OK']);
    t.ok(result.ms < 1_500, `local and forwarded runs overlap (${result.ms} ms for two 0.5 s runs)`);
  });

  await t.test('asynchronous answers at once; the run still happens', async (t) => {
    await writeFile(agent.argsFile, '');
    const result = await post(`${api}/nodes/${NODE}`, 'classes=later&keep_output=true&asynchronous=true');
    t.equal(result.status, 200);
    t.equal(result.body, '');
    t.ok(result.ms < 300, `answered in ${result.ms} ms`);
    // the run happens after the answer: wait for the agent's arguments to be written
    const deadline = Date.now() + 10_000;
    while ((await readFile(agent.argsFile, 'utf8')) === '' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    t.equal(await readFile(agent.argsFile, 'utf8'), 'remote run -D later -- node1.example');
  });

  await t.test("relayd's parameter errors", async (t) => {
    const bad = await post(`${api}/nodes/${NODE}`, 'classes=class~1,class2&keep_output=true');
    t.equal(bad.status, 400);
    t.equal(bad.body, 'invalid condition: class~1, should match ^[a-zA-Z0-9][a-zA-Z0-9_]*$');
    t.equal((await post(`${api}/nodes/${NODE}`, 'keep_output=maybe')).body, 'provided string was not `true` or `false`');
    t.equal((await post(`${api}/nodes`, 'keep_output=true')).body, 'Missing nodes');
  });

  await t.test('through the front door: only from policy_server_networks', async (t) => {
    const allowed = await run('curl', ['-sk', '-X', 'POST', '-d', 'keep_output=true&asynchronous=false', `${relay.httpsUrl}/rudder/relay-api/remote-run/nodes/${NODE}`]);
    t.equal(allowed.stdout.toString(), 'top OK\ntop END\n', 'from 127.0.0.1');
    const refused = await run('curl', ['-sk', '--interface', '127.0.0.2', '-o', '/dev/null', '-w', '%{http_code}', '-X', 'POST', '-d', 'keep_output=true', `${relay.httpsUrl}/rudder/relay-api/remote-run/all`]);
    t.equal(refused.stdout.toString(), '403', 'from 127.0.0.2, outside policy_server_networks');
  });

  await t.test('metrics and status', async (t) => {
    const metrics = await (await fetch(`${relay.apiUrl}/metrics`)).text();
    t.match(metrics, /onerelay_remote_run_duration_seconds_count\{result="ok"\} [1-9]/);
    const status = (await fetch(`${relay.apiUrl}/rudder/relay-api/1/system/status`).then((r) => r.json())) as { data: { remote_run: { enabled: boolean } } };
    t.equal(status.data.remote_run.enabled, true);
  });
});

t.test('remote_run.enabled = false: 404 as relayd (remote_run.rs rejects with not_found), and a log line saying why', async (t) => {
  const relay = await startRelay(t, { workers: 1, extraToml: '[remote_run]\nenabled = false\n' });
  const result = await post(`${relay.apiUrl}/rudder/relay-api/1/remote-run/all`, 'keep_output=true');
  t.equal(result.status, 404);
  t.equal(result.body, 'NOT FOUND');
  const line = await relay.waitForLog((l) => l.msg === 'received remote-run request but remote-run API is disabled');
  t.equal(line['code'], 'RELAY_ERR_NOT_FOUND');
  t.equal(line['event'], 'refused');
});

t.test('command mode: each node once however often named; a hostname with "," is refused, not split', async (t) => {
  const work = tempDir(t);
  const agent = await fakeAgent(work, 'top');
  const EVIL = 'c0c0c0c0-0000-4000-8000-000000000066';
  const relay = await startRelay(t, {
    workers: 1,
    nodesList: {
      [NODE]: { hostname: 'node1.example', 'policy-server': RELAY_ID },
      [EVIL]: { hostname: 'evil.example,victim.example', 'policy-server': RELAY_ID },
    },
    extraToml: remoteRunToml(agent.script),
  });
  const api = `${relay.apiUrl}/rudder/relay-api/1/remote-run`;
  const many = Array.from({ length: 20_000 }, () => NODE).join(',');
  const once = await post(`${api}/nodes`, `nodes=${many}&keep_output=true&asynchronous=false`);
  t.equal(once.status, 200);
  t.equal(once.body, 'top OK\ntop END\n');
  t.equal(await readFile(agent.argsFile, 'utf8'), 'remote run -- node1.example', '20,000 copies of one id: one host on the command line');
  const runs = await relay.waitForLog((l) => l['event'] === 'remote_run');
  t.equal(runs['local'], 1, 'one local run');

  await writeFile(agent.argsFile, '');
  const split = await post(`${api}/nodes`, `nodes=${EVIL},${NODE}&keep_output=true&asynchronous=false`);
  t.equal(split.status, 200);
  t.match(split.body, new RegExp(`^${EVIL}> !! not run: its hostname "evil.example,victim.example" in the nodes list contains ','`, 'm'), 'refused with a line in the output');
  t.equal(await readFile(agent.argsFile, 'utf8'), 'remote run -- node1.example', 'the other node still runs; victim.example never reaches the command');
  const refused = await relay.waitForLog((l) => l['event'] === 'refused' && l['node'] === EVIL);
  t.equal(refused['code'], 'RELAY_ERR_BAD_REQUEST', 'logged with a code');
});
