// Unit tests of the CFEngine protocol codec (spec-cfengine-protocol.md §6–7) and of the server certificate.

import { X509Certificate, createHash, generateKeyPairSync } from 'node:crypto';
import t from 'tap';
import {
  CFD_FALSE,
  CFD_TERMINATOR,
  CFD_TRUE,
  FrameDecoder,
  MAX_PAYLOAD,
  decodeHeader,
  decodeOpendirPacket,
  encodeFrame,
  encodeMd5Request,
  encodeOpendirReply,
  encodeStatLine,
  md5Answer,
  md5AnswerMeansDifferent,
  parseIdentityLine,
  parseRequest,
  parseStatLine,
  parseVersionLine,
  serverHello,
  welcomeLine,
} from '../../src/cfengine/codec.js';
import { makeServerCertificate } from '../../src/cfengine/index.js';

t.test('frame encoding: 8-byte NUL-padded header, payload as is', async (t) => {
  const frame = encodeFrame('SYNCH 1795564440 STAT /var/rudder/share');
  t.equal(frame.subarray(0, 8).toString('latin1'), 't 39\0\0\0\0');
  t.equal(frame.subarray(8).toString('latin1'), 'SYNCH 1795564440 STAT /var/rudder/share');
  t.equal(encodeFrame('x', 'm').subarray(0, 8).toString('latin1'), 'm 1\0\0\0\0\0');
  const binary = Buffer.from([0, 1, 2, 255, 10, 0]);
  t.same(encodeFrame(binary).subarray(8), binary, 'binary-safe');
});

t.test('the 4088-byte payload limit', async (t) => {
  const biggest = encodeFrame(Buffer.alloc(MAX_PAYLOAD, 0x61));
  t.equal(MAX_PAYLOAD, 4088);
  t.equal(biggest.length, 4096, 'a full transaction is CF_BUFSIZE');
  t.equal(biggest.subarray(0, 8).toString('latin1'), 't 4088\0\0');
  t.throws(() => encodeFrame(Buffer.alloc(4089)), /1\.\.4088/);
  t.throws(() => encodeFrame(Buffer.alloc(0)), /1\.\.4088/, 'empty transactions break the peer');
});

t.test('header decoding as sscanf("%c %d") does', async (t) => {
  t.same(decodeHeader(Buffer.from('t 53\0\0\0\0')), { status: 't', length: 53 });
  t.same(decodeHeader(Buffer.from('m 4088\0\0')), { status: 'm', length: 4088 });
  t.same(decodeHeader(Buffer.from('t   12xyz')), { status: 't', length: 12 }, 'tolerates padding other than NUL');
  t.throws(() => decodeHeader(Buffer.from('x 12\0\0\0\0')), /status/);
  t.throws(() => decodeHeader(Buffer.from('t 0\0\0\0\0\0')), /outside/);
  t.throws(() => decodeHeader(Buffer.from('t 4089\0\0')), /outside/);
  t.throws(() => decodeHeader(Buffer.from('t 99999\0')), /outside/);
  t.throws(() => decodeHeader(Buffer.from('\x16\x03\x01\x02\x00\x01\x00\x01')), /bogus/);
});

t.test('frame decoder: split and merged input, bounded buffer', async (t) => {
  const a = encodeFrame('VERSION');
  const b = encodeFrame('OPENDIR /tmp');
  const all = Buffer.concat([a, b]);
  const decoder = new FrameDecoder();
  for (const byte of all.subarray(0, a.length - 1)) decoder.push(Buffer.from([byte]));
  t.equal(decoder.next(), undefined, 'nothing until the whole transaction is there');
  decoder.push(all.subarray(a.length - 1));
  t.equal(decoder.next()?.payload.toString(), 'VERSION');
  t.equal(decoder.next()?.payload.toString(), 'OPENDIR /tmp');
  t.equal(decoder.next(), undefined);
  t.equal(decoder.buffered, 0);

  const small = new FrameDecoder(100);
  small.push(Buffer.alloc(60));
  t.throws(() => small.push(Buffer.alloc(60)), /more than 100 bytes/, 'a flood is an error, not a growing buffer');

  const bad = new FrameDecoder();
  bad.push(Buffer.from('GET 2048 /etc/passwd\n'));
  t.throws(() => bad.next(), /bogus/, 'an unframed request is a protocol error');
});

t.test('request parsing', async (t) => {
  const req = (s: string | Buffer) => parseRequest(typeof s === 'string' ? Buffer.from(s, 'latin1') : s);
  t.same(req('SYNCH 1795564440 STAT /var/rudder/share/x y'), { command: 'STAT', clientTime: 1795564440, path: '/var/rudder/share/x y' });
  t.same(req('GET 2048 /a/b'), { command: 'GET', bufferSize: 2048, path: '/a/b' });
  t.same(req('GET 4096 /a'), { command: 'GET', bufferSize: 4096, path: '/a' });
  t.same(req('GET 0 /a'), { command: 'BAD', word: 'GET' }, 'bufsize must be 1..4096');
  t.same(req('GET 4097 /a'), { command: 'BAD', word: 'GET' });
  t.same(req('OPENDIR /a/'), { command: 'OPENDIR', path: '/a/' });
  t.same(req('OPENDIR'), { command: 'BAD', word: 'OPENDIR' });
  t.same(req('VERSION'), { command: 'VERSION' });
  t.same(req('EXEC -Dfoo,bar'), { command: 'EXEC', args: '-Dfoo,bar' });
  t.same(req('STAT /a'), { command: 'BAD', word: 'STAT' }, 'STAT alone is not a command');
  t.same(req('GETX 2048 /a'), { command: 'BAD', word: 'GETX' }, 'a command word must end at a space');
  t.same(req('SYNCH x STAT /a'), { command: 'BAD', word: 'SYNCH' });
  t.same(req('COOKIE'), { command: 'COOKIE', text: 'COOKIE' });
  t.same(req(Buffer.from([0, 0x41])), { command: 'EMPTY' });
  t.same(req('OPENDIR /a\0/b'), { command: 'OPENDIR', path: '/a' }, 'the C server stops at the first NUL');
  t.same(req('OPENDIR /a\n/b'), { command: 'OPENDIR', path: '/a' }, 'and at a newline');
  const name = '/r\xe9pertoire/\xff';
  const parsed = req(Buffer.from(`OPENDIR ${name}`, 'latin1'));
  t.same(parsed, { command: 'OPENDIR', path: name }, 'non-UTF-8 bytes survive as a binary string');
});

t.test('MD5 request: path, NUL, NUL, 16 raw digest bytes', async (t) => {
  // a digest with NUL and newline bytes in it must not be cut
  const digest = Buffer.from('00ff0a0d0000aabbccddeeff00112233', 'hex');
  const frame = encodeMd5Request('/var/rudder/share/n/rules/x.cf', digest);
  const payload = frame.subarray(8);
  t.equal(payload.length, 'MD5 /var/rudder/share/n/rules/x.cf'.length + 2 + 16);
  const parsed = parseRequest(payload);
  t.same(parsed, { command: 'MD5', path: '/var/rudder/share/n/rules/x.cf', digest });
  const short = parseRequest(Buffer.from('MD5 /x\0\0\x01\x02'));
  t.same(short, { command: 'MD5', path: '/x', digest: Buffer.from('0102' + '00'.repeat(14), 'hex') }, 'missing bytes read as zeros');
});

t.test('MD5 answer polarity is inverted: CFD_TRUE means the files differ', async (t) => {
  t.equal(md5Answer(true), CFD_FALSE, 'same digest → CFD_FALSE');
  t.equal(md5Answer(false), CFD_TRUE, 'different digest → CFD_TRUE');
  t.equal(CFD_TRUE.length, 8);
  t.equal(CFD_FALSE.length, 9);
  t.equal(md5AnswerMeansDifferent(Buffer.from(CFD_TRUE)), true);
  t.equal(md5AnswerMeansDifferent(Buffer.from(CFD_FALSE)), false);
  t.equal(md5AnswerMeansDifferent(Buffer.from('BAD: Unspecified server refusal (see verbose server output)')), false, 'as cf-agent reads it');
});

t.test('STAT line: 13 decimal fields, inode as a C int', async (t) => {
  const line = encodeStatLine({
    type: 0,
    mode: 0o644,
    linkMode: 0,
    uid: 0n,
    gid: 997n,
    size: 15n,
    atime: 1795564383n,
    mtime: 1795564382n,
    ctime: 1795564382n,
    makeHoles: false,
    ino: 2206531n,
    nlink: 1n,
    dev: 65024n,
  });
  t.equal(line, 'OK: 0 420 0 0 997 15 1795564383 1795564382 1795564382 0 2206531 1 65024');
  const big = encodeStatLine({ ...parseStatLine(line)!, ino: 0x1_8000_0001n });
  t.match(big, / -2147483647 1 65024$/, 'printed with %d from an int');
  t.same(parseStatLine(line)?.size, 15n);
  t.equal(parseStatLine('BAD: unable to stat file /x'), undefined);
});

t.test('OPENDIR packets: m packets under 3840 bytes, last t packet ends with the terminator and two NULs', async (t) => {
  const names = ['.', '..', ...Array.from({ length: 1500 }, (_, i) => `entry-with-a-long-name-${String(i).padStart(5, '0')}.cf`)];
  const frames = encodeOpendirReply(names);
  t.ok(frames.length > 10, `${frames.length} packets`);
  const collected: string[] = [];
  frames.forEach((frame, i) => {
    const header = decodeHeader(frame);
    const last = i === frames.length - 1;
    t.equal(header.status, last ? 't' : 'm');
    t.ok(header.length < 3840 + 1, 'under the flush limit');
    const payload = frame.subarray(8);
    t.equal(payload[payload.length - 1], 0);
    t.equal(payload[payload.length - 2], 0, 'double NUL ends every packet');
    const result = decodeOpendirPacket(payload, collected);
    t.equal(result.done, last);
  });
  t.same(collected, names);
  const empty = encodeOpendirReply(['.', '..']);
  t.equal(empty.length, 1);
  t.equal(empty[0]?.subarray(8).toString('latin1'), `.\0..\0${CFD_TERMINATOR}\0\0`);
});

t.test('identification lines', async (t) => {
  t.equal(serverHello(), 'CFE_v3 cf-serverd 3.21.0\n');
  t.equal(parseVersionLine('CFE_v2 cf-agent 3.21.0'), 2);
  t.equal(parseVersionLine('CFE_v3 cf-agent 3.21.0'), 3);
  t.equal(parseVersionLine('CFE_vx'), undefined);
  t.equal(parseVersionLine('HELLO'), undefined);
  t.same(parseIdentityLine('IDENTITY USERNAME=root'), { username: 'root' });
  t.same(parseIdentityLine('IDENTITY FOO=bar USERNAME=rudder'), { username: 'rudder' }, 'unknown keys ignored');
  t.equal(parseIdentityLine('IDENTITY USERNAME=../etc'), undefined, 'no slash in a user name');
  t.equal(parseIdentityLine('IDENTITY USERNAME=a\\b'), undefined);
  t.same(parseIdentityLine('IDENTITY'), { username: '' });
  t.equal(welcomeLine('root'), 'OK WELCOME USERNAME=root\n');
});

t.test('server certificate: as cf-serverd makes it from its key', async (t) => {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const pem = makeServerCertificate(privateKey, new Date('2030-01-01T00:00:00Z'));
  const certificate = new X509Certificate(pem);
  t.equal(certificate.subject, 'CN=a');
  t.equal(certificate.issuer, 'CN=a');
  t.equal(certificate.serialNumber, '0', 'serial 0');
  t.equal(certificate.validFrom, 'Jan  1 00:00:00 2030 GMT');
  t.equal(certificate.validTo, 'Jan  1 00:00:00 2040 GMT', '10 years');
  t.ok(certificate.verify(publicKey), 'self-signed with the key');
  t.ok(certificate.checkPrivateKey(privateKey));
  const der = certificate.raw;
  // TBSCertificate starts right after the outer SEQUENCE header; v1 has no [0] version field
  t.equal(der[4], 0x30, 'TBS is a SEQUENCE');
  t.equal(der[8], 0x02, 'the TBS opens with the serial INTEGER (no explicit version)');
  t.ok(der.includes(Buffer.from('06092a864886f70d01010c', 'hex')), 'sha384WithRSAEncryption');
  t.equal(
    createHash('sha256').update(certificate.publicKey.export({ type: 'spki', format: 'der' })).digest('hex'),
    createHash('sha256').update(publicKey.export({ type: 'spki', format: 'der' })).digest('hex'),
  );
  t.throws(() => makeServerCertificate(generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey), /RSA/);
  // from 2050 on, RFC 5280 wants GeneralizedTime, as OpenSSL writes it (a 2-digit UTCTime "55" reads as 1955)
  const late = new X509Certificate(makeServerCertificate(privateKey, new Date('2045-06-01T12:00:00Z')));
  t.equal(late.validTo, 'Jun  1 12:00:00 2055 GMT');
  t.ok(late.raw.includes(Buffer.from('180f32303535303630313132303030305a', 'hex')), 'GeneralizedTime 20550601120000Z');
});
