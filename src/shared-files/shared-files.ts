// Node-to-node file sharing (spec-relayd.md §4.7, §8): HEAD/PUT `/:target/:source/:fileId` with relayd's
// checks, status codes and empty bodies; local store for my neighbors, forwarding to the next hop
// otherwise; the TTL cleanup job.

import { createHash, verify } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { FastifyPluginAsync, FastifyReply, FastifyRequest, onRequestHookHandler } from 'fastify';
import { isRelayError, messageOf } from '../errors.js';
import type { SharedFiles, SharedFilesDeps, SharedFilesForwarder, SharedFilesOptions } from './index.js';
import {
  expiresAt,
  hasMetadataExtension,
  isValidShareId,
  parseMetadata,
  parseTtlMs,
  serializeMetadata,
  splitUpload,
  type ShareMetadata,
} from './metadata.js';
import { metadataPath, removeExpired, writeShare } from './store.js';

const TEXT = 'text/plain; charset=utf-8';
/** the public path of the relay API on the next hop (relayd's `//relay-api/…` misses `/rudder`: §15.1) */
const PUBLIC_PREFIX = '/rudder/relay-api/shared-files';

type NextHop = Parameters<SharedFilesForwarder['forward']>[0];
type Destination = { readonly kind: 'local' } | { readonly kind: 'forward'; readonly hop: NextHop } | { readonly kind: 'unroutable' };

interface ShareParams {
  target: string;
  source: string;
  fileId: string;
}

function answer(reply: FastifyReply, status: number, body = ''): FastifyReply {
  return reply.code(status).header('content-type', TEXT).send(body);
}

function queryValue(request: FastifyRequest, name: string): string | undefined {
  const value = (request.query as Record<string, unknown> | undefined)?.[name];
  return typeof value === 'string' ? value : undefined;
}

function rawQuery(url: string): string {
  const mark = url.indexOf('?');
  return mark < 0 ? '' : url.slice(mark + 1);
}

function isErrno(error: unknown, ...codes: string[]): boolean {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  return code !== undefined && codes.includes(code);
}

export function createSharedFiles(options: SharedFilesOptions, deps: SharedFilesDeps): SharedFiles {
  const log = deps.log.child({ module: 'shared-files' });
  const { nodes, counters } = deps;

  /** neighbor → here; below a sub-relay → that sub-relay; elsewhere → upstream (root has none) */
  const destinationOf = (target: string): Destination => {
    let isNeighbor: boolean | undefined;
    try {
      isNeighbor = nodes.isNeighbor(target);
    } catch {
      isNeighbor = undefined; // unknown here
    }
    if (isNeighbor === true) return { kind: 'local' };
    if (isNeighbor === false) {
      try {
        const hop = nodes.nextHop(target);
        if (hop === undefined) return { kind: 'local' };
        return { kind: 'forward', hop: { kind: 'sub-relay', nodeId: hop.id, hostname: hop.hostname } };
      } catch {
        // its policy-server chain does not reach me: not below me
      }
    }
    if (nodes.myId === 'root') return { kind: 'unroutable' };
    return { kind: 'forward', hop: { kind: 'upstream' } };
  };

  const forward = async (
    hop: NextHop,
    method: 'HEAD' | 'PUT',
    share: ShareParams,
    request: FastifyRequest,
    body: Buffer | undefined,
  ): Promise<number> => {
    const ids = { target: share.target, source: share.source, fileId: share.fileId };
    if (deps.forwarder === undefined) {
      log.error({ code: 'RELAY_ERR_UPSTREAM_UNAVAILABLE', ...ids, nextHop: hop.kind }, 'no forwarder for shared files');
      return 500;
    }
    // ids are validated ([A-Za-z0-9-_.]), so they need no encoding; the query goes on as received
    const pathAndQuery = `${PUBLIC_PREFIX}/${share.target}/${share.source}/${share.fileId}?${rawQuery(request.url)}`;
    try {
      const status = await deps.forwarder.forward(hop, method, pathAndQuery, body);
      counters.forwarded();
      log.info({ ...ids, method, nextHop: hop.kind === 'upstream' ? 'upstream' : hop.nodeId, status }, 'shared file forwarded');
      return Number.isInteger(status) && status >= 200 && status <= 599 ? status : 500;
    } catch (error) {
      log.error(
        { code: isRelayError(error) ? error.code : 'RELAY_ERR_UPSTREAM_UNAVAILABLE', ...ids, method, nextHop: hop.kind === 'upstream' ? 'upstream' : hop.nodeId, err: messageOf(error) },
        'shared file forwarding failed',
      );
      return 500;
    }
  };

  const headLocal = async (share: ShareParams, hash: string): Promise<number> => {
    let raw: Buffer;
    try {
      raw = await readFile(metadataPath(options.path, share.target, share.source, share.fileId));
    } catch (error) {
      if (isErrno(error, 'ENOENT', 'ENOTDIR')) return 404;
      log.error({ code: 'RELAY_ERR_INTERNAL', ...share, err: messageOf(error) }, 'shared file metadata unreadable');
      return 500;
    }
    let metadata: ShareMetadata;
    try {
      metadata = parseMetadata(raw);
    } catch (error) {
      log.error({ code: 'RELAY_ERR_INTERNAL', ...share, err: messageOf(error) }, 'shared file metadata unparseable');
      return 500;
    }
    // string-exact, lowercase stored hex (relayd); expiry not considered
    return metadata.hashValue === hash ? 200 : 404;
  };

  /** §4.7 "Local processing order": the first failing step decides */
  const putLocal = async (share: ShareParams, ttl: string, body: Buffer): Promise<number> => {
    const { source } = share;
    if (!nodes.isSubNode(source)) {
      log.warn({ code: 'RELAY_ERR_NOT_FOUND', ...share }, 'unknown source');
      return 404;
    }
    const { header, content } = splitUpload(body);
    let metadata: ShareMetadata;
    try {
      metadata = parseMetadata(header);
    } catch (error) {
      log.error({ code: 'RELAY_ERR_BAD_REQUEST', ...share, err: messageOf(error) }, 'invalid shared file header');
      return 500;
    }
    const keyHash = nodes.get(source)?.keyHash;
    if (keyHash === undefined) {
      log.error({ code: 'RELAY_ERR_NODES_LIST', ...share }, 'source has no key-hash in the nodes list');
      return 500;
    }
    const spki = metadata.publicKey.export({ type: 'spki', format: 'der' });
    if (!createHash(keyHash.type).update(spki).digest().equals(keyHash.bytes)) {
      log.warn({ code: 'RELAY_ERR_AUTH_CERTIFICATE', ...share }, 'shared file public key does not match the key-hash of its source');
      return 404;
    }
    let signed: boolean;
    try {
      signed = verify(metadata.algorithm, content, metadata.publicKey, Buffer.from(metadata.digest, 'hex'));
    } catch (error) {
      log.error({ code: 'RELAY_ERR_BAD_REQUEST', ...share, err: messageOf(error) }, 'shared file signature check failed');
      return 500;
    }
    if (!signed) {
      log.error({ code: 'RELAY_ERR_BAD_REQUEST', ...share }, 'invalid shared file signature');
      return 500;
    }
    const ttlMs = parseTtlMs(ttl);
    const expires = ttlMs === undefined ? undefined : expiresAt(Date.now(), ttlMs);
    if (expires === undefined) {
      log.warn({ code: 'RELAY_ERR_BAD_REQUEST', ...share, ttl }, 'invalid ttl: expected seconds or a duration such as "1d 2h"');
      return 400;
    }
    try {
      await writeShare(options.path, share, content, serializeMetadata(metadata, expires));
    } catch (error) {
      log.error({ code: 'RELAY_ERR_SPOOL_WRITE', ...share, err: messageOf(error) }, 'could not store shared file');
      return 500;
    }
    counters.stored();
    log.info({ ...share, expires: Number(expires), bytes: content.length }, 'shared file stored');
    return 200;
  };

  /** 400 (empty body) for ids that are not safe path segments or a content id colliding with a metadata file */
  const validShare = (params: unknown): ShareParams | undefined => {
    const { target, source, fileId } = params as Partial<ShareParams>;
    if (typeof target !== 'string' || typeof source !== 'string' || typeof fileId !== 'string') return undefined;
    if (!isValidShareId(target) || !isValidShareId(source) || !isValidShareId(fileId)) return undefined;
    if (hasMetadataExtension(fileId)) return undefined;
    return { target, source, fileId };
  };

  const requireQuery =
    (name: string): onRequestHookHandler =>
    (request, reply, done) => {
      // relayd: a missing query parameter is a rejection, which surfaces as 404 NOT FOUND (§4.1)
      if (queryValue(request, name) === undefined) {
        answer(reply, 404, 'NOT FOUND');
        return;
      }
      done();
    };

  /** before the body is read: 411 without Content-Length, 413 above max_body_size */
  const checkLength: onRequestHookHandler = (request, reply, done) => {
    const length = request.headers['content-length'];
    if (length === undefined) {
      answer(reply.header('connection', 'close'), 411, 'LENGTH REQUIRED');
      return;
    }
    if (Number(length) > options.maxBodySize) {
      answer(reply.header('connection', 'close'), 413, 'PAYLOAD TOO LARGE');
      return;
    }
    done();
  };

  const routes: FastifyPluginAsync = async (app) => {
    // raw bodies for this plugin only (fastify encapsulation): every content type as a Buffer
    app.removeAllContentTypeParsers();
    const rawBody = { parseAs: 'buffer' as const, bodyLimit: options.maxBodySize };
    app.addContentTypeParser('application/octet-stream', rawBody, (_request, body, done) => done(null, body));
    app.addContentTypeParser('*', rawBody, (_request, body, done) => done(null, body));

    app.setErrorHandler((error: { statusCode?: number; message?: string }, request, reply) => {
      const status = error.statusCode ?? 500;
      if (status === 413) return answer(reply, 413, 'PAYLOAD TOO LARGE');
      if (status >= 400 && status < 500) return answer(reply, status);
      log.error({ code: 'RELAY_ERR_INTERNAL', url: request.url, err: error.message }, 'shared files request failed');
      return answer(reply, 500);
    });

    app.head('/:target/:source/:fileId', { onRequest: requireQuery('hash') }, async (request, reply) => {
      const share = validShare(request.params);
      if (share === undefined) return answer(reply, 400);
      const destination = destinationOf(share.target);
      if (destination.kind === 'unroutable') {
        log.error({ code: 'RELAY_ERR_NOT_FOUND', ...share }, 'unknown target node');
        return answer(reply, 500);
      }
      if (destination.kind === 'forward') return answer(reply, await forward(destination.hop, 'HEAD', share, request, undefined));
      return answer(reply, await headLocal(share, queryValue(request, 'hash') ?? ''));
    });

    app.put(
      '/:target/:source/:fileId',
      { onRequest: [requireQuery('ttl'), checkLength], bodyLimit: options.maxBodySize },
      async (request, reply) => {
        const share = validShare(request.params);
        if (share === undefined) return answer(reply, 400);
        const body = Buffer.isBuffer(request.body) ? request.body : Buffer.alloc(0);
        const destination = destinationOf(share.target);
        if (destination.kind === 'unroutable') {
          log.error({ code: 'RELAY_ERR_NOT_FOUND', ...share }, 'unknown target node');
          return answer(reply, 500);
        }
        if (destination.kind === 'forward') return answer(reply, await forward(destination.hop, 'PUT', share, request, body));
        return answer(reply, await putLocal(share, queryValue(request, 'ttl') ?? '', body));
      },
    );
  };

  let started = false;
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;

  const cleanupPass = async (): Promise<void> => {
    try {
      const result = await removeExpired(options.path, BigInt(Math.floor(Date.now() / 1000)), log, () => counters.expired());
      log.debug(result, 'shared files cleanup done');
    } catch (error) {
      log.error({ code: 'RELAY_ERR_INTERNAL', err: messageOf(error) }, 'shared files cleanup failed');
    }
  };

  const runAndReschedule = (): void => {
    running = cleanupPass().finally(() => {
      running = undefined;
      if (!started) return;
      timer = setTimeout(runAndReschedule, options.cleanupFrequencyMs);
      timer.unref();
    });
  };

  return {
    routes,
    async start() {
      if (started) return;
      started = true;
      runAndReschedule(); // first pass now, in the background
    },
    async stop() {
      if (!started) return;
      started = false;
      if (timer !== undefined) clearTimeout(timer);
      timer = undefined;
      await running;
    },
  };
}
