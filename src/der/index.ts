// Face of the der module: a minimal BER/DER reader and writer, and the X.509 facts read with them.

export * from './reader.js';
export { encodeOid, encodeTime, encodeTlv } from './writer.js';
export { parseCertificateFacts, type CertificateFacts } from './certificate.js';
