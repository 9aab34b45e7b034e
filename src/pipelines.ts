// Part of the composition root: builds the store-and-forward pipelines (spool queues → reports /
// inventories handlers → upstream client) from the configuration, in the primary process.

import type { X509Certificate } from 'node:crypto';
import type { Logger } from 'pino';
import type { Config } from './config/index.js';
import { createInventoryHandler } from './inventories/index.js';
import type { PrimaryMetrics } from './metrics/index.js';
import type { NodesRegistry } from './nodes/index.js';
import { availableParallelism } from 'node:os';
import { createThreadedFileInspector } from './reports/index.js';
import { createReportHandler } from './reports/queue-handler.js';
import { createQueue, type Queue, type QueueOutcome, type Spool, type SpoolQueue } from './spool/index.js';
import { createUpstream, type ForwardOptions, type Upstream, type UpstreamCredentials, type UpstreamEndpoint } from './upstream/index.js';
import type { SubStatus } from './system/index.js';
import { NO_ACTIVITY, type ActivitySink } from './activity/index.js';

const INSPECTION_THREADS = Math.max(1, availableParallelism() - 1);

export interface Pipelines {
  start(): Promise<void>;
  /** files in flight get graceMs to finish, then are interrupted (they stay in the spool) */
  stop(options?: { graceMs?: number }): Promise<void>;
  reload(): Promise<void>;
  isFull(queue: SpoolQueue): boolean;
  /** admission of an upload against the queue's disk budget (see Queue.reserve); undefined = over budget */
  reserve(queue: SpoolQueue, bytes: number): number | undefined;
  release(queue: SpoolQueue, reservation: number, name?: string): Promise<void>;
  settle(queue: SpoolQueue, reservation: number, bytes: number, names: readonly string[]): Promise<void>;
  queues(): Array<{ queue: SpoolQueue; files: number; bytes: number; oldestMtimeMs: number | undefined; inFlight: number; paused: boolean; full: boolean }>;
  status(): Record<string, SubStatus>;
  /**
   * the upstream's one client (forwarding and relay API calls), when an output is "upstream"; stop() leaves
   * it open for the sync and shared files that share it: whoever is given it closes it (createPeers)
   */
  readonly upstream: Upstream | undefined;
}

export function createPipelines(
  config: Config,
  deps: {
    myId: string;
    /** the relay's certificate, to verify its own run logs (src/agentless) */
    ownCertificate?: X509Certificate;
    nodes: NodesRegistry;
    spool: Spool;
    metrics: PrimaryMetrics;
    onFullChange: (queue: SpoolQueue, full: boolean) => void;
    /** presented to the upstream: the same client also pulls data sync, which identifies relays by it */
    clientCertificate?: { key: string; cert: string };
    /** the relay's own inventory (src/agentless): its credentials for inventory updates, and what became of its files */
    inventoryCredentials?: (queue: SpoolQueue, name: string) => UpstreamCredentials | undefined;
    onInventoryOutcome?: (queue: SpoolQueue, name: string, outcome: QueueOutcome) => void;
    /** the WebDAV credentials in force (TOML, else the relay's own policies); default: the TOML's */
    credentials?: () => { readonly user: string; readonly password: string | undefined };
    /** the delivery ledger: forwards and outcomes of every file */
    activity?: ActivitySink;
    log: Logger;
  },
): Pipelines {
  const { reporting, inventory } = config.processing;
  const activity = deps.activity ?? NO_ACTIVITY;
  const needsUpstream = reporting.output === 'upstream' || inventory.output === 'upstream';
  const rawUpstream: Upstream | undefined = needsUpstream
    ? createUpstream(
        {
          host: config.output.upstream.host,
          port: config.general.httpsPort,
          peerAuthentication: config.general.peerAuthentication,
          serverCertificateFile: config.output.upstream.serverCertificateFile,
          caPath: config.general.caPath,
          user: config.output.upstream.user,
          password: config.output.upstream.password,
          defaultPassword: config.output.upstream.defaultPassword,
          ...(deps.credentials ? { credentials: deps.credentials } : {}),
          maxConcurrency: config.output.upstream.maxConcurrency,
          connectTimeoutMs: config.output.upstream.connectTimeoutMs,
          idleTimeoutMs: config.output.upstream.idleTimeoutMs,
          requestTimeoutMs: config.output.upstream.requestTimeoutMs,
          keepAliveMs: config.general.httpsIdleTimeoutMs,
          clientCertificate: deps.clientCertificate,
        },
        deps.log,
      )
    : undefined;
  // every forward observed in one place: latency by endpoint and result
  const upstream: Upstream | undefined = rawUpstream && {
    ...rawUpstream,
    forward: async (endpoint: UpstreamEndpoint, name: string, file: { path: string; size: number; content?: Buffer }, options?: ForwardOptions) => {
      const result = await rawUpstream.forward(endpoint, name, file, options);
      deps.metrics.upstreamRequests.observe({ endpoint, result: result.kind }, result.ms / 1000);
      activity.record({ t: 'forward', at: Date.now(), queue: endpoint, file: name, result: result.kind, status: result.status, ms: result.ms });
      return result;
    },
  };

  // decode + S/MIME + run log parse on threads, one per core beside the event loop's: the event loop keeps the queue and the
  // upstream requests, which were the other half of a report's cost (bench/pipeline)
  const inspector = createThreadedFileInspector(
    {
      myId: deps.myId,
      ...(deps.ownCertificate ? { ownCertificate: deps.ownCertificate } : {}),
      verifyMode: reporting.verifySignature,
      skipEventTypes: reporting.skipEventTypes,
      maxDecodedBytes: reporting.maxDecodedSize,
    },
    deps.nodes,
    INSPECTION_THREADS,
    deps.log,
  );

  const queues = new Map<SpoolQueue, Queue>();
  const make = (queue: SpoolQueue, timing: Config['processing']['inventory'] | Config['processing']['reporting'], handler: Parameters<typeof createQueue>[1]) => {
    queues.set(
      queue,
      createQueue(
        {
          name: queue,
          directory: deps.spool.incomingOf(queue),
          failedDirectory: deps.spool.failedOf(queue),
          catchupFrequencyMs: timing.catchup.frequencyMs,
          catchupLimit: timing.catchup.limit,
          cleanupFrequencyMs: timing.cleanup.frequencyMs,
          retentionMs: timing.cleanup.retentionMs,
          failedRetentionMs: timing.cleanup.failedRetentionMs,
          // more files in hand than requests in flight: inspection (decompress, verify) overlaps forwarding
          concurrency: config.output.upstream.maxConcurrency * 4,
          maxBytes: timing.maxSpoolSize,
        },
        handler,
        {
          onOutcome: (file, outcome) => {
            if (outcome.kind === 'failed') deps.metrics.failed.inc({ queue, reason: outcome.code });
            if (queue !== 'reports') deps.onInventoryOutcome?.(queue, file.name, outcome);
            const at = Date.now();
            if (outcome.kind === 'failed') activity.record({ t: 'outcome', at, queue, file: file.name, receivedAt: file.mtimeMs, size: file.size, outcome: 'failed', reason: outcome.code });
            // done = forwarded, unless nothing was sent (a skipped report); its partners (.sign) went with it
            if (outcome.kind === 'done') {
              activity.record({ t: 'outcome', at, queue, file: file.name, receivedAt: file.mtimeMs, size: file.size, outcome: 'forwarded' });
              for (const name of outcome.also ?? []) activity.record({ t: 'outcome', at, queue, file: name, receivedAt: file.mtimeMs, outcome: 'forwarded' });
            }
          },
          onExpired: (name, directory) => {
            deps.metrics.expired.inc({ queue, directory });
            if (directory === 'incoming') activity.record({ t: 'outcome', at: Date.now(), queue, file: name, receivedAt: Date.now(), outcome: 'expired' });
          },
          onFullChange: (full) => deps.onFullChange(queue, full),
        },
        deps.log,
      ),
    );
  };

  make(
    'reports',
    reporting,
    createReportHandler(
      {
        inspector,
        upstream: reporting.output === 'upstream' ? upstream : undefined,
        counters: {
          count: (status) => deps.metrics.reports.inc({ status }),
          observeInspection: (seconds, bytes) => {
            deps.metrics.reportsProcessing.observe(seconds);
            deps.metrics.reportsSize.observe(bytes);
          },
        },
        maxFileBytes: config.https.maxUploadSize,
      },
      deps.log,
    ),
  );
  for (const queue of ['inventories', 'inventory-updates'] as const) {
    make(
      queue,
      inventory,
      createInventoryHandler(
        { endpoint: queue, directory: deps.spool.incomingOf(queue), signatureWaitMs: inventory.signatureWaitMs },
        {
          upstream: inventory.output === 'upstream' ? upstream : undefined,
          counters: { count: (status) => deps.metrics.inventories.inc({ status }) },
          credentialsOf: (name) => deps.inventoryCredentials?.(queue, name),
        },
        deps.log,
      ),
    );
  }

  let unsubscribeNodes: (() => void) | undefined;
  return {
    async start() {
      if (reporting.output === 'upstream') await inspector.start();
      for (const queue of queues.values()) await queue.start();
      // reports held for a node the list did not name: look again whenever the list changes (issue 15)
      unsubscribeNodes ??= deps.nodes.onChange(() => queues.get('reports')?.releaseHeld());
    },
    async stop(options = {}) {
      unsubscribeNodes?.();
      unsubscribeNodes = undefined;
      await Promise.all([...queues.values()].map((queue) => queue.stop(options)));
      await inspector.stop();
    },
    async reload() {
      await rawUpstream?.reload();
    },
    upstream: rawUpstream,
    isFull: (queue) => queues.get(queue)?.stats().full ?? false,
    reserve: (queue, bytes) => queues.get(queue)?.reserve(bytes),
    release: async (queue, reservation, name) => queues.get(queue)?.release(reservation, name),
    settle: async (queue, reservation, bytes, names) => queues.get(queue)?.settle(reservation, bytes, names),
    queues: () => [...queues].map(([queue, q]) => ({ queue, ...q.stats() })),
    status() {
      const result: Record<string, SubStatus> = {};
      if (rawUpstream) {
        const s = rawUpstream.status();
        const problem = s.blocked ?? (s.reachable === false ? s.lastError?.reason : undefined);
        result['upstream'] = {
          ...(problem === undefined ? { status: 'success' } : { status: 'error', details: problem }),
          host: s.host,
          port: s.port,
          reachable: s.reachable,
          last_success: s.lastSuccessAt,
          last_request_ms: s.lastRequestMs,
          last_error: s.lastError,
        };
      }
      const now = Date.now();
      const list = [...queues].map(([queue, q]) => {
        const stats = q.stats();
        return {
          queue,
          files: stats.files,
          bytes: stats.bytes,
          oldest_age_s: stats.oldestMtimeMs === undefined ? 0 : Math.round((now - stats.oldestMtimeMs) / 1000),
          in_flight: stats.inFlight,
          paused: stats.paused,
          full: stats.full,
        };
      });
      const fullQueues = list.filter((q) => q.full).map((q) => q.queue);
      result['queues'] = {
        ...(fullQueues.length === 0 ? { status: 'success' } : { status: 'error', details: `over max_spool_size: ${fullQueues.join(', ')}` }),
        queues: list,
        reporting_output: reporting.output,
        inventory_output: inventory.output,
      };
      return result;
    },
  };
}
