// Signs the relay's own run log as the agent does (rudder-agent share/lib/report.sh compress_and_sign:
// `openssl smime -sign -text -nocerts -signer agent.cert -inkey localhost.priv`, spec-agentless-node.md §C.1):
// a detached multipart/signed message, the signed part "Content-Type: text/plain" + the text with CRLF
// line ends, a PKCS#7 SignedData without certificates, SHA-256, signed attributes as OpenSSL writes them.
// Written with node:crypto and our DER writer so no openssl binary is needed at run time.

import { createHash, randomBytes, sign, type KeyObject, type X509Certificate } from 'node:crypto';
import {
  OID_CONTENT_TYPE,
  OID_DATA,
  OID_MESSAGE_DIGEST,
  OID_RSA_ENCRYPTION,
  OID_SHA256,
  OID_SIGNED_DATA,
  OID_SIGNING_TIME,
  TAG_CONTEXT_0, TAG_INTEGER, TAG_OCTET_STRING, TAG_SEQUENCE, TAG_SET, childrenOf, encodeOid, encodeTime, encodeTlv, expectTag, readTlv } from '../der/index.js';
import { RelayError } from '../errors.js';

const DER_NULL = Buffer.from([0x05, 0x00]);

export interface RunlogSigner {
  readonly privateKey: KeyObject;
  readonly certificate: X509Certificate;
}

/** what `openssl smime -sign -text` signs: a text/plain MIME header, then every line ended by CRLF */
export function canonicalTextPart(text: string): Buffer {
  const lines = text.split(/\r?\n/);
  if (lines.at(-1) === '') lines.pop();
  return Buffer.from(`Content-Type: text/plain\r\n\r\n${lines.map((line) => `${line}\r\n`).join('')}`, 'utf8');
}

/** issuer Name and serialNumber INTEGER of a certificate, as DER TLVs (the signer's IssuerAndSerialNumber) */
function issuerAndSerial(certificate: X509Certificate): Buffer {
  const der = certificate.raw;
  try {
    const top = expectTag(readTlv(der, 0, der.length), TAG_SEQUENCE, 'Certificate');
    const tbs = expectTag(childrenOf(der, top)[0], TAG_SEQUENCE, 'tbsCertificate');
    const fields = childrenOf(der, tbs);
    const offset = fields[0]?.tag === TAG_CONTEXT_0 ? 1 : 0; // [0] EXPLICIT version
    const serial = expectTag(fields[offset], TAG_INTEGER, 'serialNumber');
    const issuer = expectTag(fields[offset + 2], TAG_SEQUENCE, 'issuer');
    return encodeTlv(TAG_SEQUENCE, der.subarray(issuer.start, issuer.end), der.subarray(serial.start, serial.end));
  } catch (error) {
    throw new RelayError('RELAY_ERR_CERTIFICATE', `the relay certificate cannot be read to sign its run log: ${(error as Error).message}`);
  }
}

function attribute(oid: string, value: Buffer): Buffer {
  return encodeTlv(TAG_SEQUENCE, encodeOid(oid), encodeTlv(TAG_SET, value));
}

/** DER SET OF: elements sorted by their encodings (X.690 §11.6) */
function setOf(elements: readonly Buffer[]): Buffer {
  return encodeTlv(TAG_SET, ...[...elements].sort(Buffer.compare));
}

/** the PKCS#7 ContentInfo (DER) of a detached SHA-256 RSA signature over `signedPart` */
export function detachedSignature(signedPart: Buffer, signer: RunlogSigner, signingTime: Date): Buffer {
  const digest = createHash('sha256').update(signedPart).digest();
  const attributes = [
    attribute(OID_CONTENT_TYPE, encodeOid(OID_DATA)),
    attribute(OID_SIGNING_TIME, encodeTime(signingTime)),
    attribute(OID_MESSAGE_DIGEST, encodeTlv(TAG_OCTET_STRING, digest)),
  ];
  const signedAttributes = setOf(attributes);
  // RFC 5652 §5.4: the signature covers the DER of the attributes as a SET; they are stored as [0] IMPLICIT
  const signature = sign('sha256', signedAttributes, signer.privateKey);
  const sha256 = encodeTlv(TAG_SEQUENCE, encodeOid(OID_SHA256));
  const signerInfo = encodeTlv(
    TAG_SEQUENCE,
    encodeTlv(TAG_INTEGER, Buffer.from([1])),
    issuerAndSerial(signer.certificate),
    sha256,
    Buffer.concat([Buffer.from([TAG_CONTEXT_0]), signedAttributes.subarray(1)]),
    encodeTlv(TAG_SEQUENCE, encodeOid(OID_RSA_ENCRYPTION), DER_NULL),
    encodeTlv(TAG_OCTET_STRING, signature),
  );
  const signedData = encodeTlv(
    TAG_SEQUENCE,
    encodeTlv(TAG_INTEGER, Buffer.from([1])),
    encodeTlv(TAG_SET, sha256),
    encodeTlv(TAG_SEQUENCE, encodeOid(OID_DATA)), // detached: no content
    encodeTlv(TAG_SET, signerInfo), // -nocerts: no certificates field
  );
  return encodeTlv(TAG_SEQUENCE, encodeOid(OID_SIGNED_DATA), encodeTlv(TAG_CONTEXT_0, signedData));
}

/** the whole S/MIME message, laid out as OpenSSL's SMIME_write_PKCS7 writes a detached signature */
export function signRunlogText(text: string, signer: RunlogSigner, signingTime = new Date()): Buffer {
  const signedPart = canonicalTextPart(text);
  const signature = detachedSignature(signedPart, signer, signingTime);
  const boundary = `----${randomBytes(16).toString('hex').toUpperCase()}`;
  const base64 = signature.toString('base64').replace(/.{64}/g, '$&\n').replace(/\n$/, '');
  const head =
    'MIME-Version: 1.0\n' +
    `Content-Type: multipart/signed; protocol="application/x-pkcs7-signature"; micalg="sha-256"; boundary="${boundary}"\n\n` +
    'This is an S/MIME signed message\n\n' +
    `--${boundary}\n`;
  const tail =
    `\n--${boundary}\n` +
    'Content-Type: application/x-pkcs7-signature; name="smime.p7s"\n' +
    'Content-Transfer-Encoding: base64\n' +
    'Content-Disposition: attachment; filename="smime.p7s"\n\n' +
    `${base64}\n\n` +
    `--${boundary}--\n\n`;
  return Buffer.concat([Buffer.from(head, 'latin1'), signedPart, Buffer.from(tail, 'latin1')]);
}
