// Face of the der module: a minimal BER/DER reader and writer, the X.509 facts read with them, the one
// X.509 certificate writer (agent and CFEngine server certificates), PEM, and a node's public key from its SPKI.

export * from './reader.js';
export { encodeOid, encodeTime, encodeTlv } from './writer.js';
export { parseCertificateFacts, type CertificateFacts } from './certificate.js';
export { isPemBody, pemBodies, pemBodyRanges, pemBodyToDer, pemToDer } from './pem.js';
export * from './oids.js';
export { publicKeyOfSpki } from './public-key.js';
export { certificatePem, extension, nameOf, writeSelfSignedCertificate, type CertificateFields } from './certificate-writer.js';
