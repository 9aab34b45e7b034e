// The report inspector with a real nodes registry built from relayd's fixtures (my id: root):
// e745 and 37817 are direct children with certificates, a745 is e745's child, b745 a745's child.

import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createGzip, gzipSync } from 'node:zlib';
import { pino } from 'pino';
import t, { type Test } from 'tap';
import { createNodesRegistry, type NodesRegistry } from '../../src/nodes/index.js';
import { createReportInspector, type Inspection, type ReportInspectorOptions } from '../../src/reports/index.js';
import { makeAgentIdentity, run, sampleRunlog, type AgentIdentity } from '../support/agent.js';
import { tempDir } from '../support/tmp.js';
import { FIXTURES } from '../support/fixtures.js';

const FILES = `${FIXTURES}/files`;
const KEYS = join(FILES, 'keys');
const E745 = 'e745a140-40bc-4b86-b6dc-084488fc906b';
const E745C = 'e745a140-40bc-4b86-b6dc-084488fc906c';
const A745 = 'a745a140-40bc-4b86-b6dc-084488fc906b';
const UNKNOWN = 'f745a140-40bc-4b86-b6dc-084488fc906b';
const MiB = 1024 * 1024;
const RUN_2018 = `2018-08-24T15_55_01+00_00@${E745}`;

const dir = tempDir(t, 'onerelay-inspect-');

// the fixture nodes list, plus the …906c node of the mismatching fixture run log (a direct child without certificate)
const nodesList = JSON.parse(readFileSync(join(FILES, 'nodeslist.json'), 'utf8')) as Record<string, unknown>;
nodesList[E745C] = { hostname: 'node1c.rudder.local', 'policy-server': 'root' };
writeFileSync(join(dir, 'nodeslist.json'), JSON.stringify(nodesList));
copyFileSync(join(KEYS, 'nodescerts.pem'), join(dir, 'nodescerts.pem'));
const registry: NodesRegistry = createNodesRegistry({
  myId: 'root',
  nodesListFile: join(dir, 'nodeslist.json'),
  nodesCertsFile: join(dir, 'nodescerts.pem'),
  log: pino({ level: 'silent' }),
});
await registry.reload();

function inspector(overrides: Partial<ReportInspectorOptions> = {}) {
  return createReportInspector({ myId: 'root', verifyMode: 'direct', skipEventTypes: [], maxDecodedBytes: 10 * MiB, ...overrides }, registry);
}

const e745Identity: AgentIdentity = {
  nodeId: E745,
  dir: KEYS,
  privateKeyFile: join(KEYS, `${E745}.nopass.priv`),
  publicKeyFile: join(KEYS, `${E745}.pub`),
  certificateFile: join(KEYS, `${E745}.cert`),
  certificatePem: readFileSync(join(KEYS, `${E745}.cert`), 'utf8'),
  sha256Pin: '',
};

async function sign(identity: AgentIdentity, text: string | Buffer, md = 'sha256'): Promise<Buffer> {
  const input = join(dir, 'in.log');
  const output = join(dir, 'out.signed');
  writeFileSync(input, text);
  const r = await run('openssl', ['smime', '-sign', '-text', '-nocerts', '-md', md, '-signer', identity.certificateFile, '-inkey', identity.privateKeyFile, '-in', input, '-out', output]);
  if (r.code !== 0) throw new Error(r.stderr);
  return readFileSync(output);
}

const nameFor = (nodeId: string, ext = '.log.gz') => `2018-08-24T15:55:01+00:00@${nodeId}${ext}`;

function expectReject(t: Test, inspection: Inspection, reason: string, message: RegExp): void {
  t.equal(inspection.kind, 'reject', `rejected (${inspection.kind === 'reject' ? inspection.message : 'forwarded'})`);
  if (inspection.kind === 'reject') {
    t.equal(inspection.reason, reason);
    t.match(inspection.message, message);
  }
}

const signed2018 = gzipSync(readFileSync(join(FILES, 'runlogs', `${RUN_2018}.signed`)));
const otherIdentity = await makeAgentIdentity(join(dir, 'other'), 'other-node', { bits: 2048, keyTool: 'openssl' });

t.test('direct child with certificate: verified and forwarded', async (t) => {
  const inspection = await inspector().inspect(`${RUN_2018.replaceAll('_', ':')}.log.gz`, signed2018);
  t.same(inspection, { kind: 'forward', nodeId: E745, verified: true, reports: 72, decodedBytes: 19504 });
  const windowsName = await inspector().inspect(`${RUN_2018}.log.gz`, signed2018);
  t.match(windowsName, { kind: 'forward', verified: true }, 'Windows form of the name');
  const v2Name = await inspector().inspect(`${E745}_2018-08-24T15:55:01+00:00.log.gz`, signed2018);
  t.match(v2Name, { kind: 'forward', verified: true }, '8.1+ form of the name');
  const plain = await inspector().inspect(nameFor(E745, '.log'), readFileSync(join(FILES, 'runlogs', `${RUN_2018}.signed`)));
  t.match(plain, { kind: 'forward', verified: true }, 'uncompressed .log');
});

t.test('deeper node: accepted unverified (its own relay verified it)', async (t) => {
  const signed = await sign(otherIdentity, sampleRunlog(A745));
  const inspection = await inspector().inspect(nameFor(A745), gzipSync(signed));
  t.match(inspection, { kind: 'forward', nodeId: A745, verified: false, reports: 6 });
  const unsigned = await inspector().inspect(nameFor(A745, '.log'), Buffer.from(sampleRunlog(A745)));
  t.match(unsigned, { kind: 'forward', verified: false, reports: 6 }, 'plain text accepted when nothing is verified');
});

t.test('refusals', async (t) => {
  expectReject(t, await inspector().inspect('bob.log', signed2018), 'bad-name', /"bob.log" carries no run info; expected/);
  expectReject(t, await inspector().inspect(nameFor(UNKNOWN), signed2018), 'unknown-node', new RegExp(`"${UNKNOWN}", a node id absent from the nodes list`));

  const tampered = readFileSync(join(FILES, 'smime', 'normal-diff.signed'));
  expectReject(t, await inspector().inspect(nameFor(E745, '.log'), tampered), 'bad-signature', /digest mismatch/);

  const foreignKey = await sign(otherIdentity, sampleRunlog(E745));
  expectReject(t, await inspector().inspect(nameFor(E745, '.log'), foreignKey), 'bad-signature', /not among the 2 certificate\(s\) known/);

  const sha1 = await sign(e745Identity, sampleRunlog(E745), 'sha1');
  expectReject(t, await inspector().inspect(nameFor(E745, '.log'), sha1), 'bad-signature', /SHA-1, weaker than SHA-256/);
  const sha256 = await sign(e745Identity, sampleRunlog(E745), 'sha256');
  t.match(await inspector().inspect(nameFor(E745, '.log'), sha256), { kind: 'forward', verified: true, reports: 6 }, 'same key, SHA-256');

  expectReject(
    t,
    await inspector().inspect(nameFor(E745, '.log'), Buffer.from(sampleRunlog(E745))),
    'undecodable',
    /not S\/MIME signed/,
  );

  const gz = gzipSync(readFileSync(join(FILES, 'runlogs', `${RUN_2018}.signed`)));
  expectReject(t, await inspector().inspect(nameFor(E745), gz.subarray(0, gz.length - 50)), 'undecodable', /gzip/);
});

t.test('gzip bomb through the inspector: too-large', async (t) => {
  const bomb = await new Promise<Buffer>((resolve) => {
    const gzip = createGzip();
    const chunks: Buffer[] = [];
    gzip.on('data', (c: Buffer) => chunks.push(c));
    gzip.on('end', () => resolve(Buffer.concat(chunks)));
    for (let i = 0; i < 50; i++) gzip.write(Buffer.alloc(MiB));
    gzip.end();
  });
  expectReject(t, await inspector({ maxDecodedBytes: 10 * MiB }).inspect(nameFor(A745), bomb), 'too-large', /more than the 10485760 bytes/);
});

t.test('verify_signature = "required"', async (t) => {
  const required = inspector({ verifyMode: 'required' });
  const signed = gzipSync(await sign(otherIdentity, sampleRunlog(A745)));
  expectReject(t, await required.inspect(nameFor(A745), signed), 'unverifiable', new RegExp(`no certificate known here for node "${A745}"`));
  t.match(await required.inspect(`${RUN_2018}.log.gz`, signed2018), { kind: 'forward', verified: true });
});

t.test('verify_signature = "off": never verifies, still reads the text', async (t) => {
  const off = inspector({ verifyMode: 'off' });
  // tampered, but nothing is verified: its text (node root) is parsed
  const tampered = readFileSync(join(FILES, 'smime', 'normal-diff.signed'));
  t.match(await off.inspect(nameFor('root', '.log'), tampered), { kind: 'forward', nodeId: 'root', verified: false });
  t.match(await off.inspect(nameFor(E745, '.log'), Buffer.from(sampleRunlog(E745))), { kind: 'forward', verified: false, reports: 6 }, 'plain text');
});

t.test('run log checks', async (t) => {
  const mismatch = readFileSync(join(FILES, 'runlogs', `2018-08-24T15_55_01+00_00@${E745C}.log`));
  expectReject(
    t,
    await inspector().inspect(`2018-08-24T15_55_01+00_00@${E745C}.log`, mismatch),
    'invalid-runlog',
    new RegExp(`comes from node "${E745}", expected "${E745C}" \\(the node id in the file name\\)`),
  );
  const nothing = gzipSync(await sign(otherIdentity, 'Rudder agent 6.0.5\nno reports here\n'));
  expectReject(t, await inspector().inspect(nameFor(A745), nothing), 'invalid-runlog', /no valid report/);
});

t.test('skip_event_types', async (t) => {
  const signed = gzipSync(await sign(otherIdentity, sampleRunlog(A745)));
  const all = inspector({ skipEventTypes: ['control', 'result_success', 'log_info', 'result_na'] });
  expectReject(t, await all.inspect(nameFor(A745), signed), 'skipped', /every report is of a skipped event type/);
  const some = inspector({ skipEventTypes: ['log_info'] });
  t.match(await some.inspect(nameFor(A745), signed), { kind: 'forward', reports: 6 }, 'some reports left: forwarded whole');
});

t.test('concurrent inspections (signatures checked on the thread pool) give the same verdicts', async (t) => {
  const subject = inspector();
  const original = readFileSync(join(FILES, 'runlogs', `${RUN_2018}.signed`));
  const damaged = Buffer.from(original);
  const inSignature = damaged.lastIndexOf('\n------') - 100; // a base64 character of the RSA signature value
  damaged[inSignature] = damaged[inSignature] === 0x41 ? 0x42 : 0x41;
  const results = await Promise.all([
    subject.inspect(`${RUN_2018}.log.gz`, signed2018),
    subject.inspect(`${RUN_2018}.log`, damaged),
    subject.inspect(`${RUN_2018}.log.gz`, signed2018),
    subject.inspect(`${RUN_2018}.log`, damaged),
  ]);
  t.same(
    results.map((r) => (r.kind === 'forward' ? `forward verified=${r.verified}` : `${r.reason}: ${r.message}`)),
    [
      'forward verified=true',
      `bad-signature: S/MIME signature of node "${E745}" refused: signature does not match the node certificate`,
      'forward verified=true',
      `bad-signature: S/MIME signature of node "${E745}" refused: signature does not match the node certificate`,
    ],
  );
  expectReject(t, await subject.inspect(`${RUN_2018}.log`, damaged), 'bad-signature', /does not match/);
});

t.test('never throws', async (t) => {
  const inputs: Array<[string, Buffer]> = [
    [nameFor(E745), Buffer.alloc(0)],
    [nameFor(E745, '.log.zip'), Buffer.from('PK\u0005\u0006')],
    [nameFor(A745, '.log'), Buffer.from([0xff, 0xfe, 0x00, 0x0a])],
    [nameFor(A745, '.log'), Buffer.from('MIME-Version: 1.0\nContent-Type: multipart/signed; boundary="x"\n\n--x\n')],
    ['@{.log', Buffer.alloc(10)],
    ['>@.log', Buffer.alloc(10)],
  ];
  for (const [name, bytes] of inputs) {
    const inspection = await inspector().inspect(name, bytes);
    t.equal(inspection.kind, 'reject', `${name}: ${inspection.kind === 'reject' ? `${inspection.reason}: ${inspection.message}` : ''}`);
  }
});
