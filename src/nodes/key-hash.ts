// Hash strings of nodeslist.json `key-hash` (spec-relayd.md §3.2): `<type>//<base64>` or `<type>:<hex>`.

import { hash } from 'node:crypto';
import type { KeyHash } from './index.js';

const BYTE_LENGTH: Record<KeyHash['type'], number> = { sha256: 32, sha512: 64 };
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;
const HEX = /^[0-9a-fA-F]+$/;

/** undefined for anything that is not a well-formed sha256/sha512 hash of the right length */
export function parseKeyHash(s: string): KeyHash | undefined {
  let type: string;
  let bytes: Buffer;
  const slashes = s.indexOf('//');
  if (slashes >= 0) {
    type = s.slice(0, slashes);
    const base64 = s.slice(slashes + 2);
    // padding required: only canonical base64 round-trips
    if (base64.length % 4 !== 0 || !BASE64.test(base64)) return undefined;
    bytes = Buffer.from(base64, 'base64');
    if (bytes.toString('base64') !== base64) return undefined;
  } else {
    const colon = s.indexOf(':');
    if (colon < 0) return undefined;
    type = s.slice(0, colon);
    const hex = s.slice(colon + 1);
    if (hex.length % 2 !== 0 || !HEX.test(hex)) return undefined;
    bytes = Buffer.from(hex, 'hex');
  }
  if (type !== 'sha256' && type !== 'sha512') return undefined;
  if (bytes.length !== BYTE_LENGTH[type]) return undefined;
  return { type, bytes };
}

/** a key-hash whose bytes are a part of a buffer shared by a whole nodes list: `bytes` is a view made when asked for */
export class PackedKeyHash implements KeyHash {
  constructor(
    readonly type: KeyHash['type'],
    private readonly packed: Buffer,
    private readonly at: number,
  ) {}
  get bytes(): Buffer {
    return this.packed.subarray(this.at, this.at + BYTE_LENGTH[this.type]);
  }
}

/** display form used in logs: `sha256//<base64>` */
export function formatKeyHash(hash: KeyHash): string {
  return `${hash.type}//${hash.bytes.toString('base64')}`;
}

/** index key: `<type>:` + the bytes as latin1 (one character a byte: half the memory of hex), one flat string */
export function keyHashIndexKey(hash: KeyHash): string {
  return keyHashIndexKeyOf(hash.type, hash.bytes);
}

export function keyHashIndexKeyOf(type: KeyHash['type'], bytes: Buffer): string {
  return Buffer.concat([KEY_PREFIX[type], bytes]).toString('latin1');
}

const KEY_PREFIX: Record<KeyHash['type'], Buffer> = { sha256: Buffer.from('sha256:'), sha512: Buffer.from('sha512:') };

/** one-shot crypto.hash: no Hash object per call (this runs on every upload's certificate check) */
export function hashSpki(type: KeyHash['type'], spki: Buffer): Buffer {
  return hash(type, spki, 'buffer') as unknown as Buffer;
}
