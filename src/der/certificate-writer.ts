// The one X.509 writer of onerelay: a TBSCertificate assembled with the DER writer and signed with
// node:crypto (OpenSSL). It replaced node-forge for the agent certificate: forge's pure-JS RSA took
// ~1,000 ms to sign with a 4096-bit key where OpenSSL takes ~5 ms, and loading forge costs ~50 ms and
// ~11 MB of RSS in the process that does it (measured 2026-12-06, see the README's memory notes).

import { createHash, createPublicKey, sign, type KeyObject } from 'node:crypto';
import { DerError, TAG_INTEGER, TAG_OCTET_STRING, TAG_SEQUENCE, TAG_SET, childrenOf, readTlv } from './reader.js';
import { encodeOid, encodeTime, encodeTlv } from './writer.js';

const SIGNATURE_OIDS = { sha256: '1.2.840.113549.1.1.11', sha384: '1.2.840.113549.1.1.12' } as const;
const TAG_BOOLEAN = 0x01;
const TAG_BIT_STRING = 0x03;
const TAG_NULL = 0x05;

export interface CertificateFields {
  /** 1 (no version field, as OpenSSL writes v1) or 3 */
  readonly version: 1 | 3;
  /** the serial's INTEGER contents, already minimal and positive */
  readonly serial: Buffer;
  readonly hash: keyof typeof SIGNATURE_OIDS;
  /** subject and issuer (self-signed), a DER Name, e.g. from `nameOf` */
  readonly name: Buffer;
  readonly notBefore: Date;
  readonly notAfter: Date;
  /** RSA private key that signs; its public key is the certificate's */
  readonly key: KeyObject;
  /** DER Extension SEQUENCEs (v3 only), in order */
  readonly extensions?: (keys: { readonly spki: Buffer; readonly keyIdentifier: Buffer }) => readonly Buffer[];
}

/** A Name of one RDN of one attribute, its value as a string of `stringTag` (0x0c UTF8String, 0x13 PrintableString) */
export function nameOf(oid: string, value: string, stringTag: number): Buffer {
  const attribute = encodeTlv(TAG_SEQUENCE, encodeOid(oid), encodeTlv(stringTag, Buffer.from(value, 'utf8')));
  return encodeTlv(TAG_SEQUENCE, encodeTlv(TAG_SET, attribute));
}

/** Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING } */
export function extension(oid: string, value: Buffer, critical = false): Buffer {
  const flag = critical ? [encodeTlv(TAG_BOOLEAN, Buffer.from([0xff]))] : [];
  return encodeTlv(TAG_SEQUENCE, encodeOid(oid), ...flag, encodeTlv(TAG_OCTET_STRING, value));
}

/** a self-signed certificate, DER */
export function writeSelfSignedCertificate(fields: CertificateFields): Buffer {
  const spki = createPublicKey(fields.key).export({ type: 'spki', format: 'der' });
  const algorithm = encodeTlv(TAG_SEQUENCE, encodeOid(SIGNATURE_OIDS[fields.hash]), encodeTlv(TAG_NULL));
  const parts: Buffer[] = [];
  if (fields.version === 3) parts.push(encodeTlv(0xa0, encodeTlv(TAG_INTEGER, Buffer.from([2]))));
  parts.push(
    encodeTlv(TAG_INTEGER, fields.serial),
    algorithm,
    fields.name,
    encodeTlv(TAG_SEQUENCE, encodeTime(fields.notBefore), encodeTime(fields.notAfter)),
    fields.name,
    spki,
  );
  const extensions = fields.extensions?.({ spki, keyIdentifier: keyIdentifier(spki) }) ?? [];
  if (extensions.length > 0) parts.push(encodeTlv(0xa3, encodeTlv(TAG_SEQUENCE, ...extensions)));
  const tbs = encodeTlv(TAG_SEQUENCE, ...parts);
  const signature = sign(fields.hash, tbs, fields.key);
  return encodeTlv(TAG_SEQUENCE, tbs, algorithm, encodeTlv(TAG_BIT_STRING, Buffer.from([0]), signature));
}

/** RFC 5280 §4.2.1.2 method (1): SHA-1 of the subjectPublicKey BIT STRING's bits (what OpenSSL and forge write) */
function keyIdentifier(spki: Buffer): Buffer {
  // SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier, subjectPublicKey BIT STRING }
  const bits = childrenOf(spki, readTlv(spki, 0, spki.length))[1];
  if (bits === undefined) throw new DerError('malformed SubjectPublicKeyInfo');
  return createHash('sha1').update(spki.subarray(bits.contentStart + 1, bits.contentEnd)).digest(); // + 1: the unused-bits octet
}

/** PEM armour of a DER certificate, 64 characters a line */
export function certificatePem(der: Buffer): string {
  const lines = der.toString('base64').match(/.{1,64}/g) ?? [];
  return `-----BEGIN CERTIFICATE-----\n${lines.join('\n')}\n-----END CERTIFICATE-----\n`;
}
