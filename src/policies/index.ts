// Face of the policies module: read-only file serving with Apache's caching semantics, used for
// /policies/<uuid>/…, /common/…, and the shared folder (spec-https-front-cfserverd-sync.md §1.2–1.3,
// spec-relayd.md §4.8). Access control is the caller's; this module only serves safely below a root.

import type { FileHandle } from 'node:fs/promises';
import type { FastifyReply, FastifyRequest } from 'fastify';

export interface ServeOutcome {
  /** HTTP status sent */
  readonly status: number;
  /** body bytes sent (0 for HEAD and 304) */
  readonly bytes: number;
}

export interface ServeOptions {
  /** answer every refusal (400 path, 403 outside root, 500 read error) as 404 `NOT FOUND`, as relayd's GET does */
  readonly refusalsAsNotFound?: boolean;
}

export interface StaticFiles {
  /**
   * Serves `relativePath` (percent-decoded segments, already split off the URL prefix) from `root`,
   * GET or HEAD: strong quoted ETag, If-None-Match (with `""` as a non-match, and the ETag repeated
   * on 304), Last-Modified, If-Modified-Since, Content-Length, streaming. Refuses ./../empty
   * segments (400) and anything that resolves outside `root` through symlinks (403); absent → 404.
   * `encodedPath` is still percent-encoded and has no query string (see `wildcardPath`).
   */
  serve(
    root: string,
    encodedPath: string,
    request: FastifyRequest,
    reply: FastifyReply,
    options?: ServeOptions,
  ): Promise<ServeOutcome>;
}

/** why a path was not opened; `not-a-file` is a directory, FIFO, device… */
export type RefusalCause = 'path' | 'outside' | 'permission' | 'absent' | 'not-a-file' | 'error';

/** a regular file opened below a root (the caller closes `fd`, see closeFile), or why not */
export type OpenedFile =
  | {
      readonly kind: 'file';
      readonly fd: number;
      readonly size: bigint;
      readonly mtimeNs: bigint;
      /** the requested file name (last segment), for the content type */
      readonly name: string;
    }
  | {
      readonly kind: 'refused';
      readonly cause: RefusalCause;
      /** the HTTP status for the cause: path 400, outside/permission 403, absent/not-a-file 404, error 500 */
      readonly status: number;
      /** message or errno code, for logs */
      readonly reason: string;
    };

export { createStaticFiles, decodeSafePath, wildcardPath, openBelow, etagOf, contentTypeOf, closeFile, fileStream } from './static-files.js';
