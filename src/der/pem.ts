// PEM (RFC 7468): the text armour of DER. One reading of `-----BEGIN <label>-----` blocks for every
// module that takes certificates from a file (pinned upstream, nodes certificates, cf-serverd EXEC keys).

import { DerError } from './reader.js';

const BASE64_BODY = /^[A-Za-z0-9+/=\s]*$/;

/**
 * the base64 body of each `label` block, in order, lazily. A Buffer is walked in place and only each small
 * body becomes a string: a 10,000-certificate file read as one string is an 18 MB heap object whose
 * garbage grows every process's heap for good (bench/footprint).
 */
export function* pemBodies(text: string | Buffer, label = 'CERTIFICATE'): Generator<string> {
  for (const [start, stop] of pemBodyRanges(text, label)) {
    yield typeof text === 'string' ? text.slice(start, stop) : text.toString('latin1', start, stop);
  }
}

/**
 * where the body of each `label` block is, [start, end) in order (byte offsets in a Buffer): what pemBodies
 * yields, as positions (the nodes registry keeps where a certificate is in its file, not the certificate)
 */
export function* pemBodyRanges(text: string | Buffer, label = 'CERTIFICATE'): Generator<readonly [number, number]> {
  const begin = `-----BEGIN ${label}-----`;
  const end = `-----END ${label}-----`;
  for (let at = text.indexOf(begin); at >= 0; ) {
    const start = at + begin.length;
    const stop = text.indexOf(end, start);
    if (stop < 0) return;
    yield [start, stop];
    at = text.indexOf(begin, stop + end.length);
  }
}

/** whether a block's body is base64 (with line breaks), what pemBodyToDer accepts */
export function isPemBody(body: string): boolean {
  return BASE64_BODY.test(body);
}

/** a block's body as DER; DerError when it is not base64 */
export function pemBodyToDer(body: string): Buffer {
  if (!isPemBody(body)) throw new DerError('invalid base64 in PEM');
  return Buffer.from(body, 'base64');
}

/** the DER of every `label` block of `text` */
export function pemToDer(text: string, label = 'CERTIFICATE'): Buffer[] {
  return [...pemBodies(text, label)].map(pemBodyToDer);
}
