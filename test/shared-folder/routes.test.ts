// The shared folder (spec-relayd.md §4.8, §12.1 shared_folder.rs) with the fixture folder, through a real
// fastify server on 127.0.0.1 and raw HTTP requests.

import { createHash } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import { chmodSync, cpSync, mkdtempSync, readdirSync, rmSync, symlinkSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Fastify from 'fastify';
import t from 'tap';
import { sharedFolderRoutes } from '../../src/shared-folder/index.js';
import { FIXTURES } from '../support/fixtures.js';

const FIXTURE = `${FIXTURES}/api_shared_folder`;
const DIR = '/rudder/relay-api/1/shared-folder/c745a140-40bc-4b86-b6dc-084488fc906b/37817c4d-fbf7-4850-a985-50021f4e8f41';
const SHA256 = '181210f8f9c779c26da1d9b2075bde0127302ee0e3fca38c9a83f5b1dd8e5d3b';

interface RawResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

function raw(port: number, method: string, requestPath: string): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, method, path: requestPath }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

const base = mkdtempSync(path.join(os.tmpdir(), 'onerelay-shared-folder-'));
t.teardown(() => rmSync(base, { recursive: true, force: true }));
const root = path.join(base, 'shared-folder');
cpSync(FIXTURE, root, { recursive: true });
// the fixtures are read-only; the copy must be removable by a non-root user
for (const entry of readdirSync(root, { recursive: true, withFileTypes: true })) chmodSync(path.join(entry.parentPath, entry.name), 0o755);
chmodSync(root, 0o755);
symlinkSync('/etc/hostname', path.join(root, 'escape'));

const app = Fastify();
await app.register(sharedFolderRoutes, { prefix: '/rudder/relay-api/1/shared-folder', path: root });
await app.listen({ host: '127.0.0.1', port: 0 });
t.teardown(() => app.close());
const address = app.server.address();
if (address === null || typeof address === 'string') throw new Error('no port');
const port = address.port;

t.test('HEAD ?hash= answers (shared_folder.rs)', async (t) => {
  const head = (p: string): Promise<number> => raw(port, 'HEAD', p).then((r) => r.status);
  t.equal(await head(`${DIR}/file?hash_type=sha256&hash=${SHA256}`), 304, 'equal hash');
  t.equal(await head(`${DIR}/file%20with%20space?hash_type=sha256&hash=${SHA256}`), 304, 'encoded name');
  t.equal(await head(`${DIR}/file?hash_type=sha256&hash=${SHA256.replace(/^1/, '2')}`), 200, 'different hash');
  t.equal(await head(`${DIR}/file?hash_type=sha256&hash=test`), 400, 'not hex');
  t.equal(await head(`${DIR}/file?hash_type=sha256&hash=`), 200, 'empty hash');
  t.equal(await head(`/rudder/relay-api/1/shared-folder/wrong-node/file?hash_type=sha256&hash=${SHA256}`), 404, 'missing');
  t.equal(await head(`${DIR}/file?hash_type=wrong-hash-type&hash=${SHA256}`), 400, 'bad hash_type');

  t.equal(await head(`${DIR}/file?hash=${SHA256}`), 304, 'hash_type defaults to sha256');
  t.equal(await head(`${DIR}/file?hash=${SHA256.toUpperCase()}`), 304, 'byte comparison: hex case-insensitive');
  const sha512 = createHash('sha512').update('123\n').digest('hex');
  t.equal(await head(`${DIR}/file?hash_type=sha512&hash=${sha512}`), 304, 'sha512');
  t.equal(await head(`${DIR}/file?hash_type=sha512&hash=${SHA256}`), 400, 'wrong length for the type');
  t.equal(await head(`${DIR}/file`), 200, 'no query at all');
  t.equal(await head(`/rudder/relay-api/1/shared-folder/wrong-node/file?hash_type=wrong&hash=test`), 404, 'missing wins over bad params');
  t.equal(await head(`${DIR}?hash=${SHA256}`), 500, 'a directory is a read error');
  t.equal(await head(`${DIR}/../../c745a140-40bc-4b86-b6dc-084488fc906b/37817c4d-fbf7-4850-a985-50021f4e8f41/file`), 400, '..');
  t.equal(await head(`${DIR}/%2e%2e/37817c4d-fbf7-4850-a985-50021f4e8f41/file`), 400, 'encoded ..');
  t.equal(await head('/rudder/relay-api/1/shared-folder/escape'), 403, 'symlink out of the folder');
});

t.test('GET: static file, 404 NOT FOUND for anything not served', async (t) => {
  const file = await raw(port, 'GET', `${DIR}/file`);
  t.equal(file.status, 200);
  t.equal(file.body, '123\n');
  t.match(file.headers['etag'], /^"[a-z0-9]+-[a-z0-9]+"$/);
  t.equal(file.headers['content-length'], '4');
  const spaced = await raw(port, 'GET', `${DIR}/file%20with%20space`);
  t.equal(spaced.body, '123\n');
  for (const missing of [`${DIR}/doesnotexist`, `${DIR}/../file`, DIR, '/rudder/relay-api/1/shared-folder/escape']) {
    const res = await raw(port, 'GET', missing);
    t.equal(res.status, 404, missing);
    t.equal(res.body, 'NOT FOUND', missing);
    t.equal(res.headers['content-type'], 'text/plain; charset=utf-8');
  }
});
