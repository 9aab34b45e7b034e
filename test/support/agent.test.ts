import { X509Certificate } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import t from 'tap';

import {
  cachedAgentIdentity,
  certificatePin,
  curlDownload,
  curlUpload,
  identityFromFiles,
  makeAgentIdentity,
  run,
  sampleRunlog,
  signRunlog,
  signedGzippedReport,
  type AgentIdentity,
} from './agent.js';
import { freePort, tempDir, type Teardownable } from './tmp.js';
import { FIXTURES as RELAYD_FIXTURES } from './fixtures.js';

const FIXTURES = `${RELAYD_FIXTURES}/files`;
const NODE = '0f8d9e1a-5b6c-4d7e-8f90-a1b2c3d4e5f6';
const SERVER = 'root';

async function openssl(args: string[], input?: string | Buffer): Promise<string> {
  const r = await run('openssl', args, input === undefined ? {} : { input });
  if (r.code !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
  return r.stdout.toString('utf8');
}

interface Seen {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
  peerCertDer: Buffer | undefined;
  protocol: string | null;
  body: Buffer;
}

async function startServer(
  t: Teardownable,
  identity: AgentIdentity,
  handler: (seen: Seen, res: ServerResponse) => void,
): Promise<{ port: number; seen: Seen[] }> {
  const seen: Seen[] = [];
  const srv = createServer(
    {
      key: await readFile(identity.privateKeyFile),
      cert: identity.certificatePem,
      minVersion: 'TLSv1.3',
      requestCert: true,
      rejectUnauthorized: false,
    },
    (req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const sock = req.socket as TLSSocket;
        const peer = sock.getPeerCertificate();
        const s: Seen = {
          method: req.method ?? '',
          url: req.url ?? '',
          headers: req.headers,
          peerCertDer: peer && peer.raw ? peer.raw : undefined,
          protocol: sock.getProtocol(),
          body: Buffer.concat(chunks),
        };
        seen.push(s);
        handler(s, res);
      });
    },
  );
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => srv.close(() => resolve())));
  return { port: (srv.address() as AddressInfo).port, seen };
}

t.test('makeAgentIdentity (2048 bits) looks like a real agent identity', async (t) => {
  const dir = tempDir(t);
  const id = await makeAgentIdentity(join(dir, 'ppkeys'), NODE, { bits: 2048 });
  t.equal(id.nodeId, NODE);
  t.match(await readFile(id.privateKeyFile, 'utf8'), /^-----BEGIN RSA PRIVATE KEY-----\n/);
  t.match(await readFile(id.publicKeyFile, 'utf8'), /^-----BEGIN RSA PUBLIC KEY-----\n/);

  const subject = await openssl(['x509', '-noout', '-subject', '-in', id.certificateFile]);
  t.equal(subject.trim(), `subject=UID = ${NODE}`);

  // the agent-check test: modulus of cert = modulus of key
  const mc = await openssl(['x509', '-noout', '-modulus', '-in', id.certificateFile]);
  const mk = await openssl(['rsa', '-noout', '-modulus', '-in', id.privateKeyFile]);
  t.equal(mc, mk, 'key matches certificate');
  // .pub is the PKCS#1 public key of the private key
  t.equal(await readFile(id.publicKeyFile, 'utf8'), await openssl(['rsa', '-in', id.privateKeyFile, '-RSAPublicKey_out']));

  const x = new X509Certificate(id.certificatePem);
  t.ok(x.ca, 'CA:TRUE');
  t.ok(x.checkIssued(x), 'self-signed');
  const days = (Date.parse(x.validTo) - Date.parse(x.validFrom)) / 86_400_000;
  t.equal(Math.round(days), 3650);
  const text = await openssl(['x509', '-noout', '-text', '-in', id.certificateFile]);
  t.match(text, /Public-Key: \(2048 bit\)/);
  t.match(text, /Signature Algorithm: sha256WithRSAEncryption/);
  t.match(text, /Digital Signature, Key Encipherment, Data Encipherment, Key Agreement, Certificate Sign/);
  t.match(text, /X509v3 Subject Key Identifier/);
  t.match(text, /X509v3 Authority Key Identifier/);

  // same pin as Node computes from the SPKI
  const { createHash } = await import('node:crypto');
  const spki = x.publicKey.export({ type: 'spki', format: 'der' });
  t.equal(id.sha256Pin, `sha256//${createHash('sha256').update(spki).digest('base64')}`);

  // the openssl fallback gives the same formats
  const id2 = await makeAgentIdentity(join(dir, 'ossl'), NODE, { bits: 2048, keyTool: 'openssl' });
  t.match(await readFile(id2.privateKeyFile, 'utf8'), /^-----BEGIN RSA PRIVATE KEY-----\n/);
  t.match(await readFile(id2.publicKeyFile, 'utf8'), /^-----BEGIN RSA PUBLIC KEY-----\n/);
  await t.rejects(makeAgentIdentity(join(dir, 'ossl'), NODE, { bits: 2048 }), /already exists/);
});

t.test('cachedAgentIdentity is memoised and stored on disk', async (t) => {
  const a = await cachedAgentIdentity(NODE, 2048);
  const b = await cachedAgentIdentity(NODE, 2048);
  t.equal(a, b);
  t.match(a.dir, /onerelay-test-identities\/0f8d9e1a-5b6c-4d7e-8f90-a1b2c3d4e5f6-2048$/);
  const subject = await openssl(['x509', '-noout', '-subject', '-in', a.certificateFile]);
  t.equal(subject.trim(), `subject=UID = ${NODE}`);
});

t.test('fixture certificate pin', async (t) => {
  t.equal(
    await certificatePin(join(FIXTURES, 'keys/e745a140-40bc-4b86-b6dc-084488fc906b.cert')),
    'sha256//I8utFWGj+OpqpbiAIZ/s8qRC4fQXxQ8IRVjFe0X1Lug=',
  );
});

t.test('signRunlog output verifies like relayd does', async (t) => {
  const dir = tempDir(t);
  const id = await cachedAgentIdentity(NODE, 2048);
  const text = sampleRunlog(NODE);
  t.match(text, new RegExp(`^\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\+00:00 R: @@Common@@control@@rudder@@run@@0@@start@@`));
  t.equal(text.split('\n').length, 7, '6 lines and a trailing newline');
  t.ok(text.split('\n').slice(0, 6).every((l) => l.endsWith(`##${NODE}@#${l.split('@#')[1]}`)));

  const signed = await signRunlog(id, text);
  const s = signed.toString('utf8');
  t.match(s, /^MIME-Version: 1\.0\nContent-Type: multipart\/signed; protocol="application\/x-pkcs7-signature"; micalg="sha-256"; boundary="/);
  t.ok(s.includes('Content-Type: text/plain\r\n\r\n'), '-text header, CRLF');
  t.ok(s.includes(text.replaceAll('\n', '\r\n')), 'signed content is the text with CRLF line endings');
  t.notOk(s.includes('BEGIN CERTIFICATE'), '-nocerts');

  const f = join(dir, 'r.signed');
  await writeFile(f, signed);
  const v = await run('openssl', ['smime', '-verify', '-noverify', '-text', '-nointern', '-certfile', id.certificateFile, '-in', f]);
  t.equal(v.code, 0, v.stderr);
  t.match(v.stderr, /Verification successful/);
  t.equal(v.stdout.toString('utf8'), text.replaceAll('\n', '\r\n'), 'verified text keeps CRLF');

  // a different key with the same UID does not verify (relayd matches issuer+serial+key)
  const other = await makeAgentIdentity(join(dir, 'other'), NODE, { bits: 2048 });
  const bad = await run('openssl', ['smime', '-verify', '-noverify', '-text', '-nointern', '-certfile', other.certificateFile, '-in', f]);
  t.not(bad.code, 0, 'foreign certificate rejected');
});

t.test('signing with the relayd fixture key (passphrase-protected, 6.x style)', async (t) => {
  const dir = tempDir(t);
  const fx = await identityFromFiles({
    nodeId: 'e745a140-40bc-4b86-b6dc-084488fc906b',
    privateKeyFile: join(FIXTURES, 'keys/e745a140-40bc-4b86-b6dc-084488fc906b.priv'),
    certificateFile: join(FIXTURES, 'keys/e745a140-40bc-4b86-b6dc-084488fc906b.cert'),
  });
  const text = sampleRunlog(fx.nodeId);
  const f = join(dir, 'r.signed');
  await writeFile(f, await signRunlog(fx, text));
  const v = await run('openssl', ['smime', '-verify', '-noverify', '-text', '-nointern', '-certfile', join(FIXTURES, 'keys/nodescerts.pem'), '-in', f]);
  t.equal(v.code, 0, v.stderr);
  t.equal(v.stdout.toString('utf8').replaceAll('\r\n', '\n'), text);
});

t.test('signedGzippedReport: agent file name and gzip -f framing', async (t) => {
  const id = await cachedAgentIdentity(NODE, 2048);
  const before = Date.now();
  const { name, body } = await signedGzippedReport(id, sampleRunlog(NODE));
  t.match(name, new RegExp(`^\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\+00:00@${NODE}\\.log\\.gz$`));
  t.ok(Math.abs(Date.parse(name.slice(0, 25)) - before) < 5000, 'time stamp is now (UTC)');
  t.equal(body[0], 0x1f);
  t.equal(body[1], 0x8b);
  t.equal(body[3]! & 0x08, 0x08, 'FNAME flag set, as gzip(1) does');
  const fname = body.subarray(10, body.indexOf(0, 10)).toString('latin1');
  t.equal(fname, name.slice(0, -3), 'embedded original name');
  const signed = gunzipSync(body).toString('utf8');
  t.match(signed, /^MIME-Version: 1\.0\n/);
  t.ok(signed.includes(sampleRunlog(NODE).replaceAll('\n', '\r\n')));
});

t.test('curlUpload speaks to a TLS 1.3 server as rudder-client does', async (t) => {
  const dir = tempDir(t);
  const [server, client] = await Promise.all([cachedAgentIdentity(SERVER, 2048), cachedAgentIdentity(NODE, 2048)]);
  const { port, seen } = await startServer(t, server, (_s, res) => {
    res.writeHead(201, { 'content-type': 'text/plain' });
    res.end('created\n');
  });
  const report = await signedGzippedReport(client, sampleRunlog(NODE), new Date('2024-01-02T03:04:05Z'));
  const file = join(dir, report.name);
  await writeFile(file, report.body);

  const r = await curlUpload({
    url: `https://127.0.0.1:${port}/reports/`,
    file,
    user: 'rudder',
    password: 's3cr:et',
    identity: client,
    pinnedPubKey: server.sha256Pin,
  });
  t.equal(r.exitCode, 0, r.stderr);
  t.equal(r.status, 201);
  t.equal(r.stdout, 'created\n');
  t.equal(seen.length, 1);
  const s = seen[0]!;
  t.equal(s.method, 'PUT');
  t.equal(s.url, `/reports/2024-01-02T03%3a04%3a05%2b00%3a00%40${NODE}.log.gz`, 'curl appends the basename, percent-encoded in lowercase hex');
  t.equal(decodeURIComponent(s.url.slice('/reports/'.length)), report.name);
  t.equal(s.headers.authorization, `Basic ${Buffer.from('rudder:s3cr:et').toString('base64')}`);
  t.equal(s.protocol, 'TLSv1.3');
  t.ok(s.peerCertDer, 'client certificate presented');
  t.same(s.peerCertDer, new X509Certificate(client.certificatePem).raw, 'it is the agent certificate');
  t.same(s.body, report.body, 'exact body');
  t.equal(s.headers['content-length'], String(report.body.length));
  t.match(r.args, ['--tlsv1.3', '--location', '--connect-timeout', '10', '--noproxy', '*', '--pinnedpubkey']);

  // no identity: no client certificate; 4xx visible without --fail
  const { port: p2, seen: seen2 } = await startServer(t, server, (_s, res) => {
    res.writeHead(401, { 'www-authenticate': 'Basic realm="WebDAV Storage"' });
    res.end();
  });
  const r2 = await curlUpload({ url: `https://127.0.0.1:${p2}/inventories/`, file, user: 'rudder:rudder', pinnedPubKey: server.sha256Pin });
  t.equal(r2.exitCode, 0);
  t.equal(r2.status, 401);
  t.equal(seen2[0]!.peerCertDer, undefined, 'no client certificate without identity');
  t.equal(seen2[0]!.headers.authorization, `Basic ${Buffer.from('rudder:rudder').toString('base64')}`);
  const r3 = await curlUpload({ url: `https://127.0.0.1:${p2}/inventories/`, file, user: 'rudder:rudder', fail: true });
  t.equal(r3.exitCode, 22, 'with --fail curl exits 22');
  t.equal(r3.status, 401, 'status still reported');

  // wrong pin: curl refuses before sending anything
  const r4 = await curlUpload({ url: `https://127.0.0.1:${port}/reports/`, file, pinnedPubKey: client.sha256Pin });
  t.equal(r4.exitCode, 90, 'CURLE_SSL_PINNEDPUBKEYNOTMATCH');
  t.equal(r4.status, 0);
  t.equal(seen.length, 1);

  // nothing listening
  const r5 = await curlUpload({ url: `https://127.0.0.1:${await freePort()}/reports/`, file });
  t.equal(r5.exitCode, 7);
  t.equal(r5.status, 0);
});

t.test('curlDownload with ETag files, as rudder-client -c -t', async (t) => {
  const dir = tempDir(t);
  const [server, client] = await Promise.all([cachedAgentIdentity(SERVER, 2048), cachedAgentIdentity(NODE, 2048)]);
  const etag = '"1f-5f0a2b3c4d5e6"';
  const { port, seen } = await startServer(t, server, (s, res) => {
    if (s.headers['if-none-match'] === etag) {
      res.writeHead(304, { etag });
      res.end();
      return;
    }
    res.writeHead(200, { etag, 'content-type': 'application/x-bzip2' });
    res.end('archive bytes');
  });
  const output = join(dir, 'rudder.tar.bz2');
  const etagFile = `${output}.etag`;
  const url = `https://127.0.0.1:${port}/policies/${NODE}/rules/rudder.tar.bz2`;
  const r1 = await curlDownload({ url, output, etagFile, identity: client, pinnedPubKey: server.sha256Pin });
  t.equal(r1.exitCode, 0, r1.stderr);
  t.equal(r1.status, 200);
  t.equal(await readFile(output, 'utf8'), 'archive bytes');
  t.equal((await readFile(etagFile, 'utf8')).trim(), etag);
  t.equal(seen[0]!.method, 'GET');
  t.equal(seen[0]!.headers['if-none-match'], '""', 'curl sends an empty ETag when the file is missing');
  t.ok(seen[0]!.peerCertDer);

  const r2 = await curlDownload({ url, output: join(dir, 'second'), etagFile, identity: client, pinnedPubKey: server.sha256Pin });
  t.equal(r2.exitCode, 0, r2.stderr);
  t.equal(r2.status, 304);
  t.equal(seen[1]!.headers['if-none-match'], etag);
  const { existsSync } = await import('node:fs');
  t.notOk(existsSync(join(dir, 'second')), 'nothing written on 304');
});
