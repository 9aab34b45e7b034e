// Face of the shared-files module: relayd's node-to-node file sharing (spec-relayd.md §4.7, §8),
// stored in relayd's layout, with forwarding to the next hop.

import type { FastifyPluginAsync } from 'fastify';
import type { Logger } from 'pino';
import type { NodesRegistry } from '../nodes/index.js';

export interface SharedFilesForwarder {
  /**
   * Sends the request to the next hop's public relay API `/rudder/relay-api/shared-files/<t>/<s>/<f>?…`
   * (upstream, or a sub-relay) and returns its status code; throws on connection errors.
   */
  forward(
    nextHop: { readonly kind: 'upstream' } | { readonly kind: 'sub-relay'; readonly nodeId: string; readonly hostname: string },
    method: 'HEAD' | 'PUT',
    pathAndQuery: string,
    body: Buffer | undefined,
  ): Promise<number>;
}

export interface SharedFilesOptions {
  /** shared_files.path */
  readonly path: string;
  /** shared_files.max_body_size */
  readonly maxBodySize: number;
  /** shared_files.cleanup.frequency */
  readonly cleanupFrequencyMs: number;
}

export interface SharedFilesCounters {
  stored(): void;
  forwarded(): void;
  expired(): void;
}

export interface SharedFiles {
  /** fastify plugin answering `HEAD|PUT /:target/:source/:fileId` under the prefix it is registered at */
  readonly routes: FastifyPluginAsync;
  /** TTL cleanup job */
  start(): Promise<void>;
  stop(): Promise<void>;
}

export interface SharedFilesDeps {
  readonly nodes: NodesRegistry;
  readonly forwarder: SharedFilesForwarder | undefined;
  readonly counters: SharedFilesCounters;
  readonly log: Logger;
}

export { createSharedFiles } from './shared-files.js';
