// publicKeyOfSpki: the same key as createPublicKey's SPKI import, by the PKCS#1 RSAPublicKey when it can.

import { createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import t from 'tap';
import { publicKeyOfSpki } from '../../src/der/index.js';

const spkiOf = (key: KeyObject): Buffer => key.export({ type: 'spki', format: 'der' });
const viaSpki = (spki: Buffer): KeyObject => createPublicKey({ key: spki, format: 'der', type: 'spki' });
/** the error createPublicKey's SPKI import throws, or undefined */
const errorOf = (f: () => unknown): string | undefined => {
  try {
    f();
  } catch (error) {
    return error instanceof Error ? `${(error as NodeJS.ErrnoException).code ?? ''} ${error.message}` : String(error);
  }
  return undefined;
};

t.test('RSA keys: the same key as the SPKI import, and it verifies what the private key signed', async (t) => {
  for (const bits of [2048, 4096]) {
    const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: bits });
    const spki = spkiOf(publicKey);
    const key = publicKeyOfSpki(spki);
    t.ok(key.equals(viaSpki(spki)), `RSA-${bits}: equal keys`);
    t.equal(key.asymmetricKeyType, 'rsa');
    t.same(key.asymmetricKeyDetails, viaSpki(spki).asymmetricKeyDetails);
    t.ok(spkiOf(key).equals(spki), 'exported back to the same SPKI');
    const data = Buffer.from('signed attributes');
    t.ok(verify('sha256', data, key, sign('sha256', data, privateKey)), 'verifies');
    t.notOk(verify('sha256', Buffer.from('other'), key, sign('sha256', data, privateKey)), 'refuses other data');
  }
});

t.test('other keys and other encodings take the SPKI import', async (t) => {
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey;
  t.ok(publicKeyOfSpki(spkiOf(ec)).equals(ec), 'EC key');
  const ed = generateKeyPairSync('ed25519').publicKey;
  t.ok(publicKeyOfSpki(spkiOf(ed)).equals(ed), 'Ed25519 key');
  const pss = generateKeyPairSync('rsa-pss', { modulusLength: 2048 }).publicKey;
  const pssKey = publicKeyOfSpki(spkiOf(pss));
  t.equal(pssKey.asymmetricKeyType, 'rsa-pss', 'RSASSA-PSS keys stay PSS keys');
  t.ok(pssKey.equals(pss));

  const rsa = spkiOf(generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey);
  // rsaEncryption with its parameters absent instead of NULL: what OpenSSL makes of it, not ours
  const withoutNull = Buffer.concat([Buffer.from([0x30, 0x82]), Buffer.alloc(2), Buffer.from('300b06092a864886f70d010101', 'hex'), rsa.subarray(4 + 15)]);
  withoutNull.writeUInt16BE(withoutNull.length - 4, 2);
  t.equal(errorOf(() => publicKeyOfSpki(withoutNull)), errorOf(() => viaSpki(withoutNull)), 'absent parameters: as the SPKI import');
});

t.test('damaged SPKIs: the SPKI import decides, with its own error', async (t) => {
  const spki = spkiOf(generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey);
  const cases: Array<[string, Buffer]> = [
    ['trailing byte', Buffer.concat([spki, Buffer.from([0])])],
    ['truncated', spki.subarray(0, spki.length - 10)],
    ['empty', Buffer.alloc(0)],
    ['not DER', Buffer.from('not a key')],
    ['unused bits in the BIT STRING', Buffer.from(spki).fill(1, 23, 24)],
  ];
  // the RSAPublicKey with a byte more inside the BIT STRING
  const bitString = spki.subarray(19);
  t.equal(bitString[0], 0x03, 'BIT STRING at 19 (a 2048-bit key)');
  for (const [what, bytes] of cases) {
    const expected = errorOf(() => viaSpki(bytes));
    const actual = errorOf(() => publicKeyOfSpki(bytes));
    if (expected === undefined) {
      t.ok(actual === undefined && publicKeyOfSpki(bytes).equals(viaSpki(bytes)), `${what}: accepted by both, same key`);
    } else {
      t.equal(actual, expected, `${what}: same error`);
    }
  }
});
