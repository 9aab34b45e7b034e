// Data sync under faults (issue 7): a batch cut mid-stream, a corrupted blob.

import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import {
  NODES,
  nodeFiles,
  readTree,
  sameTree,
  startSyncPair,
  writeTree,
} from '../support/sync.js';

t.test('an interrupted pull leaves the old trees, the next one completes and reuses what was fetched', async (t) => {
  const s = await startSyncPair(t);
  t.equal((await s.puller.trigger()).lastError, undefined);
  const old = new Map<string, Map<string, Buffer>>();
  for (const node of NODES) old.set(node, await readTree(join(s.down.policiesDirectory, node)));

  // every node changes: a new archive and 50 files of its own
  let changedBytes = 0;
  for (const node of NODES) {
    const next = nodeFiles(node, 1);
    const subset = new Map([...next].filter(([path]) => path === 'rules/rudder.tar.bz2' || /-2[0-4]\d\.cf$/.test(path)));
    for (const content of subset.values()) changedBytes += content.length;
    await writeTree(join(s.upstreamShare, node), subset);
  }
  s.server.faults.abortNextBatchAfter = Math.floor(changedBytes * 0.45);
  const interrupted = await s.puller.trigger();
  t.match(interrupted.lastError, /RELAY_ERR_UPSTREAM_UNAVAILABLE/, 'the interrupted pull fails');
  t.equal(interrupted.errors, 1);
  for (const node of NODES) sameTree(t, await readTree(join(s.down.policiesDirectory, node)), old.get(node) ?? new Map(), `${node}: still the old tree`);
  const firstAsk = s.server.requests.filter((r) => r.method === 'POST').at(-1)?.hashes ?? [];

  const resumed = await s.puller.trigger();
  t.equal(resumed.lastError, undefined, 'the next pull completes');
  for (const node of NODES) sameTree(t, await readTree(join(s.down.policiesDirectory, node)), await readTree(join(s.upstreamShare, node)), `${node}: the new tree`);
  const secondAsk = s.server.requests.filter((r) => r.method === 'POST').at(-1)?.hashes ?? [];
  t.ok(secondAsk.length < firstAsk.length, `resumed: ${secondAsk.length} blobs asked again of ${firstAsk.length}`);
  t.ok(resumed.lastBytes < changedBytes * 0.7, `resumed: ${resumed.lastBytes} of ${changedBytes} bytes fetched again`);
  t.same((await readdir(s.down.policiesDirectory)).filter((n) => n.startsWith('.')), [], 'no staging leftovers');
});

t.test('a corrupted blob is rejected and fetched again', async (t) => {
  const s = await startSyncPair(t);
  // inside the first blob of the batch: its header is ~75 bytes, every blob here is larger than 200
  s.server.faults.corruptNextBatchAt = 150;
  const status = await s.puller.trigger();
  t.equal(status.lastError, undefined, 'sync succeeds');
  t.equal(status.rejectedBlobs, 1, 'one blob rejected');
  const batches = s.server.requests.filter((r) => r.method === 'POST');
  t.equal(batches.length, 2, 'a second batch');
  t.equal(batches[1]?.hashes.length, 1, 'for the rejected blob only');
  t.ok(batches[0]?.hashes.includes(batches[1]?.hashes[0] ?? ''), 'the same blob');
  t.ok(s.logs.lines.some((l) => l['msg'] === 'sync: blob failed verification, fetching it again' && l['blob'] === batches[1]?.hashes[0]));
  for (const node of NODES) sameTree(t, await readTree(join(s.down.policiesDirectory, node)), await readTree(join(s.upstreamShare, node)), node);
  sameTree(t, await readTree(s.down.sharedFolderPath), await readTree(s.up.sharedFolderPath), 'shared folder');
});

t.test('stop() in the middle of a pull leaves the old trees; a restarted puller completes', async (t) => {
  const s = await startSyncPair(t, { nodes: 4 });
  t.equal((await s.puller.trigger()).lastError, undefined);
  const nodes = NODES.slice(0, 4);
  const old = new Map<string, Map<string, Buffer>>();
  for (const node of nodes) old.set(node, await readTree(join(s.down.policiesDirectory, node)));
  for (const node of nodes) await writeTree(join(s.upstreamShare, node), nodeFiles(node, 2));

  const pulling = s.puller.trigger();
  const deadline = Date.now() + 30_000;
  // the second pull announced its blobs: stop while they stream
  while (s.logs.lines.filter((l) => l['msg'] === 'sync: fetching blobs').length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 1));
  await s.puller.stop();
  const stopped = await pulling;
  t.match(stopped.lastError, /sync stopped/, 'the pull ends early');
  t.equal(stopped.running, false);
  for (const node of nodes) sameTree(t, await readTree(join(s.down.policiesDirectory, node)), old.get(node) ?? new Map(), `${node}: still the old tree`);

  const restarted = await s.newPuller().trigger();
  t.equal(restarted.lastError, undefined);
  for (const node of nodes) sameTree(t, await readTree(join(s.down.policiesDirectory, node)), await readTree(join(s.upstreamShare, node)), `${node}: the new tree`);
  t.same((await readdir(s.down.policiesDirectory)).filter((n) => n.startsWith('.')), [], 'no staging leftovers');
});
