// The CFEngine protocol (version 2/3, "TLS") codec: transaction framing, the identification lines and the
// request/reply formats of cf-serverd 3.21 (spec-cfengine-protocol.md §6–7). Shared by the file server and
// the remote-run client. Pure functions on Buffers; paths are "binary" strings (latin1, one char per byte)
// so that non-UTF-8 file names go through unchanged.

import { RelayError } from '../errors.js';

/** 8-byte header: "<status> <len>" NUL-padded (snprintf(hdr, 8, "%c %d")) */
export const HEADER_SIZE = 8;
/** CF_BUFSIZE 4096 − header: the largest legal payload */
export const MAX_PAYLOAD = 4088;
/** cf-serverd flushes an OPENDIR packet when the next name would reach CF_BUFSIZE − CF_MAXLINKSIZE */
export const OPENDIR_PACKET_LIMIT = 4096 - 256;
/** names are copied with strlcpy(…, CF_MAXLINKSIZE): at most 255 bytes */
export const MAX_NAME_BYTES = 255;
/** GET data goes out in blocks of this size, whatever bufsize the client asked for */
export const GET_BLOCK_SIZE = 2048;
/** MD5 request: digest starts CF_SMALL_OFFSET bytes after the path's end; 16 bytes (community build) */
export const MD5_DIGEST_OFFSET = 2;
export const MD5_DIGEST_SIZE = 16;
/** the highest protocol version 3.21 speaks; newer agents downgrade to it (§10) */
export const SERVER_PROTOCOL_VERSION = 3;
export const SERVER_VERSION = '3.21.0';

export const CFD_TERMINATOR = '---cfXen/gine/cfXen/gine---';
export const CFD_TRUE = 'CFD_TRUE';
export const CFD_FALSE = 'CFD_FALSE';
/** access refusal, missing file, bad path: the connection stays open */
export const FAILED = 'BAD: Unspecified server refusal (see verbose server output)';
/** protocol error: sent, then the connection is closed */
export const REQUEST_DENIED = 'BAD: Request denied';
/** "BAD: File changed " + "while copying" (split in the C source so it is never matched by accident) */
export const FILE_CHANGED = 'BAD: File changed while copying';

export type FrameStatus = 't' | 'm';

export interface Frame {
  readonly status: FrameStatus;
  readonly payload: Buffer;
}

export class CodecError extends RelayError {
  constructor(message: string) {
    super('RELAY_ERR_CFENGINE_CODEC', message);
    this.name = 'CodecError';
  }
}

/** One transaction as one Buffer: write it with a single socket.write so it fits one TLS record. */
export function encodeFrame(payload: Buffer | string, status: FrameStatus = 't'): Buffer {
  const body = typeof payload === 'string' ? Buffer.from(payload, 'latin1') : payload;
  if (body.length < 1 || body.length > MAX_PAYLOAD) {
    throw new CodecError(`transaction payload must be 1..${MAX_PAYLOAD} bytes, got ${body.length}`);
  }
  const frame = Buffer.alloc(HEADER_SIZE + body.length);
  frame.write(`${status} ${body.length}`, 0, 'latin1');
  body.copy(frame, HEADER_SIZE);
  return frame;
}

/**
 * Parses an 8-byte header as the C receiver does (sscanf "%c %d"): any whitespace between the status and
 * the decimal length, anything after the digits. Throws on a status other than t/m or a length out of
 * 1..MAX_PAYLOAD (the C receiver then drops the connection).
 */
export function decodeHeader(header: Buffer): { status: FrameStatus; length: number } {
  if (header.length < HEADER_SIZE) throw new CodecError('short transaction header');
  const text = header.subarray(0, HEADER_SIZE).toString('latin1');
  const match = /^(.)[ \t\n\r\f\v]*([+-]?\d+)/s.exec(text);
  if (match === null) throw new CodecError(`bogus transaction header ${JSON.stringify(text)}`);
  const status = match[1];
  if (status !== 't' && status !== 'm') throw new CodecError(`bogus transaction header status ${JSON.stringify(status)}`);
  const length = Number(match[2]);
  if (!Number.isSafeInteger(length) || length < 1 || length > MAX_PAYLOAD) {
    throw new CodecError(`transaction length ${match[2] ?? ''} outside 1..${MAX_PAYLOAD}`);
  }
  return { status, length };
}

/**
 * Incremental transaction reader with a bounded buffer: push() what the socket gives, next() frames out.
 * More than `maxBuffered` bytes waiting is an error (a peer may be one request ahead, never more).
 */
export class FrameDecoder {
  private buffer: Buffer = Buffer.alloc(0);

  constructor(private readonly maxBuffered = 4 * (HEADER_SIZE + MAX_PAYLOAD)) {}

  push(chunk: Buffer): void {
    if (this.buffer.length + chunk.length > this.maxBuffered) {
      throw new CodecError(`more than ${this.maxBuffered} bytes of unread input`);
    }
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
  }

  /** the next whole transaction, or undefined until more bytes arrive; throws on a bad header */
  next(): Frame | undefined {
    if (this.buffer.length < HEADER_SIZE) return undefined;
    const { status, length } = decodeHeader(this.buffer);
    if (this.buffer.length < HEADER_SIZE + length) return undefined;
    const payload = this.buffer.subarray(HEADER_SIZE, HEADER_SIZE + length);
    this.buffer = this.buffer.subarray(HEADER_SIZE + length);
    return { status, payload };
  }

  get buffered(): number {
    return this.buffer.length;
  }

  /** bytes not consumed yet (e.g. what followed the identification lines) */
  take(): Buffer {
    const rest = this.buffer;
    this.buffer = Buffer.alloc(0);
    return rest;
  }
}

// ---- identification (§6.1): plain lines inside TLS, before any transaction ----

export function serverHello(version = SERVER_PROTOCOL_VERSION): string {
  return `CFE_v${version} cf-serverd ${SERVER_VERSION}\n`;
}

/** "CFE_v<N> …" → N, undefined when unparseable (sscanf "CFE_v%d") */
export function parseVersionLine(line: string): number | undefined {
  const match = /^CFE_v[ \t]*([+-]?\d+)/.exec(line);
  if (match === null) return undefined;
  const version = Number(match[1]);
  return Number.isSafeInteger(version) && version > 0 ? version : undefined;
}

export interface IdentityLine {
  /** '' when the line carries no USERNAME (cf-serverd then carries on with an empty name) */
  readonly username: string;
}

/**
 * "IDENTITY USERNAME=root [KEY=VALUE…]". Unknown keys are ignored; a USERNAME containing '/' or '\' is
 * invalid (undefined → the server drops the connection).
 */
export function parseIdentityLine(line: string): IdentityLine | undefined {
  let username = '';
  const first = /^IDENTITY ([^=]+)=(\S+)/.exec(line);
  if (first === null) return { username };
  const pairs = [[first[1] ?? '', first[2] ?? '']];
  let rest = line.slice(first[0].length);
  for (;;) {
    const more = /^\s*([^=]+)=(\S+)/.exec(rest);
    if (more === null) break;
    pairs.push([more[1] ?? '', more[2] ?? '']);
    rest = rest.slice(more[0].length);
  }
  for (const [key, value] of pairs) {
    if (key !== 'USERNAME') continue;
    if (/[/\\]/.test(value ?? '')) return undefined;
    username = value ?? '';
  }
  return { username };
}

/** what the welcome line always begins with, sent ahead of it (src/cfengine/connection.ts, identify) */
export const WELCOME_START = 'OK';

export function welcomeLine(username: string): string {
  return username === '' ? 'OK WELCOME\n' : `OK WELCOME USERNAME=${username}\n`;
}

// ---- requests (§7) ----

export type Request =
  | { readonly command: 'STAT'; readonly clientTime: number; readonly path: string }
  | { readonly command: 'OPENDIR'; readonly path: string }
  | { readonly command: 'GET'; readonly bufferSize: number; readonly path: string }
  | { readonly command: 'MD5'; readonly path: string; readonly digest: Buffer }
  | { readonly command: 'VERSION' }
  | { readonly command: 'EXEC'; readonly args: string }
  /** known to cf-serverd, not served here (Enterprise/hub): answered REQUEST_DENIED, then closed */
  | { readonly command: 'VAR' | 'CONTEXT' | 'QUERY' | 'SCALLBACK' | 'COOKIE'; readonly text: string }
  /** an empty (NUL-first) transaction: cf-serverd ignores it without a reply */
  | { readonly command: 'EMPTY' }
  /** unknown, or a known word whose arguments do not parse: protocol error */
  | { readonly command: 'BAD'; readonly word: string };

const COMMAND_WORDS = ['EXEC', 'GET', 'OPENDIR', 'SYNCH', 'MD5', 'VERSION', 'VAR', 'CONTEXT', 'QUERY', 'SCALLBACK', 'COOKIE'] as const;

/** the request text as the C server sees it: up to the first NUL */
function requestText(payload: Buffer): string {
  const nul = payload.indexOf(0);
  return payload.subarray(0, nul === -1 ? payload.length : nul).toString('latin1');
}

function commandWord(text: string): (typeof COMMAND_WORDS)[number] | undefined {
  for (const word of COMMAND_WORDS) {
    if (text.startsWith(word) && (text.length === word.length || text[word.length] === ' ')) return word;
  }
  return undefined;
}

/** sscanf "%[^\n]" after whitespace skipping: the rest of the line, at least one char */
function lineArgument(text: string): string | undefined {
  const match = /^\s*([^\n]+)/.exec(text);
  return match?.[1];
}

export function parseRequest(payload: Buffer): Request {
  const text = requestText(payload);
  if (text === '') return { command: 'EMPTY' };
  const word = commandWord(text);
  // the unknown word for the counters, split out only when there is one (a regex split per request showed)
  if (word === undefined) return { command: 'BAD', word: (text.split(/[\s]/, 1)[0] ?? '').slice(0, 32) };
  const args = text.slice(word.length);
  switch (word) {
    case 'SYNCH': {
      const match = /^\s*([+-]?\d+)\s*STAT\s*([^\n]+)/.exec(args);
      if (match === null) return { command: 'BAD', word };
      return { command: 'STAT', clientTime: Number(match[1]), path: match[2] ?? '' };
    }
    case 'GET': {
      const match = /^\s*([+-]?\d+)\s*([^\n]+)/.exec(args);
      const bufferSize = Number(match?.[1]);
      if (match === null || !(bufferSize > 0 && bufferSize <= 4096)) return { command: 'BAD', word };
      return { command: 'GET', bufferSize, path: match[2] ?? '' };
    }
    case 'OPENDIR': {
      const path = lineArgument(args);
      return path === undefined ? { command: 'BAD', word } : { command: 'OPENDIR', path };
    }
    case 'MD5': {
      const path = lineArgument(args);
      if (path === undefined) return { command: 'BAD', word };
      // binary digest after the path's NUL + one byte; missing bytes read as zeros, like the C buffer
      const start = Buffer.byteLength(text, 'latin1') + MD5_DIGEST_OFFSET;
      const digest = Buffer.alloc(MD5_DIGEST_SIZE);
      payload.copy(digest, 0, Math.min(start, payload.length), Math.min(start + MD5_DIGEST_SIZE, payload.length));
      return { command: 'MD5', path, digest };
    }
    case 'VERSION':
      return { command: 'VERSION' };
    case 'EXEC':
      return { command: 'EXEC', args: args.trimStart() };
    default:
      return { command: word, text };
  }
}

/** client side: "SYNCH <t> STAT <path>" */
export function encodeStatRequest(path: string, now = Date.now()): Buffer {
  return encodeFrame(`SYNCH ${Math.floor(now / 1000)} STAT ${path}`);
}

export function encodeOpendirRequest(path: string): Buffer {
  return encodeFrame(`OPENDIR ${path}`);
}

export function encodeGetRequest(path: string, bufferSize = GET_BLOCK_SIZE): Buffer {
  return encodeFrame(`GET ${bufferSize} ${path}`);
}

/** "MD5 <path>" NUL NUL <16 digest bytes> */
export function encodeMd5Request(path: string, digest: Buffer): Buffer {
  const head = Buffer.from(`MD5 ${path}`, 'latin1');
  return encodeFrame(Buffer.concat([head, Buffer.alloc(MD5_DIGEST_OFFSET), digest.subarray(0, MD5_DIGEST_SIZE)]));
}

// ---- replies ----

/** CFD_TRUE means the files DIFFER (the polarity is inverted: "is it different?") */
export function md5Answer(same: boolean): string {
  return same ? CFD_FALSE : CFD_TRUE;
}

/** client side: only the exact text CFD_TRUE means "different"; anything else (even BAD:) reads as same */
export function md5AnswerMeansDifferent(payload: Buffer): boolean {
  return requestText(payload) === CFD_TRUE;
}

export const FileType = { regular: 0, link: 1, directory: 2, fifo: 3, block: 4, character: 5, socket: 6 } as const;

export interface StatFields {
  readonly type: number;
  /** st_mode & 07777 */
  readonly mode: number;
  /** the link's own permission bits when the path is a symlink, else 0 */
  readonly linkMode: number;
  readonly uid: bigint;
  readonly gid: bigint;
  readonly size: bigint;
  readonly atime: bigint;
  readonly mtime: bigint;
  readonly ctime: bigint;
  readonly makeHoles: boolean;
  /** printed with %d from an int: the low 32 bits, signed */
  readonly ino: bigint;
  readonly nlink: bigint;
  readonly dev: bigint;
}

/** the first STAT transaction: 13 decimal fields */
export function encodeStatLine(s: StatFields): string {
  const int32 = (v: bigint): string => BigInt.asIntN(32, v).toString();
  const uint32 = (v: bigint): string => BigInt.asUintN(32, v).toString();
  return (
    `OK: ${s.type} ${s.mode} ${s.linkMode} ${uint32(s.uid)} ${uint32(s.gid)} ${s.size} ` +
    `${s.atime} ${s.mtime} ${s.ctime} ${s.makeHoles ? 1 : 0} ${int32(s.ino)} ${int32(s.nlink)} ${s.dev}`
  );
}

export function parseStatLine(line: string): StatFields | undefined {
  const match = /^OK: (-?\d+(?: -?\d+){12})/.exec(line);
  if (match === null || match[1] === undefined) return undefined;
  const f = match[1].split(' ').map((v) => BigInt(v));
  const at = (i: number): bigint => f[i] ?? 0n;
  return {
    type: Number(at(0)),
    mode: Number(at(1)),
    linkMode: Number(at(2)),
    uid: at(3),
    gid: at(4),
    size: at(5),
    atime: at(6),
    mtime: at(7),
    ctime: at(8),
    makeHoles: at(9) !== 0n,
    ino: at(10),
    nlink: at(11),
    dev: at(12),
  };
}

/**
 * OPENDIR reply packets, as cf-serverd packs them: NUL-terminated names, an extra NUL ending each
 * packet, 'm' packets flushed before a name would reach 3840 bytes, the last 't' packet ending with
 * the terminator, NUL, NUL. Names are binary strings; include '.' and '..' yourself.
 */
export function encodeOpendirReply(names: readonly string[]): Buffer[] {
  const frames: Buffer[] = [];
  const packet = Buffer.alloc(4096);
  let offset = 0;
  for (const name of names) {
    const bytes = Buffer.from(name, 'latin1').subarray(0, MAX_NAME_BYTES);
    if (bytes.length + 1 + offset >= OPENDIR_PACKET_LIMIT) {
      packet[offset] = 0;
      frames.push(encodeFrame(Buffer.from(packet.subarray(0, offset + 1)), 'm'));
      offset = 0;
    }
    bytes.copy(packet, offset);
    packet[offset + bytes.length] = 0;
    offset += bytes.length + 1;
  }
  const end = Buffer.from(CFD_TERMINATOR, 'latin1');
  end.copy(packet, offset);
  offset += end.length;
  packet[offset] = 0;
  packet[offset + 1] = 0;
  frames.push(encodeFrame(Buffer.from(packet.subarray(0, offset + 2)), 't'));
  return frames;
}

/**
 * Client side: collect names from OPENDIR packets. Returns done=true at the terminator; a packet
 * starting with "BAD: " is a failure.
 */
export function decodeOpendirPacket(payload: Buffer, into: string[]): { done: boolean; error?: string } {
  if (payload.subarray(0, 5).toString('latin1') === 'BAD: ') return { done: true, error: requestText(payload) };
  let offset = 0;
  while (offset < payload.length) {
    const nul = payload.indexOf(0, offset);
    const end = nul === -1 ? payload.length : nul;
    if (end === offset) return { done: false }; // double NUL: end of this packet
    const name = payload.subarray(offset, end).toString('latin1');
    if (name === CFD_TERMINATOR) return { done: true };
    into.push(name);
    offset = end + 1;
  }
  return { done: false };
}
