// What the front door serves besides uploads (spec-https-front-cfserverd-sync.md §1.2): policies
// per node, the common library, the shared folder and shared files through the public relay API,
// each behind Apache's access rule for it.

import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import { nodePoliciesFolder } from '../access/index.js';
import { RelayError } from '../errors.js';
import type { ServiceMetrics } from '../metrics/index.js';
import type { NodesRegistry } from '../nodes/index.js';
import { createStaticFiles } from '../policies/index.js';
import { sharedFolderRoutes } from '../shared-folder/index.js';
import type { SharedFiles } from '../shared-files/index.js';
import type { NetworkAcl } from '../config/index.js';

export interface DownloadRoutesOptions {
  readonly policiesDirectory: string;
  readonly sharedFolderPath: string;
  /** cert_validation: /common and shared files need a verified client certificate too */
  readonly requireCertificate: boolean;
}

export interface DownloadRoutesDeps {
  readonly acl: NetworkAcl;
  readonly nodes: NodesRegistry;
  readonly metrics: ServiceMetrics;
  readonly sharedFiles: SharedFiles;
  readonly fail: (request: FastifyRequest, reply: FastifyReply, error: RelayError) => FastifyReply;
}

// Apache's RewriteRule /policies/([a-zA-Z0-9-_]+)/(.*): the shape of the URL; who may read it is src/access's
const NODE_ID = /^[A-Za-z0-9_-]+$/;

function clientNode(request: FastifyRequest, nodes: NodesRegistry): { nodeId: string } | RelayError {
  const socket = request.raw.socket as TLSSocket;
  const der = typeof socket.getPeerX509Certificate === 'function' ? socket.getPeerX509Certificate()?.raw : undefined;
  if (der === undefined) return new RelayError('RELAY_ERR_AUTH_CERTIFICATE', 'a client certificate is required');
  let match;
  try {
    match = nodes.matchCertificate(der);
  } catch {
    return new RelayError('RELAY_ERR_AUTH_CERTIFICATE', 'the client certificate cannot be read');
  }
  if (match.kind === 'match') return { nodeId: match.nodeId };
  const who = 'nodeId' in match ? ` of node ${match.nodeId}` : '';
  return new RelayError('RELAY_ERR_AUTH_CERTIFICATE', `client certificate${who} is not a known node's pinned certificate (${match.kind})`);
}

/** path after a fixed prefix, slashes merged (Windows agents ask for //policies/…) */
function restAfter(request: FastifyRequest, segments: number): string {
  const q = request.url.indexOf('?');
  const path = (q < 0 ? request.url : request.url.slice(0, q)).replace(/\/{2,}/g, '/');
  return path.split('/').slice(segments + 1).join('/');
}

/** a fastify plugin (encapsulated: its hooks stay on its own routes) */
export const downloadRoutes: FastifyPluginAsync<{ options: DownloadRoutesOptions; deps: DownloadRoutesDeps }> = async (fastify, { options, deps }) => {
  const files = createStaticFiles();
  const { acl, nodes, metrics, fail } = deps;

  const serve = async (kind: string, request: FastifyRequest, reply: FastifyReply, root: string, rest: string) => {
    const outcome = await files.serve(root, rest, request, reply);
    metrics.downloads.inc({ kind, status: String(outcome.status) });
    if (outcome.bytes > 0) metrics.downloadBytes.inc({ kind }, outcome.bytes);
    return reply;
  };

  const guard = (request: FastifyRequest, reply: FastifyReply, certificate: boolean, kind?: string): { nodeId: string | undefined } | FastifyReply => {
    const refuse = (error: RelayError) => {
      if (kind !== undefined) metrics.downloads.inc({ kind, status: String(error.status) });
      return fail(request, reply, error);
    };
    if (!acl.allows(request.socket.remoteAddress)) {
      return refuse(new RelayError('RELAY_ERR_AUTH_NETWORK', `client ${request.socket.remoteAddress} is not in https.allowed_networks`));
    }
    if (!certificate) return { nodeId: undefined };
    const node = clientNode(request, nodes);
    if (node instanceof RelayError) return refuse(node);
    request.relayNode = node.nodeId;
    return node;
  };

  // a node reads only its own policies: certificate pinned to a known node, and src/access's rule (the
  // same as the CFEngine server's) gives that node its own folder only
  const policies = async (request: FastifyRequest, reply: FastifyReply, uuid: string, rest: string) => {
    const allowed = guard(request, reply, true, 'policies');
    if ('statusCode' in allowed) return allowed;
    const folder = NODE_ID.test(uuid) ? nodePoliciesFolder(options.policiesDirectory, allowed, uuid) : undefined;
    if (folder === undefined) {
      metrics.downloads.inc({ kind: 'policies', status: '403' });
      return fail(request, reply, new RelayError('RELAY_ERR_AUTH_CERTIFICATE', `node ${allowed.nodeId ?? '?'} may not read the policies of ${uuid}`));
    }
    return serve('policies', request, reply, folder, rest);
  };

  fastify.route({
    method: ['GET', 'HEAD'],
    url: '/policies/:uuid/*',
    handler: (request, reply) => policies(request, reply, (request.params as { uuid: string }).uuid, restAfter(request, 2)),
  });
  // the Windows archive through the relay API, as documented in relayd's OpenAPI
  for (const prefix of ['/rudder/relay-api/1', '/rudder/relay-api']) {
    fastify.route({
      method: ['GET', 'HEAD'],
      url: `${prefix}/policies/:uuid/rules/dsc/rudder.zip`,
      handler: (request, reply) => policies(request, reply, (request.params as { uuid: string }).uuid, 'rules/dsc/rudder.zip'),
    });
  }

  fastify.route({
    method: ['GET', 'HEAD'],
    url: '/common/*',
    handler: async (request, reply) => {
      const allowed = guard(request, reply, options.requireCertificate, 'common');
      if ('statusCode' in allowed) return allowed;
      return serve('common', request, reply, join(options.policiesDirectory, 'common'), restAfter(request, 1));
    },
  });

  // public paths (Apache maps /rudder/relay-api/X to relayd's /rudder/relay-api/1/X) and the versioned ones
  for (const prefix of ['/rudder/relay-api', '/rudder/relay-api/1']) {
    fastify.register(
      async (folder) => {
        folder.addHook('onRequest', async (request, reply) => {
          const allowed = guard(request, reply, true);
          if ('statusCode' in allowed) return allowed;
          return undefined;
        });
        folder.addHook('onResponse', async (request, reply) => {
          metrics.downloads.inc({ kind: 'shared-folder', status: String(reply.statusCode) });
        });
        await folder.register(sharedFolderRoutes, { path: options.sharedFolderPath });
      },
      { prefix: `${prefix}/shared-folder` },
    );
    fastify.register(
      async (shared) => {
        shared.addHook('onRequest', async (request, reply) => {
          const allowed = guard(request, reply, options.requireCertificate);
          if ('statusCode' in allowed) return allowed;
          return undefined;
        });
        await shared.register(deps.sharedFiles.routes);
      },
      { prefix: `${prefix}/shared-files` },
    );
  }
};
