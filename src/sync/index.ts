// Face of the sync module: HTTP data sync between onerelay instances (issue 7), replacing the agent
// run that copied /var/rudder/share/<relay>/share/ and friends with the CFEngine protocol
// (spec-https-front-cfserverd-sync.md §3). Serving side: a manifest (path → sha256, size, mode,
// mtime; one generation id) and content-addressed blobs of what a requesting relay is entitled to.
// Pulling side: manifest → missing blobs → verified → new tree beside the old → atomic switch.
// Rooms: serving/ (to sub-relays), https-pull/ (from an onerelay upstream), cfengine-pull/ (from a stock
// root's cf-serverd), shared/ (manifest and frame formats, blob store, install and switch, pull loop, trigger).
// Nothing outside sync/ imports a file of these rooms; the rooms import each other only through shared/.

import type { FastifyPluginAsync } from 'fastify';
import type { Logger } from 'pino';
import type { NodesRegistry } from '../nodes/index.js';
import type { PeerClient } from '../upstream/index.js';

/** where the data of the upstream's own tree lives (serving side) and lands (pulling side) */
export interface SyncPaths {
  /** policies.directory: /var/rudder/share (upstream keeps <relay>/share/<node>/ for nodes behind a relay) */
  readonly policiesDirectory: string;
  /** shared_folder.path */
  readonly sharedFolderPath: string;
  /** shared_files.path */
  readonly sharedFilesPath: string;
  /** general.nodes_list_file */
  readonly nodesListFile: string;
  /** general.nodes_certs_file */
  readonly nodesCertsFile: string;
  /** where pulled data is staged (same filesystem as the destinations, for hard links and renames) */
  readonly stateDirectory: string;
  /**
   * the relay's own inputs (own_policies.inputs_directory; spec-agentless-node.md §B.1), where its own policies
   * land when pulled; never served to its nodes. Undefined: its own policies are not pulled.
   */
  readonly ownInputsDirectory?: string;
}

/** who reads the relay's own policies (the agentless module): checks a pulled folder, hears of a switch */
export interface OwnPoliciesSink {
  /** throws when the pulled folder does not hold usable policies: it is then not switched in */
  check(directory: string): Promise<void>;
  /** a new folder was switched in */
  installed(): Promise<void>;
  /** a pulled folder was refused by check() */
  rejected(error: unknown): void;
}

export interface SyncServingOptions {
  readonly paths: SyncPaths;
  /** how long the walk of a tree that cannot be watched (inotify full or unavailable) is reused (default 10 s) */
  readonly manifestTtlMs?: number;
  /** bound on inotify watches (tests; default unit-cache.ts DEFAULT_MAX_WATCHES) */
  readonly maxWatches?: number;
}

export interface SyncServingDeps {
  readonly nodes: NodesRegistry;
  /** the node id proven by the request's client certificate (pinned), or undefined */
  readonly requesterOf: (request: import('fastify').FastifyRequest) => string | undefined;
  readonly log: Logger;
}

/** fastify plugin: `GET /manifest` (ETag = generation, 304 on If-None-Match) and blob fetches, under the prefix it is registered at */
export type SyncServingRoutes = FastifyPluginAsync<{ options: SyncServingOptions; deps: SyncServingDeps }>;

export interface SyncStatus {
  readonly enabled: boolean;
  readonly running: boolean;
  readonly lastSuccessAt: string | undefined;
  readonly lastAttemptAt: string | undefined;
  readonly lastError: string | undefined;
  /** generation id of the last applied manifest */
  readonly generation: string | undefined;
  readonly lastDurationMs: number | undefined;
  /** blob bytes and blobs (distinct contents) fetched by the last successful pull */
  readonly lastBytes: number;
  readonly lastFiles: number;
  /** HTTP requests of the last successful pull (1 when nothing changed) */
  readonly lastRequests: number | undefined;
  /** units (node directories, shared folder, …) switched or removed by the last successful pull */
  readonly lastChangedUnits: number;
  /** failed pulls since start */
  readonly errors: number;
  /** blobs rejected because their bytes did not match their hash, since start */
  readonly rejectedBlobs: number;
}

export interface SyncCounters {
  synced(result: 'ok' | 'unchanged' | 'error', durationMs: number, bytes: number, files: number): void;
}

export interface SyncPullerOptions {
  readonly paths: SyncPaths;
  readonly myId: string;
  readonly frequencyMs: number;
  /** where the upstream mounted the serving routes (default /rudder/relay-api/sync) */
  readonly basePath?: string;
  /** install upstream's common/ into policies.directory/common (default true; false when another module owns it) */
  readonly pullCommon?: boolean;
}

export interface SyncPullerDeps {
  /** pinned HTTPS client to the upstream onerelay (its public relay API) */
  readonly upstream: () => PeerClient | undefined;
  /** called after a sync changed the nodes list or certificates */
  readonly onNodesChanged: () => Promise<void>;
  /** with paths.ownInputsDirectory: the relay's own policies are pulled too */
  readonly ownPolicies?: OwnPoliciesSink;
  readonly counters: SyncCounters;
  readonly log: Logger;
}

export interface SyncPuller {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** pull now (reload, API trigger); resolves when that pull is done */
  trigger(): Promise<SyncStatus>;
  status(): SyncStatus;
}

export { syncServingRoutes, createSyncServing, clientCertificateRequester } from './serving/serving.js';
export type { SyncServing } from './serving/serving.js';
export { createSyncPuller, DEFAULT_SYNC_BASE_PATH } from './https-pull/puller.js';
/** the pulling side when the upstream is a stock Rudder root (cf-serverd, CFEngine protocol) */
export { createCfenginePuller, DEFAULT_CFENGINE_PORT } from './cfengine-pull/cfengine-puller.js';
export type { CfenginePullerOptions, CfenginePullerDeps, UpstreamPin } from './cfengine-pull/cfengine-puller.js';
export { syncTriggerRoutes } from './lib/trigger.js';
export { parseManifest, MANIFEST_HEADER } from './lib/manifest.js';
export type { Manifest, ManifestEntry, ManifestFile, ManifestDirectory } from './lib/manifest.js';
