// Read-only file serving below a root with Apache's caching semantics (spec-https-front-cfserverd-sync.md
// §1.2): strong ETag `"<size-hex>-<mtime-µs-hex>"` (FileETag MTime Size), Last-Modified, conditional
// requests, a single Range, streaming from the one fd that was stat'ed. Path safety lives here only.

import { constants as fsConstants } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { closeQuietly, fileSystem, SYNC_READ_MAX_BYTES } from '../fs-direct/index.js';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { RelayError } from '../errors.js';
import type { OpenedFile, RefusalCause, ServeOptions, ServeOutcome, StaticFiles } from './index.js';

const CONTROL = /[\u0000-\u001f\u007f]/;

/**
 * Percent-decodes each `/`-separated segment of `encoded` (no query string) and refuses what could leave
 * the directory or confuse a file system: empty, `.` and `..` segments (encoded or not), `/` or `\` inside
 * a segment, control characters, invalid percent-encoding or UTF-8. Throws RelayError RELAY_ERR_BAD_REQUEST.
 */
export function decodeSafePath(encoded: string): string[] {
  const segments = encoded.split('/');
  return segments.map((raw) => {
    let segment: string;
    try {
      segment = decodeURIComponent(raw);
    } catch {
      throw new RelayError('RELAY_ERR_BAD_REQUEST', `invalid percent-encoding in path segment "${raw}"`);
    }
    if (segment === '' || segment === '.' || segment === '..') {
      throw new RelayError('RELAY_ERR_BAD_REQUEST', `path segment "${raw}" refused: expected a file or directory name`);
    }
    if (segment.includes('/') || segment.includes('\\') || CONTROL.test(segment)) {
      throw new RelayError('RELAY_ERR_BAD_REQUEST', `path segment "${raw}" refused: slash, backslash or control character`);
    }
    return segment;
  });
}

/**
 * The still percent-encoded part of the URL matched by the `*` of the current route (fastify hands the
 * wildcard already decoded, which would hide `%2F` and `%2e%2e`).
 */
export function wildcardPath(request: FastifyRequest): string {
  const pattern = request.routeOptions.url ?? '';
  const star = pattern.lastIndexOf('*');
  const slashes = (star < 0 ? pattern : pattern.slice(0, star)).split('/').length - 1;
  const query = request.url.indexOf('?');
  const urlPath = query < 0 ? request.url : request.url.slice(0, query);
  let index = 0;
  for (let i = 0; i < slashes; i += 1) {
    const next = urlPath.indexOf('/', index);
    if (next < 0) return '';
    index = next + 1;
  }
  return urlPath.slice(index);
}

/** longest suffix first; Apache's mime.types values for what relays serve */
const CONTENT_TYPES: ReadonlyArray<readonly [string, string]> = [
  ['.tar.bz2', 'application/x-bzip2'],
  ['.tar.gz', 'application/gzip'],
  ['.bz2', 'application/x-bzip2'],
  ['.gz', 'application/gzip'],
  ['.tar', 'application/x-tar'],
  ['.zip', 'application/zip'],
  ['.json', 'application/json'],
  ['.txt', 'text/plain'],
  ['.html', 'text/html'],
  ['.xml', 'application/xml'],
  ['.pem', 'application/x-pem-file'],
];

export function contentTypeOf(fileName: string): string {
  const lower = fileName.toLowerCase();
  for (const [suffix, type] of CONTENT_TYPES) if (lower.endsWith(suffix)) return type;
  return 'application/octet-stream';
}

/** Apache FileETag MTime Size: `"<size-hex>-<mtime-µs-hex>"`, lowercase */
export function etagOf(size: bigint, mtimeNs: bigint): string {
  return `"${size.toString(16)}-${(mtimeNs / 1000n).toString(16)}"`;
}

/** opaque tags of an If-None-Match / If-Match value; `*` as the single element `*` */
function entityTags(header: string): { tag: string; weak: boolean }[] | '*' {
  if (header.trim() === '*') return '*';
  const tags: { tag: string; weak: boolean }[] = [];
  const re = /\s*(W\/)?("[^"]*")\s*(?:,|$)/gy;
  let match: RegExpExecArray | null;
  while (re.lastIndex < header.length && (match = re.exec(header)) !== null) {
    tags.push({ tag: match[2] ?? '', weak: match[1] !== undefined });
  }
  return tags;
}

function headerValue(request: FastifyRequest, name: string): string | undefined {
  const value = request.headers[name];
  return typeof value === 'string' ? value : undefined;
}

function parseHttpDate(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const ms = Date.parse(value);
  return Number.isNaN(ms) ? undefined : Math.floor(ms / 1000);
}

type ByteRange = { start: number; end: number } | 'unsatisfiable' | undefined;

/** a single `bytes=` range; anything else (several ranges, bad syntax) is ignored and the whole file served */
function parseRange(header: string | undefined, size: number): ByteRange {
  if (header === undefined) return undefined;
  const match = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/.exec(header);
  if (match === null) return undefined;
  const [, first = '', last = ''] = match;
  if (first === '' && last === '') return undefined;
  if (first === '') {
    const suffix = Number(last);
    if (suffix === 0 || size === 0) return 'unsatisfiable';
    return { start: Math.max(0, size - suffix), end: size - 1 };
  }
  const start = Number(first);
  const end = last === '' ? size - 1 : Math.min(Number(last), size - 1);
  if (last !== '' && Number(last) < start) return undefined; // invalid: ignore
  if (start >= size) return 'unsatisfiable';
  return { start, end };
}

const REFUSAL_BODY: Record<number, string> = {
  400: 'BAD REQUEST',
  403: 'FORBIDDEN',
  404: 'NOT FOUND',
  500: 'INTERNAL SERVER ERROR',
};

/** the code and message of a refusal, for the access line (the body stays Apache's bare text) */
function refusalError(refusal: Extract<OpenedFile, { kind: 'refused' }>): RelayError {
  switch (refusal.cause) {
    case 'path':
      return new RelayError('RELAY_ERR_BAD_REQUEST', refusal.reason);
    case 'outside':
      return new RelayError('RELAY_ERR_FILE_FORBIDDEN', refusal.reason);
    case 'permission':
      return new RelayError('RELAY_ERR_FILE_FORBIDDEN', `the file is not readable by the relay (${refusal.reason})`);
    case 'absent':
      return new RelayError('RELAY_ERR_NOT_FOUND', `no such file (${refusal.reason})`);
    case 'not-a-file':
      return new RelayError('RELAY_ERR_NOT_FOUND', `not a regular file (${refusal.reason})`);
    case 'error':
      return new RelayError('RELAY_ERR_INTERNAL', `the file cannot be read (${refusal.reason})`);
  }
}

function refuse(request: FastifyRequest, reply: FastifyReply, refusal: Extract<OpenedFile, { kind: 'refused' }>, options: ServeOptions | undefined): ServeOutcome {
  // read by the front door's access line (FastifyRequest.relayError, declared in src/http): the code and the
  // real cause (an errno behind a 500, or behind the 404 that refusalsAsNotFound answers) are logged there
  request.relayError = refusalError(refusal);
  const sent = options?.refusalsAsNotFound === true ? 404 : refusal.status;
  const body = REFUSAL_BODY[sent] ?? '';
  reply.code(sent).header('content-type', 'text/plain; charset=utf-8').send(body);
  return { status: sent, bytes: 0 };
}

function isBelow(real: string, realRoot: string): boolean {
  if (real === realRoot) return true;
  const base = realRoot.endsWith(path.sep) ? realRoot : realRoot + path.sep;
  return real.startsWith(base);
}

function errnoOf(error: unknown): string | undefined {
  return typeof error === 'object' && error !== null && 'code' in error && typeof error.code === 'string' ? error.code : undefined;
}

const NOT_FOUND_ERRNO = new Set(['ENOENT', 'ENOTDIR', 'ENAMETOOLONG', 'ELOOP']);
const FORBIDDEN_ERRNO = new Set(['EACCES', 'EPERM']);

const STATUS_OF: Record<RefusalCause, number> = { path: 400, outside: 403, permission: 403, absent: 404, 'not-a-file': 404, error: 500 };

function refused(cause: RefusalCause, reason: string): OpenedFile {
  return { kind: 'refused', cause, status: STATUS_OF[cause], reason };
}

function refusedByErrno(error: unknown, what: string): OpenedFile {
  const code = errnoOf(error);
  if (code !== undefined && NOT_FOUND_ERRNO.has(code)) return refused('absent', code);
  if (code !== undefined && FORBIDDEN_ERRNO.has(code)) return refused('permission', code);
  return refused('error', code ?? `${what} error`);
}

/** closes a descriptor from openBelow */
export const closeFile = closeQuietly;

/** reads per chunk: a 400 KB policy archive goes out in two reads and two socket writes */
const CHUNK_BYTES = SYNC_READ_MAX_BYTES;

/**
 * Bytes `start`..`end` (inclusive) of `fd`, read as the consumer drains (never the whole file in memory),
 * with the bounded direct reads of src/fs-direct; closes `fd` at the end or on destroy when `autoClose`.
 */
export function fileStream(fd: number, start: number, end: number, autoClose = true): Readable {
  let position = start;
  let closed = false;
  /** a read in flight (thread-pool mode): the descriptor is closed after it, never under it */
  let reading = false;
  let closeAfterRead = false;
  const release = (): void => {
    if (!autoClose || closed) return;
    if (reading) {
      closeAfterRead = true;
      return;
    }
    closed = true;
    closeFile(fd);
  };
  return new Readable({
    highWaterMark: CHUNK_BYTES,
    read() {
      const length = Math.min(CHUNK_BYTES, end - position + 1);
      if (length <= 0) {
        release();
        this.push(null);
        return;
      }
      const buffer = Buffer.allocUnsafe(length);
      reading = true;
      const settled = (): void => {
        reading = false;
        if (closeAfterRead) release();
      };
      // one promise either way (read now, or through the pool): a direct failure rejects it too
      new Promise<number>((resolve) => resolve(fileSystem.read(fd, buffer, 0, length, position))).then(
        (bytesRead) => {
          settled();
          if (this.destroyed) return;
          if (bytesRead === 0) {
            // the file shrank since its fstat: end early (the client sees a short body, as from Apache)
            release();
            this.destroy(new RelayError('RELAY_ERR_FILE_CHANGED', 'file shorter than its size when opened'));
            return;
          }
          position += bytesRead;
          this.push(bytesRead === length ? buffer : buffer.subarray(0, bytesRead));
        },
        (error: unknown) => {
          settled();
          this.destroy(error instanceof Error ? error : new RelayError('RELAY_ERR_INTERNAL', String(error)));
        },
      );
    },
    destroy(error, callback) {
      release();
      callback(error);
    },
  });
}

/** decodes, resolves below the real root (symlinks included), opens once and fstat's; the caller closes */
export async function openBelow(root: string, encodedPath: string): Promise<OpenedFile> {
  let segments: string[];
  try {
    segments = decodeSafePath(encodedPath);
  } catch (error) {
    return refused('path', error instanceof Error ? error.message : String(error));
  }
  let real: string;
  let realRoot: string;
  try {
    realRoot = await fileSystem.realpath(root);
    real = await fileSystem.realpath(path.join(realRoot, ...segments));
  } catch (error) {
    return refusedByErrno(error, 'resolve');
  }
  if (!isBelow(real, realRoot)) return refused('outside', 'resolves outside of the served directory');
  let fd: number;
  // O_NONBLOCK: opening a FIFO must not hang; O_NOFOLLOW: the resolved path must not turn into a symlink
  const flags = fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK;
  try {
    fd = await fileSystem.open(real, flags);
  } catch (error) {
    return refusedByErrno(error, 'open');
  }
  try {
    const big = await fileSystem.fstat(fd);
    if (!big.isFile()) {
      closeFile(fd);
      return refused('not-a-file', big.isDirectory() ? 'directory' : 'not a regular file');
    }
    return { kind: 'file', fd, size: big.size, mtimeNs: big.mtimeNs, name: segments.at(-1) ?? path.basename(real) };
  } catch (error) {
    closeFile(fd);
    return refusedByErrno(error, 'stat');
  }
}

/**
 * Sends the opened file (GET/HEAD) with Apache's caching semantics and closes the handle when done.
 * Returns once the response is handed to fastify (the body may still be streaming).
 */
export function sendFile(file: Extract<OpenedFile, { kind: 'file' }>, request: FastifyRequest, reply: FastifyReply): ServeOutcome {
  const { fd } = file;
  const size = Number(file.size);
  const etag = etagOf(file.size, file.mtimeNs);
  const mtimeSec = Number(file.mtimeNs / 1_000_000_000n);
  const lastModified = new Date(mtimeSec * 1000).toUTCString();
  const nowSec = Math.floor(Date.now() / 1000);
  const close = (): void => closeFile(fd);

  const finish = (status: number): ServeOutcome => {
    close();
    reply.code(status).header('etag', etag).header('last-modified', lastModified).send();
    return { status, bytes: 0 };
  };

  // RFC 9110 §13.2.2 order: If-Match, If-Unmodified-Since, If-None-Match, If-Modified-Since, Range
  const ifMatch = headerValue(request, 'if-match');
  if (ifMatch !== undefined) {
    const tags = entityTags(ifMatch);
    if (tags !== '*' && !tags.some((t) => !t.weak && t.tag === etag)) return finish(412);
  } else {
    const ius = parseHttpDate(headerValue(request, 'if-unmodified-since'));
    if (ius !== undefined && mtimeSec > ius) return finish(412);
  }
  const ifNoneMatch = headerValue(request, 'if-none-match');
  if (ifNoneMatch !== undefined) {
    // weak comparison; `""` (curl --etag-compare without a saved etag) never equals a real tag
    const tags = entityTags(ifNoneMatch);
    if (tags === '*' || tags.some((t) => t.tag === etag)) return finish(304);
  } else {
    const ims = parseHttpDate(headerValue(request, 'if-modified-since'));
    if (ims !== undefined && ims <= nowSec && mtimeSec <= ims) return finish(304);
  }

  reply
    .header('etag', etag)
    .header('last-modified', lastModified)
    .header('accept-ranges', 'bytes')
    .header('content-type', contentTypeOf(file.name));

  let range = parseRange(headerValue(request, 'range'), size);
  const ifRange = headerValue(request, 'if-range');
  if (range !== undefined && ifRange !== undefined) {
    const stillValid = ifRange.trim().startsWith('"') ? ifRange.trim() === etag : parseHttpDate(ifRange) === mtimeSec;
    if (!stillValid) range = undefined;
  }
  if (range === 'unsatisfiable') {
    close();
    reply.code(416).header('content-range', `bytes */${size}`).header('content-length', '0').send();
    return { status: 416, bytes: 0 };
  }
  const start = range?.start ?? 0;
  const end = range?.end ?? size - 1;
  const length = size === 0 ? 0 : end - start + 1;
  const status = range === undefined ? 200 : 206;
  reply.code(status).header('content-length', String(length));
  if (range !== undefined) reply.header('content-range', `bytes ${start}-${end}/${size}`);
  if (request.method === 'HEAD' || length === 0) {
    close();
    if (request.method === 'HEAD') reply.send();
    else reply.send(Buffer.alloc(0));
    return { status, bytes: 0 };
  }
  // the stream owns the descriptor from here, also when the client goes away
  reply.send(fileStream(fd, start, end));
  return { status, bytes: length };
}

export function createStaticFiles(): StaticFiles {
  return {
    async serve(root, encodedPath, request, reply, options) {
      const opened = await openBelow(root, encodedPath);
      if (opened.kind === 'refused') return refuse(request, reply, opened, options);
      return sendFile(opened, request, reply);
    },
  };
}
