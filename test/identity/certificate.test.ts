// The agent certificate is written by the DER writer (src/der/certificate-writer.ts) since node-forge left
// src/: it must stay byte for byte what forge wrote (what Rudder and the agents have always received),
// and what `openssl x509` reads as Rudder's agent_cert: UID=<node id>, self-signed, CA, the key usages.

import { X509Certificate, generateKeyPairSync } from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import forge from 'node-forge';
import t from 'tap';
import { createAgentCertificate, certificateUid } from '../../src/identity/certificate.js';

const run = promisify(execFile);
const NODE_ID = 'e745a140-40bc-4b86-b6dc-084488fc906b';

/** the certificate node-forge wrote before (src/identity/certificate.ts at a0dc9ab), for the same serial and dates */
function forgeCertificate(privateKeyPem: string, serialHex: string, notBefore: Date, notAfter: Date): string {
  const forgeKey = forge.pki.privateKeyFromPem(privateKeyPem);
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.setRsaPublicKey(forgeKey.n, forgeKey.e);
  cert.serialNumber = serialHex;
  cert.validity.notBefore = notBefore;
  cert.validity.notAfter = notAfter;
  const utf8String = forge.asn1.Type.UTF8 as number as forge.asn1.Class;
  const name: forge.pki.CertificateField[] = [{ type: '0.9.2342.19200300.100.1.1', value: NODE_ID, valueTagClass: utf8String }];
  cert.setSubject(name);
  cert.setIssuer(name);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true },
    { name: 'subjectKeyIdentifier' },
    { name: 'authorityKeyIdentifier', keyIdentifier: true, authorityCertIssuer: true, serialNumber: true },
    { name: 'keyUsage', digitalSignature: true, dataEncipherment: true, keyEncipherment: true, keyAgreement: true, keyCertSign: true },
  ]);
  cert.sign(forgeKey, forge.md.sha256.create());
  return forge.pki.certificateToPem(cert);
}

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const privateKeyPem = privateKey.export({ type: 'pkcs1', format: 'pem' }).toString();

t.test('byte for byte the certificate node-forge wrote', async (t) => {
  for (let round = 0; round < 3; round += 1) {
    const pem = await createAgentCertificate(NODE_ID, privateKey, new Date(Date.UTC(2026, 11, 6, 9, 30, 15 + round)));
    const certificate = new X509Certificate(pem);
    const expected = forgeCertificate(privateKeyPem, certificate.serialNumber.toLowerCase(), new Date(certificate.validFrom), new Date(certificate.validTo));
    t.equal(pem.replace(/\r/g, ''), expected.replace(/\r/g, ''), `round ${round}: same PEM as forge's`);
  }
});

t.test('what openssl reads in it', async (t) => {
  const pem = await createAgentCertificate(NODE_ID, privateKey, new Date(Date.UTC(2026, 0, 1)));
  const certificate = new X509Certificate(pem);
  t.equal(certificateUid(certificate), NODE_ID);
  t.ok(certificate.verify(certificate.publicKey), 'self-signed');
  t.ok(certificate.checkPrivateKey(privateKey));
  t.equal(certificate.ca, true);
  t.equal(certificate.validFrom, 'Dec 31 00:00:00 2025 GMT');
  t.equal(certificate.validTo, 'Dec 30 00:00:00 2035 GMT');
  const child = run('openssl', ['x509', '-noout', '-subject', '-issuer', '-ext', 'basicConstraints,keyUsage,subjectKeyIdentifier,authorityKeyIdentifier', '-nameopt', 'RFC2253']);
  child.child.stdin?.end(pem);
  const { stdout } = await child;
  t.match(stdout, `subject=UID=${NODE_ID}`);
  t.match(stdout, `issuer=UID=${NODE_ID}`);
  t.match(stdout, 'CA:TRUE');
  t.match(stdout, 'Digital Signature, Key Encipherment, Data Encipherment, Key Agreement, Certificate Sign');
  // a serial whose first byte has the high bit set would need a 0x00 prefix: never made
  for (let i = 0; i < 50; i += 1) {
    const serial = new X509Certificate(await createAgentCertificate(NODE_ID, privateKey)).serialNumber;
    t.ok(serial.length === 32 && /^[0-7]/.test(serial), `serial ${serial} is 16 minimal bytes`);
  }
});
