// The shared folder (spec-relayd.md §4.8): HEAD `?hash=&hash_type=` answers in relayd's evaluation order,
// GET through the static-files serving with relayd's uniform 404 `NOT FOUND` for any refusal.

import { createHash } from 'node:crypto';
import type { FastifyReply } from 'fastify';
import { closeFile, createStaticFiles, fileStream, openBelow, wildcardPath } from '../policies/index.js';
import type { SharedFolderRoutes } from './index.js';

const TEXT = 'text/plain; charset=utf-8';
const HASH_BYTES = { sha256: 32, sha512: 64 } as const;
type HashType = keyof typeof HASH_BYTES;

function answer(reply: FastifyReply, status: number, body = ''): FastifyReply {
  return reply.code(status).header('content-type', TEXT).send(body);
}

/** the expected digest, or a relayd error message (400) */
function expectedHash(hashType: unknown, hash: string): { type: HashType; bytes: Buffer } | string {
  const type = hashType === undefined || hashType === '' ? 'sha256' : hashType;
  if (type !== 'sha256' && type !== 'sha512') {
    return `invalid hash type provided ${String(type)} (available hash types: sha256, sha512)`;
  }
  if (hash.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hash)) return `Invalid hash: ${hash}`;
  const bytes = Buffer.from(hash, 'hex');
  if (bytes.length !== HASH_BYTES[type]) return `Invalid ${type} hash: ${hash}`;
  return { type, bytes };
}

export const sharedFolderRoutes: SharedFolderRoutes = async (app, options) => {
  const root = options.path;
  const staticFiles = createStaticFiles();
  const log = app.log.child({ module: 'shared-folder' });

  app.head('/*', async (request, reply) => {
    const opened = await openBelow(root, wildcardPath(request));
    if (opened.kind === 'refused') {
      // relayd: path error 400, missing 404 (whatever the hash), any other read error 500
      if (opened.cause === 'path') return answer(reply, 400, opened.reason);
      if (opened.cause === 'absent') return answer(reply, 404);
      if (opened.cause === 'error') log.error({ url: request.url, err: opened.reason }, 'shared folder read error');
      return answer(reply, opened.cause === 'outside' ? 403 : 500);
    }
    try {
      const query = request.query as Record<string, unknown>;
      const hash = query['hash'];
      if (hash === undefined || hash === '') return answer(reply, 200);
      const expected = typeof hash === 'string' ? expectedHash(query['hash_type'], hash) : 'Invalid hash: several values';
      if (typeof expected === 'string') return answer(reply, 400, expected);
      const hasher = createHash(expected.type);
      // streamed: shared-folder files can be large; relayd reads them whole
      for await (const chunk of fileStream(opened.fd, 0, Number(opened.size) - 1, false)) hasher.update(chunk as Buffer);
      return answer(reply, hasher.digest().equals(expected.bytes) ? 304 : 200);
    } catch (error) {
      log.error({ url: request.url, err: error instanceof Error ? error.message : String(error) }, 'shared folder read error');
      return answer(reply, 500);
    } finally {
      closeFile(opened.fd);
    }
  });

  app.get('/*', { exposeHeadRoute: false }, async (request, reply) => {
    await staticFiles.serve(root, wildcardPath(request), request, reply, { refusalsAsNotFound: true });
    return reply;
  });
};
