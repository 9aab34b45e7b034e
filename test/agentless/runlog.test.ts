// The relay's own run log without the process: expected components derived from policies written in
// Rudder's formats, the text in the agent's grammar, signed and checked by the real openssl and by the
// project's relayd-grammar parser; the reports inspector accepts the relay's own run log.

import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { readdir, writeFile } from 'node:fs/promises';
import { buffer } from 'node:stream/consumers';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { pino } from 'pino';
import t from 'tap';
import { buildRunlog, createOwnCompliance, createOwnPolicies, expectedReports, runlogFileName, signRunlogText, type ComponentResult, type OwnRun } from '../../src/agentless/index.js';
import { createNodesRegistry } from '../../src/nodes/index.js';
import { createReportInspector, parseRunInfo, parseRunlog } from '../../src/reports/index.js';
import { run } from '../support/agent.js';
import { FIXTURES } from '../support/fixtures.js';
import { expectedPairs, writeOwnPolicies } from '../support/own-policies.js';
import { tempDir } from '../support/tmp.js';

const RELAY = '37817c4d-fbf7-4850-a985-50021f4e8f41';
const PARENT = 'e745a140-40bc-4b86-b6dc-084488fc906b';
const KEYS = join(FIXTURES, 'files', 'keys');
const CERT_FILE = join(KEYS, `${RELAY}.cert`);
const signer = { privateKey: createPrivateKey(readFileSync(join(KEYS, `${RELAY}.nopass.priv`))), certificate: new X509Certificate(readFileSync(CERT_FILE)) };

const pairs = (components: ReadonlyArray<{ component: string; key: string }>) => components.map((c) => `${c.component}/${c.key}`).sort();

t.test('expected components follow the Rudder version of the relay\'s policies', async (t) => {
  for (const version of ['8.3', '9.0', '9.1'] as const) {
    const inputs = tempDir(t, 'onerelay-own-');
    await writeOwnPolicies(inputs, { relayId: RELAY, configId: 'cfg-1', serverVersion: `${version}.4`, filesOf: version });
    const expected = await expectedReports(inputs, JSON.parse(readFileSync(join(inputs, 'rudder.json'), 'utf8')) as Record<string, unknown>, RELAY);
    t.equal(expected.rudderVersion, version, `${version}: version from SERVER_VERSION`);
    t.same(pairs(expected.components), expectedPairs(version), `${version}: one entry per metadata.xml component and key`);
    t.equal(expected.components.length, { '8.3': 30, '9.0': 31, '9.1': 32 }[version]);
  }
});

t.test('without SERVER_VERSION the technique files present tell the version', async (t) => {
  for (const version of ['8.3', '9.0', '9.1'] as const) {
    const inputs = tempDir(t, 'onerelay-own-');
    await writeOwnPolicies(inputs, { relayId: RELAY, configId: 'cfg-1', filesOf: version });
    const expected = await expectedReports(inputs, {}, RELAY);
    t.equal(expected.versionSource, 'technique files');
    t.same(pairs(expected.components), expectedPairs(version), `files of ${version}`);
  }
});

t.test('rule and directive ids come from the generated reporting contexts, for any parent', async (t) => {
  const inputs = tempDir(t, 'onerelay-own-');
  await writeOwnPolicies(inputs, {
    relayId: RELAY,
    parentId: PARENT,
    configId: 'cfg-1',
    serverVersion: '9.1.0',
    userDirectives: [{ ruleId: 'r-1', directiveId: 'd-user', technique: 'user_technique' }],
  });
  const expected = await expectedReports(inputs, { SERVER_VERSION: '9.1.0' }, RELAY);
  const ids = (component: string) => expected.components.find((c) => c.component === component);
  // the parent's common rule from common.cf's TRACKINGKEY, not promises.cf's literal root ids
  t.match(ids('Update'), { ruleId: `hasPolicyServer-${PARENT}`, directiveId: `common-hasPolicyServer-${PARENT}`, technique: 'Common' });
  t.match(ids('Inventory'), { ruleId: 'inventory-all', directiveId: 'inventory-all' });
  t.match(ids('Reload Rudder services'), { ruleId: `policy-server-${RELAY}`, directiveId: `server-common-${RELAY}` });
  t.match(ids('Synchronize policies'), { ruleId: `policy-server-${RELAY}`, directiveId: `rudder-service-relayd-${RELAY}` });
  t.match(ids('Apache service'), { ruleId: `policy-server-${RELAY}`, directiveId: `rudder-service-apache-${RELAY}`, technique: 'rudder-service-apache' }, 'technique name of the reporting context, as the agent writes it');
  t.same(expected.skippedDirectives, ['d-user'], 'a user directive is not reported on (no agent to apply it)');
});

function resultsFor(components: Awaited<ReturnType<typeof expectedReports>>['components'], errorOn: string): ComponentResult[] {
  return components.map((c) => ({ ...c, status: c.component === errorOn ? 'result_error' : typeof c.probe === 'object' ? 'result_na' : 'result_success', message: `${c.component} checked` }));
}

t.test('a signed run log openssl verifies and the relayd grammar reads back whole', async (t) => {
  const inputs = tempDir(t, 'onerelay-own-');
  await writeOwnPolicies(inputs, { relayId: RELAY, configId: '20261206-070000-6f3a9c21', serverVersion: '9.2.1' });
  const expected = await expectedReports(inputs, { SERVER_VERSION: '9.2.1' }, RELAY);
  const runStart = new Date('2026-12-06T07:00:03.250Z');
  const text = buildRunlog({ nodeId: RELAY, configId: '20261206-070000-6f3a9c21', runStart, reportMode: 'full-compliance', results: resultsFor(expected.components, 'Synchronize policies') });
  if (text === undefined) throw new Error('full-compliance sends a run log');
  const name = runlogFileName(RELAY, runStart);
  t.equal(name, `2026-12-06T07:00:03+00:00@${RELAY}.log.gz`);

  const dir = tempDir(t, 'onerelay-own-signed-');
  const signed = join(dir, 'runlog.signed');
  writeFileSync(signed, signRunlogText(text, signer));
  const verified = await run('openssl', ['smime', '-verify', '-text', '-nointern', '-noverify', '-certfile', CERT_FILE, '-in', signed]);
  t.equal(verified.code, 0, `openssl smime -verify: ${verified.stderr}`);
  t.equal(verified.stdout.toString('utf8').replaceAll('\r\n', '\n'), text, 'the signed text is the run log');

  const runlog = parseRunlog(verified.stdout.toString('utf8'), parseRunInfo(name));
  t.equal(runlog.config_id, '20261206-070000-6f3a9c21');
  t.equal(runlog.reports.length, expected.components.length + 2, 'control start + one result per component + control end');
  t.same(new Set(runlog.reports.map((r) => r.start_datetime)).size, 1, 'one run start on every line');
  t.same(new Set(runlog.reports.map((r) => r.node_id)), new Set([RELAY]));
  const controls = runlog.reports.filter((r) => r.event_type === 'control');
  t.same(controls.map((r) => [r.component, r.key_value, r.rule_id, r.directive_id]), [
    ['start', '20261206-070000-6f3a9c21', 'rudder', 'run'],
    ['end', '20261206-070000-6f3a9c21', 'rudder', 'run'],
  ]);
  const results = runlog.reports.filter((r) => r.event_type !== 'control');
  t.same(results.map((r) => `${r.component}/${r.key_value}`).sort(), expectedPairs('9.1'), 'exactly one result per (component, key)');
  t.same(results.filter((r) => r.event_type === 'result_error').map((r) => r.component), ['Synchronize policies']);
});

t.test('changes-only sends the control lines and errors; reports-disabled sends nothing', async (t) => {
  const inputs = tempDir(t, 'onerelay-own-');
  await writeOwnPolicies(inputs, { relayId: RELAY, configId: 'cfg-2', serverVersion: '9.1.0' });
  const { components } = await expectedReports(inputs, { SERVER_VERSION: '9.1.0' }, RELAY);
  const runStart = new Date();
  const healthy = components.map((c): ComponentResult => ({ ...c, status: 'result_success', message: 'ok' }));
  const quiet = buildRunlog({ nodeId: RELAY, configId: 'cfg-2', runStart, reportMode: 'changes-only', results: healthy }) ?? '';
  t.same(parseRunlog(quiet).reports.map((r) => r.event_type), ['control', 'control']);
  const failing = buildRunlog({ nodeId: RELAY, configId: 'cfg-2', runStart, reportMode: 'changes-only', results: resultsFor(components, 'Update') }) ?? '';
  t.same(parseRunlog(failing).reports.map((r) => `${r.event_type}:${r.component}`), ['control:start', 'result_error:Update', 'control:end']);
  t.equal(buildRunlog({ nodeId: RELAY, configId: 'cfg-2', runStart, reportMode: 'reports-disabled', results: healthy }), undefined);
});

t.test('a message that looks like a log level stays a report', async (t) => {
  const text = buildRunlog({
    nodeId: RELAY,
    configId: 'c',
    runStart: new Date(),
    reportMode: 'full-compliance',
    results: [{ technique: 'Common', ruleId: 'r', directiveId: 'd', component: 'Update', key: 'None', status: 'result_error', message: 'error: line one\nR: line two' }],
  });
  const reports = parseRunlog(text ?? '').reports;
  t.same(reports.map((r) => r.event_type), ['control', 'result_error', 'control']);
  t.equal(reports[1]?.msg, '- error: line one R: line two');
});

t.test('the reports pipeline verifies the relay\'s own run log with its own certificate', async (t) => {
  const dir = tempDir(t, 'onerelay-own-inspect-');
  writeFileSync(join(dir, 'nodeslist.json'), '{}');
  writeFileSync(join(dir, 'nodescerts.pem'), '');
  const nodes = createNodesRegistry({ myId: RELAY, nodesListFile: join(dir, 'nodeslist.json'), nodesCertsFile: join(dir, 'nodescerts.pem'), log: pino({ level: 'silent' }) });
  await nodes.reload();
  const runStart = new Date();
  const text = buildRunlog({ nodeId: RELAY, configId: 'c', runStart, reportMode: 'full-compliance', results: [] }) ?? '';
  const name = runlogFileName(RELAY, runStart);
  const signed = gzipSync(signRunlogText(text, signer));
  const base = { myId: RELAY, verifyMode: 'direct' as const, skipEventTypes: [], maxDecodedBytes: 1 << 20 };

  t.match(await createReportInspector(base, nodes).inspect(name, signed), { kind: 'reject', reason: 'unknown-node' }, 'without its certificate: an unknown node');
  const own = createReportInspector({ ...base, ownCertificate: signer.certificate }, nodes);
  t.match(await own.inspect(name, signed), { kind: 'forward', nodeId: RELAY, verified: true, reports: 2 });
  const other = new X509Certificate(readFileSync(join(KEYS, `${PARENT}.cert`)));
  t.match(
    await createReportInspector({ ...base, ownCertificate: other }, nodes).inspect(name, signed),
    { kind: 'reject', reason: 'bad-signature' },
    'checked, not waved through: another certificate refuses it',
  );
});

async function until(what: string, predicate: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

t.test('runs in the same second (a policy change starts one at once) get distinct, later run times and names', async (t) => {
  const inputs = tempDir(t, 'onerelay-own-');
  const spool = tempDir(t, 'onerelay-own-reports-');
  await writeOwnPolicies(inputs, { relayId: RELAY, configId: 'cfg-a', serverVersion: '9.1.0' });
  const log = pino({ level: 'silent' });
  const policies = createOwnPolicies({ inputsDirectory: inputs, pollMs: 60_000 }, { log });
  await policies.refresh();
  const ok = { ok: true, message: 'ok', at: Date.now() };
  const compliance = createOwnCompliance(
    { nodeId: RELAY, signer, runIntervalMs: 3_600_000, firstRunMaxDelayMs: 0 },
    {
      policies,
      inventory: undefined,
      probes: { sync: () => undefined, https: async () => ok, relayService: async () => ok, upstreamCertificate: async () => undefined, security: async () => ok },
      // 'wx': a second file of the same name is an error here, as it would be a duplicate run upstream
      store: async (name, body) => writeFile(join(spool, name), await buffer(body), { flag: 'wx' }),
      log,
    },
  );
  t.teardown(() => compliance.stop());
  // start just after a second begins, so that the runs below fall into the same second
  while (Date.now() % 1000 > 100) await new Promise((resolve) => setTimeout(resolve, 5));
  const runs: Array<OwnRun | undefined> = [];
  for (let i = 0; i < 3; i += 1) runs.push(await compliance.runNow());
  t.ok(runs.every((r) => r?.file !== undefined), `every run wrote its run log (${compliance.status().lastProblem ?? 'no problem'})`);
  const starts = runs.map((r) => Date.parse(r?.at ?? ''));
  t.ok(starts.every((s, i) => i === 0 || s > starts[i - 1]!), `run times strictly increase: ${runs.map((r) => r?.at).join(', ')}`);
  t.equal(new Set(runs.map((r) => r?.file)).size, 3, 'three names');
  t.equal((await readdir(spool)).length, 3, 'three files');

  // a policy change right after: its run (started at once by start()'s listener) is later still
  await compliance.start();
  await until('the first scheduled run', () => compliance.status().lastRun !== runs[2]);
  const first = compliance.status().lastRun;
  await writeOwnPolicies(inputs, { relayId: RELAY, configId: 'cfg-b', serverVersion: '9.1.0' });
  await policies.refresh();
  await until('the run of the new policies', () => compliance.status().lastRun?.configId === 'cfg-b');
  const changed = compliance.status().lastRun!;
  t.ok(Date.parse(changed.at) > Date.parse(first!.at) && Date.parse(first!.at) > starts[2]!, `${changed.at} after ${first!.at} after ${runs[2]?.at}`);
  t.equal((await readdir(spool)).length, 5, 'five distinct files');
});
