// Data sync from a stock Rudder root (issue 7 b): Debian's cf-serverd 3.21 serves a root-like tree (laid out under
// a temp dir, hence sync.cfengine_path_prefix) with Rudder-like access rules admitting the relay's key, and the
// onerelay CLI pulls it with its CFEngine client (sync.protocol = "cfengine").

import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:https';
import type { TLSSocket } from 'node:tls';
import { copyFile, cp, mkdir, readFile, readdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { compareTrees, createCfWorkdir, hasCfengine, loadCfWorkdir, startCfServerd } from '../support/cfengine.js';
import { FIXTURE_KEYS, RELAY_ID, startRelay, type RunningRelay } from '../support/relay.js';
import { freePort, tempDir } from '../support/tmp.js';

const RELAY = 'e745a140-40bc-4b86-b6dc-084488fc906b';
const ROOT_ID = RELAY_ID; // the fixture key 37817c4d… plays the root: its certificate is the relay's pin
const node = (i: number): string => `aaaaaaaa-0000-4000-8000-${String(i + 1).padStart(12, '0')}`;
const NODES = Array.from({ length: 6 }, (_, i) => node(i));
const FILES = 60;

async function write(path: string, content: string | Buffer): Promise<void> {
  await mkdir(join(path, '..'), { recursive: true });
  await writeFile(path, content);
}

/** a node's rules/ with FILES policy files, nested directories, an empty file, archives, the flag */
async function makeNode(dir: string, id: string, variant: string): Promise<void> {
  const cf = join(dir, 'rules', 'cfengine-community');
  for (let i = 0; i < FILES; i += 1) {
    const sub = i % 4 === 0 ? '' : join(`dir${i % 3}`, i % 5 === 0 ? 'deep' : '');
    await write(join(cf, sub, `file-${i}.cf`), i === 7 ? '' : `${id} ${variant} ${i}\n`.repeat(1 + (i % 40)));
  }
  await write(join(cf, 'rudder-promises-generated'), `${variant === 'A' ? 1780000000000 : 1780000999000}\n`);
  await write(join(dir, 'rules', 'rudder.tar.bz2'), createHash('sha256').update(`${id}${variant}`).digest());
}

async function syncNow(relay: RunningRelay): Promise<{ result: string; data: { sync?: Record<string, unknown> } & Record<string, unknown> }> {
  const response = await fetch(`${relay.apiUrl}/rudder/relay-api/1/sync`, { method: 'POST' });
  return (await response.json()) as { result: string; data: Record<string, unknown> };
}

async function status(relay: RunningRelay): Promise<Record<string, unknown>> {
  const response = await fetch(`${relay.apiUrl}/rudder/relay-api/1/system/status`);
  const body = (await response.json()) as { data: { sync: Record<string, unknown> } };
  return body.data.sync;
}


interface LibraryServer {
  port: number;
  /** per request: the If-None-Match sent, the status answered, whether a client certificate came */
  readonly requests: Array<{ ifNoneMatch: string | undefined; status: number; clientCertificate: boolean }>;
  archive: Buffer;
}

/** a real HTTPS server with the root's certificate: /common/policies-library-linux.tar.bz2 with an ETag, 304 on a match */
async function startLibraryServer(t: { teardown(fn: () => unknown): void }): Promise<LibraryServer> {
  const state: LibraryServer = { port: 0, requests: [], archive: Buffer.from('library v1') };
  const etagOf = (b: Buffer): string => `"${createHash('sha256').update(b).digest('hex').slice(0, 16)}"`;
  const server: Server = createServer(
    { key: await readFile(join(FIXTURE_KEYS, `${ROOT_ID}.nopass.priv`)), cert: await readFile(join(FIXTURE_KEYS, `${ROOT_ID}.cert`)), requestCert: true, rejectUnauthorized: false },
    (request, response) => {
      const clientCertificate = Object.keys((request.socket as TLSSocket).getPeerCertificate() ?? {}).length > 0;
      const ifNoneMatch = request.headers['if-none-match'];
      let status = 404;
      if (request.url === '/common/policies-library-linux.tar.bz2') status = ifNoneMatch === etagOf(state.archive) ? 304 : 200;
      state.requests.push({ ifNoneMatch, status, clientCertificate });
      if (status === 200) response.writeHead(200, { etag: etagOf(state.archive), 'content-type': 'application/x-bzip2' }).end(state.archive);
      else response.writeHead(status).end();
    },
  );
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  state.port = (server.address() as { port: number }).port;
  return state;
}

/** node directories (common/ holds the library archive) */
const visible = async (dir: string): Promise<string[]> => (await readdir(dir).catch(() => [] as string[])).filter((n) => !n.startsWith('.') && n !== 'common').sort();

t.test('onerelay pulls from a stock cf-serverd', { skip: hasCfengine() ? false : 'cf-agent not installed', timeout: 240_000 }, async (t) => {
  const base = tempDir(t, 'onerelay-cfsync-');
  const root = join(base, 'root');
  const relayShare = join(root, 'var', 'rudder', 'share', RELAY);
  const versions = { A: join(base, 'A'), B: join(base, 'B') };
  for (const [variant, dir] of Object.entries(versions)) for (const id of NODES) await makeNode(join(dir, id), id, variant);
  for (const id of NODES) await cp(join(versions.A, id), join(relayShare, 'share', id), { recursive: true, preserveTimestamps: true });
  const nodesList = { [RELAY]: { hostname: '127.0.0.1', 'policy-server': 'root' }, ...Object.fromEntries(NODES.map((id) => [id, { hostname: id, 'policy-server': RELAY }])) };
  await write(join(relayShare, 'rules', 'cfengine-community', 'rudder-service-relayd', '1.0', 'relay', 'nodeslist.json'), JSON.stringify(nodesList));
  await write(join(relayShare, 'rules', 'cfengine-community', 'rudder-service-apache', '1.0', 'apache', 'nodescerts.pem'), await readFile(join(FIXTURE_KEYS, `${RELAY}.cert`)));
  await write(join(relayShare, 'rules', 'cfengine-community', 'rudder-promises-generated'), '1780000000000\n');
  const sharedFolder = join(root, 'var', 'rudder', 'configuration-repository', 'shared-files');
  await write(join(sharedFolder, 'global.txt'), 'shared with everyone\n');
  await write(join(sharedFolder, 'sub', 'other.bin'), Buffer.alloc(5000, 7));

  // cf-serverd with the root's key (the fixture 37817c4d…), admitting the relay's key on its share as Rudder does
  const serverd = join(base, 'cf-serverd');
  await createCfWorkdir(serverd, 1024);
  await copyFile(join(FIXTURE_KEYS, `${ROOT_ID}.nopass.priv`), join(serverd, 'ppkeys', 'localhost.priv'));
  await copyFile(join(FIXTURE_KEYS, `${ROOT_ID}.pub`), join(serverd, 'ppkeys', 'localhost.pub'));
  const relayKeyDir = join(base, 'relay-key');
  await mkdir(join(relayKeyDir, 'ppkeys'), { recursive: true });
  await copyFile(join(FIXTURE_KEYS, `${RELAY}.nopass.priv`), join(relayKeyDir, 'ppkeys', 'localhost.priv'));
  const relayKey = await loadCfWorkdir(relayKeyDir);
  const port = await freePort();
  const cf = await startCfServerd(await loadCfWorkdir(serverd), port, { keys: [{ path: `${relayShare}/`, admit: [relayKey.md5] }], ips: [sharedFolder] });
  t.teardown(() => cf.stop());

  const library = await startLibraryServer(t);
  const state = join(base, 'state');
  const syncToml = (pin = `${ROOT_ID}.cert`): string =>
    `[sync]\nupstream = true\nprotocol = "cfengine"\ncfengine_port = ${port}\ncfengine_connections = 4\ncfengine_path_prefix = "${root}"\nfrequency = "1h"\nstate_directory = "${state}"\n` + `# pin ${pin}\n`;
  let relay = await startRelay(t, { workers: 1, relayId: RELAY, upstream: { port: library.port, certificateFile: join(FIXTURE_KEYS, `${ROOT_ID}.cert`) }, extraToml: syncToml() });
  const local = join(relay.dir, 'share');

  await t.test('first pull: every node byte-identical, shared folder, nodes list and certificates', async (t) => {
    const first = await syncNow(relay);
    t.equal(first.result, 'success', JSON.stringify(first));
    t.same(await visible(local), [...NODES].sort());
    for (const id of NODES) t.same(await compareTrees(join(relayShare, 'share', id), join(local, id), { modes: true }), [], `${id} identical`);
    t.same(await compareTrees(sharedFolder, join(relay.dir, 'shared-folder')), [], 'shared folder identical');
    t.same(JSON.parse(await readFile(relay.nodesListFile, 'utf8')), nodesList, 'nodeslist.json pulled');
    t.equal(await readFile(relay.nodesCertsFile, 'utf8'), await readFile(join(FIXTURE_KEYS, `${RELAY}.cert`), 'utf8'), 'nodescerts.pem pulled');
    const sync = await status(relay);
    t.equal(sync['details'], undefined, JSON.stringify(sync));
    t.ok(await relay.waitForLog((l) => l.msg === 'sync done', 5_000).catch(() => undefined), 'a sync done line');
    const upstreamMtime = (await stat(join(relayShare, 'share', NODES[0]!, 'rules', 'cfengine-community', 'file-4.cf'))).mtimeMs;
    const localMtime = (await stat(join(local, NODES[0]!, 'rules', 'cfengine-community', 'file-4.cf'))).mtimeMs;
    t.equal(Math.floor(localMtime / 1000), Math.floor(upstreamMtime / 1000), 'mtime kept');
  });

  await t.test('no change: nothing walked, nothing fetched', async (t) => {
    const before = relay.logs.length;
    const again = await syncNow(relay);
    t.equal(again.result, 'success');
    const sync = await status(relay);
    t.equal(sync['last_files'], 0, JSON.stringify(sync));
    t.notOk(relay.logs.slice(before).some((l) => l.msg === 'sync done'), 'logged as unchanged');
  });

  await t.test('the library archive comes from the upstream HTTPS side, with its ETag (304 when unchanged)', async (t) => {
    const served = join(local, 'common', 'policies-library-linux.tar.bz2');
    t.equal(await readFile(served, 'utf8'), 'library v1', 'installed under policies/common/ after the first pull');
    const first = library.requests[0]!;
    t.equal(first.ifNoneMatch, undefined);
    t.equal(first.status, 200);
    t.ok(first.clientCertificate, "the relay's certificate presented");
    t.equal(library.requests.at(-1)!.status, 304, 'the no-change pull got a 304');
    t.ok(library.requests.at(-1)!.ifNoneMatch, 'with If-None-Match');
    library.archive = Buffer.from('library v2, longer');
    t.equal((await syncNow(relay)).result, 'success');
    t.equal(library.requests.at(-1)!.status, 200);
    t.equal(await readFile(served, 'utf8'), 'library v2, longer', 'replaced');
    // served to the nodes below by the HTTPS front door
    t.same(await readdir(join(local, 'common')), ['policies-library-linux.tar.bz2'], 'no temporary left');
  });

  await t.test('a node whose flag file is unchanged is not walked; one changed file changes exactly that file', async (t) => {
    const [n0, n1] = [NODES[0]!, NODES[1]!];
    const inode = async (p: string): Promise<number> => (await stat(p)).ino;
    const untouched = join(local, n0, 'rules', 'cfengine-community', 'file-8.cf');
    const inodeBefore = await inode(untouched);
    // n0: a file changed WITHOUT the flag: not walked, so not seen (Rudder always rewrites the flag)
    await write(join(relayShare, 'share', n0, 'rules', 'cfengine-community', 'file-4.cf'), 'changed without flag\n');
    // n1: a file changed with a new flag
    await write(join(relayShare, 'share', n1, 'rules', 'cfengine-community', 'dir1', 'file-1.cf'), 'changed with flag\n');
    await write(join(relayShare, 'share', n1, 'rules', 'cfengine-community', 'rudder-promises-generated'), '1780000555000\n');
    const result = await syncNow(relay);
    t.equal(result.result, 'success');
    t.not(await readFile(join(local, n0, 'rules', 'cfengine-community', 'file-4.cf'), 'utf8'), 'changed without flag\n', 'n0 not walked (flag unchanged)');
    t.equal(await inode(untouched), inodeBefore, 'n0 not switched');
    t.equal(await readFile(join(local, n1, 'rules', 'cfengine-community', 'dir1', 'file-1.cf'), 'utf8'), 'changed with flag\n');
    t.same(await compareTrees(join(relayShare, 'share', n1), join(local, n1), { modes: true }), []);
    const sync = await status(relay);
    t.equal(sync['last_files'], 2, 'exactly the changed file and the flag were fetched');
    // once the flag moves, the change made earlier comes too
    await write(join(relayShare, 'share', n0, 'rules', 'cfengine-community', 'rudder-promises-generated'), '1780000666000\n');
    t.equal((await syncNow(relay)).result, 'success');
    t.same(await compareTrees(join(relayShare, 'share', n0), join(local, n0)), []);
  });

  await t.test('a node folder deleted upstream disappears below', async (t) => {
    await rm(join(relayShare, 'share', NODES[5]!), { recursive: true });
    t.equal((await syncNow(relay)).result, 'success');
    t.same(await visible(local), NODES.slice(0, 5).sort());
  });

  await t.test('an interrupted pull leaves old or new per node, and the next one completes', async (t) => {
    const nodes = NODES.slice(0, 5);
    // version A everywhere, pulled
    for (const id of nodes) {
      await rm(join(relayShare, 'share', id), { recursive: true });
      await cp(join(versions.A, id), join(relayShare, 'share', id), { recursive: true, preserveTimestamps: true });
    }
    t.equal((await syncNow(relay)).result, 'success');
    // version B upstream (new flags), then the relay killed as soon as a node is being built
    const bumped = Date.now() / 1000 + 10;
    for (const id of nodes) {
      await rm(join(relayShare, 'share', id), { recursive: true });
      await cp(join(versions.B, id), join(relayShare, 'share', id), { recursive: true });
      await utimes(join(relayShare, 'share', id, 'rules', 'cfengine-community', 'rudder-promises-generated'), bumped, bumped);
    }
    void fetch(`${relay.apiUrl}/rudder/relay-api/1/sync`, { method: 'POST' }).catch(() => undefined);
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline && !(await readdir(local)).some((n) => n.startsWith('.sync-'))) await new Promise((r) => setTimeout(r, 2));
    await relay.killAll();
    const kinds: string[] = [];
    for (const id of nodes) {
      const asA = await compareTrees(join(versions.A, id), join(local, id));
      const asB = await compareTrees(join(versions.B, id), join(local, id));
      t.ok(asA.length === 0 || asB.length === 0, `${id}: whole old or whole new (${asA.slice(0, 2).join(', ')} / ${asB.slice(0, 2).join(', ')})`);
      kinds.push(asB.length === 0 ? 'B' : 'A');
    }
    t.comment(`after the kill: ${kinds.join(' ')}`);
    relay = await startRelay(t, { dir: relay.dir, workers: 1, relayId: RELAY, upstream: { port: library.port, certificateFile: join(FIXTURE_KEYS, `${ROOT_ID}.cert`) }, extraToml: syncToml() });
    t.equal((await syncNow(relay)).result, 'success');
    for (const id of nodes) t.same(await compareTrees(join(versions.B, id), join(local, id)), [], `${id} new after the next pull`);
    t.same((await readdir(local)).filter((n) => n.startsWith('.')), [], 'no leftovers');
  });

  await t.test('an upstream presenting another key is refused, clearly', async (t) => {
    await relay.stop();
    const wrong = await startRelay(t, {
      workers: 1,
      relayId: RELAY,
      upstream: { port: await freePort(), certificateFile: join(FIXTURE_KEYS, `${RELAY}.cert`) },
      extraToml: syncToml(`${RELAY}.cert`).replace(state, join(base, 'state-wrong')),
    });
    const result = await syncNow(wrong);
    t.not(result.result, 'success');
    const sync = await status(wrong);
    const error = String(sync['details']);
    t.match(error, /presented key MD5=[0-9a-f]{32} .*not the key of the pinned certificate/, error);
    t.same(await visible(join(wrong.dir, 'share')), [], 'nothing pulled');
    t.ok(await wrong.waitForLog((l) => l.msg === 'sync failed' && /not the key of the pinned/.test(String(l['err'])), 5_000).catch(() => undefined), 'logged');
  });

  await t.test("a pin file holding two certificates (a rotation) admits either key, as the upstream module's loader reads it", async (t) => {
    const rotation = join(base, 'rotation.pem');
    await writeFile(rotation, `${await readFile(join(FIXTURE_KEYS, `${RELAY}.cert`), 'utf8')}${await readFile(join(FIXTURE_KEYS, `${ROOT_ID}.cert`), 'utf8')}`);
    const rotating = await startRelay(t, {
      workers: 1,
      relayId: RELAY,
      upstream: { port: library.port, certificateFile: rotation },
      extraToml: syncToml('rotation').replace(state, join(base, 'state-rotation')),
    });
    const result = await syncNow(rotating);
    t.equal(result.result, 'success', JSON.stringify(result));
    t.same(await visible(join(rotating.dir, 'share')), await visible(join(relayShare, 'share')), 'pulled with the second certificate of the pin file');
    await rotating.stop();
  });
});
