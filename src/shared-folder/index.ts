// Face of the shared-folder module: relayd's HEAD ?hash= answers and GET of the shared folder
// (spec-relayd.md §4.8), mounted on the local API and on the front door.

import type { FastifyPluginAsync } from 'fastify';

export interface SharedFolderOptions {
  /** shared_folder.path */
  readonly path: string;
}

/** a fastify plugin answering HEAD and GET `/*` relative to the prefix it is registered under */
export type SharedFolderRoutes = FastifyPluginAsync<SharedFolderOptions>;

export { sharedFolderRoutes } from './routes.js';
