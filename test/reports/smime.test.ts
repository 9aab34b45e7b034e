// S/MIME verification (spec-relayd.md §7.5) against relayd's fixtures and logs signed here by openssl.

import { X509Certificate } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { parseRunlog, verifySmime } from '../../src/reports/index.js';
import { makeAgentIdentity, run, sampleRunlog, type AgentIdentity } from '../support/agent.js';
import { tempDir } from '../support/tmp.js';
import { FIXTURES } from '../support/fixtures.js';

const FILES = `${FIXTURES}/files`;
const E745 = 'e745a140-40bc-4b86-b6dc-084488fc906b';
const e745 = new X509Certificate(readFileSync(join(FILES, 'keys', `${E745}.cert`)));
const e745Other = new X509Certificate(readFileSync(join(FILES, 'keys', `${E745}-other.cert`)));
const r378 = new X509Certificate(readFileSync(join(FILES, 'keys', '37817c4d-fbf7-4850-a985-50021f4e8f41.cert')));
const normalSigned = readFileSync(join(FILES, 'smime', 'normal.signed'));

function reasonOf(result: ReturnType<typeof verifySmime>): string {
  return result.ok ? '(verified)' : result.reason;
}

t.test('fixture normal.signed verifies with the e745 certificate and yields normal.log exactly', async (t) => {
  const result = verifySmime(normalSigned, [e745]);
  t.ok(result.ok, reasonOf(result));
  if (result.ok) {
    const expected = readFileSync(join(FILES, 'smime', 'normal.log'));
    t.ok(result.content.equals(expected), 'byte for byte, CRLF kept');
    t.ok(result.content.includes('\r\n'), 'CRLF line ends');
    t.notOk(result.content.toString('latin1').startsWith('Content-Type'), 'MIME header stripped');
  }
});

t.test('tampered content fails', async (t) => {
  const result = verifySmime(readFileSync(join(FILES, 'smime', 'normal-diff.signed')), [e745]);
  t.notOk(result.ok);
  t.match(reasonOf(result), /digest mismatch/);
});

t.test('a certificate with the same key but another serial does not verify', async (t) => {
  const result = verifySmime(normalSigned, [e745Other]);
  t.notOk(result.ok);
  t.match(reasonOf(result), /not among the 1 certificate/);
  t.notOk(verifySmime(normalSigned, [r378]).ok, 'unrelated certificate');
  t.notOk(verifySmime(normalSigned, []).ok, 'no certificate');
  t.ok(verifySmime(normalSigned, [e745Other, r378, e745]).ok, 'found among several');
});

t.test('fixture runlogs signed by e745 verify and parse to the same reports as their .log', async (t) => {
  for (const base of [`2017-08-24T15_55_01+00_00@${E745}`, `2018-08-24T15_55_01+00_00@${E745}`]) {
    const result = verifySmime(readFileSync(join(FILES, 'runlogs', `${base}.signed`)), [e745]);
    t.ok(result.ok, `${base}: ${reasonOf(result)}`);
    if (!result.ok) continue;
    const info = { nodeId: E745, timestamp: base.slice(0, 25).replaceAll('_', ':') };
    const fromSigned = parseRunlog(result.content.toString('utf8'), info);
    const fromLog = parseRunlog(readFileSync(join(FILES, 'runlogs', `${base}.log`), 'utf8'), info);
    t.same(fromSigned, fromLog, base);
  }
});

t.test('damaged or foreign input fails with a reason, never throws', async (t) => {
  const cases: Array<[string, Buffer]> = [
    ['plain text', readFileSync(join(FILES, 'smime', 'normal.log'))],
    ['empty', Buffer.alloc(0)],
    ['cut before the closing boundary', normalSigned.subarray(0, normalSigned.length - 200)],
    ['cut in the signed part', normalSigned.subarray(0, 4000)],
    ['random bytes', Buffer.from(Array.from({ length: 5000 }, (_, i) => (i * 7919) % 256))],
  ];
  const badSignature = Buffer.from(normalSigned);
  // a base64 character near the end: inside the RSA signature value
  const inSignature = badSignature.lastIndexOf('\n------') - 100;
  badSignature[inSignature] = badSignature[inSignature] === 0x41 ? 0x42 : 0x41;
  cases.push(['damaged signature', badSignature]);
  for (const [label, bytes] of cases) {
    let result: ReturnType<typeof verifySmime> | undefined;
    t.doesNotThrow(() => (result = verifySmime(bytes, [e745])), label);
    t.equal(result?.ok, false, label);
    t.comment(`${label}: ${result === undefined ? '' : reasonOf(result)}`);
  }
});

t.test('logs signed here by openssl smime -sign -text -nocerts', async (t) => {
  const dir = tempDir(t, 'onerelay-smime-');
  const nodeId = 'f00dcafe-0000-4000-8000-000000000001';
  const identity = await makeAgentIdentity(join(dir, 'id'), nodeId, { bits: 2048, keyTool: 'openssl' });
  const certificate = new X509Certificate(identity.certificatePem);
  t.match(certificate.subject, `UID=${nodeId}`);

  async function sign(text: string | Buffer, extra: string[]): Promise<Buffer> {
    const input = join(dir, 'in.log');
    const output = join(dir, 'out.signed');
    writeFileSync(input, text);
    const args = ['smime', '-sign', '-text', '-nocerts', ...extra, '-signer', identity.certificateFile, '-inkey', identity.privateKeyFile, '-in', input, '-out', output];
    const r = await run('openssl', args);
    if (r.code !== 0) throw new Error(r.stderr);
    return readFileSync(output);
  }

  /** what `openssl smime -verify -text -nointern -noverify -certfile` prints (relayd's reference behaviour) */
  async function opensslVerify(signed: Buffer, id: AgentIdentity): Promise<Buffer | undefined> {
    const input = join(dir, 'verify.signed');
    writeFileSync(input, signed);
    const r = await run('openssl', ['smime', '-verify', '-text', '-nointern', '-noverify', '-certfile', id.certificateFile, '-in', input]);
    return r.code === 0 ? r.stdout : undefined;
  }

  const text = sampleRunlog(nodeId);
  const sha256 = await sign(text, ['-md', 'sha256']);
  t.match(sha256.toString('latin1'), /micalg="sha-256"/);
  const verified = verifySmime(sha256, [certificate]);
  t.ok(verified.ok, `sha256: ${reasonOf(verified)}`);
  if (verified.ok) {
    t.equal(verified.content.toString('utf8'), text.replaceAll('\n', '\r\n'), 'content with CRLF line ends');
    t.ok(verified.content.equals((await opensslVerify(sha256, identity))!), 'same bytes as openssl smime -verify');
    t.equal(parseRunlog(verified.content.toString('utf8')).reports.length, 6);
  }

  const sha512 = await sign(text, ['-md', 'sha512']);
  t.ok(verifySmime(sha512, [certificate]).ok, 'sha512 accepted');

  const sha1 = await sign(text, ['-md', 'sha1']);
  t.ok(await opensslVerify(sha1, identity), 'openssl itself accepts SHA-1');
  const refused = verifySmime(sha1, [certificate]);
  t.notOk(refused.ok, 'SHA-1 refused');
  t.match(reasonOf(refused), /SHA-1, weaker than SHA-256/);

  // the fixture node certificate does not verify a log signed by this identity, even with the same UID
  t.notOk(verifySmime(sha256, [e745]).ok);

  // embedded certificates are ignored (-nointern): only the given ones count
  const withCerts = await (async () => {
    const input = join(dir, 'in.log');
    const output = join(dir, 'out.signed');
    writeFileSync(input, text);
    const r = await run('openssl', ['smime', '-sign', '-text', '-md', 'sha256', '-signer', identity.certificateFile, '-inkey', identity.privateKeyFile, '-in', input, '-out', output]);
    if (r.code !== 0) throw new Error(r.stderr);
    return readFileSync(output);
  })();
  t.ok(verifySmime(withCerts, [certificate]).ok, 'embedded certificate present, given certificate matches');
  t.notOk(verifySmime(withCerts, [e745]).ok, 'the embedded certificate alone does not make it verify');

  // opaque signing (-nodetach) has no separate content: refused as relayd does
  const opaque = await sign(text, ['-md', 'sha256', '-nodetach']);
  const opaqueResult = verifySmime(opaque, [certificate]);
  t.notOk(opaqueResult.ok);
  t.match(reasonOf(opaqueResult), /opaque/);
});

t.test('OpenSSL canonicalisation: long lines, LF/CRLF mix, lone CR, blank lines, no final newline', async (t) => {
  const dir = tempDir(t, 'onerelay-smime-');
  const identity = await makeAgentIdentity(join(dir, 'id'), 'canon', { bits: 2048, keyTool: 'openssl' });
  const certificate = new X509Certificate(identity.certificatePem);
  const texts: Array<[string, Buffer]> = [
    ['line of 3000 bytes', Buffer.from(`2019-01-01T00:00:00+00:00 ${'x'.repeat(3000)}\nend\n`)],
    ['line of exactly 1023 and 1022 bytes', Buffer.from(`${'a'.repeat(1022)}\n${'b'.repeat(1021)}\r\nend\n`)],
    ['CR at a 1023-byte read boundary', Buffer.from(`${'c'.repeat(1022)}\r${'d'.repeat(10)}\n`)],
    ['mixed line ends', Buffer.from('one\r\ntwo\nthree\r\r\nfour\rfive\n\n\nsix\n')],
    ['no final newline', Buffer.from('first\nlast without newline')],
    ['non-UTF-8 bytes', Buffer.from([0x61, 0xff, 0xfe, 0x0a, 0xc3, 0x28, 0x0a])],
    ['lines that look like boundaries', Buffer.from('------\n--\n-- \nend\n')],
  ];
  for (const [label, text] of texts) {
    const input = join(dir, 'in.log');
    const output = join(dir, 'out.signed');
    writeFileSync(input, text);
    const r = await run('openssl', ['smime', '-sign', '-text', '-nocerts', '-md', 'sha256', '-signer', identity.certificateFile, '-inkey', identity.privateKeyFile, '-in', input, '-out', output]);
    t.equal(r.code, 0, `${label}: signed`);
    const signed = readFileSync(output);
    const verify = await run('openssl', ['smime', '-verify', '-text', '-nointern', '-noverify', '-certfile', identity.certificateFile, '-in', output]);
    const result = verifySmime(signed, [certificate]);
    t.equal(result.ok, verify.code === 0, `${label}: same verdict as openssl (${reasonOf(result)})`);
    if (result.ok && verify.code === 0) t.ok(result.content.equals(verify.stdout), `${label}: same content as openssl`);
  }
});

t.test('MIME parameters: a quoted ";" and backslash escapes in the top header', async (t) => {
  const text = normalSigned.toString('latin1');
  const header = 'Content-Type: multipart/signed; protocol="application/x-pkcs7-signature"; micalg="sha-256"; boundary="----D65AA2C0627CCE6A40492C61A37ABCB7"';
  t.ok(text.includes(header), 'the fixture header');
  const variants: Array<[string, string, boolean]> = [
    ['a quoted ";" in another parameter', 'Content-Type: multipart/signed; note="a;b"; boundary="----D65AA2C0627CCE6A40492C61A37ABCB7"', true],
    ['escaped characters in the boundary', 'Content-Type: multipart/signed; boundary="\\-\\-\\-\\-D65AA2C0627CCE6A40492C61A37ABCB7"', true],
    ['an escaped quote before the boundary', 'Content-Type: multipart/signed; note="x\\";boundary=nope"; boundary=----D65AA2C0627CCE6A40492C61A37ABCB7', true],
    ['a boundary cut by an unquoted ";"', 'Content-Type: multipart/signed; boundary=----D65AA2C0627C;CE6A40492C61A37ABCB7', false],
  ];
  for (const [label, replacement, verifies] of variants) {
    const result = verifySmime(Buffer.from(text.replace(header, replacement), 'latin1'), [e745]);
    t.equal(result.ok, verifies, `${label}: ${reasonOf(result)}`);
  }
});
