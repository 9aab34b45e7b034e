// The server's TLS certificate, made at start from the relay's RSA key as cf-serverd does
// (TLSGenerateCertFromPrivKey; spec-cfengine-protocol.md §4): X.509 v1, serial 0, subject = issuer = CN=a,
// sha384WithRSA, valid from now for 10 years, no extensions. Peers only compare its public key.

import { createPublicKey, sign, type KeyObject } from 'node:crypto';
import { RelayError } from '../errors.js';
import { TAG_INTEGER, TAG_SEQUENCE, TAG_SET, encodeOid, encodeTime, encodeTlv } from '../der/index.js';

const OID_SHA384_WITH_RSA = '1.2.840.113549.1.1.12';
const OID_COMMON_NAME = '2.5.4.3';
const VALIDITY_YEARS = 10;

// NULL parameters (0x05); the signature is a BIT STRING (0x03) with no unused bits; CN is a PrintableString (0x13)
const algorithmIdentifier = (): Buffer => encodeTlv(TAG_SEQUENCE, encodeOid(OID_SHA384_WITH_RSA), encodeTlv(0x05));
const nameCnA = (): Buffer => encodeTlv(TAG_SEQUENCE, encodeTlv(TAG_SET, encodeTlv(TAG_SEQUENCE, encodeOid(OID_COMMON_NAME), encodeTlv(0x13, Buffer.from('a')))));

/** PEM certificate for `privateKey` (RSA), built as cf-serverd builds its in-memory one. */
export function makeServerCertificate(privateKey: KeyObject, now = new Date()): string {
  if (privateKey.asymmetricKeyType !== 'rsa') throw new RelayError('RELAY_ERR_IDENTITY', 'the CFEngine server needs an RSA key');
  const spki = createPublicKey(privateKey).export({ type: 'spki', format: 'der' });
  const notAfter = new Date(now);
  notAfter.setUTCFullYear(notAfter.getUTCFullYear() + VALIDITY_YEARS);
  // v1: the version field is absent (its DEFAULT), which is how OpenSSL encodes X509_set_version(0)
  const tbs = encodeTlv(
    TAG_SEQUENCE,
    encodeTlv(TAG_INTEGER, Buffer.from([0])), // serial 0
    algorithmIdentifier(),
    nameCnA(),
    encodeTlv(TAG_SEQUENCE, encodeTime(now), encodeTime(notAfter)),
    nameCnA(),
    spki,
  );
  const signature = sign('sha384', tbs, privateKey);
  const der = encodeTlv(TAG_SEQUENCE, tbs, algorithmIdentifier(), encodeTlv(0x03, Buffer.from([0]), signature));
  const lines = der.toString('base64').match(/.{1,64}/g) ?? [];
  return `-----BEGIN CERTIFICATE-----\n${lines.join('\n')}\n-----END CERTIFICATE-----\n`;
}
