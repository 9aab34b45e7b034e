// The public key of a SubjectPublicKeyInfo, for the reports' signature check (a key per reporting node).
//
// Node's createPublicKey({ type: 'spki' }) goes through OpenSSL 3's decoder framework, which tries its decoders
// one after the other: ~110 µs for an RSA-4096 key on the bench machine, more than the RSA verification the key
// is made for (~65 µs). The RSAPublicKey inside an rsaEncryption SPKI, imported as PKCS#1, is the same key
// (modulus and exponent) and takes ~5 µs. An inspection thread keeps the keys of the last 2,000 nodes it saw
// (inspect-pool.ts), the primary those of the last 1,000 (nodes/registry.ts): beyond that many reporting
// nodes, every report made a key again.

import { createPublicKey, type KeyObject } from 'node:crypto';
import { readTlv, TAG_INTEGER, TAG_SEQUENCE } from './reader.js';

const TAG_BIT_STRING = 0x03;
/** AlgorithmIdentifier { rsaEncryption, NULL }, as RFC 3279 §2.3.1 has every RSA key's algorithm written */
const RSA_ALGORITHM = Buffer.from('300d06092a864886f70d0101010500', 'hex');

/**
 * The same KeyObject as createPublicKey({ key: spki, format: 'der', type: 'spki' }), made from the PKCS#1
 * RSAPublicKey when the SPKI is a well-formed rsaEncryption one; anything else (another algorithm, parameters
 * written otherwise, trailing bytes, a PKCS#1 import that fails) takes createPublicKey's SPKI path, so its
 * errors and its other key types stay exactly what they were.
 */
export function publicKeyOfSpki(spki: Buffer): KeyObject {
  const rsaPublicKey = rsaPublicKeyOf(spki);
  if (rsaPublicKey !== undefined) {
    try {
      return createPublicKey({ key: rsaPublicKey, format: 'der', type: 'pkcs1' });
    } catch {
      // the SPKI path below words the refusal
    }
  }
  return createPublicKey({ key: spki, format: 'der', type: 'spki' });
}

/** the RSAPublicKey DER of an rsaEncryption SPKI whose every length is exact, else undefined */
function rsaPublicKeyOf(spki: Buffer): Buffer | undefined {
  try {
    const info = readTlv(spki, 0, spki.length);
    // definite lengths only (DER): an indefinite one (BER) is left to the SPKI path
    if (info.tag !== TAG_SEQUENCE || info.end !== spki.length || info.contentEnd !== info.end) return undefined;
    const algorithmEnd = info.contentStart + RSA_ALGORITHM.length;
    if (algorithmEnd > info.contentEnd || !spki.subarray(info.contentStart, algorithmEnd).equals(RSA_ALGORITHM)) return undefined;
    const bits = readTlv(spki, algorithmEnd, info.contentEnd);
    // one BIT STRING, the last field, with no unused bits
    if (bits.tag !== TAG_BIT_STRING || bits.end !== info.contentEnd || bits.contentEnd - bits.contentStart < 2 || spki[bits.contentStart] !== 0) return undefined;
    // RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }, filling the BIT STRING exactly
    const key = readTlv(spki, bits.contentStart + 1, bits.contentEnd);
    if (key.tag !== TAG_SEQUENCE || key.end !== bits.contentEnd || key.contentEnd !== key.end) return undefined;
    const modulus = readTlv(spki, key.contentStart, key.contentEnd);
    if (modulus.tag !== TAG_INTEGER) return undefined;
    const exponent = readTlv(spki, modulus.end, key.contentEnd);
    if (exponent.tag !== TAG_INTEGER || exponent.end !== key.contentEnd) return undefined;
    return spki.subarray(key.start, key.end);
  } catch {
    return undefined; // a DER error: createPublicKey's own path decides
  }
}
