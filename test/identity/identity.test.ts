import { X509Certificate, createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { pino } from 'pino';
import t from 'tap';
import { ensureIdentity, keyDigests, loadIdentity, type IdentityPaths } from '../../src/identity/index.js';
import { FIXTURES } from '../support/fixtures.js';

const run = promisify(execFile);
const KEYS = `${FIXTURES}/files/keys`;
const E745 = 'e745a140-40bc-4b86-b6dc-084488fc906b';
const CF_KEY = '/usr/bin/cf-key';
const UUID = /^[a-f0-9]{8}-[a-f0-9]{4}-4[a-f0-9]{3}-[89ab][a-f0-9]{3}-[a-f0-9]{12}$/;
const DAY_MS = 24 * 3600 * 1000;

const logLines: Array<Record<string, unknown>> = [];
const log = pino({ level: 'info' }, { write: (line: string) => void logLines.push(JSON.parse(line) as Record<string, unknown>) });

const root = await fs.mkdtemp(path.join(os.tmpdir(), 'onerelay-identity-'));
t.teardown(() => fs.rm(root, { recursive: true, force: true }));

function pathsIn(dir: string, nodeId?: string): IdentityPaths {
  return {
    nodeId,
    nodeIdFile: path.join(dir, 'etc', 'uuid.hive'),
    privateKeyFile: path.join(dir, 'ppkeys', 'localhost.priv'),
    publicKeyFile: path.join(dir, 'ppkeys', 'localhost.pub'),
    certificateFile: path.join(dir, 'ssl', 'agent.cert'),
  };
}

function fixturePaths(id: string, certificate = `${id}.cert`): IdentityPaths {
  return {
    nodeId: id,
    nodeIdFile: path.join(KEYS, 'does-not-exist'),
    privateKeyFile: path.join(KEYS, `${id}.priv`),
    publicKeyFile: path.join(KEYS, `${id}.pub`),
    certificateFile: path.join(KEYS, certificate),
  };
}

// RSA 4096 generation takes seconds: once for the whole file
const paths = pathsIn(path.join(root, 'generated'));
const first = await ensureIdentity(paths, log);
const { identity } = first;

t.test('generation creates node id, key pair and certificate', async (t) => {
  t.same(first.created, [paths.nodeIdFile, paths.privateKeyFile, paths.publicKeyFile, paths.certificateFile]);

  const idText = await fs.readFile(paths.nodeIdFile, 'utf8');
  t.match(idText, /\n$/, 'node id file is one newline-terminated line');
  t.match(idText.trim(), UUID, 'lowercase uuid v4');
  t.equal(identity.nodeId, idText.trim());

  const priv = await fs.readFile(paths.privateKeyFile, 'utf8');
  t.match(priv, /^-----BEGIN RSA PRIVATE KEY-----\n/, 'PKCS#1 private key');
  t.notMatch(priv, /ENCRYPTED/);
  t.equal((await fs.stat(paths.privateKeyFile)).mode & 0o777, 0o600);
  t.equal((await fs.stat(path.dirname(paths.privateKeyFile))).mode & 0o777, 0o700);
  t.match(await fs.readFile(paths.publicKeyFile, 'utf8'), /^-----BEGIN RSA PUBLIC KEY-----\n/, 'PKCS#1 public key');
  t.equal(identity.privateKey.asymmetricKeyDetails?.modulusLength, 4096);
  t.equal(identity.privateKey.asymmetricKeyDetails?.publicExponent, 65537n);

  const cert = new X509Certificate(await fs.readFile(paths.certificateFile));
  t.equal(cert.subject, `UID=${identity.nodeId}`);
  t.equal(cert.issuer, `UID=${identity.nodeId}`);
  t.ok(cert.verify(identity.publicKey), 'self-signed by the relay key');
  t.ok(cert.ca, 'CA:TRUE');
  const notBefore = Date.parse(cert.validFrom);
  const notAfter = Date.parse(cert.validTo);
  t.ok(Math.abs(notBefore - (Date.now() - DAY_MS)) < 60_000, 'valid from one day ago');
  t.ok(Math.abs(notAfter - (Date.now() + 3650 * DAY_MS)) < 60_000, 'valid for 3650 days');
  t.match(cert.serialNumber, /^[0-7][0-9A-F]{31}$/, '16-byte positive serial');

  t.ok(
    logLines.some((l) => l['module'] === 'identity' && l['msg'] === 'created agent certificate' && l['nodeId'] === identity.nodeId),
    'logs the creation with the node id as a field',
  );
});

t.test('a second call creates nothing and returns the same identity', async (t) => {
  const files = [paths.nodeIdFile, paths.privateKeyFile, paths.publicKeyFile, paths.certificateFile];
  const before = await Promise.all(files.map((f) => fs.readFile(f)));
  const second = await ensureIdentity(paths, log);
  t.same(second.created, []);
  t.equal(second.identity.nodeId, identity.nodeId);
  t.same(second.identity.digests, identity.digests);
  const after = await Promise.all(files.map((f) => fs.readFile(f)));
  t.same(after, before, 'files untouched');
  t.same((await loadIdentity(paths)).digests, identity.digests, 'loadIdentity agrees');
});

const cfKeySkip = existsSync(CF_KEY) ? false : `${CF_KEY} is not installed: cannot compare with the real CFEngine digest`;
t.test('cf-key -p prints our CFEngine digest', { skip: cfKeySkip }, async (t) => {
  for (const [name, pub, digests] of [
    ['generated key', paths.publicKeyFile, identity.digests],
    ['fixture e745 key', path.join(KEYS, `${E745}.pub`), (await loadIdentity(fixturePaths(E745))).digests],
  ] as const) {
    const { stdout } = await run(CF_KEY, ['-p', pub]);
    const printed = stdout.trim();
    // community builds print MD5=, Enterprise/FIPS builds SHA= (same bytes, SHA-256)
    t.equal(printed, printed.startsWith('SHA=') ? digests.cfengineSha : digests.cfengineMd5, `${name}: ${printed}`);
  }
});

t.test('SHA= and MD5= are the digests of modulus ‖ exponent (checked with openssl)', async (t) => {
  const { stdout } = await run('openssl', ['rsa', '-RSAPublicKey_in', '-in', paths.publicKeyFile, '-noout', '-modulus']);
  const modulus = Buffer.from(stdout.trim().replace(/^Modulus=/, ''), 'hex');
  t.equal(modulus.length, 512);
  const input = Buffer.concat([modulus, Buffer.from([0x01, 0x00, 0x01])]);
  const dgst = async (algorithm: string): Promise<string> => {
    const file = path.join(root, `ne-${algorithm}.bin`);
    await fs.writeFile(file, input);
    const { stdout: out } = await run('openssl', ['dgst', `-${algorithm}`, '-r', file]);
    return out.split(' ')[0] ?? '';
  };
  t.equal(identity.digests.cfengineSha, `SHA=${await dgst('sha256')}`);
  t.equal(identity.digests.cfengineMd5, `MD5=${await dgst('md5')}`);
  t.match(identity.digests.sha256Pin, /^sha256\/\/[A-Za-z0-9+/]{43}=$/);
});

t.test('openssl accepts the key and the certificate', async (t) => {
  const text = (await run('openssl', ['x509', '-in', paths.certificateFile, '-noout', '-text'])).stdout;
  t.match(text, `Subject: UID = ${identity.nodeId}`);
  t.match(text, `Issuer: UID = ${identity.nodeId}`);
  t.match(text, 'CA:TRUE');
  t.match(text, 'Digital Signature, Key Encipherment, Data Encipherment, Key Agreement, Certificate Sign');
  t.match(text, 'X509v3 Subject Key Identifier');
  t.match(text, /X509v3 Authority Key Identifier: *\n *keyid:[0-9A-F:]+\n *DirName:\/UID=[0-9a-f-]+\n *serial:/);
  t.match(text, 'sha256WithRSAEncryption');
  const verify = await run('openssl', ['verify', '-CAfile', paths.certificateFile, paths.certificateFile]);
  t.match(verify.stdout, ': OK');
  const check = await run('openssl', ['rsa', '-in', paths.privateKeyFile, '-check', '-noout']);
  t.match(check.stdout, 'RSA key ok');
  const pin = (
    await run('sh', [
      '-c',
      `openssl x509 -in '${paths.certificateFile}' -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64`,
    ])
  ).stdout.trim();
  t.equal(identity.digests.sha256Pin, `sha256//${pin}`, 'pin as computed by the documented openssl pipeline');
});

t.test('fixture keys: pin, encrypted private key', async (t) => {
  const cert = new X509Certificate(await fs.readFile(path.join(KEYS, `${E745}.cert`)));
  t.equal(keyDigests(cert.publicKey).sha256Pin, 'sha256//I8utFWGj+OpqpbiAIZ/s8qRC4fQXxQ8IRVjFe0X1Lug=');

  t.match(await fs.readFile(path.join(KEYS, `${E745}.priv`), 'utf8'), 'Proc-Type: 4,ENCRYPTED');
  const loaded = await loadIdentity(fixturePaths(E745));
  t.equal(loaded.nodeId, E745);
  t.equal(loaded.digests.sha256Pin, 'sha256//I8utFWGj+OpqpbiAIZ/s8qRC4fQXxQ8IRVjFe0X1Lug=');
  t.equal(loaded.digests.cfengineMd5, 'MD5=367b7bc5ec746517f2a89af2500f3b89');
  t.match(loaded.privateKeyPem, /^-----BEGIN RSA PRIVATE KEY-----\nMII/, 'exposed unencrypted');
  const other = await loadIdentity(fixturePaths(E745, `${E745}-other.cert`));
  t.equal(other.digests.sha256Pin, loaded.digests.sha256Pin, 'another certificate of the same key is accepted');
});

t.test('certificate checks', async (t) => {
  await t.rejects(loadIdentity({ ...paths, certificateFile: path.join(KEYS, `${E745}.cert`) }), {
    code: 'RELAY_ERR_CERTIFICATE',
    message: /does not match private key .*different public key/,
  });
  await t.rejects(loadIdentity({ ...paths, nodeId: 'root' }), {
    code: 'RELAY_ERR_CERTIFICATE',
    message: `has subject UID=${identity.nodeId}, expected UID=root`,
  });
});

t.test('missing or wrong files', async (t) => {
  const missing = path.join(root, 'nowhere', 'localhost.priv');
  await t.rejects(loadIdentity({ ...paths, privateKeyFile: missing }), {
    code: 'RELAY_ERR_IDENTITY',
    message: `cannot read private key ${missing}: file does not exist`,
  });
  await t.rejects(loadIdentity({ ...paths, nodeIdFile: path.join(root, 'nowhere', 'uuid.hive') }), {
    code: 'RELAY_ERR_IDENTITY',
    message: /uuid\.hive/,
  });
  await t.rejects(loadIdentity({ ...paths, publicKeyFile: path.join(KEYS, `${E745}.pub`) }), {
    code: 'RELAY_ERR_IDENTITY',
    message: /does not match private key/,
  });

  const bad = path.join(root, 'bad-uuid.hive');
  for (const content of ['Not-A-Uuid\n', 'E745A140-40BC-4B86-B6DC-084488FC906B', 'root root', '']) {
    await fs.writeFile(bad, content);
    await t.rejects(loadIdentity({ ...paths, nodeIdFile: bad }), { code: 'RELAY_ERR_IDENTITY', message: /invalid node id/ }, JSON.stringify(content));
  }
  await t.rejects(ensureIdentity({ ...pathsIn(path.join(root, 'configured')), nodeId: 'node 1' }, log), {
    code: 'RELAY_ERR_IDENTITY',
  });
});

t.test('existing private key: derives the public key and certificate, keeps the id file as is', async (t) => {
  const dir = path.join(root, 'partial');
  const partial = pathsIn(dir);
  await fs.mkdir(path.dirname(partial.privateKeyFile), { recursive: true, mode: 0o700 });
  await fs.mkdir(path.dirname(partial.nodeIdFile), { recursive: true });
  await fs.copyFile(path.join(KEYS, `${E745}.priv`), partial.privateKeyFile); // encrypted, legacy passphrase
  await fs.writeFile(partial.nodeIdFile, '  root\n\n'); // relayd would not trim; we do

  const { identity: made, created } = await ensureIdentity(partial, log);
  t.same(created, [partial.publicKeyFile, partial.certificateFile]);
  t.equal(made.nodeId, 'root');
  t.equal(made.digests.sha256Pin, 'sha256//I8utFWGj+OpqpbiAIZ/s8qRC4fQXxQ8IRVjFe0X1Lug=');
  t.equal(await fs.readFile(partial.nodeIdFile, 'utf8'), '  root\n\n', 'id file untouched');
  t.match(await fs.readFile(partial.privateKeyFile, 'utf8'), 'ENCRYPTED', 'private key untouched');
  const pub = await fs.readFile(partial.publicKeyFile, 'utf8');
  t.equal(pub, await fs.readFile(path.join(KEYS, `${E745}.pub`), 'utf8'), 'same bytes as cf-key wrote for this key');
  t.equal(new X509Certificate(await fs.readFile(partial.certificateFile)).subject, 'UID=root');
  const leftovers = (await fs.readdir(path.dirname(partial.publicKeyFile))).filter((f) => f.endsWith('.tmp'));
  t.same(leftovers, [], 'no temp files left');

  const hash = createHash('sha256').update(made.publicKey.export({ type: 'spki', format: 'der' })).digest('base64');
  t.equal(made.digests.sha256Pin, `sha256//${hash}`);
});
