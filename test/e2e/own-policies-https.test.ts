// The relay's own policies through an upstream onerelay (issue 18, item 2 b): the upstream serves a sub-relay's
// own rules/cfengine-community (beside its nodes' share/) in the sync manifest when the puller asks for them, the
// sub-relay lands them in its own inputs folder (never in its policies tree, so never served to its nodes) and
// applies them; a new generation at the next sync, no restart.

import { execFile } from 'node:child_process';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { compareTrees } from '../support/cfengine.js';
import { FIXTURE_KEYS, RELAY_ID, startRelay, type RunningRelay } from '../support/relay.js';
import { relayVariables, writeOwnPolicies } from '../support/rudder-json.js';
import { tempDir } from '../support/tmp.js';

const RELAY = 'e745a140-40bc-4b86-b6dc-084488fc906b';
const E745_PIN = 'sha256//I8utFWGj+OpqpbiAIZ/s8qRC4fQXxQ8IRVjFe0X1Lug=';
const N1 = 'aaaaaaaa-0000-4000-8000-000000000001';
const NODE_A = '127.0.0.2';
const NODE_B = '127.0.0.3';

async function syncNow(relay: RunningRelay): Promise<{ result: string }> {
  const response = await fetch(`${relay.apiUrl}/rudder/relay-api/1/sync`, { method: 'POST' });
  return (await response.json()) as { result: string };
}

async function ownStatus(relay: RunningRelay): Promise<{ status: string; node_config_id?: string; applied: Record<string, { value: unknown; source: string }> }> {
  const body = (await (await fetch(`${relay.apiUrl}/rudder/relay-api/1/system/status`)).json()) as {
    data: { own_policies: { status: string; node_config_id?: string; applied: Record<string, { value: unknown; source: string }> } };
  };
  return body.data.own_policies;
}

function curlPut(source: string, relay: RunningRelay, path: string, file: string, credentials = 'rudder:rudder'): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      'curl',
      ['-sk', '--interface', source, '-u', credentials, '-T', file, '-o', '/dev/null', '-w', '%{http_code}', `https://127.0.0.1:${relay.httpsPort}${path}`],
      (error, stdout) => (error ? reject(error) : resolve(stdout.trim())),
    );
  });
}

t.test('a sub-relay pulls its own policies from an onerelay upstream and applies them', { timeout: 120_000 }, async (t) => {
  const nodesList = {
    [RELAY]: { hostname: '127.0.0.1', 'key-hash': E745_PIN, 'policy-server': RELAY_ID },
    [N1]: { hostname: 'n1', 'policy-server': RELAY },
  };
  const upstream = await startRelay(t, { workers: 1, nodesList, extraToml: '[sync]\nserve = true\nmanifest_ttl = "1h"\n' });
  const share = join(upstream.dir, 'share');
  // what the upstream holds for the sub-relay: its own policies in <relay>/rules/, its nodes in <relay>/share/
  const ownUpstream = join(share, RELAY, 'rules', 'cfengine-community');
  await writeOwnPolicies(ownUpstream, relayVariables({ ALLOWED_NETWORKS: [`${NODE_A}/32`], AGENT_RUN_INTERVAL: '20', RUDDER_NODE_CONFIG_ID: 'https-gen-1' }), 1780492200000);
  await mkdir(join(share, RELAY, 'share', N1, 'rules', 'cfengine-community'), { recursive: true });
  await writeFile(join(share, RELAY, 'share', N1, 'rules', 'cfengine-community', 'promises.cf'), `${N1}\n`);

  const state = tempDir(t, 'onerelay-own-state-');
  const relay = await startRelay(t, {
    workers: 1,
    relayId: RELAY,
    upstream: { port: upstream.httpsPort, certificateFile: join(FIXTURE_KEYS, `${RELAY_ID}.cert`) },
    allowedNetworks: null,
    // no password in the TOML: DAVPASSWORD from the policies is the one checked and sent
    upstreamPassword: null,
    ownPoliciesToml: 'local_networks = ["127.0.0.1/32"]',
    extraToml: `[sync]\nupstream = true\nfrequency = "1h"\nstate_directory = "${state}"\n`,
  });
  const inputs = join(relay.dir, 'inputs');
  const inventory = join(state, 'inventory.ocs');
  await writeFile(inventory, '<REQUEST><DEVICEID>n</DEVICEID></REQUEST>\n');

  await t.test('first sync: own policies in the inputs folder, not in the policies tree, applied', async (t) => {
    t.equal((await syncNow(relay)).result, 'success');
    t.same(await compareTrees(ownUpstream, inputs), [], 'byte-identical own policies');
    t.same((await readdir(join(relay.dir, 'share'))).filter((n) => !n.startsWith('.')), [N1], 'the policies tree served to nodes holds only the nodes');
    t.equal(await readFile(join(relay.dir, 'share', N1, 'rules', 'cfengine-community', 'promises.cf'), 'utf8'), `${N1}\n`);
    await relay.waitForLog((l) => l.event === 'own_settings_applied' && JSON.stringify(l['allowed_networks']).includes(`${NODE_A}/32`));
    const own = await ownStatus(relay);
    t.equal(own.node_config_id, 'https-gen-1');
    t.same(own.applied['run_interval_s'], { value: 1200, source: 'policies' });
    t.equal(own.applied['allowed_networks']?.source, 'policies');
    t.equal(await curlPut(NODE_A, relay, '/inventories/a.ocs', inventory), '201');
    t.equal(await curlPut(NODE_B, relay, '/inventories/b.ocs', inventory), '403');
    t.same(own.applied['dav_password'], { value: '(set)', source: 'policies' });
    t.equal(await curlPut(NODE_A, relay, '/inventory-updates/a.ocs', inventory, 'rudder:rudder-dav-secret'), '201', 'DAVPASSWORD admits an inventory update');
    t.equal(await curlPut(NODE_A, relay, '/inventory-updates/a2.ocs', inventory, 'rudder:rudder'), '401', 'the bootstrap password no longer does');
  });

  await t.test('a new generation at the upstream applies at the next sync', async (t) => {
    await writeOwnPolicies(ownUpstream, relayVariables({ ALLOWED_NETWORKS: [`${NODE_B}/32`], AGENT_RUN_INTERVAL: '5', RUDDER_NODE_CONFIG_ID: 'https-gen-2' }), 1780492260000);
    t.equal((await syncNow(relay)).result, 'success');
    await relay.waitForLog((l) => l.event === 'own_settings_applied' && JSON.stringify(l['allowed_networks']).includes(`${NODE_B}/32`));
    t.equal((await ownStatus(relay)).node_config_id, 'https-gen-2');
    t.same(await compareTrees(ownUpstream, inputs), []);
    t.equal(await curlPut(NODE_B, relay, '/inventories/b.ocs', inventory), '201');
    t.equal(await curlPut(NODE_A, relay, '/inventories/a2.ocs', inventory), '403');
  });

  await t.test('a puller that does not ask for them never sees them (older relays keep working)', async (t) => {
    const manifest = await new Promise<string>((resolve, reject) => {
      execFile(
        'curl',
        [
          '-sk',
          '--cert', join(FIXTURE_KEYS, `${RELAY}.cert`),
          '--key', join(FIXTURE_KEYS, `${RELAY}.nopass.priv`),
          `https://127.0.0.1:${upstream.httpsPort}/rudder/relay-api/1/sync/manifest`,
        ],
        (error, stdout) => (error ? reject(error) : resolve(stdout)),
      );
    });
    t.match(manifest, /share\/aaaaaaaa-0000-4000-8000-000000000001\//, 'the manifest came');
    t.notMatch(manifest, /own-policies/);
  });
});
