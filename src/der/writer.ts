// The few DER encodings onerelay writes itself (the CFEngine server certificate, S/MIME signed
// attributes re-tagged as a SET): definite lengths only, what DER requires.

import { DerError, TAG_OID } from './reader.js';

/** DER length octets */
function encodeLength(length: number): Buffer {
  if (length < 0x80) return Buffer.from([length]);
  const bytes: number[] = [];
  for (let l = length; l > 0; l = Math.floor(l / 256)) bytes.unshift(l & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

/** one TLV: tag, length, then the contents in order */
export function encodeTlv(tag: number, ...contents: readonly Uint8Array[]): Buffer {
  const length = contents.reduce((sum, part) => sum + part.length, 0);
  return Buffer.concat([Buffer.from([tag]), encodeLength(length), ...contents]);
}

/** OBJECT IDENTIFIER from its dotted form */
export function encodeOid(dotted: string): Buffer {
  const arcs = dotted.split('.').map((arc) => BigInt(arc));
  if (arcs.length < 2 || arcs[0]! > 2n) throw new DerError(`not an object identifier: ${dotted}`);
  const bytes: number[] = [];
  for (const arc of [arcs[0]! * 40n + arcs[1]!, ...arcs.slice(2)]) {
    const group: number[] = [Number(arc & 0x7fn)];
    for (let rest = arc >> 7n; rest > 0n; rest >>= 7n) group.unshift(Number(rest & 0x7fn) | 0x80);
    bytes.push(...group);
  }
  return encodeTlv(TAG_OID, Buffer.from(bytes));
}

/** Time as RFC 5280 §4.1.2.5 wants it: UTCTime through 2049, GeneralizedTime from 2050 */
export function encodeTime(date: Date): Buffer {
  const iso = date.toISOString(); // YYYY-MM-DDTHH:MM:SS.sssZ
  const digits = iso.slice(0, 19).replace(/[-T:]/g, '') + 'Z';
  const year = date.getUTCFullYear();
  return year >= 1950 && year < 2050 ? encodeTlv(0x17, Buffer.from(digits.slice(2), 'latin1')) : encodeTlv(0x18, Buffer.from(digits, 'latin1'));
}
