// What nodes download from the relay over HTTPS, as rudder-client does it: their own policies
// (ETag, 304), the common library, the shared folder; and shared files between nodes, stored
// here or forwarded to a sub-relay that is a second onerelay.

import { cp, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { cachedAgentIdentity, certificatePin, curlDownload, run } from '../support/agent.js';
import { FIXTURES, FIXTURE_KEYS, RELAY_ID, startRelay } from '../support/relay.js';
import { tempDir } from '../support/tmp.js';

const A = 'b0b0b0b0-0000-4000-8000-00000000000a';
const B = 'b0b0b0b0-0000-4000-8000-00000000000b';
const SUB_RELAY = 'e745a140-40bc-4b86-b6dc-084488fc906b';
const SHARED = join(FIXTURES, 'api_shared_files', RELAY_ID, 'files', SUB_RELAY);

t.test('policies, common and shared folder downloads', async (t) => {
  const a = await cachedAgentIdentity(A);
  const b = await cachedAgentIdentity(B);
  const relay = await startRelay(t, {
    workers: 1,
    nodesList: {
      [A]: { hostname: 'a.example', 'key-hash': a.sha256Pin, 'policy-server': RELAY_ID },
      [B]: { hostname: 'b.example', 'key-hash': b.sha256Pin, 'policy-server': RELAY_ID },
    },
  });
  const archive = Buffer.alloc(400 * 1024);
  for (let i = 0; i < archive.length; i += 1) archive[i] = (i * 7919) % 251;
  await mkdir(join(relay.dir, 'share', A, 'rules', 'dsc'), { recursive: true });
  await writeFile(join(relay.dir, 'share', A, 'rules', 'rudder.tar.bz2'), archive);
  await writeFile(join(relay.dir, 'share', A, 'rules', 'dsc', 'rudder.zip'), 'zip');
  await mkdir(join(relay.dir, 'share', 'common'), { recursive: true });
  await writeFile(join(relay.dir, 'share', 'common', 'policies-library-linux.tar.bz2'), 'library');
  await writeFile(join(relay.dir, 'secret'), 'outside');
  await cp(join(FIXTURES, 'api_shared_folder'), join(relay.dir, 'shared-folder'), { recursive: true });
  const relayPin = await certificatePin(join(FIXTURE_KEYS, `${RELAY_ID}.cert`));
  const work = tempDir(t);
  const url = `${relay.httpsUrl}/policies/${A}/rules/rudder.tar.bz2`;
  const etag = join(work, 'rudder.tar.bz2.etag');
  const output = join(work, 'rudder.tar.bz2');

  await t.test("a node downloads its archive as rudder-client does: 200, then 304 with nothing re-sent", async (t) => {
    const first = await curlDownload({ url, output, etagFile: etag, identity: a, pinnedPubKey: relayPin });
    t.equal(first.status, 200, first.stderr);
    t.same(await readFile(output), archive, 'byte-identical');
    const savedEtag = (await readFile(etag, 'utf8')).trim();
    t.match(savedEtag, /^"[0-9a-f]+-[0-9a-f]+"$/, 'a strong, quoted, lowercase ETag');
    await writeFile(output, 'marker: not rewritten on 304');
    const second = await curlDownload({ url, output, etagFile: etag, identity: a, pinnedPubKey: relayPin });
    t.equal(second.status, 304);
    t.equal(await readFile(output, 'utf8'), 'marker: not rewritten on 304', 'nothing re-sent');
    t.equal((await readFile(etag, 'utf8')).trim(), savedEtag, 'the 304 repeats the ETag, so curl keeps it');
    const headers = await run('curl', ['-skI', '--cert', a.certificateFile, '--key', a.privateKeyFile, url]);
    t.match(headers.stdout.toString(), /content-length: 409600/i);
    t.match(headers.stdout.toString(), /last-modified: /i);
  });

  await t.test("another node's certificate, or none: 403", async (t) => {
    t.equal((await curlDownload({ url, output: join(work, 'x'), identity: b, fail: false })).status, 403, "B on A's URL");
    t.equal((await curlDownload({ url, output: join(work, 'x'), fail: false })).status, 403, 'no certificate');
    const stranger = await cachedAgentIdentity('b0b0b0b0-0000-4000-8000-0000000000ff');
    t.equal((await curlDownload({ url, output: join(work, 'x'), identity: stranger, fail: false })).status, 403, 'unknown node');
    t.equal((await curlDownload({ url: `${relay.httpsUrl}/policies/${A}/rules/absent`, output: join(work, 'x'), identity: a, fail: false })).status, 404);
  });

  await t.test('traversal attempts: 400 or 403, never a file outside', async (t) => {
    for (const path of [`/policies/${A}/..%2f..%2fsecret`, `/policies/${A}/rules/%2e%2e/%2e%2e/%2e%2e/secret`, `/policies/${A}/rules//rudder.tar.bz2x`, `/common/..%2fsecret`, `/policies/${A}%2f..%2f${B}/x`]) {
      const result = await run('curl', ['-sk', '--path-as-is', '-o', '/dev/null', '-w', '%{http_code}', '--cert', a.certificateFile, '--key', a.privateKeyFile, `${relay.httpsUrl}${path}`]);
      t.match(result.stdout.toString(), /^(400|403|404)$/, `${path} → ${result.stdout.toString()}`);
    }
  });

  await t.test('the Windows archive, at both paths', async (t) => {
    for (const path of [`//policies/${A}/rules/dsc/rudder.zip`, `/rudder/relay-api/1/policies/${A}/rules/dsc/rudder.zip`]) {
      const result = await run('curl', ['-sk', '--path-as-is', '--cert', a.certificateFile, '--key', a.privateKeyFile, `${relay.httpsUrl}${path}`]);
      t.equal(result.stdout.toString(), 'zip', path);
    }
  });

  await t.test('/common for clients in allowed networks, with caching headers', async (t) => {
    const common = join(work, 'library');
    const commonEtag = join(work, 'library.etag');
    const commonUrl = `${relay.httpsUrl}/common/policies-library-linux.tar.bz2`;
    t.equal((await curlDownload({ url: commonUrl, output: common, etagFile: commonEtag, identity: a })).status, 200);
    t.equal(await readFile(common, 'utf8'), 'library');
    t.equal((await curlDownload({ url: commonUrl, output: common, etagFile: commonEtag, identity: a })).status, 304);
  });

  await t.test('shared folder: 200/304/404 by hash, on the front door with a certificate', async (t) => {
    const base = `${relay.httpsUrl}/rudder/relay-api/shared-folder/c745a140-40bc-4b86-b6dc-084488fc906b/37817c4d-fbf7-4850-a985-50021f4e8f41`;
    const hash = '181210f8f9c779c26da1d9b2075bde0127302ee0e3fca38c9a83f5b1dd8e5d3b';
    const head = async (path: string, identity = a) =>
      (await run('curl', ['-sk', '-I', '-o', '/dev/null', '-w', '%{http_code}', ...(identity ? ['--cert', identity.certificateFile, '--key', identity.privateKeyFile] : []), `${base}/${path}`])).stdout.toString();
    t.equal(await head(`file?hash_type=sha256&hash=${hash}`), '304');
    t.equal(await head(`file%20with%20space?hash_type=sha256&hash=${hash}`), '304');
    t.equal(await head(`file?hash_type=sha256&hash=${'0'.repeat(64)}`), '200');
    t.equal(await head('missing?hash=abc'), '404');
    const noCert = await run('curl', ['-sk', '-I', '-o', '/dev/null', '-w', '%{http_code}', `${base}/file`]);
    t.equal(noCert.stdout.toString(), '403', 'the shared folder needs a verified certificate');
    const get = await run('curl', ['-sk', '--cert', a.certificateFile, '--key', a.privateKeyFile, `${base}/file`]);
    t.equal(get.stdout.toString(), '123\n');
    const local = await fetch(`${relay.apiUrl}/rudder/relay-api/1/shared-folder/c745a140-40bc-4b86-b6dc-084488fc906b/37817c4d-fbf7-4850-a985-50021f4e8f41/file`);
    t.equal(await local.text(), '123\n', 'and on the local API');
  });

  await t.test('downloads are counted', async (t) => {
    const metrics = await (await fetch(`${relay.apiUrl}/metrics`)).text();
    t.match(metrics, /onerelay_http_downloads_total\{kind="policies",status="200"\} [1-9]/);
    t.match(metrics, /onerelay_http_downloads_total\{kind="policies",status="304"\} 1/);
    t.match(metrics, /onerelay_http_downloads_total\{kind="policies",status="403"\} 4/, "refusals counted (3 nodes + 1 traversal)");
    t.match(metrics, /onerelay_http_download_bytes_total\{kind="policies"\} 409606/, 'the archive and two 3-byte zips');
  });
});

t.test('shared files: stored for a direct node, forwarded to a sub-relay that is a second onerelay', async (t) => {
  const target = 'b0b0b0b0-0000-4000-8000-0000000000c1';
  const farTarget = 'b0b0b0b0-0000-4000-8000-0000000000c2';
  const e745Pin = 'sha256//I8utFWGj+OpqpbiAIZ/s8qRC4fQXxQ8IRVjFe0X1Lug=';
  // the sub-relay (fixture identity e745…) has farTarget below it
  const subRelay = await startRelay(t, {
    workers: 1,
    relayId: SUB_RELAY,
    nodesList: {
      [farTarget]: { hostname: 'far.example', 'policy-server': SUB_RELAY },
      [SUB_RELAY]: { hostname: '127.0.0.1', 'key-hash': e745Pin, 'policy-server': RELAY_ID },
    },
  });
  const relay = await startRelay(t, {
    workers: 1,
    peerHttpsPort: subRelay.httpsPort,
    nodesList: {
      [target]: { hostname: 't.example', 'policy-server': RELAY_ID },
      [SUB_RELAY]: { hostname: '127.0.0.1', 'key-hash': e745Pin, 'policy-server': RELAY_ID },
      [farTarget]: { hostname: 'far.example', 'policy-server': SUB_RELAY },
    },
    nodesCerts: await readFile(join(FIXTURE_KEYS, `${SUB_RELAY}.cert`), 'utf8'),
  });
  const signed = Buffer.concat([await readFile(join(SHARED, 'file2.sign')), Buffer.from('\n'), await readFile(join(SHARED, 'file2.source'))]);
  const wrong = Buffer.concat([await readFile(join(SHARED, 'file2.wrongsign')), Buffer.from('\n'), await readFile(join(SHARED, 'file2.source'))]);
  const put = async (targetId: string, body: Buffer) => {
    const work = tempDir(t);
    await writeFile(join(work, 'body'), body);
    const result = await run('curl', ['-sk', '-X', 'PUT', '-o', '/dev/null', '-w', '%{http_code}', '--data-binary', `@${join(work, 'body')}`, '-H', 'Content-Type: application/octet-stream', `${relay.httpsUrl}/rudder/relay-api/shared-files/${targetId}/${SUB_RELAY}/file2?ttl=1d`]);
    return result.stdout.toString();
  };
  t.equal(await put(target, signed), '200', 'valid signature: stored');
  t.same(await readFile(join(relay.dir, 'shared-files', target, 'files', SUB_RELAY, 'file2')), await readFile(join(SHARED, 'file2.source')));
  t.match(await readFile(join(relay.dir, 'shared-files', target, 'files', SUB_RELAY, 'file2.metadata'), 'utf8'), /^header=rudder-signature-v1\nalgorithm=sha512\n[\s\S]*expires=\d+\n$/);
  t.equal(await put(target, wrong), '500', 'wrong signature refused (relayd answers 500)');
  t.equal(await put(farTarget, signed), '200', 'a node below the sub-relay: forwarded, the sub-relay stored it');
  t.same(await readFile(join(subRelay.dir, 'shared-files', farTarget, 'files', SUB_RELAY, 'file2')), await readFile(join(SHARED, 'file2.source')), 'stored on the second onerelay');
  const hash = '10ee6cc5';
  const head = await run('curl', ['-sk', '-I', '-o', '/dev/null', '-w', '%{http_code}', `${relay.httpsUrl}/rudder/relay-api/shared-files/${farTarget}/${SUB_RELAY}/file2?hash=${hash}`]);
  t.equal(head.stdout.toString(), '404', 'HEAD forwarded too: a wrong hash is 404 there');
  const metrics = await (await fetch(`${relay.apiUrl}/metrics`)).text();
  t.match(metrics, /onerelay_shared_files_total\{event="stored"\} 1/);
  t.match(metrics, /onerelay_shared_files_total\{event="forwarded"\} 2/);
});
