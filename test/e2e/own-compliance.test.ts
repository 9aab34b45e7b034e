// The relay started as a user starts it, its own policies in its inputs folder, a real HTTPS upstream:
// it sends signed run logs of itself through its reports queue, one per run interval, with one result
// per component its policies expect, a failing sync shows as result_error, changes-only sends only the
// control lines.

import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import t, { type Test } from 'tap';
import { parseRunInfo, parseRunlog, type RunLog } from '../../src/reports/index.js';
import { run } from '../support/agent.js';
import { expectedPairs, writeOwnPolicies } from '../support/own-policies.js';
import { FIXTURE_KEYS, RELAY_ID, startRelay, type RunningRelay } from '../support/relay.js';
import { tempDir } from '../support/tmp.js';
import { startUpstream, type TestUpstream } from '../support/upstream.js';

const RELAY_CERT = join(FIXTURE_KEYS, `${RELAY_ID}.cert`);

async function relayWithOwnPolicies(
  t: Test,
  spec: { configId: string; reportMode?: 'full-compliance' | 'changes-only'; sync?: boolean },
): Promise<{ relay: RunningRelay; upstream: TestUpstream }> {
  const upstream = await startUpstream(t);
  // the relay's own policies where [own_policies] reads them (test/support/relay.ts: <dir>/inputs)
  const dir = tempDir(t, 'onerelay-e2e-');
  const inputs = join(dir, 'inputs');
  await writeOwnPolicies(inputs, { relayId: RELAY_ID, configId: spec.configId, reportMode: spec.reportMode ?? 'full-compliance', serverVersion: '9.1.3' });
  const sync = spec.sync ? `[sync]\nupstream = true\nfrequency = "1s"\nstate_directory = "${tempDir(t, 'onerelay-own-sync-')}"\n` : '';
  const relay = await startRelay(t, {
    workers: 1,
    upstream: { port: upstream.port, certificateFile: upstream.certificateFile },
    dir,
    extraToml: `${sync}[own_compliance]\nrun_interval = "2s"\n`,
  });
  return { relay, upstream };
}

/** the run log as the root reads it: gunzip, openssl smime -verify with the relay's certificate, relayd's grammar */
async function readOwnRunlog(t: Test, name: string, body: Buffer, certificateFile = RELAY_CERT): Promise<RunLog> {
  const file = join(tempDir(t, 'onerelay-own-received-'), 'runlog.signed');
  writeFileSync(file, gunzipSync(body));
  const verified = await run('openssl', ['smime', '-verify', '-text', '-nointern', '-noverify', '-certfile', certificateFile, '-in', file]);
  t.equal(verified.code, 0, `openssl smime -verify ${name}: ${verified.stderr.trim()}`);
  return parseRunlog(verified.stdout.toString('utf8'), parseRunInfo(name));
}

const ownFiles = (upstream: TestUpstream) => upstream.files('reports').filter((f) => f.name.endsWith(`@${RELAY_ID}.log.gz`));

t.test('healthy: a signed run log at start and one per interval, one result per expected component', async (t) => {
  const { relay, upstream } = await relayWithOwnPolicies(t, { configId: '20261206-071500-6f3a9c21' });
  await upstream.waitFor(2, 60_000);
  const files = ownFiles(upstream);
  t.ok(files.length >= 2, 'a second run log came after the interval');
  t.not(files[0]?.name, files[1]?.name, 'each run has its own start');
  for (const file of files.slice(0, 2)) {
    t.match(file.name, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00@37817c4d-fbf7-4850-a985-50021f4e8f41\.log\.gz$/, 'named like agent-run does');
    const runlog = await readOwnRunlog(t, file.name, file.body);
    t.equal(runlog.info.node_id, RELAY_ID);
    t.same(
      runlog.reports.filter((r) => r.event_type === 'control').map((r) => `${r.component}:${r.key_value}`),
      ['start:20261206-071500-6f3a9c21', 'end:20261206-071500-6f3a9c21'],
      'the config id of its policies on every control line',
    );
    const results = runlog.reports.filter((r) => r.event_type !== 'control');
    t.same(results.map((r) => `${r.component}/${r.key_value}`).sort(), expectedPairs('9.1'), 'one result per (component, key) of a 9.1 relay');
    t.same(results.filter((r) => r.event_type === 'result_error').map((r) => `${r.component}/${r.key_value}: ${r.msg}`), [], 'compliant when healthy');
    t.match(results.find((r) => r.component === 'Apache service' && r.key_value === 'Started'), { event_type: 'result_success', msg: /HTTPS endpoint .* answering/ });
    t.match(results.find((r) => r.component === 'Rudder-relayd service' && r.key_value === 'Started'), { event_type: 'result_success', msg: /answered HTTP 200/ });
  }
  // the local status shows the last run
  const status = (await (await fetch(`${relay.apiUrl}/rudder/relay-api/1/system/status`)).json()) as { data: Record<string, Record<string, unknown>> };
  t.match(status.data['own_compliance'], { status: 'success', config_id: '20261206-071500-6f3a9c21', error: 0, success: Number, na: Number });
  const own = status.data['own_compliance'];
  t.equal(Number(own?.['success']) + Number(own?.['na']), 32);
  const page = await (await fetch(`${relay.apiUrl}/`)).text();
  t.match(page, /own run log<\/dt><dd>[^<]*config <code>20261206-071500-6f3a9c21<\/code>: \d+ success, 0 error/);
});

t.test('a failing sync turns the synchronisation components into result_error', async (t) => {
  // the test upstream has no sync API: every pull fails (HTTP 404 on the manifest)
  const { relay, upstream } = await relayWithOwnPolicies(t, { configId: 'cfg-sync-fails', sync: true });
  await relay.waitForLog((line) => line.event === 'own_runlog', 60_000);
  await upstream.waitFor(1, 60_000);
  const [file] = ownFiles(upstream);
  if (file === undefined) throw new Error('no run log received');
  const runlog = await readOwnRunlog(t, file.name, file.body);
  const errors = runlog.reports.filter((r) => r.event_type === 'result_error');
  t.same(errors.map((r) => r.component).sort(), ['Synchronize files', 'Synchronize policies', 'Synchronize resources', 'Update']);
  t.match(errors[0]?.msg, /Synchronisation from upstream failed/);
  t.equal(runlog.reports.length, 34, 'still one result per component');
});

t.test('changes-only: only the control lines when healthy', async (t) => {
  const { upstream } = await relayWithOwnPolicies(t, { configId: 'cfg-quiet', reportMode: 'changes-only' });
  await upstream.waitFor(1, 60_000);
  const [file] = ownFiles(upstream);
  if (file === undefined) throw new Error('no run log received');
  const runlog = await readOwnRunlog(t, file.name, file.body);
  t.same(runlog.reports.map((r) => `${r.event_type}:${r.component}:${r.key_value}`), ['control:start:cfg-quiet', 'control:end:cfg-quiet']);
});

t.test('a sync that stops working: success in one run log, result_error in the next', async (t) => {
  // the upstream is an onerelay serving sync; our relay (e745…) is in its nodes list below it, then moved below
  // another relay: still a known node (its uploads are accepted), no longer entitled to this upstream's sync
  const RELAY = 'e745a140-40bc-4b86-b6dc-084488fc906b';
  const E745_PIN = 'sha256//I8utFWGj+OpqpbiAIZ/s8qRC4fQXxQ8IRVjFe0X1Lug=';
  const E745_CERT = join(FIXTURE_KEYS, `${RELAY}.cert`);
  const upstream = await startRelay(t, {
    workers: 1,
    nodesList: { [RELAY]: { hostname: '127.0.0.1', 'key-hash': E745_PIN, 'policy-server': RELAY_ID } },
    extraToml: '[sync]\nserve = true\nmanifest_ttl = "1h"\n',
  });
  // the relay's own policies where [own_policies] reads them (test/support/relay.ts: <dir>/inputs)
  const dir = tempDir(t, 'onerelay-e2e-');
  const inputs = join(dir, 'inputs');
  await writeOwnPolicies(inputs, { relayId: RELAY, parentId: RELAY_ID, configId: 'cfg-sync-breaks', serverVersion: '9.1.3' });
  const relay = await startRelay(t, {
    dir,
    workers: 1,
    relayId: RELAY,
    upstream: { port: upstream.httpsPort, certificateFile: RELAY_CERT },
    extraToml: `[sync]\nupstream = true\nfrequency = "1s"\nstate_directory = "${tempDir(t, 'onerelay-own-sync-')}"\n[own_compliance]\nrun_interval = "2s"\n`,
  });
  // run logs arrive in the upstream's reports spool (its output is disabled: they stay there to be read)
  const arrived = async (file: unknown): Promise<Buffer> => {
    const path = join(upstream.reportsIncoming, String(file));
    // polled: the upstream logs nothing when a report lands in a spool whose output is disabled
    for (let i = 0; i < 300 && !existsSync(path); i++) await new Promise((resolve) => setTimeout(resolve, 100));
    return readFileSync(path);
  };
  const healthy = await relay.waitForLog((line) => line.event === 'own_runlog', 60_000);
  const before = await readOwnRunlog(t, String(healthy['file']), await arrived(healthy['file']), E745_CERT);
  const syncBefore = before.reports.find((r) => r.component === 'Synchronize policies');
  t.match(syncBefore, { event_type: 'result_success', msg: /Synchronised from upstream/, rule_id: `policy-server-${RELAY}`, directive_id: `rudder-service-relayd-${RELAY}` });
  t.match(before.reports.find((r) => r.component === 'Update'), { event_type: 'result_success', rule_id: `hasPolicyServer-${RELAY_ID}` });

  writeFileSync(upstream.nodesListFile, JSON.stringify({ [RELAY]: { hostname: '127.0.0.1', 'key-hash': E745_PIN, 'policy-server': 'another-relay' } }));
  const failing = await relay.waitForLog((line) => line.event === 'own_runlog' && Array.isArray(line['errors']) && line['errors'].includes('Synchronize policies/None'), 60_000);
    const after = await readOwnRunlog(t, String(failing['file']), await arrived(failing['file']), E745_CERT);
  t.match(after.reports.find((r) => r.component === 'Synchronize policies'), { event_type: 'result_error', msg: /Synchronisation from upstream failed/ });
  t.equal(after.reports.filter((r) => r.event_type === 'result_error').length, 4, 'Update and the three Synchronize components');
});

t.test('upstream down: the run log waits in the relay\'s reports spool, then reaches the upstream', async (t) => {
  const upstream = await startUpstream(t);
  await upstream.setMode('down');
  // the relay's own policies where [own_policies] reads them (test/support/relay.ts: <dir>/inputs)
  const dir = tempDir(t, 'onerelay-e2e-');
  const inputs = join(dir, 'inputs');
  await writeOwnPolicies(inputs, { relayId: RELAY_ID, configId: 'cfg-outage', serverVersion: '9.1.3' });
  const relay = await startRelay(t, {
    dir,
    workers: 1,
    upstream: { port: upstream.port, certificateFile: upstream.certificateFile },
    extraToml: `[own_compliance]\nrun_interval = "1h"\n`,
  });
  const queued = await relay.waitForLog((line) => line.event === 'own_runlog', 60_000);
  const name = String(queued['file']);
  t.ok(existsSync(join(relay.reportsIncoming, name)), 'kept in incoming/ while the upstream is down');
  await upstream.setMode('ok');
  await upstream.waitFor(1, 90_000);
  t.same(ownFiles(upstream).map((f) => f.name), [name], 'forwarded once the upstream is back');
  const runlog = await readOwnRunlog(t, name, ownFiles(upstream)[0]?.body ?? Buffer.alloc(0));
  t.equal(runlog.config_id, 'cfg-outage');
});

t.test('new policies: the next run log carries their configuration id', async (t) => {
  const upstream = await startUpstream(t);
  // the relay's own policies where [own_policies] reads them (test/support/relay.ts: <dir>/inputs)
  const dir = tempDir(t, 'onerelay-e2e-');
  const inputs = join(dir, 'inputs');
  await writeOwnPolicies(inputs, { relayId: RELAY_ID, configId: 'cfg-before', serverVersion: '9.0.2', filesOf: '9.0' });
  const relay = await startRelay(t, {
    dir,
    workers: 1,
    upstream: { port: upstream.port, certificateFile: upstream.certificateFile },
    extraToml: `[own_compliance]\nrun_interval = "2s"\n`,
  });
  await relay.waitForLog((line) => line.event === 'own_runlog' && line['config_id'] === 'cfg-before', 60_000);
  await writeOwnPolicies(inputs, { relayId: RELAY_ID, configId: 'cfg-after', serverVersion: '9.1.0', filesOf: '9.1' });
  const after = await relay.waitForLog((line) => line.event === 'own_runlog' && line['config_id'] === 'cfg-after', 60_000);
  // each wait is for one more file upstream, until it is that run's
  while (!ownFiles(upstream).some((f) => f.name === after['file'])) await upstream.waitFor(upstream.files('reports').length + 1, 60_000);
  const file = ownFiles(upstream).find((f) => f.name === after['file']);
  if (file === undefined) throw new Error(`${String(after['file'])} not received`);
  const runlog = await readOwnRunlog(t, file.name, file.body);
  t.same(runlog.reports.filter((r) => r.event_type === 'control').map((r) => r.key_value), ['cfg-after', 'cfg-after']);
  t.same(runlog.reports.filter((r) => r.event_type !== 'control').map((r) => `${r.component}/${r.key_value}`).sort(), expectedPairs('9.1'), 'the components of the new policies (9.1: Events scheduler)');
});

t.test('no own policies yet: nothing sent, the status says so; once they arrive, run logs follow', async (t) => {
  const upstream = await startUpstream(t);
  const dir = tempDir(t, 'onerelay-e2e-');
  const inputs = join(dir, 'inputs');
  const relay = await startRelay(t, {
    dir,
    workers: 1,
    upstream: { port: upstream.port, certificateFile: upstream.certificateFile },
    extraToml: `[own_compliance]\nrun_interval = "2s"\n`,
  });
  await relay.waitForLog((line) => line.event === 'own_runlog_skipped', 60_000);
  const status = (await (await fetch(`${relay.apiUrl}/rudder/relay-api/1/system/status`)).json()) as { data: Record<string, Record<string, unknown>> };
  t.match(status.data['own_compliance'], { status: 'success', waiting_for_policies: true });
  t.same(ownFiles(upstream), [], 'no run log without policies');
  await writeOwnPolicies(inputs, { relayId: RELAY_ID, configId: 'cfg-late', serverVersion: '9.1.0' });
  await relay.waitForLog((line) => line.event === 'own_runlog' && line['config_id'] === 'cfg-late', 60_000);
  await upstream.waitFor(1, 60_000);
  t.equal(ownFiles(upstream).length >= 1, true, 'sent once the policies are there');
});
