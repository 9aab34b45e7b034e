import { X509Certificate, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import forge from 'node-forge';
import { pino } from 'pino';
import t, { type Test } from 'tap';
import { nameOf, parseCertificateFacts, writeSelfSignedCertificate } from '../../src/der/index.js';
import { createNodesRegistry, parseKeyHash, type NodesRegistry } from '../../src/nodes/index.js';
import { FIXTURES as RELAYD_FIXTURES } from '../support/fixtures.js';

const FIXTURES = `${RELAYD_FIXTURES}/files`;
const KEYS = path.join(FIXTURES, 'keys');
const ROOT = 'root';
const E745 = 'e745a140-40bc-4b86-b6dc-084488fc906b';
const A745 = 'a745a140-40bc-4b86-b6dc-084488fc906b';
const B745 = 'b745a140-40bc-4b86-b6dc-084488fc906b';
const C745 = 'c745a140-40bc-4b86-b6dc-084488fc906b';
const R378 = '37817c4d-fbf7-4850-a985-50021f4e8f41';
const UNKNOWN = 'f745a140-40bc-4b86-b6dc-084488fc906b';
const DAY_MS = 24 * 3600 * 1000;

const logLines: Array<Record<string, unknown>> = [];
const log = pino({ level: 'info' }, { write: (line: string) => void logLines.push(JSON.parse(line) as Record<string, unknown>) });

const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'onerelay-nodes-'));
t.teardown(() => fs.rm(tmp, { recursive: true, force: true }));
let dirCount = 0;

/** a fresh directory holding copies of the fixture nodeslist.json and nodescerts.pem */
async function fixtureDir(): Promise<{ list: string; certs: string }> {
  const dir = path.join(tmp, `case-${++dirCount}`);
  await fs.mkdir(dir);
  const list = path.join(dir, 'nodeslist.json');
  const certs = path.join(dir, 'nodescerts.pem');
  await fs.copyFile(path.join(FIXTURES, 'nodeslist.json'), list);
  await fs.copyFile(path.join(KEYS, 'nodescerts.pem'), certs);
  return { list, certs };
}

/** every registry made here, stopped at the end: each keeps its loaded certificates file open until then */
const registries: NodesRegistry[] = [];
t.teardown(() => Promise.all(registries.map((registry) => registry.stop())));

function registryFor(files: { list: string; certs: string }, myId = ROOT): NodesRegistry {
  const registry = createNodesRegistry({ myId, nodesListFile: files.list, nodesCertsFile: files.certs, log });
  registries.push(registry);
  return registry;
}

/** a loaded registry on a fresh fixture copy, with the certificates file's text and its PEM blocks (to rewrite it in place) */
async function loadedWithPems(t: Test): Promise<{ files: { list: string; certs: string }; original: string; pems: string[]; registry: NodesRegistry }> {
  const files = await fixtureDir();
  const original = await fs.readFile(files.certs, 'latin1');
  const registry = registryFor(files);
  t.teardown(() => registry.stop());
  await registry.reload();
  return { files, original, pems: original.split(/(?<=-----END CERTIFICATE-----\n?)/), registry };
}

async function derOf(file: string): Promise<Buffer> {
  return new X509Certificate(await fs.readFile(file)).raw;
}

const testKey = generateKeyPairSync('rsa', { modulusLength: 2048 });

/** a self-signed certificate made on the spot (forge lets us pick any dates) */
function makeCertificate(options: { uid?: string; cn?: string; notBefore?: Date; notAfter?: Date; key?: KeyObject }): Buffer {
  const privateKey = options.key ?? testKey.privateKey;
  const forgeKey = forge.pki.privateKeyFromPem(privateKey.export({ type: 'pkcs1', format: 'pem' }).toString());
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.setRsaPublicKey(forgeKey.n, forgeKey.e);
  cert.serialNumber = '01';
  cert.validity.notBefore = options.notBefore ?? new Date(Date.now() - DAY_MS);
  cert.validity.notAfter = options.notAfter ?? new Date(Date.now() + DAY_MS);
  const name: forge.pki.CertificateField[] = [];
  if (options.cn !== undefined) name.push({ name: 'commonName', value: options.cn });
  if (options.uid !== undefined) name.push({ type: '0.9.2342.19200300.100.1.1', value: options.uid });
  cert.setSubject(name);
  cert.setIssuer(name);
  cert.sign(forgeKey, forge.md.sha256.create());
  return Buffer.from(forge.asn1.toDer(forge.pki.certificateToAsn1(cert)).getBytes(), 'binary');
}

function pemOf(der: Buffer): string {
  return new X509Certificate(der).toString();
}

async function eventually(condition: () => boolean, timeoutMs = 8000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (condition()) return true;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return condition();
}

t.test('fixture nodes list and certificates (spec-relayd §13)', async (t) => {
  const registry = registryFor(await fixtureDir());
  await registry.reload();
  const status = registry.status();
  t.match(status, { ok: true, nodes: 6, managedNodes: 3, certificates: 3, error: undefined });
  t.ok(status.loadedAt !== undefined && !Number.isNaN(Date.parse(status.loadedAt)));
  t.equal(registry.myId, ROOT);

  t.equal(registry.certificatesOf(E745).length, 2);
  t.equal(registry.certificatesOf(R378).length, 1);
  t.equal(registry.certificatesOf(A745).length, 0);
  t.equal(registry.certificatesOf(E745)[0]?.serialNumber, '070176DD6BFF76CED3C54F00A2FB90C7A65DEE40', 'file order kept');
  t.match(registry.certificatesOf(E745)[1]?.serialNumber, /^507B919C/);

  t.match(registry.get(E745), { id: E745, hostname: 'node1.rudder.local', policyServer: ROOT });
  t.equal(registry.get(E745)?.keyHash?.type, 'sha256');
  t.equal(registry.get(E745)?.keyHash?.bytes.toString('hex'), '23cbad1561a3f8ea6aa5b880219fecf2a442e1f417c50f084558c57b45f52ee8');
  t.equal(registry.get(R378)?.keyHash?.bytes.toString('hex'), 'a75fda39a7af33eb93ab1c74874dcf66d5761ad30977368cf0c4788cf5bfd34f');
  t.equal(registry.get(ROOT)?.keyHash?.bytes.toString('hex'), '906191ee22666c1602aa43391000bc4ee0a94775f68f4c19edc83bfb1b28755c');
  t.equal(registry.get(C745)?.keyHash, undefined, '"sha256:" counts as no key');
  t.equal(registry.get(B745)?.keyHash, undefined, 'absent key-hash');
  t.equal(registry.get(UNKNOWN), undefined);
});

t.test('relations: the worked example of spec-relayd §3.4', async (t) => {
  const registry = registryFor(await fixtureDir());
  await registry.reload();

  for (const id of [ROOT, E745, R378, A745, B745, C745]) t.ok(registry.isSubNode(id), `${id} is a sub-node`);
  t.notOk(registry.isSubNode(UNKNOWN));

  t.ok(registry.isNeighbor(ROOT));
  t.ok(registry.isNeighbor(E745));
  t.ok(registry.isNeighbor(R378));
  t.notOk(registry.isNeighbor(A745));
  t.notOk(registry.isNeighbor(C745));
  t.throws(() => registry.isNeighbor(UNKNOWN), { code: 'RELAY_ERR_NOT_FOUND', message: `unknown node: ${UNKNOWN}` });

  t.same(
    registry.neighbors().map((n) => [n.id, n.hostname]).sort(),
    [
      [R378, 'localhost'],
      [E745, 'node1.rudder.local'],
      [ROOT, 'server.rudder.local'],
    ].sort(),
  );
  t.same(
    registry.subRelays().map((n) => [n.id, n.hostname]).sort(),
    [
      [R378, 'localhost'],
      [E745, 'node1.rudder.local'],
    ].sort(),
  );

  t.equal(registry.nextHop(A745)?.id, E745);
  t.equal(registry.nextHop(B745)?.id, E745, 'b745 → a745 → e745');
  t.equal(registry.nextHop(C745)?.id, R378);
  t.equal(registry.nextHop(E745), undefined, 'neighbor: handled here');
  t.equal(registry.nextHop(ROOT), undefined);
  t.throws(() => registry.nextHop(UNKNOWN), { code: 'RELAY_ERR_NOT_FOUND', message: `unknown node: ${UNKNOWN}` });
});

t.test('relations seen from a relay, broken chains and loops', async (t) => {
  const files = await fixtureDir();
  // as relay e745: a745 is its child, b745 below it; the relay itself is absent
  await fs.writeFile(
    files.list,
    JSON.stringify({
      [A745]: { hostname: 'node3', 'policy-server': E745 },
      [B745]: { hostname: 'node4', 'policy-server': A745 },
      x: { hostname: 'x', 'policy-server': 'y' },
      y: { hostname: 'y', 'policy-server': 'x' },
      orphan: { hostname: 'orphan', 'policy-server': 'gone' },
    }),
  );
  const registry = registryFor(files, E745);
  await registry.reload();
  t.equal(registry.status().managedNodes, 1);
  t.same(registry.subRelays().map((n) => n.id), [A745]);
  t.equal(registry.nextHop(A745), undefined);
  t.equal(registry.nextHop(B745)?.id, A745);
  t.throws(() => registry.nextHop('x'), { code: 'RELAY_ERR_NODES_LIST', message: /next hop not found for x/ });
  t.throws(() => registry.nextHop('orphan'), { code: 'RELAY_ERR_NOT_FOUND', message: /unknown node: gone/ });
});

t.test('client certificate attribution', async (t) => {
  const registry = registryFor(await fixtureDir());
  await registry.reload();

  t.same(registry.matchCertificate(await derOf(path.join(KEYS, `${E745}.cert`))), { kind: 'match', nodeId: E745 });
  t.same(registry.matchCertificate(await derOf(path.join(KEYS, `${E745}-other.cert`))), { kind: 'match', nodeId: E745 }, 'same key, other certificate');
  t.same(
    registry.matchCertificate(await derOf(path.join(KEYS, `${R378}.cert`))),
    { kind: 'mismatch', nodeId: R378 },
    'the nodes-list key-hash is the pin, and this key is not it',
  );
  t.same(registry.matchCertificate(makeCertificate({ uid: UNKNOWN })), { kind: 'unknown-node', nodeId: UNKNOWN });
  t.same(registry.matchCertificate(makeCertificate({ uid: E745 })), { kind: 'mismatch', nodeId: E745 }, 'right UID, other key');
  t.same(registry.matchCertificate(makeCertificate({ uid: B745 })), { kind: 'no-pin', nodeId: B745 });
  t.same(registry.matchCertificate(makeCertificate({ cn: 'node1.rudder.local' })), { kind: 'no-uid' });
  t.same(registry.matchCertificate(makeCertificate({ cn: 'x', uid: A745 })), { kind: 'mismatch', nodeId: A745 }, 'UID found after another attribute');
  const past = { notBefore: new Date(Date.now() - 10 * DAY_MS), notAfter: new Date(Date.now() - DAY_MS) };
  t.same(registry.matchCertificate(makeCertificate({ uid: E745, ...past })), { kind: 'expired', nodeId: E745 });
  const future = { notBefore: new Date(Date.now() + DAY_MS), notAfter: new Date(Date.now() + 10 * DAY_MS) };
  t.same(registry.matchCertificate(makeCertificate({ uid: E745, ...future })), { kind: 'expired', nodeId: E745 });
  t.throws(() => registry.matchCertificate(Buffer.from('not a certificate')), { code: 'RELAY_ERR_AUTH_CERTIFICATE' });
});

t.test('certificates pin nodes without key-hash; findByPublicKey', async (t) => {
  const files = await fixtureDir();
  const b745Key = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const b745Cert = makeCertificate({ uid: B745, key: b745Key.privateKey });
  await fs.appendFile(files.certs, pemOf(b745Cert) + pemOf(makeCertificate({ uid: UNKNOWN })) + pemOf(makeCertificate({ cn: 'no uid' })));
  const registry = registryFor(files);
  logLines.length = 0;
  await registry.reload();
  t.equal(registry.status().certificates, 4, 'unknown node and missing UID skipped');
  t.ok(logLines.some((l) => l['msg'] === 'certificate for unknown node' && l['nodeId'] === UNKNOWN && l['level'] === 40));
  t.ok(logLines.some((l) => l['msg'] === 'missing id in certificate' && l['level'] === 40));
  t.ok(logLines.every((l) => l['module'] === 'nodes'));

  t.same(registry.matchCertificate(b745Cert), { kind: 'match', nodeId: B745 });
  const reissued = makeCertificate({ uid: B745, key: b745Key.privateKey, notAfter: new Date(Date.now() + 5 * DAY_MS) });
  t.same(registry.matchCertificate(reissued), { kind: 'match', nodeId: B745 }, 'any certificate with the pinned key');
  t.same(registry.matchCertificate(makeCertificate({ uid: B745 })), { kind: 'mismatch', nodeId: B745 });

  const spki = (der: Buffer): Buffer => new X509Certificate(der).publicKey.export({ type: 'spki', format: 'der' });
  t.equal(registry.findByPublicKey(spki(await derOf(path.join(KEYS, `${E745}.cert`))))?.id, E745, 'by key-hash');
  t.equal(registry.findByPublicKey(spki(b745Cert))?.id, B745, 'by certificate');
  t.equal(registry.findByPublicKey(spki(await derOf(path.join(KEYS, `${R378}.cert`)))), undefined, 'not the pinned key of 37817');
  t.equal(registry.findByPublicKey(spki(makeCertificate({ uid: UNKNOWN }))), undefined);
});

t.test('sha512 key hashes', async (t) => {
  const files = await fixtureDir();
  const der = await derOf(path.join(KEYS, `${R378}.cert`));
  const spki = new X509Certificate(der).publicKey.export({ type: 'spki', format: 'der' });
  const { createHash } = await import('node:crypto');
  const list = JSON.parse(await fs.readFile(files.list, 'utf8')) as Record<string, Record<string, string>>;
  list[R378] = { hostname: 'localhost', 'policy-server': ROOT, 'key-hash': `sha512//${createHash('sha512').update(spki).digest('base64')}` };
  await fs.writeFile(files.list, JSON.stringify(list));
  const registry = registryFor(files);
  await registry.reload();
  t.equal(registry.get(R378)?.keyHash?.type, 'sha512');
  t.same(registry.matchCertificate(der), { kind: 'match', nodeId: R378 });
  t.equal(registry.findByPublicKey(spki)?.id, R378);
});

t.test('reload errors keep the last good data', async (t) => {
  const files = await fixtureDir();
  const registry = registryFor(files);
  await registry.reload();
  const good = await fs.readFile(files.list, 'utf8');

  await fs.writeFile(files.list, '{"broken": ');
  await t.rejects(registry.reload(), { code: 'RELAY_ERR_NODES_LIST', message: /invalid nodes list/ });
  t.match(registry.status(), { ok: false, nodes: 6, managedNodes: 3, error: /^RELAY_ERR_NODES_LIST: invalid nodes list/ });
  t.equal(registry.nextHop(B745)?.id, E745, 'old data still answers');

  await fs.writeFile(files.list, JSON.stringify({ [E745]: { 'policy-server': ROOT } }));
  await t.rejects(registry.reload(), { code: 'RELAY_ERR_NODES_LIST', message: `node ${E745} has no "hostname"` });
  await fs.writeFile(files.list, JSON.stringify({ [E745]: { hostname: 'node1' } }));
  await t.rejects(registry.reload(), { code: 'RELAY_ERR_NODES_LIST', message: /"policy-server"/ });
  await fs.writeFile(files.list, '[]');
  await t.rejects(registry.reload(), { code: 'RELAY_ERR_NODES_LIST' });

  await fs.writeFile(files.list, good);
  await fs.writeFile(files.certs, 'garbage\n');
  await t.rejects(registry.reload(), { code: 'RELAY_ERR_NODES_CERTS' });
  await fs.writeFile(files.certs, '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n');
  await t.rejects(registry.reload(), { code: 'RELAY_ERR_NODES_CERTS', message: /certificate #1/ });
  t.equal(registry.status().certificates, 3);

  await fs.copyFile(path.join(KEYS, 'nodescerts.pem'), files.certs);
  await registry.reload();
  t.match(registry.status(), { ok: true, nodes: 6, certificates: 3, error: undefined });
});

t.test('a file that was there and is now missing keeps the last good data, like a broken one', async (t) => {
  const files = await fixtureDir();
  const registry = registryFor(files);
  let changes = 0;
  const unsubscribe = registry.onChange(() => (changes += 1));
  await registry.reload();
  t.equal(changes, 1, 'listeners hear a good load');
  await fs.rename(files.list, `${files.list}.away`);
  await t.rejects(registry.reload(), { code: 'RELAY_ERR_NODES_LIST', message: /missing.*keeping the last good list/ });
  t.match(registry.status(), { ok: false, nodes: 6, error: /^RELAY_ERR_NODES_LIST: .*missing/ }, 'status says so, with the last good list');
  t.ok(registry.get(E745), 'the nodes are still known');
  t.equal(changes, 1, 'no change announced');
  await fs.rm(files.certs);
  await fs.rename(`${files.list}.away`, files.list);
  await t.rejects(registry.reload(), { code: 'RELAY_ERR_NODES_CERTS' }, 'the certificates file too');
  t.equal(registry.status().certificates, 3);
  await fs.copyFile(path.join(KEYS, 'nodescerts.pem'), files.certs);
  await registry.reload();
  t.match(registry.status(), { ok: true, nodes: 6, certificates: 3, error: undefined }, 'back to normal');
  t.equal(changes, 2);
  unsubscribe();
  await registry.reload();
  t.equal(changes, 2, 'unsubscribed');
});

t.test('absent files are empty', async (t) => {
  const dir = path.join(tmp, 'absent');
  const registry = registryFor({ list: path.join(dir, 'nodeslist.json'), certs: path.join(dir, 'nodescerts.pem') });
  logLines.length = 0;
  await registry.reload();
  t.match(registry.status(), { ok: true, nodes: 0, certificates: 0, managedNodes: 0 });
  t.ok(logLines.some((l) => l['msg'] === 'Nodes list file does not exist, considering it as empty' && l['level'] === 30));
  t.same(registry.neighbors(), []);
  t.same(registry.matchCertificate(makeCertificate({ uid: E745 })), { kind: 'unknown-node', nodeId: E745 });

  const files = await fixtureDir();
  await fs.rm(files.certs);
  const noCerts = registryFor(files);
  await noCerts.reload();
  t.match(noCerts.status(), { ok: true, nodes: 6, certificates: 0 });
  t.same(noCerts.matchCertificate(await derOf(path.join(KEYS, `${E745}.cert`))), { kind: 'match', nodeId: E745 });
});

t.test('start() loads and watches; changes are picked up', async (t) => {
  const files = await fixtureDir();
  const registry = registryFor(files);
  await registry.start();
  await registry.start(); // idempotent
  t.teardown(() => registry.stop());
  t.equal(registry.status().nodes, 6);

  // as sync writes it: temp file in the same directory, then rename
  const list = JSON.parse(await fs.readFile(files.list, 'utf8')) as Record<string, unknown>;
  list[UNKNOWN] = { hostname: 'node7', 'policy-server': E745 };
  const temp = path.join(path.dirname(files.list), '.nodeslist.json.tmp');
  await fs.writeFile(temp, JSON.stringify(list));
  await fs.rename(temp, files.list);
  t.ok(await eventually(() => registry.status().nodes === 7), 'renamed file picked up');
  t.equal(registry.nextHop(UNKNOWN)?.id, E745);

  // rewritten in place, broken: error recorded, old data kept
  await fs.writeFile(files.list, '{');
  t.ok(await eventually(() => registry.status().error !== undefined), 'broken file reported in status');
  t.equal(registry.status().nodes, 7);

  await fs.writeFile(files.list, await fs.readFile(path.join(FIXTURES, 'nodeslist.json')));
  t.ok(await eventually(() => registry.status().ok && registry.status().nodes === 6), 'fixed file clears the error');

  // certificates file changes too
  await fs.appendFile(files.certs, pemOf(makeCertificate({ uid: B745 })));
  t.ok(await eventually(() => registry.status().certificates === 4), 'certificates file watched');

  await registry.stop();
  await registry.stop(); // idempotent
  await fs.writeFile(files.list, '{}');
  await new Promise((resolve) => setTimeout(resolve, 600));
  t.equal(registry.status().nodes, 6, 'no reload after stop()');
});

t.test('start() tolerates a missing directory and picks it up when it appears', async (t) => {
  const dir = path.join(tmp, 'late', 'lib');
  const registry = registryFor({ list: path.join(dir, 'nodeslist.json'), certs: path.join(dir, 'nodescerts.pem') });
  await registry.start();
  t.teardown(() => registry.stop());
  t.equal(registry.status().nodes, 0);
  await fs.mkdir(dir, { recursive: true });
  await fs.copyFile(path.join(FIXTURES, 'nodeslist.json'), path.join(dir, 'nodeslist.json'));
  t.ok(await eventually(() => registry.status().nodes === 6), 'nodes list found once the directory exists');
});

t.test('start() fails when the first load fails', async (t) => {
  const files = await fixtureDir();
  await fs.writeFile(files.list, 'nope');
  const registry = registryFor(files);
  await t.rejects(registry.start(), { code: 'RELAY_ERR_NODES_LIST' });
  await registry.stop();
});

t.test('parseKeyHash (spec-relayd §3.2, §12.2)', async (t) => {
  const sha256Test = '9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08';
  const sha512Test =
    'ee26b0dd4af7e749aa1a8ee3c10ae9923f618980772e473f8819a5d4940e0db27ac185f8a0e1d5f84f88bc887fd67b143732c304cc5fa9ad8e6f57f50028a8ff';
  t.same(parseKeyHash(`sha256:${sha256Test}`), { type: 'sha256', bytes: Buffer.from(sha256Test, 'hex') });
  t.same(parseKeyHash(`sha256:${sha256Test.toUpperCase()}`)?.bytes, Buffer.from(sha256Test, 'hex'), 'hex is case-insensitive');
  t.same(parseKeyHash(`sha512:${sha512Test}`), { type: 'sha512', bytes: Buffer.from(sha512Test, 'hex') });
  t.same(parseKeyHash('sha256//I8utFWGj+OpqpbiAIZ/s8qRC4fQXxQ8IRVjFe0X1Lug=')?.bytes.toString('hex'), '23cbad1561a3f8ea6aa5b880219fecf2a442e1f417c50f084558c57b45f52ee8');
  const b64_512 = Buffer.from(sha512Test, 'hex').toString('base64');
  t.equal(parseKeyHash(`sha512//${b64_512}`)?.type, 'sha512');

  for (const invalid of [
    '',
    'sha256:',
    'sha256//',
    'sha256//abc',
    'sha256:test',
    'sha256//I8utFWGj+OpqpbiAIZ/s8qRC4fQXxQ8IRVjFe0X1Lug', // padding required
    'sha256//I8utFWGj-OpqpbiAIZ_s8qRC4fQXxQ8IRVjFe0X1Lug=', // base64url alphabet
    `sha256:${sha256Test.slice(2)}`, // 31 bytes
    `sha256:${sha256Test}00`, // 33 bytes
    `sha512:${sha256Test}`, // length of the other type
    `sha256//${b64_512}`,
    `SHA256:${sha256Test}`, // type is lowercase
    `md5:${sha256Test.slice(0, 32)}`,
    `sha1:${sha256Test.slice(0, 40)}`,
    sha256Test,
    `sha256:${sha256Test.slice(1)}g`,
  ]) {
    t.equal(parseKeyHash(invalid), undefined, JSON.stringify(invalid));
  }
});

t.test("keepCertificates 'behind-sub-relays' (front-door workers): only the sub-relays' and their nodes' certificates", async (t) => {
  const files = await fixtureDir();
  // E745 without its children (A745, B745): a plain node of this relay; R378 stays a sub-relay (C745 behind it)
  const list = JSON.parse(await fs.readFile(files.list, 'utf8')) as Record<string, unknown>;
  delete list[A745];
  delete list[B745];
  await fs.writeFile(files.list, JSON.stringify(list));
  const all = registryFor(files);
  const worker = createNodesRegistry({ myId: ROOT, nodesListFile: files.list, nodesCertsFile: files.certs, keepCertificates: 'behind-sub-relays', log });
  registries.push(worker);
  await all.reload();
  await worker.reload();
  t.equal(all.certificatesOf(E745).length, 2);
  t.equal(worker.certificatesOf(E745).length, 0, 'a node of this relay: not kept');
  t.equal(worker.certificatesOf(R378).length, 1, 'a sub-relay: kept');
  t.equal(worker.status().certificates, 3, 'all counted');
  // E745's pin is its key-hash: attribution does not need its certificates
  const e745 = await derOf(path.join(KEYS, 'e745a140-40bc-4b86-b6dc-084488fc906b.cert'));
  t.match(worker.matchCertificate(e745), all.matchCertificate(e745));
  t.equal(worker.matchCertificate(e745).kind, all.matchCertificate(e745).kind);
});

t.test('a certificates file of many blocks, read in chunks that split blocks, keeps every DER exactly', async (t) => {
  const files = await fixtureDir();
  const ids = Array.from({ length: 40 }, (_, i) => `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`);
  const list = Object.fromEntries(ids.map((id) => [id, { hostname: id.slice(-4), 'policy-server': ROOT }]));
  await fs.writeFile(files.list, JSON.stringify(list));
  const ders = ids.map((uid) => makeCertificate({ uid }));
  // CRLF lines, and explanatory text between blocks (RFC 7468) so that ~40 blocks make ~660 KB: three read chunks
  const text = `${'explanatory text '.repeat(60)}\n`.repeat(16);
  const pem = ders.map((der) => `${text}-----BEGIN CERTIFICATE-----\r\n${der.toString('base64').replace(/.{64}/g, '$&\r\n')}\r\n-----END CERTIFICATE-----\r\n\r\n`);
  await fs.writeFile(files.certs, pem.join(''));
  t.ok((await fs.stat(files.certs)).size > 2 * 256 * 1024, 'larger than two read chunks');
  const registry = registryFor(files);
  await registry.reload();
  t.equal(registry.status().certificates, ids.length);
  t.ok(ids.every((id, i) => registry.certificatesOf(id).length === 1 && registry.certificatesOf(id)[0]!.raw.equals(ders[i]!)), 'every DER as written');
  const first = registry.certificatesOf(ids[0]!);
  t.equal(registry.certificatesOf(ids[0]!), first, 'the same object while it is kept');
  await registry.reload();
  t.not(registry.certificatesOf(ids[0]!), first, 'a reload builds them again from the new data');
});

t.test('signerCertificatesOf: issuer, serial, SPKI and public key of each certificate, the same objects until a reload', async (t) => {
  const files = await fixtureDir();
  const registry = registryFor(files);
  await registry.reload();
  const signers = registry.signerCertificatesOf(E745);
  const full = registry.certificatesOf(E745);
  t.equal(signers.length, 2);
  for (const [i, signer] of signers.entries()) {
    const facts = parseCertificateFacts(full[i]!.raw);
    t.ok(signer.issuerDer.equals(facts.issuer), `certificate ${i}: its issuer`);
    t.ok(signer.serialMagnitude.equals(Buffer.from(full[i]!.serialNumber.replace(/^(00)+(?=.)/, ''), 'hex')), `certificate ${i}: its serial`);
    t.ok(signer.spki.equals(full[i]!.publicKey.export({ type: 'spki', format: 'der' })), `certificate ${i}: its SPKI`);
    t.ok(signer.publicKey.equals(full[i]!.publicKey), `certificate ${i}: its public key`);
  }
  t.equal(registry.signerCertificatesOf(E745), signers, 'kept');
  t.same(registry.signerCertificatesOf(A745), [], 'a node without certificates');
  t.same(registry.signerCertificatesOf(UNKNOWN), [], 'an unknown node');
  // the certificates file changed: E745 now has only its second certificate
  const pems = (await fs.readFile(files.certs, 'latin1')).split(/(?<=-----END CERTIFICATE-----\n?)/);
  await fs.writeFile(files.certs, pems.filter((pem) => !pem.includes(full[0]!.raw.toString('base64').slice(0, 64))).join(''));
  await registry.reload();
  const after = registry.signerCertificatesOf(E745);
  t.equal(after.length, 1, 'the reloaded file takes effect');
  t.ok(after[0]!.spki.equals(full[1]!.publicKey.export({ type: 'spki', format: 'der' })));
});

t.test('keepSigners: false (front-door workers): signerCertificatesOf refuses rather than answer "none known"', async (t) => {
  const files = await fixtureDir();
  const worker = createNodesRegistry({ myId: ROOT, nodesListFile: files.list, nodesCertsFile: files.certs, keepSigners: false, log: pino({ level: 'silent' }) });
  await worker.reload();
  t.throws(() => worker.signerCertificatesOf(E745), { code: 'RELAY_ERR_INTERNAL' });
  t.equal(worker.certificatesOf(E745).length, 2, 'certificatesOf unchanged');
  const primary = registryFor(files);
  await primary.reload();
  for (const certificate of primary.certificatesOf(E745)) t.same(worker.matchCertificate(certificate.raw), primary.matchCertificate(certificate.raw), 'pins unchanged');
});

/** `count` nodes of root, each with a certificate of its own made on the spot (the test key: ~1 ms each) */
async function manyNodes(files: { list: string; certs: string }, count: number): Promise<{ ids: string[]; ders: Buffer[] }> {
  const ids = Array.from({ length: count }, (_, i) => `10000000-0000-4000-8000-${String(i).padStart(12, '0')}`);
  await fs.writeFile(files.list, JSON.stringify(Object.fromEntries(ids.map((id) => [id, { hostname: id.slice(-4), 'policy-server': ROOT }]))));
  const ders = ids.map((uid, i) =>
    writeSelfSignedCertificate({
      version: 1,
      serial: Buffer.from([1, (i >> 8) & 0xff, i & 0xff]),
      hash: 'sha256',
      name: nameOf('0.9.2342.19200300.100.1.1', uid, 0x0c),
      notBefore: new Date(Date.now() - DAY_MS),
      notAfter: new Date(Date.now() + DAY_MS),
      key: testKey.privateKey,
    }),
  );
  await fs.writeFile(files.certs, ders.map(pemOf).join(''));
  return { ids, ders };
}

t.test('signerCertificatesOf for more nodes than it keeps: read again from the loaded file, each the certificate loaded', async (t) => {
  const files = await fixtureDir();
  const { ids, ders } = await manyNodes(files, 1100);
  const registry = registryFor(files);
  t.teardown(() => registry.stop());
  await registry.reload();
  const first = registry.signerCertificatesOf(ids[0]!);
  for (let round = 0; round < 2; round += 1) {
    let same = 0;
    for (const [i, id] of ids.entries()) {
      const signers = registry.signerCertificatesOf(id);
      const facts = parseCertificateFacts(ders[i]!);
      if (signers.length === 1 && signers[0]!.issuerDer.equals(facts.issuer) && signers[0]!.serialMagnitude.equals(facts.serial) && signers[0]!.spki.equals(facts.spki)) same += 1;
    }
    t.equal(same, ids.length, `round ${round + 1}: every node's issuer, serial and SPKI`);
  }
  const again = registry.signerCertificatesOf(ids[0]!);
  t.not(again, first, 'evicted after 1,000 other nodes, built again');
  t.ok(again[0]!.publicKey.equals(new X509Certificate(ders[0]!).publicKey), 'the same public key');
  t.equal(registry.signerCertificatesOf(ids[0]!), again, 'kept while among the last asked for');
});

t.test('a certificates file replaced by rename: the loaded one answers until the reload, the new one after', async (t) => {
  const files = await fixtureDir();
  const registry = registryFor(files);
  t.teardown(() => registry.stop());
  await registry.reload();
  const full = registry.certificatesOf(E745);
  // as the sync does: the new file written aside and renamed over (E745 with only its second certificate, in another order)
  const pems = (await fs.readFile(files.certs, 'latin1')).split(/(?<=-----END CERTIFICATE-----\n?)/);
  const aside = `${files.certs}.new`;
  await fs.writeFile(aside, pems.filter((pem) => !pem.includes(full[0]!.raw.toString('base64').slice(0, 64))).reverse().join(''));
  await fs.rename(aside, files.certs);
  const before = registry.signerCertificatesOf(E745);
  t.equal(before.length, 2, 'not asked for before: read from the loaded file, still open');
  t.ok(before.every((signer, i) => signer.spki.equals(full[i]!.publicKey.export({ type: 'spki', format: 'der' }))), 'its certificates as loaded');
  await registry.reload();
  const after = registry.signerCertificatesOf(E745);
  t.equal(after.length, 1, 'the new file after the reload');
  t.ok(after[0]!.spki.equals(full[1]!.publicKey.export({ type: 'spki', format: 'der' })));
});

t.test('a certificates file changed in place under the loaded data: an error, never "no certificate"', async (t) => {
  const { files, original, pems, registry } = await loadedWithPems(t);
  const r378 = registry.signerCertificatesOf(R378);
  t.equal(r378.length, 1);

  // the same bytes in another order: another node's certificate where E745's was
  await fs.writeFile(files.certs, [...pems].reverse().join(''));
  logLines.length = 0;
  t.throws(() => registry.signerCertificatesOf(E745), { code: 'RELAY_ERR_NODES_CERTS' }, 'another certificate at its place');
  t.ok(logLines.some((line) => line['code'] === 'RELAY_ERR_NODES_CERTS' && line['nodeId'] === E745 && line['level'] === 50), 'logged as an error');
  t.equal(registry.signerCertificatesOf(R378), r378, 'a node kept from before the change still answers');

  // cut short
  await fs.truncate(files.certs, 100);
  t.throws(() => registry.signerCertificatesOf(E745), { code: 'RELAY_ERR_NODES_CERTS' }, 'a short read');
  await fs.truncate(files.certs, 0);
  t.throws(() => registry.signerCertificatesOf(E745), { code: 'RELAY_ERR_NODES_CERTS' }, 'an empty file');

  // the reload of the fixed file cures it
  await fs.writeFile(files.certs, original);
  await registry.reload();
  t.equal(registry.signerCertificatesOf(E745).length, 2);

  // after stop, the file is closed: an error too
  await registry.stop();
  t.throws(() => registry.signerCertificatesOf(E745), { code: 'RELAY_ERR_NODES_CERTS' }, 'a stopped registry');
});

t.test('certificates unreadable as loaded (the file changed in place, no reload seen): the registry reloads by itself, and not after stop', async (t) => {
  const { files, original, pems, registry } = await loadedWithPems(t);
  const loadedAt = registry.status().loadedAt;
  // valid, another order: what an in-place rewrite leaves once it is done, with no watch (reload() alone, no start())
  await fs.writeFile(files.certs, [...pems].reverse().join(''));
  logLines.length = 0;
  t.throws(() => registry.signerCertificatesOf(E745), { code: 'RELAY_ERR_NODES_CERTS' }, 'unreadable as loaded');
  const deadline = Date.now() + 10_000;
  while (registry.status().loadedAt === loadedAt && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  t.not(registry.status().loadedAt, loadedAt, 'reloaded without being asked');
  t.ok(logLines.some((line) => line['event'] === 'nodes_reload_unreadable'), 'and says why');
  t.equal(registry.signerCertificatesOf(E745).length, 2, "the node's certificates read from the new file");

  // after stop: no reload opens the file again
  await registry.stop();
  const stoppedAt = registry.status().loadedAt;
  await registry.reload();
  t.equal(registry.status().loadedAt, stoppedAt, 'a reload asked after stop does nothing');
  t.throws(() => registry.signerCertificatesOf(E745), { code: 'RELAY_ERR_NODES_CERTS' }, 'the file stays closed');
});

t.test('a certificates file emptied or cut inside a certificate (an in-place rewrite caught half way) is never loaded: no node reads as "no certificate"', async (t) => {
  const files = await fixtureDir();
  const original = await fs.readFile(files.certs, 'latin1');
  const registry = registryFor(files);
  t.teardown(() => registry.stop());
  await registry.reload();
  t.equal(registry.signerCertificatesOf(E745).length, 2);
  const e745 = registry.signerCertificatesOf(E745);

  // emptied, as opening it for writing does: the registry's own reload (asked by the failed read) refuses it
  await fs.truncate(files.certs, 0);
  logLines.length = 0;
  t.throws(() => registry.signerCertificatesOf(R378), { code: 'RELAY_ERR_NODES_CERTS' }, 'unreadable as loaded');
  const deadline = Date.now() + 10_000;
  while (!logLines.some((line) => line['msg'] === 'nodes reload failed, keeping previous data') && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  t.match(registry.status().error, /RELAY_ERR_NODES_CERTS: .*empty \(they held certificates before\)/, 'the reload refused the empty file');
  t.equal(registry.signerCertificatesOf(E745), e745, 'a node kept from before still answers with its certificates');
  t.throws(() => registry.signerCertificatesOf(R378), { code: 'RELAY_ERR_NODES_CERTS' }, 'and another is an error, never []');

  // cut inside its last certificate
  await fs.writeFile(files.certs, original.slice(0, original.lastIndexOf('-----END CERTIFICATE-----') - 40));
  await t.rejects(registry.reload(), { code: 'RELAY_ERR_NODES_CERTS' }, 'a file ending in an unfinished certificate is refused');
  t.match(registry.status().error, /unfinished certificate/);

  await fs.writeFile(files.certs, original);
  await registry.reload();
  t.equal(registry.status().error, undefined, 'the whole file again: loaded');
  t.equal(registry.signerCertificatesOf(R378).length, 1);
});
