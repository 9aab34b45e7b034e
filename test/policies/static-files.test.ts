// Static file serving below a root with Apache's caching semantics (spec-https-front-cfserverd-sync.md §1.2),
// through a real fastify server on 127.0.0.1, raw HTTP requests (no URL normalisation) and curl.

import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import Fastify from 'fastify';
import t from 'tap';
import { createStaticFiles, decodeSafePath, wildcardPath, type ServeOutcome } from '../../src/policies/index.js';

const run = promisify(execFile);

interface RawResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

/** an HTTP request sent with its path exactly as given (fetch would resolve `..` and `%2e%2e`) */
function raw(port: number, method: string, requestPath: string, headers: Record<string, string> = {}): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, method, path: requestPath, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

function expectedEtag(file: string): string {
  const st = statSync(file, { bigint: true });
  return `"${st.size.toString(16)}-${(st.mtimeNs / 1000n).toString(16)}"`;
}

const base = mkdtempSync(path.join(os.tmpdir(), 'onerelay-static-'));
t.teardown(() => rmSync(base, { recursive: true, force: true }));
const root = path.join(base, 'root');
const outside = path.join(base, 'outside');
mkdirSync(path.join(root, 'rules', 'dsc'), { recursive: true });
mkdirSync(outside);
writeFileSync(path.join(root, 'rules', 'rudder.tar.bz2'), 'BZh91AY&SY fake archive');
writeFileSync(path.join(root, 'rules', 'dsc', 'rudder.zip'), 'PK fake zip');
writeFileSync(path.join(root, 'data.json'), '{"a":1}\n');
writeFileSync(path.join(root, 'plain'), '0123456789');
writeFileSync(path.join(root, 'file with space'), 'spaced\n');
writeFileSync(path.join(outside, 'secret'), 'secret\n');
symlinkSync(path.join(outside, 'secret'), path.join(root, 'escape'));
symlinkSync(outside, path.join(root, 'escape-dir'));
symlinkSync(path.join(root, 'plain'), path.join(root, 'inside-link'));

const outcomes: ServeOutcome[] = [];
/** what the front door's access line would say of each answer (request.relayError, src/http/front-door.ts) */
const answered: { url: string; status: number; code: string | undefined; reason: string | undefined }[] = [];
const app = Fastify();
app.addHook('onResponse', (request, reply, done) => {
  answered.push({ url: request.url, status: reply.statusCode, code: request.relayError?.code, reason: request.relayError?.message });
  done();
});
const staticFiles = createStaticFiles();
app.route({
  method: ['GET', 'HEAD'],
  url: '/files/*',
  handler: async (request, reply) => {
    outcomes.push(await staticFiles.serve(root, wildcardPath(request), request, reply));
    return reply;
  },
});
await app.listen({ host: '127.0.0.1', port: 0 });
t.teardown(() => app.close());
const address = app.server.address();
if (address === null || typeof address === 'string') throw new Error('no port');
const port = address.port;
const url = (p: string): string => `http://127.0.0.1:${port}${p}`;

t.test('GET: strong Apache-form ETag, Last-Modified, Content-Length, type, body', async (t) => {
  const file = path.join(root, 'rules', 'rudder.tar.bz2');
  const res = await raw(port, 'GET', '/files/rules/rudder.tar.bz2');
  t.equal(res.status, 200);
  t.match(res.headers['etag'], /^"[a-z0-9]+-[a-z0-9]+"$/, 'quoted lowercase [a-z0-9-]');
  t.equal(res.headers['etag'], expectedEtag(file), '"<size-hex>-<mtime-µs-hex>"');
  t.equal(res.headers['last-modified'], new Date(Math.floor(statSync(file).mtimeMs / 1000) * 1000).toUTCString());
  t.equal(res.headers['content-length'], String(statSync(file).size));
  t.equal(res.headers['content-type'], 'application/x-bzip2');
  t.equal(res.headers['accept-ranges'], 'bytes');
  t.same(res.body, readFileSync(file));
  t.same(outcomes.at(-1), { status: 200, bytes: statSync(file).size });

  t.equal((await raw(port, 'GET', '/files/rules/dsc/rudder.zip')).headers['content-type'], 'application/zip');
  t.equal((await raw(port, 'GET', '/files/data.json')).headers['content-type'], 'application/json');
  t.equal((await raw(port, 'GET', '/files/plain')).headers['content-type'], 'application/octet-stream');
  const spaced = await raw(port, 'GET', '/files/file%20with%20space');
  t.equal(spaced.status, 200);
  t.equal(spaced.body.toString(), 'spaced\n');
});

t.test('HEAD: the same headers, no body', async (t) => {
  const get = await raw(port, 'GET', '/files/data.json');
  const head = await raw(port, 'HEAD', '/files/data.json');
  t.equal(head.status, 200);
  t.equal(head.body.length, 0);
  for (const name of ['etag', 'last-modified', 'content-length', 'content-type', 'accept-ranges']) {
    t.equal(head.headers[name], get.headers[name], name);
  }
  t.equal(head.headers['content-length'], '8');
  t.same(outcomes.at(-1), { status: 200, bytes: 0 });
});

t.test('If-None-Match and If-Modified-Since', async (t) => {
  const first = await raw(port, 'GET', '/files/plain');
  const etag = String(first.headers['etag']);

  const empty = await raw(port, 'GET', '/files/plain', { 'if-none-match': '""' });
  t.equal(empty.status, 200, '"" (curl --etag-compare without a saved etag) never matches');
  t.equal(empty.body.toString(), '0123456789');

  const match = await raw(port, 'GET', '/files/plain', { 'if-none-match': etag });
  t.equal(match.status, 304);
  t.equal(match.headers['etag'], etag, 'the ETag is repeated on 304');
  t.equal(match.headers['last-modified'], first.headers['last-modified']);
  t.equal(match.body.length, 0);
  t.same(outcomes.at(-1), { status: 304, bytes: 0 });

  t.equal((await raw(port, 'GET', '/files/plain', { 'if-none-match': `"nope", ${etag}` })).status, 304, 'list');
  t.equal((await raw(port, 'GET', '/files/plain', { 'if-none-match': `W/${etag}` })).status, 304, 'weak comparison');
  t.equal((await raw(port, 'GET', '/files/plain', { 'if-none-match': '*' })).status, 304, '*');
  t.equal((await raw(port, 'GET', '/files/plain', { 'if-none-match': '"other"' })).status, 200);
  t.equal((await raw(port, 'HEAD', '/files/plain', { 'if-none-match': etag })).status, 304, 'HEAD too');

  const lastModified = String(first.headers['last-modified']);
  t.equal((await raw(port, 'GET', '/files/plain', { 'if-modified-since': lastModified })).status, 304);
  t.equal((await raw(port, 'GET', '/files/plain', { 'if-modified-since': 'Thu, 01 Jan 1970 00:00:00 GMT' })).status, 200);
  t.equal(
    (await raw(port, 'GET', '/files/plain', { 'if-none-match': '"other"', 'if-modified-since': lastModified })).status,
    200,
    'If-Modified-Since is ignored when If-None-Match is present',
  );
  t.equal((await raw(port, 'GET', '/files/plain', { 'if-match': '"other"' })).status, 412);
  t.equal((await raw(port, 'GET', '/files/plain', { 'if-unmodified-since': 'Thu, 01 Jan 1970 00:00:00 GMT' })).status, 412);
});

t.test('a single Range', async (t) => {
  const part = await raw(port, 'GET', '/files/plain', { range: 'bytes=2-5' });
  t.equal(part.status, 206);
  t.equal(part.body.toString(), '2345');
  t.equal(part.headers['content-range'], 'bytes 2-5/10');
  t.equal(part.headers['content-length'], '4');
  t.equal((await raw(port, 'GET', '/files/plain', { range: 'bytes=-3' })).body.toString(), '789');
  t.equal((await raw(port, 'GET', '/files/plain', { range: 'bytes=7-' })).body.toString(), '789');
  const outOf = await raw(port, 'GET', '/files/plain', { range: 'bytes=10-' });
  t.equal(outOf.status, 416);
  t.equal(outOf.headers['content-range'], 'bytes */10');
  t.equal((await raw(port, 'GET', '/files/plain', { range: 'bytes=0-1,4-5' })).status, 200, 'several ranges: whole file');
  t.equal((await raw(port, 'GET', '/files/plain', { range: 'bytes=0-1', 'if-range': '"stale"' })).status, 200, 'If-Range mismatch');
});

t.test('path refusals: 400 for ./../empty/encoded separators, nothing served', async (t) => {
  for (const bad of [
    '/files/..',
    '/files/rules/../plain',
    '/files/%2e%2e/outside/secret',
    '/files/%2E%2E',
    '/files/rules/%2e',
    '/files/rules%2Fdsc%2Frudder.zip',
    '/files/rules//rudder.tar.bz2',
    '/files/rules/',
    '/files/rules%5Cdsc',
    '/files/pla%00in',
    '/files/bad%ff',
  ]) {
    const res = await raw(port, 'GET', bad);
    t.equal(res.status, 400, bad);
  }
  t.throws(() => decodeSafePath('a/../b'), { code: 'RELAY_ERR_BAD_REQUEST' });
  t.throws(() => decodeSafePath('a/%2e%2e/b'), { code: 'RELAY_ERR_BAD_REQUEST' });
  t.throws(() => decodeSafePath(''), { code: 'RELAY_ERR_BAD_REQUEST' });
  t.throws(() => decodeSafePath('a%2fb'), { code: 'RELAY_ERR_BAD_REQUEST' });
  t.throws(() => decodeSafePath('a\\b'), { code: 'RELAY_ERR_BAD_REQUEST' });
  t.throws(() => decodeSafePath('%E0%A4%A'), { code: 'RELAY_ERR_BAD_REQUEST' });
  t.same(decodeSafePath('c745/file%20with%20space/a+b/..x'), ['c745', 'file with space', 'a+b', '..x']);
});

t.test('symlinks: outside the root 403, inside served; directories and absent files 404', async (t) => {
  const escape = await raw(port, 'GET', '/files/escape');
  t.equal(escape.status, 403);
  t.notMatch(escape.body.toString(), /secret/);
  t.equal((await raw(port, 'GET', '/files/escape-dir/secret')).status, 403, 'through a directory symlink');
  const inside = await raw(port, 'GET', '/files/inside-link');
  t.equal(inside.status, 200);
  t.equal(inside.body.toString(), '0123456789');
  t.equal((await raw(port, 'GET', '/files/rules')).status, 404, 'no directory listing');
  t.equal((await raw(port, 'GET', '/files/rules/dsc')).status, 404);
  t.equal((await raw(port, 'GET', '/files/absent')).status, 404);
  t.equal((await raw(port, 'GET', '/files/plain/below-a-file')).status, 404);
});

t.test('every refusal carries a code and its cause for the access line; the body stays bare', async (t) => {
  const cases: { path: string; status: number; code: string; reason: RegExp; body: string }[] = [
    { path: '/files/%2e%2e/outside/secret', status: 400, code: 'RELAY_ERR_BAD_REQUEST', reason: /path segment/, body: 'BAD REQUEST' },
    { path: '/files/escape', status: 403, code: 'RELAY_ERR_FILE_FORBIDDEN', reason: /outside of the served directory/, body: 'FORBIDDEN' },
    { path: '/files/absent', status: 404, code: 'RELAY_ERR_NOT_FOUND', reason: /no such file \(ENOENT\)/, body: 'NOT FOUND' },
    { path: '/files/rules', status: 404, code: 'RELAY_ERR_NOT_FOUND', reason: /not a regular file \(directory\)/, body: 'NOT FOUND' },
  ];
  for (const c of cases) {
    const res = await raw(port, 'GET', c.path);
    t.equal(res.status, c.status, c.path);
    t.equal(res.body.toString(), c.body, `${c.path}: Apache's bare body`);
    const line = answered.findLast((a) => a.url === c.path);
    t.equal(line?.code, c.code, `${c.path}: ${c.code}`);
    t.match(line?.reason, c.reason, `${c.path}: the cause`);
  }
  const served = await raw(port, 'GET', '/files/plain');
  t.equal(served.status, 200);
  t.equal(answered.findLast((a) => a.url === '/files/plain')?.code, undefined, 'a file served has no code');
});

t.test('a file rewritten in place gets a new ETag', async (t) => {
  const file = path.join(root, 'rewritten');
  writeFileSync(file, 'version 1\n');
  const before = (await raw(port, 'GET', '/files/rewritten')).headers['etag'];
  await new Promise((resolve) => setTimeout(resolve, 20));
  writeFileSync(file, 'version 2\n'); // same size, new mtime
  const after = await raw(port, 'GET', '/files/rewritten');
  t.not(after.headers['etag'], before);
  t.equal(after.headers['etag'], expectedEtag(file));
  t.equal(after.body.toString(), 'version 2\n');
  t.equal((await raw(port, 'GET', '/files/rewritten', { 'if-none-match': String(before) })).status, 200, 'old ETag no longer matches');
});

t.test('curl --etag-save/--etag-compare: 200 then 304, etag file unchanged', async (t) => {
  const etagFile = path.join(base, 'curl.etag');
  const output = path.join(base, 'curl.out');
  const curl = (): Promise<{ stdout: string }> =>
    run('curl', ['-sS', '-o', output, '-w', '%{http_code}', '--etag-save', etagFile, '--etag-compare', etagFile, url('/files/rules/rudder.tar.bz2')]);
  t.equal((await curl()).stdout, '200');
  const saved = readFileSync(etagFile, 'utf8');
  t.equal(saved.trim(), expectedEtag(path.join(root, 'rules', 'rudder.tar.bz2')));
  t.equal((await curl()).stdout, '304');
  t.equal(readFileSync(etagFile, 'utf8'), saved, 'the etag file is kept as it was');
});
