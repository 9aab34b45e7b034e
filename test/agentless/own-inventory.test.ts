// The relay's own inventory job with the real forwarding pipeline (spool queues, inventory handler, upstream
// client) against a real HTTPS upstream; only the relay's own policies are a small in-test implementation.

import { execFile } from 'node:child_process';
import { copyFile, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { pino, type Logger } from 'pino';
import t from 'tap';
import { AGENT_VERSION, createOwnInventory, SENT_MESSAGE, type OwnInventory } from '../../src/agentless/index.js';
import { fingerprintOf } from '../../src/agentless/inventory.js';
import type { OwnPolicyState } from '../../src/agentless/types.js';
import { loadConfig } from '../../src/config/index.js';
import { loadIdentity } from '../../src/identity/index.js';
import { peersOf } from '../../src/app/compose.js';
import { createLogger } from '../../src/log.js';
import { createPrimaryMetrics } from '../../src/metrics/index.js';
import { createNodesRegistry } from '../../src/nodes/index.js';
import { identityPaths } from '../../src/app/paths.js';
import { createForwarding } from '../../src/app/forwarding.js';
import { createSpool } from '../../src/spool/index.js';
import { FIXTURE_KEYS, RELAY_ID, relayConfigToml } from '../support/relay.js';
import { checkInventoryAsRoot, textAt } from '../support/root-inventory-check.js';
import { freePort, tempDir } from '../support/tmp.js';
import { UPSTREAM_DEFAULT_ID, startUpstream, type ReceivedFile, type TestUpstream } from '../support/upstream.js';

const run = promisify(execFile);
/** the relay's own DAV password from its policies: not output.upstream.password (dav-secret) */
const OWN_DAV_PASSWORD = 'own-policies-dav-password';

async function waitUntil(what: string, predicate: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

function policyState(davPassword: string): OwnPolicyState {
  return {
    nodeConfigId: '20261206-070000-0a1b2c3d',
    reportMode: 'full-compliance',
    policyMode: 'enforce',
    runIntervalMs: 300_000,
    allowedNetworks: [],
    davUser: 'rudder',
    davPassword,
    generation: 1,
    inputsDirectory: '/nonexistent',
    variables: {},
  };
}

interface Setup {
  readonly dir: string;
  readonly upstream: TestUpstream;
  readonly job: OwnInventory;
  readonly inventoriesIncoming: string;
  readonly setPolicies: (state: OwnPolicyState | undefined) => void;
}

interface SetupOptions {
  upstreamDown?: boolean;
  log?: Logger;
  /** the job's state file as a previous run left it */
  state?: Record<string, unknown>;
  policies?: OwnPolicyState;
  changeResendMs?: { inventories?: number; 'inventory-updates'?: number };
}

async function setup(tt: { teardown(fn: () => unknown): void }, options: SetupOptions = {}): Promise<Setup> {
  const dir = tempDir(tt, 'onerelay-own-inventory-');
  await mkdir(join(dir, 'ppkeys'), { recursive: true, mode: 0o700 });
  await writeFile(join(dir, 'uuid.hive'), `${RELAY_ID}\n`);
  await copyFile(join(FIXTURE_KEYS, `${RELAY_ID}.nopass.priv`), join(dir, 'ppkeys', 'localhost.priv'));
  await copyFile(join(FIXTURE_KEYS, `${RELAY_ID}.pub`), join(dir, 'ppkeys', 'localhost.pub'));
  await copyFile(join(FIXTURE_KEYS, `${RELAY_ID}.cert`), join(dir, 'agent.cert'));
  await writeFile(join(dir, 'nodeslist.json'), '{}');
  await writeFile(join(dir, 'nodescerts.pem'), '');
  const upstream = await startUpstream(tt, { password: OWN_DAV_PASSWORD });
  if (options.upstreamDown) await upstream.setMode('down');
  const file = join(dir, 'onerelay.toml');
  await writeFile(
    file,
    relayConfigToml(dir, { https: await freePort(), api: await freePort() }, { upstream: { port: upstream.port, certificateFile: upstream.certificateFile }, ownInventory: true }),
  );
  const { config } = await loadConfig(file);
  const log = options.log ?? createLogger('off');
  const nodes = createNodesRegistry({ myId: RELAY_ID, nodesListFile: config.general.nodesListFile, nodesCertsFile: config.general.nodesCertsFile, log });
  await nodes.reload();
  const spool = createSpool({ reportsDirectory: config.processing.reporting.directory, inventoriesDirectory: config.processing.inventory.directory }, log);
  await spool.prepare({ cleanTmp: true });
  const metrics = createPrimaryMetrics({ spool, nodes, queues: { queues: () => [] }, workers: async () => [] });
  let job: OwnInventory | undefined;
  const pipelines = createForwarding(config, {
    myId: RELAY_ID,
    nodes,
    spool,
    metrics,
    onFullChange: () => undefined,
    inventoryCredentials: (queue, name) => job?.credentialsFor(queue, name),
    onInventoryOutcome: (queue, name, outcome) => job?.noteQueueOutcome(queue, name, outcome),
    log,
  });
  const identity = await loadIdentity(identityPaths(config));
  const peers = peersOf(config, nodes, identity);
  let policies: OwnPolicyState | undefined = options.policies;
  const stateFile = join(dir, 'own-inventory.json');
  if (options.state !== undefined) await writeFile(stateFile, `${JSON.stringify(options.state)}\n`);
  job = createOwnInventory(
    {
      nodeId: RELAY_ID,
      identityPaths: identityPaths(config),
      policyServerHostname: '127.0.0.1',
      stateFile,
      checkIntervalMs: 200,
      retryMs: 300,
      ...(options.changeResendMs === undefined ? {} : { changeResendMs: options.changeResendMs }),
      maxBytes: 1024 * 1024,
    },
    { spool, ownPolicies: () => policies, upstream: () => peers.upstream(), log },
  );
  await pipelines.start();
  await job.start();
  const started = job;
  tt.teardown(async () => {
    await started.stop();
    await pipelines.stop();
    await peers.close();
  });
  return { dir, upstream, job: started, inventoriesIncoming: spool.incomingOf('inventories'), setPolicies: (state) => (policies = state) };
}

/** the inventories the upstream holds on an endpoint, each with its signature */
function pairs(upstream: TestUpstream, endpoint: 'inventories' | 'inventory-updates'): Array<{ inventory: ReceivedFile; signature: ReceivedFile | undefined }> {
  const files = upstream.files(endpoint);
  return files
    .filter((f) => f.name.endsWith('.ocs.gz'))
    .map((inventory) => ({ inventory, signature: files.find((f) => f.name === inventory.name.replace(/\.gz$/, '.sign')) }));
}

async function rootCheck(pair: { inventory: ReceivedFile; signature: ReceivedFile | undefined }, rudder?: '8.1' | '8.2') {
  return checkInventoryAsRoot({
    inventory: pair.inventory.body,
    inventoryName: pair.inventory.name,
    signature: pair.signature?.body,
    signatureName: pair.signature?.name,
    ...(rudder === undefined ? {} : { rudder }),
  });
}

t.test('first start: a signed inventory goes to /inventories/ with the default password, and the root would accept it', async (tt) => {
  const { upstream, job } = await setup(tt);
  await upstream.waitFor(2, 20_000);
  const [pair] = pairs(upstream, 'inventories');
  tt.ok(pair, 'an .ocs.gz on /inventories/');
  if (!pair) return;
  tt.match(pair.inventory.name, new RegExp(`^${RELAY_ID}_\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\+00:00\\.ocs\\.gz$`), 'do-inventory name: <uuid>_<date --utc --iso-8601=seconds>.ocs.gz');
  tt.ok(pair.signature, 'and its <name>.ocs.sign');
  tt.same([pair.inventory.user, pair.inventory.password], ['rudder', 'rudder'], 'first inventory: user and default password');
  tt.same([pair.signature?.user, pair.signature?.password], ['rudder', 'rudder']);
  tt.ok(upstream.requests.some((r) => r.method === 'GET' && r.url === '/uuid'), 'the policy server id was asked with GET /uuid');
  const result = await rootCheck(pair);
  tt.same(result.problems, [], 'every check of the root passes');
  tt.equal(result.nodeId, RELAY_ID);
  tt.equal(result.policyServerId, UPSTREAM_DEFAULT_ID, 'POLICY_SERVER_UUID is what /uuid answered');
  tt.equal(result.agentName, 'cfengine-community');
  tt.equal(result.agentVersion, AGENT_VERSION);
  for (const rudder of ['8.1', '8.2'] as const) {
    const older = await rootCheck(pair, rudder);
    tt.same(older.problems, [], `a ${rudder} root (agent version from the rudder-agent package) accepts it too`);
    tt.equal(older.agentVersion, AGENT_VERSION);
  }
  tt.equal(textAt(result.document!, ['REQUEST', 'CONTENT', 'RUDDER', 'AGENT', 'AGENT_CERT']), (await readFile(join(FIXTURE_KEYS, `${RELAY_ID}.cert`), 'utf8')).trim(), 'AGENT_CERT is agent.cert');
  const upload = upstream.received.findIndex((f) => f === pair.inventory);
  tt.ok(upload < upstream.received.findIndex((f) => f === pair.signature), '.ocs.gz is sent before .ocs.sign');
  await waitUntil('the outcome is recorded', () => job.lastOutcome()?.ok === true);
  tt.equal(job.lastOutcome()?.message, SENT_MESSAGE);
  tt.equal(job.status()['endpoint'], 'inventories');

  // the checker refuses what the root refuses: a file changed after signing, and an inventory without LOGDATE
  const xml = (await import('node:zlib')).gunzipSync(pair.inventory.body).toString('utf8');
  const tampered = await checkInventoryAsRoot({ inventory: gzipSync(xml.replace('<QUERY>INVENTORY', '<QUERY>INVENTORZ')), inventoryName: pair.inventory.name, signature: pair.signature?.body, signatureName: pair.signature?.name });
  tt.match(tampered.problems.join('\n'), /SignatureInvalid/, 'a changed byte fails the signature');
  const undated = await checkInventoryAsRoot({ inventory: Buffer.from(xml.replace(/<LOGDATE>[^<]*<\/LOGDATE>/, '')), inventoryName: pair.inventory.name.replace(/\.gz$/, ''), signature: undefined, signatureName: undefined });
  tt.match(undated.problems.join('\n'), /inventory age/, 'no LOGDATE is refused');
  const otherUid = await checkInventoryAsRoot({ inventory: Buffer.from(xml.replace(`<UUID>${RELAY_ID}</UUID>`, `<UUID>${UPSTREAM_DEFAULT_ID}</UUID>`)), inventoryName: 'x.ocs', signature: undefined, signatureName: undefined });
  tt.match(otherUid.problems.join('\n'), /checkCertificateSubject/, 'a certificate UID that is not the node id is refused');
});

t.test('once its own policies exist, the inventory goes to /inventory-updates/ with DAVUSER/DAVPASSWORD', async (tt) => {
  const { upstream, job, setPolicies } = await setup(tt);
  await upstream.waitFor(2, 20_000);
  await waitUntil('the first inventory is sent', () => job.lastOutcome()?.ok === true);
  setPolicies(policyState(OWN_DAV_PASSWORD));
  await job.trigger('test: policies arrived');
  await upstream.waitFor(4, 20_000);
  const [pair] = pairs(upstream, 'inventory-updates');
  tt.ok(pair, 'an .ocs.gz on /inventory-updates/');
  if (!pair) return;
  tt.same([pair.inventory.user, pair.inventory.password], ['rudder', OWN_DAV_PASSWORD], 'the DAV credentials of the own policies, not output.upstream.password');
  tt.same([pair.signature?.user, pair.signature?.password], ['rudder', OWN_DAV_PASSWORD]);
  tt.same((await rootCheck(pair)).problems, []);
  await waitUntil('the outcome is recorded', () => job.status()['waiting_upstream'] === false && job.lastOutcome()?.ok === true);
  tt.equal(job.status()['endpoint'], 'inventory-updates');
});

t.test('an upstream outage delays the inventory but does not lose it', async (tt) => {
  const { upstream, job, inventoriesIncoming } = await setup(tt);
  await upstream.waitFor(2, 20_000);
  await waitUntil('the first inventory is sent', () => job.lastOutcome()?.ok === true);
  await upstream.setMode('down');
  await job.trigger('test: during an outage');
  // the policy server id learnt before is used: the inventory is made and waits in the spool
  const waiting = (await readdir(inventoriesIncoming)).filter((n) => n.startsWith(RELAY_ID));
  tt.equal(waiting.length, 2, 'the .ocs.gz and .ocs.sign wait in the spool');
  await waitUntil('a forward failed', () => job.lastOutcome()?.ok === false);
  tt.match(job.lastOutcome()?.message, /waits in the relay's spool/);
  await upstream.setMode('ok');
  await upstream.waitFor(4, 30_000);
  const sent = pairs(upstream, 'inventories').map((p) => p.inventory.name.replace(/\.gz$/, ''));
  tt.ok(waiting.every((n) => sent.includes(n.replace(/\.(gz|sign)$/, ''))), 'the inventory made during the outage reached the upstream');
  for (const pair of pairs(upstream, 'inventories')) tt.same((await rootCheck(pair)).problems, [], `${pair.inventory.name} accepted`);
  await waitUntil('the outcome is recorded', () => job.lastOutcome()?.ok === true);
});

t.test('the same failure at every retry is logged once at error level, the repeats at debug level', async (tt) => {
  const lines: Array<{ level: number; event?: string; msg?: string; repeats?: number }> = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => void lines.push(JSON.parse(line) as (typeof lines)[number]) });
  const { upstream, job } = await setup(tt, { upstreamDown: true, log });
  const failures = () => lines.filter((l) => l.event === 'own_inventory_failed');
  // retryMs is 300 ms in this set-up: wait for a few retries
  await waitUntil('three attempts failed', () => failures().length >= 3);
  const seen = failures();
  tt.equal(seen[0]?.level, 50, 'the first failure is an error');
  // the reason may change between attempts (refused, reset): a new message is an error line again
  const expected = seen.map((l, i) => (i > 0 && seen[i - 1]?.msg === l.msg ? 20 : 50));
  tt.same(seen.map((l) => l.level), expected, 'a repeat of the same message is a debug line');
  tt.ok(seen.some((l) => l.level === 20 && (l.repeats ?? 0) >= 1), 'repeats are counted');
  tt.equal(job.status()['status'], 'error', 'the status still says error');
  await upstream.setMode('ok');
  await waitUntil('the outcome is recorded', () => job.lastOutcome()?.ok === true);
});

t.test('a new certificate makes a new inventory at once, within the resend delay (the root checks signatures with the last one it got)', async (tt) => {
  const { log, lines } = capture();
  const { dir, upstream, job } = await setup(tt, { log });
  await upstream.waitFor(2, 20_000);
  await waitUntil('the first inventory is sent', () => job.lastOutcome()?.ok === true);
  // a new certificate for the same key and id, as an administrator renewing it would make
  await run('openssl', ['req', '-new', '-x509', '-key', join(dir, 'ppkeys', 'localhost.priv'), '-subj', `/UID=${RELAY_ID}`, '-days', '3650', '-out', join(dir, 'agent.cert.new')]);
  const renewed = await readFile(join(dir, 'agent.cert.new'), 'utf8');
  await writeFile(join(dir, 'agent.cert'), renewed);
  await upstream.waitFor(4, 20_000);
  const latest = pairs(upstream, 'inventories').at(-1);
  tt.ok(latest);
  if (!latest) return;
  const result = await rootCheck(latest);
  tt.same(result.problems, []);
  tt.equal(textAt(result.document!, ['REQUEST', 'CONTENT', 'RUDDER', 'AGENT', 'AGENT_CERT']), renewed.trim(), 'the new inventory carries the new certificate');
  tt.ok(lines.some((l) => l.event === 'own_inventory_checked' && l.due === 'certificate changed'), 'made because the certificate changed');
  tt.notOk(lines.some((l) => l.event === 'own_inventory_change_deferred'), 'not deferred');
});

t.test('first start while the upstream is down: the outcome says why, and the inventory goes once it is back', async (tt) => {
  const { upstream, job } = await setup(tt, { upstreamDown: true });
  await waitUntil('the first attempt failed', () => job.lastOutcome() !== undefined);
  tt.equal(job.lastOutcome()?.ok, false);
  tt.match(job.lastOutcome()?.message, /^Could not retrieve the UUID of the policy server: /, "the agent's words, with the reason");
  tt.equal(job.status()['status'], 'error');
  await upstream.setMode('ok');
  await upstream.waitFor(2, 20_000);
  const [pair] = pairs(upstream, 'inventories');
  tt.ok(pair);
  if (pair) tt.same((await rootCheck(pair)).problems, []);
  await waitUntil('the outcome is recorded', () => job.lastOutcome()?.ok === true);
});

function capture(): { log: Logger; lines: Array<{ level: number; event?: string; msg?: string; due?: string | null; until?: string }> } {
  const lines: Array<{ level: number; event?: string; msg?: string; due?: string | null; until?: string }> = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => void lines.push(JSON.parse(line) as (typeof lines)[number]) });
  return { log, lines };
}

t.test('after the clock went back (last inventory hours ahead), the inventory is made at once and stop() does not wait', async (tt) => {
  const { log, lines } = capture();
  const ahead = Date.now() + 3 * 3_600_000;
  const { upstream, job } = await setup(tt, { log, state: { policyServerId: UPSTREAM_DEFAULT_ID, fingerprint: 'older', lastQueuedAt: ahead, lastEndpoint: 'inventories' } });
  await upstream.waitFor(2, 20_000);
  tt.ok(lines.some((l) => l.event === 'own_inventory_checked' && l.due === 'clock went back'), 'made because the clock went back');
  const [pair] = pairs(upstream, 'inventories');
  tt.ok(pair && (await rootCheck(pair)).problems.length === 0, 'a good inventory');
  await waitUntil('lastQueuedAt is the real time again, so a restart does not repeat it', () => Date.parse(String(job.status()['last_queued'])) < ahead - 3_600_000);
  const before = Date.now();
  await job.stop();
  tt.ok(Date.now() - before < 2_000, `stop() returned in ${Date.now() - before} ms`);
});

t.test('link-local addresses do not count as an identity change; a global one does', async (tt) => {
  const cert = (await readFile(join(FIXTURE_KEYS, `${RELAY_ID}.cert`), 'utf8')).trim();
  const facts = {
    hostname: 'relay1',
    fqdn: 'relay1.example.net',
    os: { name: 'Debian', fullName: 'Debian GNU/Linux 12', version: '12', kernelName: 'linux', kernelVersion: '6.1.0', arch: 'x86_64' },
    networks: [{ name: 'eth0', family: 'IPv4' as const, address: '192.0.2.10', netmask: '255.255.255.0', mac: '02:00:00:00:00:01', isInternal: false }],
    memoryMb: 1024,
    swapMb: 0,
    cpu: undefined,
    timezone: { name: 'UTC', offset: '+0000' },
  };
  const base = fingerprintOf(facts, cert);
  const withLinkLocal = (address: string, family: 'IPv4' | 'IPv6') => ({
    ...facts,
    networks: [...facts.networks, { name: 'veth1a2b', family, address, netmask: family === 'IPv4' ? '255.255.0.0' : 'ffff:ffff:ffff:ffff::', mac: '02:00:00:00:00:02', isInternal: false }],
  });
  tt.equal(fingerprintOf(withLinkLocal('fe80::1c2d:3eff:fe4f:5a6b', 'IPv6'), cert), base, 'a new veth with an fe80:: address');
  tt.equal(fingerprintOf(withLinkLocal('FEBF::1', 'IPv6'), cert), base, 'the whole of fe80::/10');
  tt.equal(fingerprintOf(withLinkLocal('169.254.12.34', 'IPv4'), cert), base, 'an IPv4 link-local address');
  tt.not(fingerprintOf(withLinkLocal('fec0::1', 'IPv6'), cert), base, 'fec0:: is not link-local');
  tt.not(fingerprintOf(withLinkLocal('2001:db8::5', 'IPv6'), cert), base, 'a global IPv6 address changes it');
  tt.not(fingerprintOf(withLinkLocal('192.0.2.11', 'IPv4'), cert), base, 'a global IPv4 address changes it');
});

t.test('a change within the resend delay since the last inventory waits (480 min once the node is known)', async (tt) => {
  const { log, lines } = capture();
  const hourAgo = Date.now() - 3_600_000;
  const { upstream, job } = await setup(tt, {
    log,
    policies: policyState(OWN_DAV_PASSWORD),
    state: { policyServerId: UPSTREAM_DEFAULT_ID, fingerprint: 'facts of an hour ago', lastQueuedAt: hourAgo, lastSentAt: hourAgo, lastEndpoint: 'inventory-updates' },
  });
  await waitUntil('the change is seen and deferred', () => lines.some((l) => l.event === 'own_inventory_change_deferred'));
  const deferred = lines.filter((l) => l.event === 'own_inventory_change_deferred');
  tt.equal(deferred[0]?.until, new Date(hourAgo + 480 * 60_000).toISOString(), 'until 8 hours after the last inventory');
  tt.equal(job.status()['change_deferred_until'], deferred[0]?.until, 'the status says until when');
  const checked = () => lines.filter((l) => l.event === 'own_inventory_checked').length;
  const seen = checked();
  await waitUntil('three more checks', () => checked() >= seen + 3);
  tt.equal(upstream.received.length, 0, 'no inventory was made');
  tt.equal(lines.filter((l) => l.event === 'own_inventory_change_deferred').length, 1, 'the deferral is logged once');
  tt.ok(lines.filter((l) => l.event === 'own_inventory_checked').every((l) => l.due === null), 'no check found an inventory due');
});

t.test('a change 1 hour after the last inventory of a node not yet known (15 min delay) makes one at once', async (tt) => {
  const { log, lines } = capture();
  const hourAgo = Date.now() - 3_600_000;
  const { upstream } = await setup(tt, { log, state: { policyServerId: UPSTREAM_DEFAULT_ID, fingerprint: 'facts of an hour ago', lastQueuedAt: hourAgo, lastSentAt: hourAgo, lastEndpoint: 'inventories' } });
  await upstream.waitFor(2, 20_000);
  tt.ok(lines.some((l) => l.event === 'own_inventory_checked' && l.due === 'identity facts changed'));
  tt.notOk(lines.some((l) => l.event === 'own_inventory_change_deferred'));
});
