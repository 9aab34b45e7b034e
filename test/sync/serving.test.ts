// Serving side of the data sync (issue 7): who gets a manifest, what is in it, its format.

import { X509Certificate } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createNodesRegistry } from '../../src/nodes/index.js';
import { createSyncPuller, parseManifest } from '../../src/sync/index.js';
import { createPeerClient, type PeerClient } from '../../src/upstream/index.js';
import { tempDir } from '../support/tmp.js';
import t from 'tap';
import {
  RELAY_ID,
  UPSTREAM_ID,
  collectLogs,
  fixtureIdentity,
  identifiedPeerClient,
  makeNodeCertificate,
  startSyncPair,
  startSyncServer,
  syncPaths,
  writeTree,
} from '../support/sync.js';

t.test('a relay with an unknown certificate gets 403', async (t) => {
  const s = await startSyncPair(t, { nodes: 2 });
  const ask = async (client: PeerClient): Promise<number[]> => {
    const manifest = await client.request('GET', '/rudder/relay-api/sync/manifest');
    await manifest.body.dump();
    const blobs = await client.request('POST', '/rudder/relay-api/1/sync/blobs', JSON.stringify({ hashes: ['0'.repeat(64)] }), { 'content-type': 'application/json' });
    await blobs.body.dump();
    return [manifest.status, blobs.status];
  };
  // createPeerClient pinned to the upstream presents no client certificate
  const anonymous = createPeerClient({
    host: '127.0.0.1',
    port: s.server.port,
    peerAuthentication: 'cert_pinning',
    pinned: { description: 'upstream', certificates: [new X509Certificate(s.upstream.cert)] },
    caPath: undefined,
    connectTimeoutMs: 5000,
    idleTimeoutMs: 10_000,
    keepAliveMs: 1000,
  });
  const unknown = identifiedPeerClient({ port: s.server.port, pinned: s.upstream.cert, identity: s.upstream });
  const impostor = identifiedPeerClient({ port: s.server.port, pinned: s.upstream.cert, identity: makeNodeCertificate(RELAY_ID) });
  t.teardown(async () => {
    await anonymous.close();
    await unknown.close();
    await impostor.close();
  });
  t.same(await ask(anonymous), [403, 403], 'no client certificate');
  t.same(await ask(unknown), [403, 403], 'a certificate of no node in the list');
  t.same(await ask(impostor), [403, 403], "the relay's UID with another key");
  t.same(await ask(s.client), [200, 200], 'the relay itself');

  const refused = createSyncPuller(
    { paths: syncPaths(tempDir(t)), myId: RELAY_ID, frequencyMs: 60_000 },
    { upstream: () => unknown, onNodesChanged: async () => undefined, counters: { synced: () => undefined }, log: s.logs.log },
  );
  const status = await refused.trigger();
  t.match(status.lastError, /RELAY_ERR_UPSTREAM_REFUSED.*403.*RELAY_ERR_AUTH_CERTIFICATE/, 'the puller reports the refusal');
});

t.test('nested sub-relays: each relay gets its own share/, PathComputer-style', async (t) => {
  const root = tempDir(t);
  const up = syncPaths(root);
  const me = 'root';
  const list = {
    A: { hostname: 'a', 'policy-server': me },
    B: { hostname: 'b', 'policy-server': 'A' },
    n: { hostname: 'n', 'policy-server': 'B' },
    m: { hostname: 'm', 'policy-server': 'A' },
    loop1: { hostname: 'l1', 'policy-server': 'loop2' },
    loop2: { hostname: 'l2', 'policy-server': 'loop1' },
  };
  await mkdir(join(up.nodesListFile, '..'), { recursive: true });
  await writeFile(up.nodesListFile, JSON.stringify(list));
  await writeTree(
    up.policiesDirectory,
    new Map([
      ['A/rules/a.cf', 'a'],
      ['A/share/m/rules/m.cf', 'm'],
      ['A/share/B/rules/b.cf', 'b'],
      ['A/share/B/share/n/rules/n.cf', 'n'],
      ['A/share/B/share/ghost/rules/g.cf', 'not in the list'],
      ['A/share/.hidden/x', 'dot entries are not synced'],
    ]),
  );
  await writeTree(up.sharedFilesPath, new Map([['A/shared-files/B/shared-files/n/files/m/id', 'for n']]));
  const logs = collectLogs();
  const registry = createNodesRegistry({ myId: me, nodesListFile: up.nodesListFile, nodesCertsFile: up.nodesCertsFile, log: logs.log });
  await registry.reload();
  const server = await startSyncServer({ identity: fixtureIdentity(UPSTREAM_ID), paths: up, nodes: registry, log: logs.log, requesterOf: (r) => r.headers['x-relay'] as string | undefined });
  t.teardown(() => server.close());
  const paths = async (relay: string): Promise<string[]> => (await server.serving.manifestFor(relay)).entries.filter((e) => e.kind === 'f').map((e) => e.path);

  // A gets B's shared files nested, to serve them to B in turn
  t.same(await paths('A'), ['nodescerts.pem', 'nodeslist.json', 'share/B/rules/b.cf', 'share/B/share/n/rules/n.cf', 'share/m/rules/m.cf', 'shared-files/B/shared-files/n/files/m/id']);
  t.same(await paths('B'), ['nodescerts.pem', 'nodeslist.json', 'share/n/rules/n.cf', 'shared-files/n/files/m/id']);
  await t.rejects(server.serving.manifestFor('loop1'), { code: 'RELAY_ERR_AUTH_CERTIFICATE' }, 'a loop is not below this relay');
  await t.rejects(server.serving.manifestFor('unknown'), { code: 'RELAY_ERR_AUTH_CERTIFICATE' });
  const listEntry = (await server.serving.manifestFor('A')).entries.find((e) => e.path === 'nodeslist.json');
  const listHash = listEntry?.kind === 'f' ? listEntry.sha256 : '';
  const nested = JSON.parse((await server.inject({ method: 'GET', url: `/rudder/relay-api/sync/blobs/${listHash}`, headers: { 'x-relay': 'A' } })).body) as Record<string, unknown>;
  t.same(Object.keys(nested).sort(), ['B', 'm', 'n'], "A's nodeslist.json");
  t.equal((await server.inject({ method: 'GET', url: '/rudder/relay-api/sync/manifest', headers: { 'x-relay': 'm' } })).statusCode, 200, 'a plain node gets the common data only');
  t.equal((await server.inject({ method: 'GET', url: '/rudder/relay-api/sync/manifest', headers: { 'x-relay': 'loop1' } })).statusCode, 403);
});

t.test('manifest: generation, gzip, ETag and validation', async (t) => {
  const s = await startSyncPair(t, { nodes: 2 });
  const plain = await s.server.inject({ method: 'GET', url: '/rudder/relay-api/sync/manifest' });
  t.equal(plain.statusCode, 403, 'inject has no client certificate');
  const response = await s.client.request('GET', '/rudder/relay-api/1/sync/manifest', undefined, { 'accept-encoding': 'identity' });
  const text = Buffer.from(await response.body.arrayBuffer());
  const manifest = parseManifest(text);
  t.equal(manifest.entries.filter((e) => e.kind === 'f').length, 2 * 300 + 2 + 1 + 2 + 1 + 2, 'files of the nodes, sub-relay, common, shared folder, shared files, nodes files');
  const gzipped = await s.client.request('GET', '/rudder/relay-api/sync/manifest', undefined, { 'accept-encoding': 'gzip' });
  const compressed = Buffer.from(await gzipped.body.arrayBuffer());
  t.ok(compressed.length < text.length / 3, `gzip: ${compressed.length} of ${text.length} bytes`);
  const cached = await s.client.request('GET', '/rudder/relay-api/sync/manifest', undefined, { 'if-none-match': `"${manifest.generation}"` });
  await cached.body.dump();
  t.equal(cached.status, 304);

  t.throws(() => parseManifest(Buffer.from('onerelay-sync-manifest 1\nf ' + '0'.repeat(64) + ' 1 644 0 share/../etc/passwd\n')), /not allowed/);
  t.throws(() => parseManifest(Buffer.from('onerelay-sync-manifest 1\nf ' + '0'.repeat(64) + ' 1 644 0 share/.sync-old.x/y\n')), /not allowed/);
  t.throws(() => parseManifest(Buffer.from('onerelay-sync-manifest 1\nd 755 share/a')), /truncated|not allowed|malformed/, 'no final newline');
  t.throws(() => parseManifest(Buffer.from('onerelay-sync-manifest 1\nd 755 share/b\nd 755 share/a\n')), /sorted/);
  const bad = await s.client.request('POST', '/rudder/relay-api/sync/blobs', JSON.stringify({ hashes: ['../x'] }), { 'content-type': 'application/json' });
  t.equal(bad.status, 400);
  await bad.body.dump();
});
