// Shared files (spec-relayd.md §4.7, §8, §12.1 shared_files.rs) with the fixture files and nodes list,
// a real nodes registry, a real fastify server on 127.0.0.1, and a recording forwarder of the test's own.

import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import os from 'node:os';
import path from 'node:path';
import Fastify, { type FastifyInstance } from 'fastify';
import { pino } from 'pino';
import t, { type Test } from 'tap';
import { createNodesRegistry, type NodesRegistry } from '../../src/nodes/index.js';
import {
  createSharedFiles,
  type SharedFiles,
  type SharedFilesForwarder,
} from '../../src/shared-files/index.js';
import { FIXTURES } from '../support/fixtures.js';

const ROOT = 'root';
const E745 = 'e745a140-40bc-4b86-b6dc-084488fc906b';
const R378 = '37817c4d-fbf7-4850-a985-50021f4e8f41';
const A745 = 'a745a140-40bc-4b86-b6dc-084488fc906b';
const B745 = 'b745a140-40bc-4b86-b6dc-084488fc906b';
const C745 = 'c745a140-40bc-4b86-b6dc-084488fc906b';
const UNKNOWN = 'f745a140-40bc-4b86-b6dc-084488fc906b';
const PREFIX = '/rudder/relay-api/1/shared-files';
const DAY = 86_400;
const STORED_HASH =
  'dda78e9b97a69aca3cff21de266246bde0d91bc4b61df72bfb0387564ac0c7bd64dd4caca39ce1ef400f32aa711ec4909789705beec93314eb65fabd5183bbfe';

const fixtureShare = path.join(FIXTURES, 'api_shared_files', R378, 'files', E745);
const fixture = (name: string): Buffer => readFileSync(path.join(fixtureShare, name));
const sign2 = fixture('file2.sign').toString();
const source2 = fixture('file2.source');
/** what an agent sends: `echo | cat file.sign - file` */
const upload = (sign: string, content: Buffer | string): Buffer => Buffer.concat([Buffer.from(`${sign}\n`), Buffer.from(content)]);
const nowSec = (): number => Math.floor(Date.now() / 1000);

interface RawResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** raw HTTP, path as given; `chunked` sends the body without Content-Length */
function raw(
  port: number,
  method: string,
  requestPath: string,
  body?: Buffer,
  options: { chunked?: boolean; contentType?: string } = {},
): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = {};
    if (body !== undefined && options.chunked !== true) headers['content-length'] = String(body.length);
    if (options.chunked === true) headers['transfer-encoding'] = 'chunked';
    if (options.contentType !== undefined) headers['content-type'] = options.contentType;
    const req = httpRequest({ host: '127.0.0.1', port, method, path: requestPath, headers }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (text += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
      res.on('error', reject);
    });
    req.on('error', (error) => {
      // the server may answer 411/413 and close before the whole body was sent
      reject(error);
    });
    if (body !== undefined) req.write(body);
    req.end();
  });
}

interface ForwardCall {
  nextHop: Parameters<SharedFilesForwarder['forward']>[0];
  method: string;
  pathAndQuery: string;
  body: Buffer | undefined;
}

/** the test's own forwarder: records what it is asked to send and answers a chosen status */
class RecordingForwarder implements SharedFilesForwarder {
  readonly calls: ForwardCall[] = [];
  status = 200;
  failure: Error | undefined;
  async forward(nextHop: ForwardCall['nextHop'], method: 'HEAD' | 'PUT', pathAndQuery: string, body: Buffer | undefined): Promise<number> {
    this.calls.push({ nextHop, method, pathAndQuery, body });
    if (this.failure !== undefined) throw this.failure;
    return this.status;
  }
}

const base = mkdtempSync(path.join(os.tmpdir(), 'onerelay-shared-files-'));
t.teardown(() => rmSync(base, { recursive: true, force: true }));
let caseCount = 0;

function makeWritable(dir: string): void {
  chmodSync(dir, 0o755);
  for (const entry of readdirSync(dir, { recursive: true, withFileTypes: true })) {
    chmodSync(path.join(entry.parentPath, entry.name), entry.isDirectory() ? 0o755 : 0o644);
  }
}

interface Relay {
  port: number;
  storage: string;
  shares: SharedFiles;
  forwarder: RecordingForwarder;
  counts: { stored: number; forwarded: number; expired: number };
  logs: Array<Record<string, unknown>>;
  app: FastifyInstance;
}

async function startRelay(
  t: Test,
  options: { myId?: string; withForwarder?: boolean; cleanupFrequencyMs?: number } = {},
): Promise<Relay> {
  const storage = path.join(base, `case-${++caseCount}`);
  cpSync(path.join(FIXTURES, 'api_shared_files'), storage, { recursive: true });
  makeWritable(storage);
  const logs: Array<Record<string, unknown>> = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) });
  const nodes: NodesRegistry = createNodesRegistry({
    myId: options.myId ?? ROOT,
    nodesListFile: path.join(FIXTURES, 'files', 'nodeslist.json'),
    nodesCertsFile: path.join(FIXTURES, 'files', 'keys', 'nodescerts.pem'),
    log: pino({ level: 'silent' }),
  });
  await nodes.reload();
  const forwarder = new RecordingForwarder();
  const counts = { stored: 0, forwarded: 0, expired: 0 };
  const shares = createSharedFiles(
    { path: storage, maxBodySize: 8192, cleanupFrequencyMs: options.cleanupFrequencyMs ?? 3_600_000 },
    {
      nodes,
      forwarder: options.withForwarder === false ? undefined : forwarder,
      counters: {
        stored: () => void (counts.stored += 1),
        forwarded: () => void (counts.forwarded += 1),
        expired: () => void (counts.expired += 1),
      },
      log,
    },
  );
  const app = Fastify();
  await app.register(shares.routes, { prefix: PREFIX });
  // a JSON route outside the plugin: the raw-body parser must not leak to it
  app.post('/echo', async (request) => request.body);
  await app.listen({ host: '127.0.0.1', port: 0 });
  t.teardown(async () => {
    await shares.stop();
    await app.close();
  });
  const address = app.server.address();
  if (address === null || typeof address === 'string') throw new Error('no port');
  return { port: address.port, storage, shares, forwarder, counts, logs, app };
}

const sharePath = (target: string, source: string, fileId: string, query: string): string =>
  `${PREFIX}/${target}/${source}/${fileId}?${query}`;

/** the stored metadata: the `.sign` header plus the server's `expires`, about now + ttl */
function checkStoredMetadata(t: Test, text: string, sign: string, ttlSec: number): void {
  const match = /^([\s\S]*)expires=(\d+)\n$/.exec(text);
  t.ok(match, 'ends with one expires line');
  if (match === null) return;
  t.equal(match[1], sign, 'the header as received, in relayd order');
  t.ok(Math.abs(Number(match[2]) - (nowSec() + ttlSec)) <= 500, `expires ≈ now + ${ttlSec}s`);
  t.equal(text.match(/^expires=/gm)?.length, 1, 'exactly one expires line');
}

t.test('HEAD compares the stored hash (it_shares_files)', async (t) => {
  const relay = await startRelay(t);
  const head = async (query: string): Promise<number> => (await raw(relay.port, 'HEAD', sharePath(R378, E745, 'file', query))).status;
  t.equal(await head(`hash=${STORED_HASH}`), 200);
  t.equal(await head(`hash=${STORED_HASH.slice(0, -1)}f`), 404, 'last character changed');
  t.equal(await head('hash=0xcafecafecafe'), 404);
  t.equal(await head('hash='), 404);
  t.equal(await head(`hash=${STORED_HASH.toUpperCase()}`), 404, 'string-exact comparison');
  t.equal(await head(`other=1&hash=${STORED_HASH}`), 200, 'extra parameters ignored');
  t.equal((await raw(relay.port, 'HEAD', sharePath(R378, E745, 'absent', `hash=${STORED_HASH}`))).status, 404, 'no metadata');
  t.equal((await raw(relay.port, 'HEAD', sharePath(R378, UNKNOWN, 'file', `hash=${STORED_HASH}`))).status, 404, 'unknown source: nothing stored');
  const noQuery = await raw(relay.port, 'HEAD', `${PREFIX}/${R378}/${E745}/file`);
  t.equal(noQuery.status, 404, 'missing hash parameter');
  t.equal(noQuery.headers['content-type'], 'text/plain; charset=utf-8');
  const getNoQuery = await raw(relay.port, 'PUT', `${PREFIX}/${R378}/${E745}/file`, Buffer.from('x'));
  t.equal(getNoQuery.status, 404, 'missing ttl parameter');
  t.equal(getNoQuery.body, 'NOT FOUND');
  writeFileSync(path.join(relay.storage, R378, 'files', E745, 'broken.metadata'), 'header=rudder-signature-v1\n');
  t.equal((await raw(relay.port, 'HEAD', sharePath(R378, E745, 'broken', 'hash=x'))).status, 500, 'unparseable metadata');
});

t.test('PUT checks and stores (it_shares_files)', async (t) => {
  const relay = await startRelay(t);
  const put = (body: Buffer, fileId = 'file2', query = 'ttl=1d', source = E745): Promise<RawResponse> =>
    raw(relay.port, 'PUT', sharePath(R378, source, fileId, query), body, { contentType: 'application/octet-stream' });
  const stored = path.join(relay.storage, R378, 'files', E745, 'file2');

  const wrong = await put(upload(fixture('file2.wrongsign').toString(), source2));
  t.equal(wrong.status, 500, 'one digest hex digit changed');
  t.equal(wrong.body, '');
  t.equal((await put(upload(sign2, 'test'))).status, 500, 'signature of other content');
  t.notOk(existsSync(stored), 'nothing stored after failures');

  const ok = await put(upload(sign2, source2));
  t.equal(ok.status, 200);
  t.equal(ok.body, '');
  t.equal(ok.headers['content-type'], 'text/plain; charset=utf-8');
  t.same(readFileSync(stored), source2, 'stored content equals file2.source');
  checkStoredMetadata(t, readFileSync(`${stored}.metadata`, 'utf8'), sign2, DAY);
  t.equal(relay.counts.stored, 1);
  const hash = /hash_value=([0-9a-f]+)/.exec(sign2)?.[1] ?? '';
  t.equal((await raw(relay.port, 'HEAD', sharePath(R378, E745, 'file2', `hash=${hash}`))).status, 200, 'HEAD says yes now');
  t.same(
    readdirSync(path.dirname(stored)).filter((name) => name.startsWith('.')),
    [],
    'no temporary file left behind',
  );
  // relayd's id pattern allows a leading dot: such an id is a share like any other
  t.equal((await put(upload(sign2, source2), '.onerelay-tmp-keep')).status, 200, 'an id like an old temporary name is stored');
  t.same(readFileSync(path.join(path.dirname(stored), '.onerelay-tmp-keep')), source2);

  // any content type, no content type
  t.equal((await raw(relay.port, 'PUT', sharePath(R378, E745, 'file3', 'ttl=1d'), upload(sign2, source2))).status, 200, 'no Content-Type');
  t.equal(
    (await raw(relay.port, 'PUT', sharePath(R378, E745, 'file4', 'ttl=1d'), upload(sign2, source2), { contentType: 'application/json' })).status,
    200,
    'application/json taken raw',
  );

  t.equal((await put(upload(sign2, source2), 'file2', 'ttl=1d', UNKNOWN)).status, 404, 'unknown source');
  t.equal((await put(upload(sign2, source2), 'file2', 'ttl=1d', R378)).status, 404, "key not matching the source's key-hash");
  t.equal((await put(upload(sign2, source2), 'file2', 'ttl=1d', B745)).status, 500, 'source without key-hash');
  t.equal((await put(Buffer.from('garbage\n\ncontent'))).status, 500, 'header without the required keys');
  t.equal((await put(upload(sign2.replace('algorithm=sha512', 'algorithm=md5'), source2))).status, 500, 'bad algorithm');
  t.equal((await put(upload(`${sign2}keyid=again\n`, source2))).status, 500, 'duplicate key');
  t.equal((await put(upload(sign2.replace(/short_pubkey=.{8}/, 'short_pubkey='), source2))).status, 500, 'bad public key');
  const crlfBlank = Buffer.concat([Buffer.from(`${sign2}\r\n`), source2]);
  t.equal((await put(crlfBlank)).status, 500, 'a CRLF blank line does not end the header: the content is read as header');
  t.equal((await put(upload(sign2.replaceAll('\n', '\r\n'), source2))).status, 200, 'CRLF header lines, LF blank line: accepted');
});

t.test('ids: 400 for unsafe segments and metadata collisions', async (t) => {
  const relay = await startRelay(t);
  const victim = path.join(relay.storage, R378, 'files', E745, 'file.metadata');
  const before = readFileSync(victim);
  const put = (target: string, source: string, fileId: string): Promise<number> =>
    raw(relay.port, 'PUT', `${PREFIX}/${target}/${source}/${fileId}?ttl=1d`, upload(sign2, source2)).then((r) => r.status);
  t.equal(await put(R378, E745, 'file.metadata'), 400, 'it_refuses_a_file_id_colliding_with_a_metadata_file');
  t.same(readFileSync(victim), before, 'victim untouched');
  t.equal(await put(R378, E745, 'x.METADATA'), 400, 'case-insensitive');
  t.equal(await put(R378, E745, 'file.metadata.properties'), 200, 'only the last extension counts');
  t.equal(await put(R378, E745, '..'), 400);
  t.equal(await put(R378, E745, '%2e%2e'), 400);
  t.equal(await put(R378, '.', 'f'), 400);
  t.equal(await put(R378, E745, 'a%2Fb'), 400);
  t.equal(await put(R378, E745, 'sp%20ace'), 400);
  t.equal(await put(`..%2F${R378}`, E745, 'f'), 400);
  const head = await raw(relay.port, 'HEAD', `${PREFIX}/${R378}/${E745}/file.metadata?hash=${STORED_HASH}`);
  t.equal(head.status, 400, 'HEAD too');
});

t.test('client expires replaced by the server value (it_overrides_client_provided_expiration)', async (t) => {
  const relay = await startRelay(t);
  const withExpires = `${sign2}expires=1580941341\n`;
  const res = await raw(relay.port, 'PUT', sharePath(R378, E745, 'file2', 'ttl=1d'), upload(withExpires, source2));
  t.equal(res.status, 200);
  const text = readFileSync(path.join(relay.storage, R378, 'files', E745, 'file2.metadata'), 'utf8');
  checkStoredMetadata(t, text, sign2, DAY);
  const hash = /hash_value=([0-9a-f]+)/.exec(sign2)?.[1] ?? '';
  t.equal((await raw(relay.port, 'HEAD', sharePath(R378, E745, 'file2', `hash=${hash}`))).status, 200);
});

t.test('body limits (it_rejects_too_large_shared_file_upload)', async (t) => {
  const relay = await startRelay(t);
  const big = await raw(relay.port, 'PUT', sharePath(R378, E745, 'big', 'ttl=1d'), Buffer.alloc(9000, 0x61));
  t.equal(big.status, 413);
  t.equal(big.body, 'PAYLOAD TOO LARGE');
  const small = await raw(relay.port, 'PUT', sharePath(R378, E745, 'small', 'ttl=1d'), Buffer.alloc(100, 0x61));
  t.equal(small.status, 500, 'not 413: a bad header');
  const chunked = await raw(relay.port, 'PUT', sharePath(R378, E745, 'chunked', 'ttl=1d'), upload(sign2, source2), { chunked: true });
  t.equal(chunked.status, 411);
  t.equal(chunked.body, 'LENGTH REQUIRED');
  t.notOk(existsSync(path.join(relay.storage, R378, 'files', E745, 'chunked')));

  const echo = await fetch(`http://127.0.0.1:${relay.port}/echo`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: '{"a":1}',
  });
  t.same(await echo.json(), { a: 1 }, 'the raw-body parser stays inside the plugin');
});

t.test('ttl (it_rejects_invalid_ttl_values, api/shared_files.rs ttl parsing)', async (t) => {
  const relay = await startRelay(t);
  const metadataOf = (fileId: string): string => readFileSync(path.join(relay.storage, R378, 'files', E745, `${fileId}.metadata`), 'utf8');
  const put = (fileId: string, ttl: string): Promise<number> =>
    raw(relay.port, 'PUT', sharePath(R378, E745, fileId, `ttl=${encodeURIComponent(ttl)}`), upload(sign2, source2)).then((r) => r.status);
  for (const [ttl, seconds] of [
    ['1h 7s', 3607],
    ['1hour 2minutes', 3720],
    ['1d 7seconds', 86407],
    ['9136', 9136],
    ['1day', DAY],
  ] as const) {
    const fileId = `ttl-${seconds}`;
    t.equal(await put(fileId, ttl), 200, ttl);
    checkStoredMetadata(t, metadataOf(fileId), sign2, seconds);
  }
  for (const ttl of ['18446744073709551615', '9223372036854776', 'not-a-duration', '913j', '913b83', '913h 89j', '-5', '1.5h']) {
    t.equal(await put('bad-ttl', ttl), 400, `ttl=${ttl}`);
  }
  t.equal(await put('bad-ttl', ''), 400, 'empty ttl');
  t.notOk(existsSync(path.join(relay.storage, R378, 'files', E745, 'bad-ttl')), 'nothing stored');
});

t.test('cleanup removes expired shares, keeps the others (processing/shared_files.rs)', async (t) => {
  const relay = await startRelay(t, { cleanupFrequencyMs: 50 });
  const dir = path.join(relay.storage, R378, 'files', E745);
  writeFileSync(path.join(dir, 'application.properties'), 'old\n');
  cpSync(path.join(FIXTURES, 'files', 'expired.metadata'), path.join(dir, 'application.properties.metadata'));
  const other = path.join(relay.storage, ROOT, 'files', E745);
  mkdirSync(other, { recursive: true });
  cpSync(path.join(FIXTURES, 'files', 'expired.metadata'), path.join(other, 'expired.metadata'));
  writeFileSync(path.join(other, 'expired'), 'x');
  writeFileSync(path.join(dir, 'junk.metadata'), 'not metadata\n');
  writeFileSync(path.join(dir, 'junk'), 'kept\n');
  chmodSync(path.join(dir, 'application.properties.metadata'), 0o644);
  chmodSync(path.join(other, 'expired.metadata'), 0o644);
  // leftovers of an interrupted atomic write: removed once stale, kept while a write may be going on
  writeFileSync(path.join(dir, '.onerelay~tmp-0000.part'), 'partial');
  utimesSync(path.join(dir, '.onerelay~tmp-0000.part'), new Date(Date.now() - 2 * 3_600_000), new Date(Date.now() - 2 * 3_600_000));
  writeFileSync(path.join(dir, '.onerelay~tmp-1111.part'), 'in progress');
  // a share whose id looks like an old temporary name: a share like any other, kept until its TTL
  const lookalike = '.onerelay-tmp-keep.part';
  writeFileSync(path.join(dir, lookalike), 'a share\n');
  cpSync(path.join(dir, 'file.metadata'), path.join(dir, `${lookalike}.metadata`));
  chmodSync(path.join(dir, `${lookalike}.metadata`), 0o644);
  for (const f of [lookalike, `${lookalike}.metadata`]) utimesSync(path.join(dir, f), new Date(Date.now() - 2 * 3_600_000), new Date(Date.now() - 2 * 3_600_000));

  await relay.shares.start();
  await relay.shares.start(); // idempotent
  const deadline = Date.now() + 5000;
  while (existsSync(path.join(other, 'expired.metadata')) || existsSync(path.join(dir, 'application.properties.metadata'))) {
    if (Date.now() > deadline) break;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  await relay.shares.stop(); // waits for the pass in progress
  t.notOk(existsSync(path.join(dir, 'application.properties')), 'expired content removed');
  t.notOk(existsSync(path.join(dir, 'application.properties.metadata')), 'expired metadata removed');
  t.notOk(existsSync(path.join(other, 'expired')), 'files/expired removed');
  t.notOk(existsSync(path.join(other, 'expired.metadata')), 'files/expired.metadata removed');
  t.ok(existsSync(path.join(dir, 'file')), 'unexpired (expires 2061475500) kept');
  t.ok(existsSync(path.join(dir, 'file.metadata')));
  t.ok(existsSync(path.join(dir, 'junk.metadata')), 'unparseable metadata kept');
  t.ok(existsSync(path.join(dir, 'junk')));
  t.notOk(existsSync(path.join(dir, '.onerelay~tmp-0000.part')), 'stale temporary file removed');
  t.ok(existsSync(path.join(dir, '.onerelay~tmp-1111.part')), 'fresh temporary file kept');
  t.ok(existsSync(path.join(dir, lookalike)), 'a share named like a temporary file is kept before its TTL');
  t.ok(existsSync(path.join(dir, `${lookalike}.metadata`)));
  t.equal(relay.counts.expired, 2);
  const removals = relay.logs.filter((line) => line['msg'] === 'removing expired shared-file');
  t.equal(removals.length, 2, 'each removal logged');
  t.ok(relay.logs.some((line) => line['level'] === 40 && String(line['file']).endsWith('junk.metadata')), 'unparseable metadata warned about');
  await relay.shares.stop(); // idempotent
});

t.test('forwarding to a sub-relay, upstream, or nowhere', async (t) => {
  const relay = await startRelay(t);
  const body = upload(sign2, source2);

  relay.forwarder.status = 202;
  const below = await raw(relay.port, 'PUT', sharePath(C745, E745, 'file3', 'ttl=1d'), body);
  t.equal(below.status, 202, "the sub-relay's status, verbatim");
  t.same(relay.forwarder.calls.at(-1), {
    nextHop: { kind: 'sub-relay', nodeId: R378, hostname: 'localhost' },
    method: 'PUT',
    pathAndQuery: `/rudder/relay-api/shared-files/${C745}/${E745}/file3?ttl=1d`,
    body,
  });
  t.notOk(existsSync(path.join(relay.storage, C745)), 'nothing stored here');

  relay.forwarder.status = 404;
  const deeper = await raw(relay.port, 'HEAD', sharePath(B745, E745, 'file3', 'hash=abc&x=%20y'));
  t.equal(deeper.status, 404);
  t.same(relay.forwarder.calls.at(-1), {
    nextHop: { kind: 'sub-relay', nodeId: E745, hostname: 'node1.rudder.local' },
    method: 'HEAD',
    pathAndQuery: `/rudder/relay-api/shared-files/${B745}/${E745}/file3?hash=abc&x=%20y`,
    body: undefined,
  });
  t.equal(relay.counts.forwarded, 2);
  t.equal(relay.counts.stored, 0);

  relay.forwarder.failure = new Error('ECONNREFUSED');
  t.equal((await raw(relay.port, 'PUT', sharePath(A745, E745, 'f', 'ttl=1d'), body)).status, 500, 'connection error');
  relay.forwarder.failure = undefined;

  const calls = relay.forwarder.calls.length;
  t.equal((await raw(relay.port, 'PUT', sharePath(UNKNOWN, E745, 'f', 'ttl=1d'), body)).status, 500, 'root: unknown target');
  t.equal((await raw(relay.port, 'HEAD', sharePath(UNKNOWN, E745, 'f', 'hash=a'))).status, 500);
  t.equal(relay.forwarder.calls.length, calls, 'root never forwards upstream');
});

t.test('on a relay: a target not below me goes upstream', async (t) => {
  const relay = await startRelay(t, { myId: R378 });
  const body = upload(sign2, source2);
  relay.forwarder.status = 201;
  const unknown = await raw(relay.port, 'PUT', sharePath(UNKNOWN, E745, 'f', 'ttl=2h'), body);
  t.equal(unknown.status, 201);
  t.same(relay.forwarder.calls.at(-1), {
    nextHop: { kind: 'upstream' },
    method: 'PUT',
    pathAndQuery: `/rudder/relay-api/shared-files/${UNKNOWN}/${E745}/f?ttl=2h`,
    body,
  });
  relay.forwarder.status = 200;
  t.equal((await raw(relay.port, 'HEAD', sharePath(E745, R378, 'f', 'hash=ab'))).status, 200, 'a node beside me');
  t.same(relay.forwarder.calls.at(-1)?.nextHop, { kind: 'upstream' });

  // c745's policy server is 37817: my neighbor, stored here
  const local = await raw(relay.port, 'PUT', sharePath(C745, E745, 'mine', 'ttl=1d'), body);
  t.equal(local.status, 200);
  t.same(readFileSync(path.join(relay.storage, C745, 'files', E745, 'mine')), source2);
  t.equal(relay.forwarder.calls.length, 2);
});

t.test('no forwarder configured: 500', async (t) => {
  const relay = await startRelay(t, { withForwarder: false });
  t.equal((await raw(relay.port, 'PUT', sharePath(C745, E745, 'f', 'ttl=1d'), upload(sign2, source2))).status, 500);
  t.equal((await raw(relay.port, 'HEAD', sharePath(C745, E745, 'f', 'hash=a'))).status, 500);
});
