// Shared-files metadata (spec-relayd.md §4.7): the signed header block of an upload, its parsing rules,
// relayd's byte-exact stored form, file-id validation and TTL parsing.

import { createPublicKey, type KeyObject } from 'node:crypto';
import { parseDuration } from '../config/index.js';
import { RelayError } from '../errors.js';

export type HashType = 'sha256' | 'sha512';

const HASH_HEX_LENGTH: Record<HashType, number> = { sha256: 64, sha512: 128 };

export interface ShareMetadata {
  readonly algorithm: HashType;
  /** hex RSA signature, as received */
  readonly digest: string;
  /** lowercase hex hash of the content (not checked against it, as relayd) */
  readonly hashValue: string;
  /** PKCS#1 RSAPublicKey base64, as received */
  readonly shortPubkey: string;
  readonly publicKey: KeyObject;
  readonly hostname: string;
  readonly keyDate: string;
  readonly keyId: string;
  readonly expires: bigint | undefined;
}

const ID = /^[A-Za-z0-9\-_.]+$/;

/** a target, source or file id usable as a path segment (relayd's SharedFile::new) */
export function isValidShareId(id: string): boolean {
  return ID.test(id) && id !== '.' && id !== '..';
}

/** Rust `Path::extension() == "metadata"` case-insensitively: a dot after the first character */
export function hasMetadataExtension(fileId: string): boolean {
  const dot = fileId.lastIndexOf('.');
  return dot > 0 && fileId.slice(dot + 1).toLowerCase() === 'metadata';
}

function invalid(message: string): RelayError {
  return new RelayError('RELAY_ERR_BAD_REQUEST', message);
}

/**
 * Splits an upload into its header (LF-terminated lines up to the first line that is exactly `\n`, or EOF)
 * and the content after that line. A `\r\n` line does not end the header.
 */
export function splitUpload(body: Buffer): { header: Buffer; content: Buffer } {
  let position = 0;
  while (position < body.length) {
    const newline = body.indexOf(0x0a, position);
    const lineEnd = newline < 0 ? body.length : newline + 1;
    if (lineEnd - position <= 1) {
      return { header: body.subarray(0, position), content: body.subarray(lineEnd) };
    }
    position = lineEnd;
  }
  return { header: body, content: body.subarray(body.length) };
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** parses a PKCS#1 public key the way relayd does: wrapped as an `RSA PUBLIC KEY` PEM block */
export function parseShortPubkey(shortPubkey: string): KeyObject {
  try {
    return createPublicKey(`-----BEGIN RSA PUBLIC KEY-----\n${shortPubkey}\n-----END RSA PUBLIC KEY-----\n`);
  } catch (error) {
    throw new RelayError('RELAY_ERR_BAD_REQUEST', `invalid short_pubkey: ${error instanceof Error ? error.message : String(error)}`);
  }
}

/** relayd's Metadata::from_str; throws RelayError RELAY_ERR_BAD_REQUEST (answered 500 by the routes, as relayd) */
export function parseMetadata(raw: Buffer | string): ShareMetadata {
  let text: string;
  try {
    text = typeof raw === 'string' ? raw : utf8.decode(raw);
  } catch {
    throw invalid('metadata is not valid UTF-8');
  }
  const fields = new Map<string, string>();
  const lines = text.split('\n');
  if (lines.at(-1) === '') lines.pop();
  for (const rawLine of lines) {
    const line = rawLine.endsWith('\r') ? rawLine.slice(0, -1) : rawLine;
    const equals = line.indexOf('=');
    if (equals < 0) continue;
    const key = line.slice(0, equals);
    if (fields.has(key)) throw invalid(`duplicate metadata key: ${line}`);
    fields.set(key, line.slice(equals + 1));
  }
  const required = (key: string): string => {
    const value = fields.get(key);
    if (value === undefined) throw invalid(`missing metadata key: ${key}`);
    return value;
  };
  const header = required('header');
  if (header !== 'rudder-signature-v1') throw invalid(`invalid metadata header: ${header} (expected rudder-signature-v1)`);
  const algorithm = required('algorithm');
  if (algorithm !== 'sha256' && algorithm !== 'sha512') {
    throw invalid(`invalid hash type provided ${algorithm} (available hash types: sha256, sha512)`);
  }
  const hashValue = required('hash_value');
  if (hashValue.length !== HASH_HEX_LENGTH[algorithm] || !/^[0-9a-fA-F]*$/.test(hashValue)) {
    throw invalid(`Invalid ${algorithm} hash: ${hashValue}`);
  }
  const digest = required('digest');
  if (digest.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(digest)) throw invalid(`invalid metadata digest: ${digest}`);
  const shortPubkey = required('short_pubkey');
  const publicKey = parseShortPubkey(shortPubkey);
  const hostname = required('hostname');
  const keyDate = required('keydate');
  const keyId = required('keyid');
  let expires: bigint | undefined;
  const expiresText = fields.get('expires');
  if (expiresText !== undefined) {
    if (!/^[+-]?\d+$/.test(expiresText)) throw invalid(`invalid metadata expires: ${expiresText}`);
    expires = BigInt(expiresText);
    if (expires > 2n ** 63n - 1n || expires < -(2n ** 63n)) throw invalid(`invalid metadata expires: ${expiresText}`);
  }
  return {
    algorithm,
    digest,
    hashValue: hashValue.toLowerCase(),
    shortPubkey,
    publicKey,
    hostname,
    keyDate,
    keyId,
    expires,
  };
}

/** relayd's stored form: fixed order, every line LF-terminated, `expires` always the server's value */
export function serializeMetadata(metadata: ShareMetadata, expires: bigint): string {
  return [
    'header=rudder-signature-v1',
    `algorithm=${metadata.algorithm}`,
    `digest=${metadata.digest}`,
    `hash_value=${metadata.hashValue}`,
    `short_pubkey=${metadata.shortPubkey}`,
    `hostname=${metadata.hostname}`,
    `keydate=${metadata.keyDate}`,
    `keyid=${metadata.keyId}`,
    `expires=${expires}`,
    '',
  ].join('\n');
}

/** chrono::Duration's limit: i64 milliseconds */
const MAX_TTL_MS = 2n ** 63n - 1n;

/**
 * `ttl` query value → milliseconds: all digits = seconds, otherwise relayd's duration syntax (§2.2).
 * undefined when invalid or beyond a signed 64-bit millisecond duration.
 */
export function parseTtlMs(ttl: string): bigint | undefined {
  if (/^\d+$/.test(ttl)) {
    const ms = BigInt(ttl) * 1000n;
    return ms <= MAX_TTL_MS ? ms : undefined;
  }
  // parseDuration also takes a bare number as seconds; here a string without unit is invalid
  const ms = parseDuration(ttl);
  return ms === undefined ? undefined : BigInt(ms);
}

/** unix seconds of now + ttl, undefined when it would not be a safe integer (relayd would panic) */
export function expiresAt(nowMs: number, ttlMs: bigint): bigint | undefined {
  const expires = (BigInt(nowMs) + ttlMs) / 1000n;
  return expires <= BigInt(Number.MAX_SAFE_INTEGER) ? expires : undefined;
}
