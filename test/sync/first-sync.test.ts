// Data sync between two onerelay instances over real HTTPS on loopback (issue 7): first sync of
// 10 nodes × 300 files, what a relay is entitled to, one change, a no-change poll, a deletion.

import { chmod, readdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import {
  FILES_PER_NODE,
  NODES,
  RELAY_ID,
  SIBLING_NODE,
  SUB_NODE,
  SUB_RELAY,
  inodes,
  readTree,
  sameTree,
  startSyncPair,
} from '../support/sync.js';

t.test('first sync, entitlement, one change, no change, deletion', async (t) => {
  const s = await startSyncPair(t, { emptyFile: true });
  const modeProbe = join(s.upstreamShare, NODES[4] ?? '', 'rules/cfengine-community/lib/1/common-1.cf');
  await chmod(modeProbe, 0o600);
  await utimes(modeProbe, new Date('2024-01-02T03:04:05.678Z'), new Date('2024-01-02T03:04:05.678Z'));

  const first = await s.puller.trigger();
  t.equal(first.lastError, undefined, 'first sync succeeds');
  t.equal(first.running, false);
  t.ok(first.lastSuccessAt);
  t.match(first.generation, /^[0-9a-f]{64}$/);

  // 10 nodes × 300 files, byte-identical
  let files = 0;
  for (const node of NODES) {
    const expected = await readTree(join(s.upstreamShare, node));
    const actual = await readTree(join(s.down.policiesDirectory, node));
    t.equal(actual.size, FILES_PER_NODE, `${node}: 300 files`);
    sameTree(t, actual, expected, node);
    files += actual.size;
  }
  t.equal(files, 3000);
  const probe = await stat(join(s.down.policiesDirectory, NODES[4] ?? '', 'rules/cfengine-community/lib/1/common-1.cf'));
  t.equal(probe.mode & 0o777, 0o600, 'mode kept');
  t.equal(Math.round(probe.mtimeMs), Date.parse('2024-01-02T03:04:05.678Z'), 'mtime kept');

  // only what is below this relay: the sub-relay and its listed node, not the sibling relay's
  const top = (await readdir(s.down.policiesDirectory)).sort();
  t.same(top, [...NODES, SUB_RELAY, 'common'].sort(), 'share/ holds the nodes below the relay, and common');
  t.same(await readdir(join(s.down.policiesDirectory, SUB_RELAY, 'share')), [SUB_NODE], "sub-relay's listed nodes only");
  sameTree(t, await readTree(join(s.down.policiesDirectory, SUB_RELAY)), new Map([...(await readTree(join(s.upstreamShare, SUB_RELAY)))].filter(([p]) => !p.includes('unlisted'))), 'sub-relay');
  sameTree(t, await readTree(join(s.down.policiesDirectory, 'common')), await readTree(join(s.up.policiesDirectory, 'common')), 'common');
  sameTree(t, await readTree(s.down.sharedFolderPath), await readTree(s.up.sharedFolderPath), 'shared folder');
  sameTree(t, await readTree(s.down.sharedFilesPath), await readTree(join(s.up.sharedFilesPath, RELAY_ID, 'shared-files')), 'shared files');
  const nodesList = JSON.parse((await readTree(join(s.down.nodesListFile, '..'))).get('nodeslist.json')?.toString() ?? '{}') as Record<string, unknown>;
  t.same(Object.keys(nodesList).sort(), [...NODES, SUB_RELAY, SUB_NODE].sort(), 'nodeslist.json: the nodes below the relay');
  const certs = (await readTree(join(s.down.nodesCertsFile, '..'))).get('nodescerts.pem')?.toString() ?? '';
  t.ok(certs.includes((s.nodeCerts.get(NODES[0] ?? '')?.cert ?? 'x').split(/\r?\n/)[1] ?? 'x'), "nodescerts.pem: a node's certificate");
  t.notOk(certs.includes((s.nodeCerts.get(SIBLING_NODE)?.cert ?? 'x').split(/\r?\n/)[1] ?? 'x'), "nodescerts.pem: not the sibling's node");
  t.equal(s.nodesChanged, 1, 'nodes registry reloaded');

  // identical files across nodes travel once; two requests in all
  const blobRequests = s.server.requests.filter((r) => r.method === 'POST');
  const asked = blobRequests.flatMap((r) => r.hashes);
  t.equal(new Set(asked).size, asked.length, 'no blob asked twice');
  const distinct = new Set((await s.server.serving.manifestFor(RELAY_ID)).entries.flatMap((e) => (e.kind === 'f' ? [e.sha256] : [])));
  t.equal(asked.length, distinct.size, `dedup: ${asked.length} blobs for ${files} node files`);
  t.ok(asked.length < 1300);
  t.equal(first.lastFiles, asked.length);
  t.equal(s.server.requests.length, 2, 'first sync: manifest + one blob batch');
  t.equal(first.lastRequests, 2);
  t.ok(s.logs.lines.some((l) => l['msg'] === 'sync done' && l['files'] === asked.length), 'log line with files and bytes');
  t.same(s.counted.at(-1)?.result, 'ok');

  // one file changes upstream → exactly that file changes below, nothing else is touched
  const before = new Map<string, Map<string, number>>();
  for (const node of NODES) before.set(node, await inodes(join(s.down.policiesDirectory, node)));
  const changed = `rules/cfengine-community/directives/${NODES[3]}-250.cf`;
  await writeFile(join(s.upstreamShare, NODES[3] ?? '', changed), 'changed upstream\n');
  const second = await s.puller.trigger();
  t.equal(second.lastError, undefined);
  t.not(second.generation, first.generation, 'new generation');
  t.equal(second.lastFiles, 1, 'one blob fetched');
  t.equal(second.lastChangedUnits, 1, 'one node directory switched');
  for (const node of NODES) {
    sameTree(t, await readTree(join(s.down.policiesDirectory, node)), await readTree(join(s.upstreamShare, node)), `${node} after change`);
    const now = await inodes(join(s.down.policiesDirectory, node));
    const moved = [...now].filter(([path, ino]) => before.get(node)?.get(path) !== ino).map(([path]) => path);
    t.same(moved, node === NODES[3] ? [changed] : [], `${node}: only the changed file is a new file`);
  }

  // no change: exactly one request, answered 304
  const requestsBefore = s.server.requests.length;
  const third = await s.puller.trigger();
  t.equal(third.lastError, undefined);
  t.equal(s.server.requests.length - requestsBefore, 1, 'one request');
  t.equal(s.server.requests.at(-1)?.status, 304, 'answered 304');
  t.equal(third.lastRequests, 1);
  t.equal(third.generation, second.generation);
  t.same(s.counted.at(-1)?.result, 'unchanged');

  const storeSize = async (): Promise<number> =>
    (await Promise.all((await readdir(join(s.down.stateDirectory, 'blobs'))).filter((n) => n.length === 2).map((n) => readdir(join(s.down.stateDirectory, 'blobs', n))))).flat().length;
  const storedBefore = await storeSize();

  // a node folder deleted upstream disappears below
  await rm(join(s.upstreamShare, NODES[7] ?? ''), { recursive: true });
  await rm(join(s.up.sharedFilesPath, RELAY_ID), { recursive: true });
  const fourth = await s.puller.trigger();
  t.equal(fourth.lastError, undefined);
  t.notOk((await readdir(s.down.policiesDirectory)).includes(NODES[7] ?? ''), 'deleted node folder removed');
  t.equal((await readdir(s.down.policiesDirectory)).length, NODES.length - 1 + 2, 'the other folders stay');
  t.same(await readdir(s.down.sharedFilesPath), [], 'shared-files entry gone upstream removed');
  t.same((await readdir(s.down.policiesDirectory)).filter((n) => n.startsWith('.')), [], 'no staging leftovers');
  // the store keeps only what the current trees use
  t.ok((await storeSize()) < storedBefore, 'store pruned');
});
