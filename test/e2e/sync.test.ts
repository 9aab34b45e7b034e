// Data sync between two onerelay processes over real TLS: the upstream serves, the relay pulls what
// it is entitled to, through the public relay API, identified by its pinned certificate.

import { mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { FIXTURE_KEYS, RELAY_ID, startRelay } from '../support/relay.js';

const RELAY = 'e745a140-40bc-4b86-b6dc-084488fc906b';
const E745_PIN = 'sha256//I8utFWGj+OpqpbiAIZ/s8qRC4fQXxQ8IRVjFe0X1Lug=';
const N1 = 'aaaaaaaa-0000-4000-8000-000000000001';
const N2 = 'aaaaaaaa-0000-4000-8000-000000000002';
const SIBLING = 'aaaaaaaa-0000-4000-8000-000000000003';

async function write(path: string, content: string): Promise<void> {
  await mkdir(join(path, '..'), { recursive: true });
  await writeFile(path, content);
}

async function syncNow(apiUrl: string): Promise<{ result: string; data: Record<string, unknown> }> {
  const response = await fetch(`${apiUrl}/rudder/relay-api/1/sync`, { method: 'POST' });
  return (await response.json()) as { result: string; data: Record<string, unknown> };
}

t.test('an onerelay relay pulls its nodes from an onerelay upstream', async (t) => {
  const nodesList = {
    [RELAY]: { hostname: '127.0.0.1', 'key-hash': E745_PIN, 'policy-server': RELAY_ID },
    [N1]: { hostname: 'n1', 'policy-server': RELAY },
    [N2]: { hostname: 'n2', 'policy-server': RELAY },
    [SIBLING]: { hostname: 'n3', 'policy-server': RELAY_ID },
  };
  const upstream = await startRelay(t, { workers: 1, nodesList, extraToml: '[sync]\nserve = true\nmanifest_ttl = "1h"\n' });
  const share = join(upstream.dir, 'share');
  for (const node of [N1, N2]) {
    for (let i = 0; i < 20; i += 1) await write(join(share, RELAY, 'share', node, 'rules', 'cfengine-community', `file-${i}.cf`), `${node} ${i}\n`);
    await write(join(share, RELAY, 'share', node, 'rules', 'rudder.tar.bz2'), `archive of ${node}`);
  }
  await write(join(share, SIBLING, 'rules', 'cfengine-community', 'promises.cf'), 'not for this relay');
  await write(join(upstream.dir, 'shared-folder', 'global.txt'), 'shared with everyone');

  const relay = await startRelay(t, {
    workers: 1,
    relayId: RELAY,
    upstream: { port: upstream.httpsPort, certificateFile: join(FIXTURE_KEYS, `${RELAY_ID}.cert`) },
    extraToml: `[sync]\nupstream = true\nfrequency = "1h"\nstate_directory = "${join('/tmp', `onerelay-sync-state-${process.pid}-${Date.now()}`)}"\n`,
  });

  const first = await syncNow(relay.apiUrl);
  t.equal(first.result, 'success', JSON.stringify(first));
  const local = join(relay.dir, 'share');
  t.same((await readdir(local)).filter((n) => !n.startsWith('.')).sort(), [N1, N2].sort(), "only this relay's nodes, not the sibling");
  t.equal(await readFile(join(local, N1, 'rules', 'cfengine-community', 'file-7.cf'), 'utf8'), `${N1} 7\n`);
  t.equal(await readFile(join(local, N2, 'rules', 'rudder.tar.bz2'), 'utf8'), `archive of ${N2}`);
  t.equal(await readFile(join(relay.dir, 'shared-folder', 'global.txt'), 'utf8'), 'shared with everyone');
  const pulledList = JSON.parse(await readFile(relay.nodesListFile, 'utf8')) as Record<string, unknown>;
  t.same(Object.keys(pulledList).sort(), [N1, N2].sort(), 'nodes list: the nodes below this relay');

  await write(join(share, RELAY, 'share', N1, 'rules', 'cfengine-community', 'file-3.cf'), 'changed\n');
  await rm(join(share, RELAY, 'share', N2), { recursive: true });
  // no wait: the upstream sees the change through inotify, not after its (1 h) manifest_ttl
  const second = await syncNow(relay.apiUrl);
  t.equal(second.result, 'success');
  t.equal(await readFile(join(local, N1, 'rules', 'cfengine-community', 'file-3.cf'), 'utf8'), 'changed\n', 'a changed file arrives');
  t.notOk((await readdir(local)).includes(N2), 'a deleted node folder disappears');

  const status = (await fetch(`${relay.apiUrl}/rudder/relay-api/1/system/status`).then((r) => r.json())) as { data: { sync: { status: string; last_success: string } } };
  t.equal(status.data.sync.status, 'success');
  t.ok(status.data.sync.last_success);
  const metrics = await (await fetch(`${relay.apiUrl}/metrics`)).text();
  t.match(metrics, /onerelay_sync_duration_seconds_count\{result="ok"\} [1-9]/);
  t.match(metrics, /\nonerelay_sync_lag_seconds 0\n/, 'in step with upstream');

  await upstream.stop();
  const failed = await syncNow(relay.apiUrl);
  t.equal(failed.result, 'error', 'upstream gone');
  await new Promise((r) => setTimeout(r, 1_100));
  const behind = /\nonerelay_sync_lag_seconds ([0-9.]+)\n/.exec(await (await fetch(`${relay.apiUrl}/metrics`)).text());
  t.ok(Number(behind?.[1]) >= 1, `lag grows while pulls fail (${behind?.[1]} s)`);
});
