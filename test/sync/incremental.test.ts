// Data sync (issue 7), cheap polls and small changes: the serving side keeps its walks current with
// inotify (a poll with no change walks nothing, a change re-walks only its unit), and a puller one
// generation behind gets a delta with the new blobs inside: a one-file change is one request.

import { existsSync } from 'node:fs';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { createNodesRegistry } from '../../src/nodes/index.js';
import { applyDelta, parseDeltaHeader, parseManifest, serializeDelta, serializeManifest, type ManifestEntry } from '../../src/sync/lib/manifest.js';
import { tempDir } from '../support/tmp.js';
import {
  NODES,
  UPSTREAM_ID,
  collectLogs,
  fixtureIdentity,
  readTree,
  sameTree,
  startSyncPair,
  startSyncServer,
  syncPaths,
  writeTree,
} from '../support/sync.js';

const computed = (logs: { lines: readonly Record<string, unknown>[] }): number => logs.lines.filter((l) => l['msg'] === 'sync manifest computed').length;
const sha256Of = (manifest: { entries: readonly ManifestEntry[] }, path: string): string | undefined => {
  const entry = manifest.entries.find((e) => e.path === path);
  return entry?.kind === 'f' ? entry.sha256 : undefined;
};

t.test('the serving side walks nothing for a poll without change, and sees a change at once', async (t) => {
  const root = tempDir(t);
  const up = syncPaths(root);
  await mkdir(join(up.nodesListFile, '..'), { recursive: true });
  await writeFile(up.nodesListFile, JSON.stringify({ A: { hostname: 'a', 'policy-server': 'root' }, n: { hostname: 'n', 'policy-server': 'A' }, m: { hostname: 'm', 'policy-server': 'A' } }));
  await writeTree(up.policiesDirectory, new Map([['A/share/n/rules/a/one.cf', 'one'], ['A/share/m/rules/m.cf', 'm']]));
  const logs = collectLogs('debug');
  const registry = createNodesRegistry({ myId: 'root', nodesListFile: up.nodesListFile, nodesCertsFile: up.nodesCertsFile, log: logs.log });
  await registry.reload();
  // a TTL of one hour: only inotify can make a change visible in this test
  const server = await startSyncServer({ identity: fixtureIdentity(UPSTREAM_ID), paths: up, nodes: registry, log: logs.log, requesterOf: () => 'A', manifestTtlMs: 3_600_000 });
  t.teardown(() => server.close());
  const files = async (): Promise<Map<string, string>> =>
    new Map((await server.serving.manifestFor('A')).entries.flatMap((e) => (e.kind === 'f' ? [[e.path, e.sha256] as [string, string]] : [])));

  const first = await server.serving.manifestFor('A');
  const walksAfterFirst = computed(logs);
  t.equal((await server.serving.manifestFor('A')).generation, first.generation);
  t.equal(computed(logs), walksAfterFirst, 'no change: the view is reused, nothing recomputed');

  await writeFile(join(up.policiesDirectory, 'A/share/n/rules/a/one.cf'), 'one, changed in place');
  const oneBefore = sha256Of(first, 'share/n/rules/a/one.cf');
  t.ok(oneBefore);
  t.not((await files()).get('share/n/rules/a/one.cf'), oneBefore, 'a file rewritten in place');

  await mkdir(join(up.policiesDirectory, 'A/share/n/rules/new/deeper'), { recursive: true });
  await writeFile(join(up.policiesDirectory, 'A/share/n/rules/new/deeper/two.cf'), 'two');
  t.ok((await files()).has('share/n/rules/new/deeper/two.cf'), 'a new directory with a file');
  await writeFile(join(up.policiesDirectory, 'A/share/n/rules/new/deeper/three.cf'), 'three');
  t.ok((await files()).has('share/n/rules/new/deeper/three.cf'), 'the new directory is watched too');

  // Rudder's policy writer replaces rules/ as a whole
  await writeTree(join(up.policiesDirectory, 'A/share/m/rules.new'), new Map([['m.cf', 'm v2']]));
  await rename(join(up.policiesDirectory, 'A/share/m/rules'), join(up.policiesDirectory, 'A/share/m/rules.bkp'));
  await rename(join(up.policiesDirectory, 'A/share/m/rules.new'), join(up.policiesDirectory, 'A/share/m/rules'));
  const after = await files();
  t.ok(after.has('share/m/rules/m.cf') && after.has('share/m/rules.bkp/m.cf'), 'a swapped rules/ directory');
  t.not(after.get('share/m/rules/m.cf'), after.get('share/m/rules.bkp/m.cf'));

  // a node folder that appears (the nodes list already names it)
  await writeFile(up.nodesListFile, JSON.stringify({ A: { hostname: 'a', 'policy-server': 'root' }, n: { hostname: 'n', 'policy-server': 'A' }, m: { hostname: 'm', 'policy-server': 'A' }, k: { hostname: 'k', 'policy-server': 'A' } }));
  await registry.reload();
  t.notOk((await files()).has('share/k/rules/k.cf'));
  await writeTree(join(up.policiesDirectory, 'A/share/k'), new Map([['rules/k.cf', 'k']]));
  t.ok((await files()).has('share/k/rules/k.cf'), 'a node folder created after the first walk');
});

t.test('without inotify watches, the TTL still bounds how stale a manifest is', async (t) => {
  const root = tempDir(t);
  const up = syncPaths(root);
  await mkdir(join(up.nodesListFile, '..'), { recursive: true });
  await writeFile(up.nodesListFile, JSON.stringify({ A: { hostname: 'a', 'policy-server': 'root' }, n: { hostname: 'n', 'policy-server': 'A' } }));
  await writeTree(up.policiesDirectory, new Map([['A/share/n/rules/one.cf', 'one']]));
  const logs = collectLogs('debug');
  const registry = createNodesRegistry({ myId: 'root', nodesListFile: up.nodesListFile, nodesCertsFile: up.nodesCertsFile, log: logs.log });
  await registry.reload();
  const server = await startSyncServer({ identity: fixtureIdentity(UPSTREAM_ID), paths: up, nodes: registry, log: logs.log, requesterOf: () => 'A', manifestTtlMs: 400, maxWatches: 0 });
  t.teardown(() => server.close());
  const first = await server.serving.manifestFor('A');
  t.ok(logs.lines.some((l) => /too many directories to watch/.test(String(l['msg']))), 'the fallback is logged');
  await writeFile(join(up.policiesDirectory, 'A/share/n/rules/one.cf'), 'one, changed');
  t.equal((await server.serving.manifestFor('A')).generation, first.generation, 'within the TTL: the walk is reused');
  await new Promise((resolve) => setTimeout(resolve, 500));
  t.not((await server.serving.manifestFor('A')).generation, first.generation, 'after the TTL: walked again');
});

t.test('a one-file change is one request: a delta with the new blob inside', async (t) => {
  const s = await startSyncPair(t, { nodes: 3 });
  t.equal((await s.puller.trigger()).lastError, undefined);
  const node = join(s.upstreamShare, NODES[1] ?? '');
  await writeFile(join(node, 'rules/cfengine-community/directives/changed.cf'), 'a new directive\n');
  await writeFile(join(node, `rules/cfengine-community/directives/${NODES[1]}-250.cf`), 'rewritten\n');
  const before = s.server.requests.length;
  const status = await s.puller.trigger();
  t.equal(status.lastError, undefined);
  t.equal(status.lastRequests, 1, 'one request');
  t.equal(s.server.requests.length - before, 1);
  t.match(s.server.requests.at(-1)?.url, /\/manifest\?base=[0-9a-f]{64}$/);
  t.equal(status.lastFiles, 2, 'the two new blobs came inside the delta');
  t.equal(status.lastChangedUnits, 1, 'only that node folder was switched');
  sameTree(t, await readTree(join(s.down.policiesDirectory, NODES[1] ?? '')), await readTree(node), 'the changed node');
  sameTree(t, await readTree(join(s.down.policiesDirectory, NODES[0] ?? '')), await readTree(join(s.upstreamShare, NODES[0] ?? '')), 'an unchanged node');

  // a node folder removed upstream: a delta that drops a unit
  await rm(join(s.upstreamShare, NODES[2] ?? ''), { recursive: true });
  const removed = await s.puller.trigger();
  t.equal(removed.lastError, undefined);
  t.equal(removed.lastRequests, 1);
  t.notOk(existsSync(join(s.down.policiesDirectory, NODES[2] ?? '')), 'gone below too');

  // an upstream that knows the puller's generation no more (restarted): the whole manifest, then blobs
  s.server.serving.invalidate();
  await writeFile(join(node, 'rules/cfengine-community/directives/changed.cf'), 'changed again\n');
  const restartedStatus = await s.puller.trigger();
  t.equal(restartedStatus.lastError, undefined);
  t.equal(restartedStatus.lastRequests, 2, 'manifest and one batch');
  sameTree(t, await readTree(join(s.down.policiesDirectory, NODES[1] ?? '')), await readTree(node), 'after a full manifest');
});

t.test('a delta is checked against the generation it announces', async (t) => {
  const entries = (content: string): ManifestEntry[] => [
    { kind: 'd', path: 'share/a', mode: 0o750 },
    { kind: 'f', path: 'share/a/x.cf', sha256: content.repeat(64), size: 1, mode: 0o640, mtimeMs: 1 },
    { kind: 'd', path: 'share/b', mode: 0o750 },
    { kind: 'f', path: 'share/b/y.cf', sha256: 'b'.repeat(64), size: 1, mode: 0o640, mtimeMs: 1 },
  ];
  const base = parseManifest(serializeManifest(entries('a')).text);
  const next = serializeManifest(entries('c'));
  const split = (delta: Buffer): [ReturnType<typeof parseDeltaHeader>, Buffer] => {
    const newline = delta.indexOf(0x0a);
    const header = parseDeltaHeader(delta.subarray(0, newline).toString('latin1'));
    return [header, delta.subarray(newline + 1, newline + 1 + header.length)];
  };
  const good = split(serializeDelta(base.generation, next.generation, ['share/a'], next.entries.slice(0, 2)));
  t.equal(applyDelta(base, ...good).generation, next.generation, 'rebuilt');
  t.same(applyDelta(base, ...good).text, next.text);
  const wrong = split(serializeDelta(base.generation, 'f'.repeat(64), ['share/a'], next.entries.slice(0, 2)));
  t.throws(() => applyDelta(base, ...wrong), /announced generation/);
  const outside = split(serializeDelta(base.generation, next.generation, ['share/b'], next.entries.slice(0, 2)));
  t.throws(() => applyDelta(base, ...outside), /does not replace/);
  const traversal = split(serializeDelta(base.generation, next.generation, ['share/a'], [{ kind: 'f', path: 'share/a/../../etc/passwd', sha256: 'c'.repeat(64), size: 1, mode: 0o640, mtimeMs: 1 }]));
  t.throws(() => applyDelta(base, ...traversal), /not allowed/);
  t.throws(() => parseDeltaHeader('onerelay-sync-delta 1 xyz'), /malformed/);
});
