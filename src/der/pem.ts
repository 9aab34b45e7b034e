// PEM (RFC 7468): the text armour of DER. One reading of `-----BEGIN <label>-----` blocks for every
// module that takes certificates from a file (pinned upstream, nodes certificates, cf-serverd EXEC keys).

import { DerError } from './reader.js';

const BASE64_BODY = /^[A-Za-z0-9+/=\s]*$/;

/** the base64 body of each `label` block of `text`, in order (lazily: a large file is walked as it goes) */
export function* pemBodies(text: string, label = 'CERTIFICATE'): Generator<string> {
  const block = new RegExp(`-----BEGIN ${label}-----([\\s\\S]*?)-----END ${label}-----`, 'g');
  for (const match of text.matchAll(block)) yield match[1] ?? '';
}

/** a block's body as DER; DerError when it is not base64 */
export function pemBodyToDer(body: string): Buffer {
  if (!BASE64_BODY.test(body)) throw new DerError('invalid base64 in PEM');
  return Buffer.from(body, 'base64');
}

/** the DER of every `label` block of `text` */
export function pemToDer(text: string, label = 'CERTIFICATE'): Buffer[] {
  return [...pemBodies(text, label)].map(pemBodyToDer);
}
