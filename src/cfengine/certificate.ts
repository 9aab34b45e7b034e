// The server's TLS certificate, made at start from the relay's RSA key as cf-serverd does
// (TLSGenerateCertFromPrivKey; spec-cfengine-protocol.md §4): X.509 v1, serial 0, subject = issuer = CN=a,
// sha384WithRSA, valid from now for 10 years, no extensions. Peers only compare its public key.

import { createPublicKey, sign, type KeyObject } from 'node:crypto';
import forge from 'node-forge';

const { asn1 } = forge;
const OID_SHA384_WITH_RSA = '1.2.840.113549.1.1.12';
const OID_COMMON_NAME = '2.5.4.3';
const VALIDITY_YEARS = 10;

function algorithmIdentifier(): forge.asn1.Asn1 {
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OID, false, asn1.oidToDer(OID_SHA384_WITH_RSA).getBytes()),
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.NULL, false, ''),
  ]);
}

function nameCnA(): forge.asn1.Asn1 {
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SET, true, [
      asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
        asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OID, false, asn1.oidToDer(OID_COMMON_NAME).getBytes()),
        asn1.create(asn1.Class.UNIVERSAL, asn1.Type.PRINTABLESTRING, false, 'a'),
      ]),
    ]),
  ]);
}

function utcTime(date: Date): forge.asn1.Asn1 {
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.UTCTIME, false, asn1.dateToUtcTime(date));
}

/** PEM certificate for `privateKey` (RSA), built as cf-serverd builds its in-memory one. */
export function makeServerCertificate(privateKey: KeyObject, now = new Date()): string {
  if (privateKey.asymmetricKeyType !== 'rsa') throw new Error('the CFEngine server needs an RSA key');
  const spki = createPublicKey(privateKey).export({ type: 'spki', format: 'der' });
  const notAfter = new Date(now);
  notAfter.setUTCFullYear(notAfter.getUTCFullYear() + VALIDITY_YEARS);
  // v1: the version field is absent (its DEFAULT), which is how OpenSSL encodes X509_set_version(0)
  const tbs = asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.INTEGER, false, '\x00'),
    algorithmIdentifier(),
    nameCnA(),
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [utcTime(now), utcTime(notAfter)]),
    nameCnA(),
    asn1.fromDer(forge.util.createBuffer(spki.toString('binary'))),
  ]);
  const tbsDer = Buffer.from(asn1.toDer(tbs).getBytes(), 'binary');
  const signature = sign('sha384', tbsDer, privateKey);
  const certificate = asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
    tbs,
    algorithmIdentifier(),
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.BITSTRING, false, `\x00${signature.toString('binary')}`),
  ]);
  const der = Buffer.from(asn1.toDer(certificate).getBytes(), 'binary');
  const lines = der.toString('base64').match(/.{1,64}/g) ?? [];
  return `-----BEGIN CERTIFICATE-----\n${lines.join('\n')}\n-----END CERTIFICATE-----\n`;
}
