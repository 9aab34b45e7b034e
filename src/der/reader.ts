// A minimal BER/DER reader, shared by the S/MIME verification (reports) and the certificate facts
// the nodes registry needs. asn1js 4 + pkijs take ~1.8 ms per signature here (asn1js alone ~0.35 ms
// for 1 KB), more than the whole per-report budget; walking the TLVs directly takes microseconds.

import { RelayError } from '../errors.js';

export const TAG_INTEGER = 0x02;
export const TAG_OCTET_STRING = 0x04;
export const TAG_OID = 0x06;
export const TAG_SEQUENCE = 0x30;
export const TAG_SET = 0x31;
export const TAG_CONTEXT_0 = 0xa0; // [0] constructed
export const TAG_CONTEXT_0_PRIMITIVE = 0x80;

const MAX_DEPTH = 32;

export interface Tlv {
  /** identifier octet (class + constructed bit + tag number < 31) */
  readonly tag: number;
  readonly start: number;
  readonly contentStart: number;
  readonly contentEnd: number;
  /** end of the whole TLV (after the end-of-contents octets for indefinite lengths) */
  readonly end: number;
}

export class DerError extends RelayError {
  constructor(message: string) {
    super('RELAY_ERR_DER', message);
    this.name = 'DerError';
  }
}

export function readTlv(buf: Uint8Array, pos: number, limit: number, depth = 0): Tlv {
  if (depth > MAX_DEPTH) throw new DerError('nesting too deep');
  if (pos + 2 > limit) throw new DerError(`truncated at offset ${pos}`);
  const tag = buf[pos]!;
  if ((tag & 0x1f) === 0x1f) throw new DerError(`high tag number at offset ${pos}`);
  let at = pos + 1;
  const first = buf[at++]!;
  if (first === 0x80) {
    // indefinite length (BER): constructed only, children up to the end-of-contents octets 00 00
    if ((tag & 0x20) === 0) throw new DerError(`indefinite length on a primitive at offset ${pos}`);
    const contentStart = at;
    while (true) {
      if (at + 2 > limit) throw new DerError('missing end-of-contents');
      if (buf[at] === 0 && buf[at + 1] === 0) return { tag, start: pos, contentStart, contentEnd: at, end: at + 2 };
      at = readTlv(buf, at, limit, depth + 1).end;
    }
  }
  let length = first;
  if (first & 0x80) {
    const count = first & 0x7f;
    if (count > 4 || at + count > limit) throw new DerError(`bad length at offset ${pos}`);
    length = 0;
    for (let i = 0; i < count; i++) length = length * 256 + buf[at++]!;
  }
  if (at + length > limit) throw new DerError(`length beyond the end at offset ${pos}`);
  return { tag, start: pos, contentStart: at, contentEnd: at + length, end: at + length };
}

export function childrenOf(buf: Uint8Array, parent: Tlv): Tlv[] {
  const result: Tlv[] = [];
  let at = parent.contentStart;
  while (at < parent.contentEnd) {
    const child = readTlv(buf, at, parent.contentEnd);
    result.push(child);
    at = child.end;
  }
  return result;
}

export function expectTag(tlv: Tlv | undefined, tag: number, what: string): Tlv {
  if (tlv === undefined || tlv.tag !== tag) {
    throw new DerError(`${what}: expected tag 0x${tag.toString(16)}, found ${tlv === undefined ? 'nothing' : '0x' + tlv.tag.toString(16)}`);
  }
  return tlv;
}

export function oidOf(buf: Uint8Array, tlv: Tlv): string {
  const arcs: number[] = [];
  let value = 0;
  for (let i = tlv.contentStart; i < tlv.contentEnd; i++) {
    const byte = buf[i]!;
    value = value * 128 + (byte & 0x7f);
    if ((byte & 0x80) === 0) {
      if (arcs.length === 0) {
        const first = value < 80 ? Math.floor(value / 40) : 2;
        arcs.push(first, value - first * 40);
      } else {
        arcs.push(value);
      }
      value = 0;
    }
  }
  return arcs.join('.');
}

/** content octets of a definite-length TLV (a zero-copy view) */
export function contentOf(buf: Buffer, tlv: Tlv): Buffer {
  return buf.subarray(tlv.contentStart, tlv.contentEnd);
}

/** INTEGER magnitude without leading zero octets (serial numbers are positive) */
export function integerMagnitude(buf: Buffer, tlv: Tlv): Buffer {
  let start = tlv.contentStart;
  while (start < tlv.contentEnd - 1 && buf[start] === 0) start++;
  return buf.subarray(start, tlv.contentEnd);
}
