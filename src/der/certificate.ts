// The few X.509 fields the registry needs, read straight from the DER: subject UID, validity, and the
// SubjectPublicKeyInfo bytes exactly as encoded (what curl hashes for --pinnedpubkey). Reading the DER
// avoids parsing X509Certificate.subject, a display string with escaping and multi-value quirks.

import { DerError, childrenOf as children, expectTag, integerMagnitude, readTlv, type Tlv } from './reader.js';

function expect(tlv: Tlv | undefined, tag: number, what: string): Tlv {
  return expectTag(tlv, tag, `malformed certificate: ${what}`);
}

export interface CertificateFacts {
  /** first subject attribute 0.9.2342.19200300.100.1.1 (userId), the node id in Rudder agent certificates */
  readonly uid: string | undefined;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly spki: Buffer;
  /** the issuer Name as encoded, and the serial number's magnitude: how an S/MIME SignerInfo names its signer */
  readonly issuer: Buffer;
  readonly serial: Buffer;
}

// DER contents of OID 0.9.2342.19200300.100.1.1
const UID_OID = Buffer.from([0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01]);

const TAG = {
  integer: 0x02,
  bitString: 0x03,
  oid: 0x06,
  utf8String: 0x0c,
  printableString: 0x13,
  t61String: 0x14,
  ia5String: 0x16,
  utcTime: 0x17,
  generalizedTime: 0x18,
  bmpString: 0x1e,
  sequence: 0x30,
  set: 0x31,
  version: 0xa0,
} as const;

export function parseCertificateFacts(der: Buffer): CertificateFacts {
  const certificate = expect(readTlv(der, 0, der.length), TAG.sequence, 'certificate');
  if (certificate.end !== der.length) throw new DerError('malformed certificate: trailing bytes');
  const [tbsTlv, signatureAlgorithm, signature, ...extra] = children(der, certificate);
  expect(signatureAlgorithm, TAG.sequence, 'signatureAlgorithm');
  expect(signature, TAG.bitString, 'signatureValue');
  if (extra.length > 0) throw new DerError('malformed certificate: extra fields');
  const tbs = expect(tbsTlv, TAG.sequence, 'tbsCertificate');
  const fields = children(der, tbs);
  let index = fields[0]?.tag === TAG.version ? 1 : 0;
  const serial = expect(fields[index++], TAG.integer, 'serialNumber');
  expect(fields[index++], TAG.sequence, 'signature');
  const issuer = expect(fields[index++], TAG.sequence, 'issuer');
  const validity = children(der, expect(fields[index++], TAG.sequence, 'validity'));
  const subject = expect(fields[index++], TAG.sequence, 'subject');
  const spki = expect(fields[index++], TAG.sequence, 'subjectPublicKeyInfo');
  return {
    uid: findUid(der, subject),
    notBefore: readTime(der, validity[0]),
    notAfter: readTime(der, validity[1]),
    spki: der.subarray(spki.start, spki.end),
    issuer: der.subarray(issuer.start, issuer.end),
    serial: integerMagnitude(der, serial),
  };
}

function findUid(der: Buffer, name: Tlv): string | undefined {
  for (const rdn of children(der, name)) {
    if (rdn.tag !== TAG.set) continue;
    for (const attribute of children(der, rdn)) {
      if (attribute.tag !== TAG.sequence) continue;
      const [type, value] = children(der, attribute);
      if (type === undefined || value === undefined || type.tag !== TAG.oid) continue;
      if (der.subarray(type.contentStart, type.contentEnd).equals(UID_OID)) {
        return decodeString(der.subarray(value.contentStart, value.contentEnd), value.tag);
      }
    }
  }
  return undefined;
}

function decodeString(bytes: Buffer, tag: number): string | undefined {
  switch (tag) {
    case TAG.utf8String:
      return bytes.toString('utf8');
    case TAG.printableString:
    case TAG.ia5String:
    case TAG.t61String:
      return bytes.toString('latin1');
    case TAG.bmpString:
      return Buffer.from(bytes).swap16().toString('utf16le');
    default:
      return undefined;
  }
}

function readTime(der: Buffer, tlv: Tlv | undefined): Date {
  if (tlv === undefined) throw new DerError('malformed certificate: validity');
  const text = der.toString('latin1', tlv.contentStart, tlv.contentEnd);
  let match: RegExpExecArray | null;
  let year: number;
  if (tlv.tag === TAG.utcTime && (match = /^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(text))) {
    const yy = Number(match[1]);
    year = yy < 50 ? 2000 + yy : 1900 + yy; // RFC 5280 §4.1.2.5.1
  } else if (tlv.tag === TAG.generalizedTime && (match = /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(?:\.\d+)?Z$/.exec(text))) {
    year = Number(match[1]);
  } else {
    throw new DerError(`malformed certificate: time ${JSON.stringify(text)}`);
  }
  const [, , month, day, hour, minute, second] = match.map(Number) as number[];
  return new Date(Date.UTC(year, (month ?? 1) - 1, day, hour, minute, second));
}
