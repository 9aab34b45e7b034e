// S/MIME verification of a signed run log, equivalent to
// `openssl smime -verify -text -nointern -noverify -certfile <node certs>` (spec-relayd.md §7.5):
// OpenSSL's multipart splitting and CRLF canonicalisation, signer looked up by issuer + serial among the
// given certificates only, messageDigest check, RSA/ECDSA signature over the DER of the signed attributes.
// Digests weaker than SHA-256 are refused (relayd's FIXME, spec §15.12). No chain or validity check.

import { hash as oneShotHash, verify, type KeyObject } from 'node:crypto';
import type { SignerCertificate } from '../nodes/index.js';
import {
  DerError,
  OID_MESSAGE_DIGEST,
  OID_SHA256,
  OID_SIGNED_DATA,
  TAG_CONTEXT_0,
  TAG_INTEGER,
  TAG_OCTET_STRING,
  TAG_OID,
  TAG_SEQUENCE,
  TAG_SET,
  childrenOf,
  contentOf,
  encodeTlv,
  expectTag,
  integerMagnitude,
  oidOf,
  readTlv,
} from '../der/index.js';

export type SmimeVerification = { ok: true; content: Buffer } | { ok: false; reason: string };

/** the two parts of a detached multipart/signed message, as OpenSSL's SMIME_read_PKCS7 sees them */
export interface SmimeParts {
  /** the signed part, canonicalised (CRLF line ends), MIME header included: what the signature covers */
  readonly signedPart: Buffer;
  /** DER/BER of the PKCS#7 SignedData (ContentInfo) */
  readonly signature: Buffer;
}

export type SmimeRead =
  | { readonly kind: 'smime'; readonly parts: SmimeParts }
  | { readonly kind: 'not-smime' }
  | { readonly kind: 'malformed'; readonly reason: string };

export function verifySmime(decoded: Buffer, certificates: readonly SignerCertificate[]): SmimeVerification {
  const read = readSmime(decoded);
  if (read.kind === 'not-smime') {
    return { ok: false, reason: 'not an S/MIME message: expected a multipart/signed message made by openssl smime -sign' };
  }
  if (read.kind === 'malformed') return { ok: false, reason: read.reason };
  const failure = verifySignedPart(read.parts, certificates);
  if (failure !== undefined) return { ok: false, reason: failure };
  const text = stripTextHeader(read.parts.signedPart);
  if (typeof text === 'string') return { ok: false, reason: text };
  return { ok: true, content: text };
}

// ---------------------------------------------------------------------------------------------------------
// MIME

interface MimeHeader {
  readonly value: string; // lower-cased, parameters removed (as OpenSSL's mime_hdr_new)
  readonly params: ReadonlyMap<string, string>;
}

const LF = 0x0a;
const CR = 0x0d;
// OpenSSL reads MIME lines with BIO_gets into a 1024-byte buffer: at most 1023 bytes per read
const MAX_SMLEN = 1024;
const MAX_HEADER_BYTES = 64 * 1024;

/**
 * Parses a MIME header block starting at `start`, up to the first empty line.
 * Returns undefined when the bytes do not look like a header block.
 */
function parseHeaders(buf: Buffer, start: number): { headers: Map<string, MimeHeader>; bodyStart: number } | undefined {
  const raw: Array<[string, string]> = [];
  let pos = start;
  const limit = Math.min(buf.length, start + MAX_HEADER_BYTES);
  while (pos < limit) {
    const nl = buf.indexOf(LF, pos);
    const lineEnd = nl < 0 ? buf.length : nl;
    let contentEnd = lineEnd;
    while (contentEnd > pos && buf[contentEnd - 1] === CR) contentEnd--;
    const next = nl < 0 ? buf.length : nl + 1;
    if (contentEnd === pos) return { headers: toHeaderMap(raw), bodyStart: next };
    const line = buf.toString('latin1', pos, contentEnd);
    const first = line.charCodeAt(0);
    if ((first === 0x20 || first === 0x09) && raw.length > 0) {
      const last = raw[raw.length - 1]!;
      last[1] += ' ' + line.trim();
    } else {
      const colon = line.indexOf(':');
      if (colon <= 0) return undefined;
      const name = line.slice(0, colon).trim();
      if (!/^[A-Za-z][A-Za-z0-9-]*$/.test(name)) return undefined;
      raw.push([name.toLowerCase(), line.slice(colon + 1)]);
    }
    if (nl < 0) return undefined; // no empty line: not a header block
    pos = next;
  }
  return undefined;
}

function toHeaderMap(raw: ReadonlyArray<[string, string]>): Map<string, MimeHeader> {
  const headers = new Map<string, MimeHeader>();
  for (const [name, text] of raw) {
    if (headers.has(name)) continue; // OpenSSL's mime_hdr_find returns the first one
    const pieces = splitParameters(text);
    const params = new Map<string, string>();
    for (const piece of pieces.slice(1)) {
      const eq = piece.indexOf('=');
      if (eq <= 0) continue;
      params.set(piece.slice(0, eq).trim().toLowerCase(), unquote(piece.slice(eq + 1).trim()));
    }
    headers.set(name, { value: (pieces[0] ?? '').trim().toLowerCase(), params });
  }
  return headers;
}

/** the pieces between unquoted ";" (a backslash in quotes escapes the next character), as slices of the text */
function splitParameters(text: string): string[] {
  const pieces: string[] = [];
  let start = 0;
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22) quoted = !quoted; // "
    else if (c === 0x5c && quoted && i + 1 < text.length) i++; // \ and the character it escapes
    else if (c === 0x3b && !quoted) {
      // ;
      pieces.push(text.slice(start, i));
      start = i + 1;
    }
  }
  pieces.push(text.slice(start));
  return pieces;
}

function unquote(value: string): string {
  if (value.length >= 2 && value.startsWith('"') && value.endsWith('"')) {
    const inner = value.slice(1, -1);
    return inner.includes('\\') ? inner.replace(/\\(.)/g, '$1') : inner;
  }
  return value;
}

/** Is this decoded upload a MIME message (S/MIME) rather than a plain-text run log? */
export function readSmime(decoded: Buffer): SmimeRead {
  const top = parseHeaders(decoded, 0);
  const contentType = top?.headers.get('content-type');
  if (top === undefined || contentType === undefined) return { kind: 'not-smime' };
  if (contentType.value === 'application/x-pkcs7-mime' || contentType.value === 'application/pkcs7-mime') {
    return {
      kind: 'malformed',
      reason: 'opaque S/MIME (application/pkcs7-mime) carries no separate run log; expected a detached multipart/signed message (openssl smime -sign without -nodetach)',
    };
  }
  if (contentType.value !== 'multipart/signed') {
    return { kind: 'malformed', reason: `MIME type "${contentType.value}" is not multipart/signed; expected an S/MIME signed run log` };
  }
  const boundary = contentType.params.get('boundary');
  if (boundary === undefined || boundary === '') {
    return { kind: 'malformed', reason: 'multipart/signed message without boundary parameter' };
  }
  const parts = splitMultipart(decoded, top.bodyStart, Buffer.from(boundary, 'latin1'));
  if (parts === undefined) {
    return { kind: 'malformed', reason: `multipart/signed body is incomplete: expected exactly 2 parts closed by "--${boundary}--"` };
  }
  const [signedPart, signaturePart] = parts;
  const signatureHeaders = parseHeaders(signaturePart, 0);
  const signatureType = signatureHeaders?.headers.get('content-type')?.value;
  if (signatureHeaders === undefined || (signatureType !== 'application/x-pkcs7-signature' && signatureType !== 'application/pkcs7-signature')) {
    return {
      kind: 'malformed',
      reason: `second part is "${signatureType ?? 'no content type'}"; expected application/x-pkcs7-signature`,
    };
  }
  const signature = Buffer.from(signaturePart.toString('latin1', signatureHeaders.bodyStart), 'base64');
  if (signature.length === 0) return { kind: 'malformed', reason: 'empty PKCS#7 signature part' };
  return { kind: 'smime', parts: { signedPart, signature } };
}

/**
 * OpenSSL's multi_split: lines (BIO_gets, ≤ 1023 bytes) between boundaries; trailing CR/LF stripped
 * from each read and CRLF put back between reads that ended a line; the line end before a boundary is
 * not part of the content. Returns the two parts, or undefined when the message is not 2 complete parts.
 */
function splitMultipart(buf: Buffer, start: number, boundary: Buffer): [Buffer, Buffer] | undefined {
  const parts: Buffer[] = [];
  let current: PartAssembler | undefined;
  let part = 0;
  let first = true;
  let eol = false;
  let pos = start;
  const blen = boundary.length;
  while (pos < buf.length) {
    const nl = buf.indexOf(LF, pos);
    let end = nl < 0 ? buf.length : nl + 1;
    if (end - pos > MAX_SMLEN - 1) end = pos + MAX_SMLEN - 1;
    const lineStart = pos;
    pos = end;

    let state = 0;
    if (end - lineStart >= blen + 2 && buf[lineStart] === 0x2d && buf[lineStart + 1] === 0x2d) {
      if (buf.compare(boundary, 0, blen, lineStart + 2, lineStart + 2 + blen) === 0) {
        state = buf[lineStart + 2 + blen] === 0x2d && buf[lineStart + 3 + blen] === 0x2d ? 2 : 1;
      }
    }
    if (state === 1) {
      first = true;
      part++;
    } else if (state === 2) {
      if (current !== undefined) parts.push(current.result());
      return parts.length === 2 ? [parts[0]!, parts[1]!] : undefined;
    } else if (part !== 0) {
      let stripped = end;
      let nextEol = false;
      while (stripped > lineStart) {
        const c = buf[stripped - 1];
        if (c === LF) nextEol = true;
        else if (c !== CR) break;
        stripped--;
      }
      if (first) {
        first = false;
        if (current !== undefined) parts.push(current.result());
        current = new PartAssembler(buf);
      } else if (eol) {
        current?.appendCrlf();
      }
      eol = nextEol;
      if (stripped > lineStart) current?.appendSource(lineStart, stripped);
    }
  }
  return undefined;
}

const CRLF = Buffer.from('\r\n');

/** Collects a part as source ranges; in the usual (already canonical) case the result is one zero-copy slice. */
class PartAssembler {
  private readonly pieces: Buffer[] = [];
  private runStart = -1;
  private runEnd = -1;

  constructor(private readonly source: Buffer) {}

  appendSource(start: number, end: number): void {
    if (this.runStart >= 0 && start === this.runEnd) {
      this.runEnd = end;
      return;
    }
    this.flush();
    this.runStart = start;
    this.runEnd = end;
  }

  appendCrlf(): void {
    if (this.runStart >= 0 && this.source[this.runEnd] === CR && this.source[this.runEnd + 1] === LF) {
      this.runEnd += 2;
      return;
    }
    this.flush();
    this.pieces.push(CRLF);
  }

  result(): Buffer {
    this.flush();
    if (this.pieces.length === 1) return this.pieces[0]!;
    return Buffer.concat(this.pieces);
  }

  private flush(): void {
    if (this.runStart >= 0) this.pieces.push(this.source.subarray(this.runStart, this.runEnd));
    this.runStart = -1;
  }
}

/**
 * OpenSSL's SMIME_text: the signed part must carry `Content-Type: text/plain`; the header block is
 * removed and the rest returned as is (CRLF kept). Returns the reason as a string when it is not text/plain.
 */
export function stripTextHeader(signedPart: Buffer): Buffer | string {
  const parsed = parseHeaders(signedPart, 0);
  const type = parsed?.headers.get('content-type')?.value;
  if (parsed === undefined || type === undefined) {
    return 'the signed part has no MIME header; expected "Content-Type: text/plain" (openssl smime -sign -text)';
  }
  if (type !== 'text/plain') return `the signed part is "${type}"; expected text/plain (openssl smime -sign -text)`;
  return signedPart.subarray(parsed.bodyStart);
}

// ---------------------------------------------------------------------------------------------------------
// CMS / PKCS#7 SignedData (RFC 2315 / RFC 5652)

const OID_RSASSA_PSS = '1.2.840.113549.1.1.10';

/** digests accepted: SHA-256 and stronger */
const STRONG_DIGESTS: ReadonlyMap<string, string> = new Map([
  [OID_SHA256, 'sha256'],
  ['2.16.840.1.101.3.4.2.2', 'sha384'],
  ['2.16.840.1.101.3.4.2.3', 'sha512'],
  ['2.16.840.1.101.3.4.2.8', 'sha3-256'],
  ['2.16.840.1.101.3.4.2.9', 'sha3-384'],
  ['2.16.840.1.101.3.4.2.10', 'sha3-512'],
]);
const WEAK_DIGESTS: ReadonlyMap<string, string> = new Map([
  ['1.2.840.113549.2.5', 'MD5'],
  ['1.3.14.3.2.26', 'SHA-1'],
  ['2.16.840.1.101.3.4.2.4', 'SHA-224'],
]);

interface SignerInfo {
  readonly issuer: Buffer; // DER of the issuer Name
  readonly serial: Buffer;
  readonly digestOid: string;
  readonly signatureOid: string;
  /** DER of the signed attributes as SET OF (what the signature covers), undefined without attributes */
  readonly signedAttributes: Buffer | undefined;
  readonly messageDigest: Buffer | undefined;
  readonly signature: Buffer;
}

function parseSignerInfos(der: Buffer): SignerInfo[] {
  const contentInfo = expectTag(readTlv(der, 0, der.length), TAG_SEQUENCE, 'ContentInfo');
  const [contentType, explicit] = childrenOf(der, contentInfo);
  const type = oidOf(der, expectTag(contentType, TAG_OID, 'ContentInfo.contentType'));
  if (type !== OID_SIGNED_DATA) throw new DerError(`the PKCS#7 structure is ${type}; expected SignedData (${OID_SIGNED_DATA})`);
  const signedData = expectTag(childrenOf(der, expectTag(explicit, TAG_CONTEXT_0, 'ContentInfo.content'))[0], TAG_SEQUENCE, 'SignedData');
  const fields = childrenOf(der, signedData);
  // version, digestAlgorithms, contentInfo, [0] certificates?, [1] crls?, signerInfos: the last SET
  const signerInfos = expectTag(fields[fields.length - 1], TAG_SET, 'SignedData.signerInfos');
  if (fields.length < 4) throw new DerError('SignedData is incomplete');
  return childrenOf(der, signerInfos).map((signerInfo) => parseSignerInfo(der, expectTag(signerInfo, TAG_SEQUENCE, 'SignerInfo')));
}

function parseSignerInfo(der: Buffer, signerInfo: ReturnType<typeof readTlv>): SignerInfo {
  const fields = childrenOf(der, signerInfo);
  let i = 0;
  expectTag(fields[i++], TAG_INTEGER, 'SignerInfo.version');
  const sid = fields[i++];
  if (sid !== undefined && sid.tag === 0x80) {
    throw new DerError('the signer is identified by subject key identifier; expected issuer and serial number (PKCS#7)');
  }
  const [issuer, serial] = childrenOf(der, expectTag(sid, TAG_SEQUENCE, 'SignerInfo.issuerAndSerialNumber'));
  const issuerTlv = expectTag(issuer, TAG_SEQUENCE, 'issuer');
  const serialTlv = expectTag(serial, TAG_INTEGER, 'serialNumber');
  const digestAlgorithm = childrenOf(der, expectTag(fields[i++], TAG_SEQUENCE, 'SignerInfo.digestAlgorithm'))[0];
  const digestOid = oidOf(der, expectTag(digestAlgorithm, TAG_OID, 'digestAlgorithm.algorithm'));

  let signedAttributes: Buffer | undefined;
  let messageDigest: Buffer | undefined;
  if (fields[i]?.tag === TAG_CONTEXT_0) {
    const attributes = fields[i++]!;
    const children = childrenOf(der, attributes);
    // the signature covers the attributes DER-encoded as a SET OF (tag 0x31), not as [0] IMPLICIT
    signedAttributes = encodeTlv(TAG_SET, ...children.map((c) => der.subarray(c.start, c.end)));
    for (const attribute of children) {
      const [attributeType, values] = childrenOf(der, expectTag(attribute, TAG_SEQUENCE, 'Attribute'));
      if (oidOf(der, expectTag(attributeType, TAG_OID, 'Attribute.type')) !== OID_MESSAGE_DIGEST) continue;
      const value = childrenOf(der, expectTag(values, TAG_SET, 'Attribute.values'))[0];
      messageDigest = contentOf(der, expectTag(value, TAG_OCTET_STRING, 'messageDigest'));
    }
    if (messageDigest === undefined) throw new DerError('the signed attributes carry no message digest');
  }
  const signatureAlgorithm = childrenOf(der, expectTag(fields[i++], TAG_SEQUENCE, 'SignerInfo.signatureAlgorithm'))[0];
  const signatureOid = oidOf(der, expectTag(signatureAlgorithm, TAG_OID, 'signatureAlgorithm.algorithm'));
  const signature = contentOf(der, expectTag(fields[i++], TAG_OCTET_STRING, 'SignerInfo.signature'));
  return {
    issuer: der.subarray(issuerTlv.start, issuerTlv.end),
    serial: integerMagnitude(der, serialTlv),
    digestOid,
    signatureOid,
    signedAttributes,
    messageDigest,
    signature,
  };
}

interface CertificateIdentity {
  readonly issuer: Buffer;
  readonly serial: Buffer;
  readonly key: KeyObject;
}

// parsed once per certificate object (the nodes registry hands out the same objects until a reload)
const identities = new WeakMap<SignerCertificate, CertificateIdentity | null>();

function identityOf(certificate: SignerCertificate): CertificateIdentity | undefined {
  let identity = identities.get(certificate);
  if (identity === undefined) {
    try {
      if ('issuerDer' in certificate) {
        // the registry's SignerKey: the parts were read at load
        identity = { issuer: certificate.issuerDer, serial: certificate.serialMagnitude, key: certificate.publicKey };
        identities.set(certificate, identity);
        return identity;
      }
      const der = certificate.raw;
      const tbs = expectTag(childrenOf(der, expectTag(readTlv(der, 0, der.length), TAG_SEQUENCE, 'Certificate'))[0], TAG_SEQUENCE, 'tbsCertificate');
      const fields = childrenOf(der, tbs);
      const offset = fields[0]?.tag === TAG_CONTEXT_0 ? 1 : 0; // [0] EXPLICIT version
      const serial = expectTag(fields[offset], TAG_INTEGER, 'serialNumber');
      const issuer = expectTag(fields[offset + 2], TAG_SEQUENCE, 'issuer');
      identity = { issuer: der.subarray(issuer.start, issuer.end), serial: integerMagnitude(der, serial), key: certificate.publicKey };
    } catch {
      identity = null; // a certificate we cannot read never matches
    }
    identities.set(certificate, identity);
  }
  return identity ?? undefined;
}

interface SignatureCheck {
  readonly hash: string;
  readonly data: Buffer;
  readonly key: KeyObject;
  readonly signature: Buffer;
}

/**
 * Everything PKCS7_verify checks before the public-key operations: signer lookup by issuer + serial,
 * digest strength, messageDigest. Returns the reason of the first failure, or the signatures to check.
 */
function prepareChecks(parts: SmimeParts, certificates: readonly SignerCertificate[]): string | SignatureCheck[] {
  let signers: SignerInfo[];
  try {
    signers = parseSignerInfos(parts.signature);
  } catch (error) {
    return `the PKCS#7 signature cannot be read (${error instanceof Error ? error.message : String(error)})`;
  }
  if (signers.length === 0) return 'the PKCS#7 signature has no signer';

  const checks: SignatureCheck[] = [];
  const digests = new Map<string, Buffer>();
  for (const signer of signers) {
    const weak = WEAK_DIGESTS.get(signer.digestOid);
    if (weak !== undefined) return `signed with ${weak}, weaker than SHA-256; expected openssl smime -sign -md sha256 (or stronger)`;
    const hash = STRONG_DIGESTS.get(signer.digestOid);
    if (hash === undefined) return `unsupported digest algorithm ${signer.digestOid}; expected SHA-256 or stronger`;
    if (signer.signatureOid === OID_RSASSA_PSS) {
      return 'RSASSA-PSS signatures are not supported; expected RSA PKCS#1 v1.5 (openssl smime default)';
    }

    const certificate = certificates.find((c) => {
      const identity = identityOf(c);
      return identity !== undefined && identity.serial.equals(signer.serial) && identity.issuer.equals(signer.issuer);
    });
    if (certificate === undefined) {
      return `signer certificate (serial ${signer.serial.toString('hex').toUpperCase()}) is not among the ${certificates.length} certificate(s) known for this node`;
    }
    const key = identityOf(certificate)!.key;

    if (signer.signedAttributes === undefined) {
      checks.push({ hash, data: parts.signedPart, key, signature: signer.signature });
      continue;
    }
    let digest = digests.get(hash);
    if (digest === undefined) {
      digest = oneShotHash(hash, parts.signedPart, 'buffer'); // one call, no Hash object
      digests.set(hash, digest);
    }
    if (!digest.equals(signer.messageDigest!)) return 'message digest mismatch: the run log was modified after it was signed';
    checks.push({ hash, data: signer.signedAttributes, key, signature: signer.signature });
  }
  return checks;
}

function checkFailure(error: unknown): string {
  return `signature cannot be checked with the node certificate (${error instanceof Error ? error.message : String(error)})`;
}

const MISMATCH = 'signature does not match the node certificate';

/** Verifies every SignerInfo (as PKCS7_verify) against `certificates`; the reason of the first failure, or undefined. */
export function verifySignedPart(parts: SmimeParts, certificates: readonly SignerCertificate[]): string | undefined {
  const checks = prepareChecks(parts, certificates);
  if (typeof checks === 'string') return checks;
  for (const check of checks) {
    try {
      if (!verify(check.hash, check.data, check.key, check.signature)) return MISMATCH;
    } catch (error) {
      return checkFailure(error);
    }
  }
  return undefined;
}

/**
 * Same as verifySignedPart, with the RSA operations on libuv's thread pool (crypto.verify with a
 * callback): measured ~1.7× the throughput of the synchronous form on 2 cores, and the event loop
 * keeps parsing run logs meanwhile.
 */
export async function verifySignedPartAsync(parts: SmimeParts, certificates: readonly SignerCertificate[]): Promise<string | undefined> {
  const checks = prepareChecks(parts, certificates);
  if (typeof checks === 'string') return checks;
  const results = await Promise.all(
    checks.map(
      (check) =>
        new Promise<string | undefined>((resolve) => {
          try {
            verify(check.hash, check.data, check.key, check.signature, (error, valid) => {
              resolve(error ? checkFailure(error) : valid ? undefined : MISMATCH);
            });
          } catch (error) {
            resolve(checkFailure(error));
          }
        }),
    ),
  );
  return results.find((r) => r !== undefined);
}
