// The agent certificate, made as Rudder's `openssl req -x509 ... -extensions agent_cert -subj "/UID=<id>"`
// does (spec-https-front-cfserverd-sync.md §4): self-signed, subject = issuer = UID=<node id>, 10 years.

import { X509Certificate, randomBytes, type KeyObject } from 'node:crypto';
import { TAG_SEQUENCE, certificatePem, encodeTlv, extension, nameOf, parseCertificateFacts, writeSelfSignedCertificate } from '../der/index.js';

/** userId attribute (RFC 4519), the node id in Rudder agent certificates */
export const UID_OID = '0.9.2342.19200300.100.1.1';

const DAY_MS = 24 * 60 * 60 * 1000;
const UTF8_STRING = 0x0c;
const OID = {
  basicConstraints: '2.5.29.19',
  subjectKeyIdentifier: '2.5.29.14',
  authorityKeyIdentifier: '2.5.29.35',
  keyUsage: '2.5.29.15',
} as const;
// KeyUsage BIT STRING: digitalSignature(0), keyEncipherment(2), dataEncipherment(3), keyAgreement(4),
// keyCertSign(5) = 1011 1100, the last 2 bits unused
const KEY_USAGE = Buffer.from([0x03, 0x02, 0x02, 0xbc]);

/**
 * The extensions are those Rudder's agent_cert section asks for, encoded byte for byte as node-forge wrote
 * them before (test/identity/certificate.test.ts compares with a forge-made certificate): none critical.
 */
export async function createAgentCertificate(nodeId: string, privateKey: KeyObject, now: Date = new Date()): Promise<string> {
  const serial = randomSerial();
  const name = nameOf(UID_OID, nodeId, UTF8_STRING);
  const der = writeSelfSignedCertificate({
    version: 3,
    serial,
    hash: 'sha256',
    name,
    notBefore: new Date(now.getTime() - DAY_MS),
    notAfter: new Date(now.getTime() + 3650 * DAY_MS),
    key: privateKey,
    extensions: ({ keyIdentifier }) => [
      extension(OID.basicConstraints, encodeTlv(TAG_SEQUENCE, encodeTlv(0x01, Buffer.from([0xff])))), // cA TRUE
      extension(OID.subjectKeyIdentifier, encodeTlv(0x04, keyIdentifier)),
      // [0] keyIdentifier, [1] authorityCertIssuer: GeneralNames { [4] directoryName }, [2] serial
      extension(
        OID.authorityKeyIdentifier,
        encodeTlv(TAG_SEQUENCE, encodeTlv(0x80, keyIdentifier), encodeTlv(0xa1, encodeTlv(0xa4, name)), encodeTlv(0x82, serial)),
      ),
      extension(OID.keyUsage, KEY_USAGE),
    ],
  });
  return certificatePem(der);
}

/** 16 random bytes read as a positive INTEGER whose DER encoding is minimal (first byte 0x01..0x7f). */
function randomSerial(): Buffer {
  const bytes = randomBytes(16);
  bytes[0] = ((bytes[0] ?? 0) & 0x7f) || 0x01;
  return bytes;
}

/** The first UID attribute of the certificate subject, undefined when there is none. */
export function certificateUid(certificate: X509Certificate): string | undefined {
  return parseCertificateFacts(certificate.raw).uid;
}
