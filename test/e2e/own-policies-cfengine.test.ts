// The relay's own policies from a stock Rudder root (issue 18, item 2): Debian's cf-serverd 3.21 serves a root tree
// with the relay's generated policies in Rudder's formats (rudder.json as PolicyWriterService writes it, and
// rudder-promises-generated) under /var/rudder/share/<relay>/rules/cfengine-community/, admitting the relay's key as
// Rudder does; the onerelay CLI pulls them with its CFEngine client into its own inputs folder and applies them:
// ALLOWED_NETWORKS on the HTTPS front door (curl from a loopback source address) and on the CFEngine server (our
// protocol client from that address), the run interval; a new generation is applied at the next sync without a
// restart; a broken one is refused and the last good one stays; a TOML value wins, and the status says so.

import { execFile } from 'node:child_process';
import { createPrivateKey, type KeyObject } from 'node:crypto';
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { compareTrees, connectCfengine, createCfWorkdir, hasCfengine, loadCfWorkdir, startCfServerd } from '../support/cfengine.js';
import { DAV_PASSWORD, FIXTURE_KEYS, RELAY_ID, startRelay, type RunningRelay } from '../support/relay.js';
import { relayVariables, rudderJsonText, writeOwnPolicies } from '../support/rudder-json.js';
import { freePort, tempDir } from '../support/tmp.js';

const RELAY = 'e745a140-40bc-4b86-b6dc-084488fc906b';
const ROOT_ID = RELAY_ID; // the fixture key 37817c4d… plays the root: its certificate is the relay's pin
// loopback source addresses standing for a node's network: only 127.0.0.1 (the relay and its parent) is local here
const NODE_A = '127.0.0.2';
const NODE_B = '127.0.0.3';

interface OwnStatus {
  status: string;
  details?: string;
  node_config_id?: string;
  generation?: number;
  applied: Record<string, { value: unknown; source: string }>;
  not_applied: Record<string, unknown>;
}

async function ownStatus(relay: RunningRelay): Promise<OwnStatus> {
  const response = await fetch(`${relay.apiUrl}/rudder/relay-api/1/system/status`);
  const body = (await response.json()) as { data: { own_policies: OwnStatus } };
  return body.data.own_policies;
}

async function syncNow(relay: RunningRelay): Promise<{ result: string }> {
  const response = await fetch(`${relay.apiUrl}/rudder/relay-api/1/sync`, { method: 'POST' });
  return (await response.json()) as { result: string };
}

/** HTTP status of a WebDAV PUT sent with curl from `source` (a loopback address) */
function curlPut(source: string, relay: RunningRelay, path: string, file: string, credentials: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      'curl',
      ['-sk', '--interface', source, '-u', credentials, '-T', file, '-o', '/dev/null', '-w', '%{http_code}', `https://127.0.0.1:${relay.httpsPort}${path}`],
      (error, stdout) => (error ? reject(error) : resolve(stdout.trim())),
    );
  });
}

/** whether the relay's CFEngine server lets a client from `source` reach the protocol banner */
async function cfengineAdmits(relay: RunningRelay, key: KeyObject, source: string): Promise<boolean> {
  try {
    const client = await connectCfengine(relay.cfenginePort, key, { localAddress: source });
    client.close();
    return client.banner.startsWith('CFE_v');
  } catch {
    return false;
  }
}

t.test('own policies from a stock cf-serverd, applied live', { skip: hasCfengine() ? false : 'cf-agent not installed', timeout: 180_000 }, async (t) => {
  const base = tempDir(t, 'onerelay-own-');
  const root = join(base, 'root');
  const relayShare = join(root, 'var', 'rudder', 'share', RELAY);
  const ownUpstream = join(relayShare, 'rules', 'cfengine-community');
  const generation1 = 1780492118337;
  await writeOwnPolicies(
    ownUpstream,
    relayVariables({ ALLOWED_NETWORKS: [`${NODE_A}/32`], AGENT_RUN_INTERVAL: '10', RUDDER_NODE_CONFIG_ID: '20261206-071000-aaaa0001', DAVPASSWORD: 'from-policies' }),
    generation1,
  );
  await mkdir(join(ownUpstream, 'certs'), { recursive: true });
  await copyFile(join(FIXTURE_KEYS, `${ROOT_ID}.cert`), join(ownUpstream, 'certs', 'root.pem'));
  await mkdir(join(relayShare, 'share'), { recursive: true });

  // cf-serverd with the root's key, admitting the relay's key on its share as Rudder does
  const serverd = join(base, 'cf-serverd');
  await createCfWorkdir(serverd, 1024);
  await copyFile(join(FIXTURE_KEYS, `${ROOT_ID}.nopass.priv`), join(serverd, 'ppkeys', 'localhost.priv'));
  await copyFile(join(FIXTURE_KEYS, `${ROOT_ID}.pub`), join(serverd, 'ppkeys', 'localhost.pub'));
  const relayKeyDir = join(base, 'relay-key');
  await mkdir(join(relayKeyDir, 'ppkeys'), { recursive: true });
  await copyFile(join(FIXTURE_KEYS, `${RELAY}.nopass.priv`), join(relayKeyDir, 'ppkeys', 'localhost.priv'));
  const relayKey = await loadCfWorkdir(relayKeyDir);
  const cf = await startCfServerd(await loadCfWorkdir(serverd), await freePort(), { keys: [{ path: `${relayShare}/`, admit: [relayKey.md5] }] });
  t.teardown(() => cf.stop());

  const clientKey = createPrivateKey(await readFile(join(FIXTURE_KEYS, `${ROOT_ID}.nopass.priv`)));
  const inventory = join(base, 'inventory.ocs');
  await writeFile(inventory, '<REQUEST><DEVICEID>node-2026-12-06-07-10-00</DEVICEID></REQUEST>\n');
  const state = join(base, 'state');
  const syncToml = `[sync]\nupstream = true\nprotocol = "cfengine"\ncfengine_port = ${cf.port}\ncfengine_connections = 2\ncfengine_path_prefix = "${root}"\nfrequency = "1h"\nstate_directory = "${state}"\n`;
  const options = {
    workers: 1,
    relayId: RELAY,
    // nothing listens there: the library archive is not fetched (logged), forwarding waits; neither matters here
    upstream: { port: await freePort(), certificateFile: join(FIXTURE_KEYS, `${ROOT_ID}.cert`) },
    allowedNetworks: null,
    // what the ACL always admits besides ALLOWED_NETWORKS: here only 127.0.0.1, so other loopback addresses can stand for nodes
    ownPoliciesToml: 'local_networks = ["127.0.0.1/32"]',
    extraToml: syncToml,
  } as const;
  let relay = await startRelay(t, options);
  const inputs = join(relay.dir, 'inputs');

  await t.test('first pull: the inputs folder holds what the root generated, and it applies', async (t) => {
    t.equal((await syncNow(relay)).result, 'success');
    t.same(await compareTrees(ownUpstream, inputs), [], 'own policies byte-identical in the inputs folder');
    const applied = await relay.waitForLog((l) => l.event === 'own_settings_applied' && JSON.stringify(l['allowed_networks']).includes(`${NODE_A}/32`));
    t.same(applied['allowed_networks'], ['127.0.0.1/32', '127.0.0.1', `${NODE_A}/32`], 'local networks, the parent, then ALLOWED_NETWORKS');
    const own = await ownStatus(relay);
    t.equal(own.status, 'success', JSON.stringify(own));
    t.equal(own.node_config_id, '20261206-071000-aaaa0001');
    t.equal(own.generation, generation1);
    t.same(own.applied['allowed_networks'], { value: ['127.0.0.1/32', '127.0.0.1', `${NODE_A}/32`], source: 'policies' });
    t.same(own.applied['run_interval_s'], { value: 600, source: 'policies' });
    t.same(own.applied['report_mode'], { value: 'full-compliance', source: 'policies' });
    t.same(own.applied['dav_password'], { value: '(set)', source: 'toml' }, 'the TOML password wins over DAVPASSWORD');
    t.equal(own.not_applied['RELAY_SYNC_METHOD'], 'classic');
    t.notOk(relay.output().includes('from-policies'), 'DAVPASSWORD never logged');

    t.equal(await curlPut(NODE_A, relay, '/inventories/a.ocs', inventory, 'rudder:rudder'), '201', 'HTTPS: an allowed network gets in');
    t.equal(await curlPut(NODE_B, relay, '/inventories/b.ocs', inventory, 'rudder:rudder'), '403', 'HTTPS: another address is refused');
    t.equal(await curlPut(NODE_A, relay, '/inventory-updates/a.ocs', inventory, `rudder:${DAV_PASSWORD}`), '201', 'the TOML credentials are the ones checked');
    t.equal(await curlPut(NODE_A, relay, '/inventory-updates/a2.ocs', inventory, 'rudder:from-policies'), '401');
    t.ok(await cfengineAdmits(relay, clientKey, NODE_A), 'CFEngine: an allowed network gets in');
    t.notOk(await cfengineAdmits(relay, clientKey, NODE_B), 'CFEngine: another address is refused');
  });

  await t.test('a new generation upstream applies at the next sync, without a restart', async (t) => {
    const pid = relay.child.pid;
    await writeOwnPolicies(
      ownUpstream,
      relayVariables({ ALLOWED_NETWORKS: [`${NODE_B}/32`], AGENT_RUN_INTERVAL: '15', RUDDER_NODE_CONFIG_ID: '20261206-072000-bbbb0002', RUDDER_REPORT_MODE: 'changes-only' }),
      generation1 + 60_000,
    );
    t.equal((await syncNow(relay)).result, 'success');
    await relay.waitForLog((l) => l.event === 'own_settings_applied' && JSON.stringify(l['allowed_networks']).includes(`${NODE_B}/32`));
    const own = await ownStatus(relay);
    t.equal(own.node_config_id, '20261206-072000-bbbb0002');
    t.same(own.applied['run_interval_s'], { value: 900, source: 'policies' });
    t.same(own.applied['report_mode'], { value: 'changes-only', source: 'policies' });
    t.equal(await curlPut(NODE_B, relay, '/inventories/b.ocs', inventory, 'rudder:rudder'), '201', 'HTTPS: the newly allowed address gets in');
    t.equal(await curlPut(NODE_A, relay, '/inventories/a3.ocs', inventory, 'rudder:rudder'), '403', 'HTTPS: the address no longer allowed is refused');
    t.ok(await cfengineAdmits(relay, clientKey, NODE_B), 'CFEngine: the newly allowed address gets in');
    t.notOk(await cfengineAdmits(relay, clientKey, NODE_A), 'CFEngine: the address no longer allowed is refused');
    t.equal(relay.child.pid, pid, 'same process');
  });

  await t.test('a broken generation is refused: the last good policies stay, in force and on disk', async (t) => {
    const good = await readFile(join(inputs, 'rudder.json'), 'utf8');
    await writeFile(join(ownUpstream, 'rudder.json'), rudderJsonText(relayVariables()).slice(0, 300));
    await writeFile(join(ownUpstream, 'rudder-promises-generated'), `${generation1 + 120_000}\n`);
    t.equal((await syncNow(relay)).result, 'success', 'the rest of the sync goes on');
    const own = await ownStatus(relay);
    t.equal(own.status, 'error');
    t.match(own.details, /RELAY_ERR_OWN_POLICIES/);
    t.equal(own.node_config_id, '20261206-072000-bbbb0002', 'still in force');
    t.equal(await readFile(join(inputs, 'rudder.json'), 'utf8'), good, 'not replaced on disk');
    const refused = await relay.waitForLog((l) => l.event === 'own_policies_refused', 5_000);
    t.equal(refused['code'], 'RELAY_ERR_OWN_POLICIES', 'one coded log line');
    t.equal(await curlPut(NODE_B, relay, '/inventories/b2.ocs', inventory, 'rudder:rudder'), '201');
  });

  await t.test('a value set in the TOML wins over the policies, and the status says so', async (t) => {
    await relay.stop();
    relay = await startRelay(t, { ...options, dir: relay.dir, allowedNetworks: ['127.0.0.1/32', `${NODE_A}/32`] });
    const own = await ownStatus(relay);
    t.equal(own.node_config_id, '20261206-072000-bbbb0002', 'the policies on disk are read at start');
    t.same(own.applied['allowed_networks'], { value: ['127.0.0.1/32', `${NODE_A}/32`], source: 'toml' });
    t.same(own.applied['run_interval_s'], { value: 900, source: 'policies' });
    t.equal(await curlPut(NODE_A, relay, '/inventories/a4.ocs', inventory, 'rudder:rudder'), '201', 'the TOML network is admitted');
    t.equal(await curlPut(NODE_B, relay, '/inventories/b3.ocs', inventory, 'rudder:rudder'), '403', 'the policies\' network is not');
    t.notOk(await cfengineAdmits(relay, clientKey, NODE_B));
    const page = await (await fetch(`${relay.apiUrl}/`)).text();
    t.match(page, /<section id="own-policies">/);
    t.match(page, /<td>allowed_networks<\/td><td><code>127\.0\.0\.1\/32, 127\.0\.0\.2\/32<\/code><\/td><td>toml<\/td>/);
    t.match(page, /<td>run_interval_s<\/td><td><code>900<\/code><\/td><td>policies<\/td>/);
  });
});
