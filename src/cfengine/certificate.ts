// The server's TLS certificate, made at start from the relay's RSA key as cf-serverd does
// (TLSGenerateCertFromPrivKey; spec-cfengine-protocol.md §4): X.509 v1, serial 0, subject = issuer = CN=a,
// sha384WithRSA, valid from now for 10 years, no extensions. Peers only compare its public key.
// Written by the one X.509 writer (der/certificate-writer.ts), as the agent certificate is.

import type { KeyObject } from 'node:crypto';
import { RelayError } from '../errors.js';
import { certificatePem, nameOf, writeSelfSignedCertificate } from '../der/index.js';

const OID_COMMON_NAME = '2.5.4.3';
const PRINTABLE_STRING = 0x13;
const VALIDITY_YEARS = 10;

/** PEM certificate for `privateKey` (RSA), built as cf-serverd builds its in-memory one. */
export function makeServerCertificate(privateKey: KeyObject, now = new Date()): string {
  if (privateKey.asymmetricKeyType !== 'rsa') throw new RelayError('RELAY_ERR_IDENTITY', 'the CFEngine server needs an RSA key');
  const notAfter = new Date(now);
  notAfter.setUTCFullYear(notAfter.getUTCFullYear() + VALIDITY_YEARS);
  // v1: the version field is absent (its DEFAULT), which is how OpenSSL encodes X509_set_version(0)
  const der = writeSelfSignedCertificate({
    version: 1,
    serial: Buffer.from([0]),
    hash: 'sha384',
    name: nameOf(OID_COMMON_NAME, 'a', PRINTABLE_STRING),
    notBefore: now,
    notAfter,
    key: privateKey,
  });
  return certificatePem(der);
}
