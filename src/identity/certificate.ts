// The agent certificate, made as Rudder's `openssl req -x509 ... -extensions agent_cert -subj "/UID=<id>"`
// does (spec-https-front-cfserverd-sync.md §4): self-signed, subject = issuer = UID=<node id>, 10 years.

import { X509Certificate, randomBytes, type KeyObject } from 'node:crypto';
import type Forge from 'node-forge';
import { parseCertificateFacts } from '../der/index.js';

/** userId attribute (RFC 4519), the node id in Rudder agent certificates */
export const UID_OID = '0.9.2342.19200300.100.1.1';

const DAY_MS = 24 * 60 * 60 * 1000;

export async function createAgentCertificate(nodeId: string, privateKey: KeyObject, now: Date = new Date()): Promise<string> {
  // loaded here only: every process loads the same bundle, and only a first start makes a certificate
  const { default: forge } = await import('node-forge');
  const forgeKey = forge.pki.privateKeyFromPem(privateKey.export({ type: 'pkcs1', format: 'pem' }).toString());
  const forgePublicKey = forge.pki.setRsaPublicKey(forgeKey.n, forgeKey.e);
  const cert = forge.pki.createCertificate();
  cert.publicKey = forgePublicKey;
  cert.serialNumber = randomSerial();
  cert.validity.notBefore = new Date(now.getTime() - DAY_MS);
  cert.validity.notAfter = new Date(now.getTime() + 3650 * DAY_MS);
  // @types/node-forge types valueTagClass as asn1.Class, but forge reads it as a universal tag number
  const utf8String = forge.asn1.Type.UTF8 as number as Forge.asn1.Class;
  const name: Forge.pki.CertificateField[] = [{ type: UID_OID, value: nodeId, valueTagClass: utf8String }];
  cert.setSubject(name);
  cert.setIssuer(name);
  // must come after subject, issuer, serial and key: forge derives the identifiers from them
  cert.setExtensions([
    { name: 'basicConstraints', cA: true },
    { name: 'subjectKeyIdentifier' },
    { name: 'authorityKeyIdentifier', keyIdentifier: true, authorityCertIssuer: true, serialNumber: true },
    {
      name: 'keyUsage',
      digitalSignature: true,
      dataEncipherment: true,
      keyEncipherment: true,
      keyAgreement: true,
      keyCertSign: true,
    },
  ]);
  cert.sign(forgeKey, forge.md.sha256.create());
  return forge.pki.certificateToPem(cert);
}

/** 16 random bytes read as a positive INTEGER whose DER encoding is minimal (first byte 0x01..0x7f). */
function randomSerial(): string {
  const bytes = randomBytes(16);
  bytes[0] = ((bytes[0] ?? 0) & 0x7f) || 0x01;
  return bytes.toString('hex');
}

/** The first UID attribute of the certificate subject, undefined when there is none. */
export function certificateUid(certificate: X509Certificate): string | undefined {
  return parseCertificateFacts(certificate.raw).uid;
}
