// Part of the composition room: store-and-forward in the primary process. The upstream client and the
// two pipelines (src/reports, src/inventories) built from their slices of the configuration, every
// forward observed in one place, and the spool queues seen by name for admission and the status page.

import type { X509Certificate } from 'node:crypto';
import { availableParallelism } from 'node:os';
import type { Logger } from 'pino';
import { NO_ACTIVITY, type ActivitySink } from '../activity/index.js';
import type { Config } from '../config/index.js';
import { createInventoriesPipeline } from '../inventories/index.js';
import type { PrimaryMetrics } from '../metrics/index.js';
import type { NodesRegistry } from '../nodes/index.js';
import { createReportsPipeline } from '../reports/index.js';
import type { Queue, QueueEvents, QueueOutcome, Spool, SpoolQueue } from '../spool/index.js';
import type { SubStatus } from '../system/index.js';
import { createUpstream, type ForwardOptions, type Upstream, type UpstreamCredentials, type UpstreamEndpoint } from '../upstream/index.js';

const INSPECTION_THREADS = Math.max(1, availableParallelism() - 1);

export interface Forwarding {
  start(): Promise<void>;
  /** files in flight get graceMs to finish, then are interrupted (they stay in the spool) */
  stop(options?: { graceMs?: number }): Promise<void>;
  reload(): Promise<void>;
  isFull(queue: SpoolQueue): boolean;
  /** admission of an upload against the queue's disk budget (see Queue.reserve); undefined = over budget */
  reserve(queue: SpoolQueue, bytes: number): number | undefined;
  release(queue: SpoolQueue, reservation: number, name?: string): Promise<void>;
  /** `bytes` leave the lease `reservation`, after the files `names` are tracked (http/admission.ts) */
  settle(queue: SpoolQueue, reservation: number, bytes: number, names: readonly string[]): Promise<void>;
  queues(): Array<{ queue: SpoolQueue; files: number; bytes: number; oldestMtimeMs: number | undefined; inFlight: number; paused: boolean; full: boolean }>;
  status(): Record<string, SubStatus>;
  /**
   * the upstream's one client (forwarding and relay API calls), when an output is "upstream"; stop() leaves
   * it open for the sync and shared files that share it: whoever is given it closes it (createPeers)
   */
  readonly upstream: Upstream | undefined;
}

/** the upstream client from output.upstream and general's outgoing HTTPS settings */
function upstreamOf(
  config: Config,
  extra: { credentials?: () => { readonly user: string; readonly password: string | undefined }; clientCertificate?: { key: string; cert: string } },
  log: Logger,
): Upstream {
  const upstream = config.output.upstream;
  return createUpstream(
    {
      host: upstream.host,
      port: config.general.httpsPort,
      peerAuthentication: config.general.peerAuthentication,
      serverCertificateFile: upstream.serverCertificateFile,
      caPath: config.general.caPath,
      user: upstream.user,
      password: upstream.password,
      defaultPassword: upstream.defaultPassword,
      ...(extra.credentials ? { credentials: extra.credentials } : {}),
      maxConcurrency: upstream.maxConcurrency,
      connectTimeoutMs: upstream.connectTimeoutMs,
      idleTimeoutMs: upstream.idleTimeoutMs,
      requestTimeoutMs: upstream.requestTimeoutMs,
      keepAliveMs: config.general.httpsIdleTimeoutMs,
      clientCertificate: extra.clientCertificate,
    },
    log,
  );
}

export function createForwarding(
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
): Forwarding {
  const { reporting, inventory } = config.processing;
  const activity = deps.activity ?? NO_ACTIVITY;
  const needsUpstream = reporting.output === 'upstream' || inventory.output === 'upstream';
  const rawUpstream: Upstream | undefined = needsUpstream
    ? upstreamOf(config, { ...(deps.credentials ? { credentials: deps.credentials } : {}), ...(deps.clientCertificate ? { clientCertificate: deps.clientCertificate } : {}) }, deps.log)
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

  /** what became of each file: metrics, the delivery ledger, the relay's own inventory */
  const eventsOf = (queue: SpoolQueue): QueueEvents => ({
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
  });
  // more files in hand than requests in flight: inspection (decompress, verify) overlaps forwarding
  const concurrency = config.output.upstream.maxConcurrency * 4;

  const reports = createReportsPipeline(
    {
      myId: deps.myId,
      ...(deps.ownCertificate ? { ownCertificate: deps.ownCertificate } : {}),
      reporting,
      directory: deps.spool.incomingOf('reports'),
      failedDirectory: deps.spool.failedOf('reports'),
      maxFileBytes: config.https.maxUploadSize,
      concurrency,
      inspectionThreads: INSPECTION_THREADS,
    },
    {
      upstream: reporting.output === 'upstream' ? upstream : undefined,
      nodes: deps.nodes,
      counters: {
        count: (status) => deps.metrics.reports.inc({ status }),
        observeInspection: (seconds, bytes) => {
          deps.metrics.reportsProcessing.observe(seconds);
          deps.metrics.reportsSize.observe(bytes);
        },
      },
      events: eventsOf('reports'),
      log: deps.log,
    },
  );
  const inventories = createInventoriesPipeline(
    {
      inventory,
      directories: {
        inventories: { incoming: deps.spool.incomingOf('inventories'), failed: deps.spool.failedOf('inventories') },
        'inventory-updates': { incoming: deps.spool.incomingOf('inventory-updates'), failed: deps.spool.failedOf('inventory-updates') },
      },
      concurrency,
    },
    {
      upstream: inventory.output === 'upstream' ? upstream : undefined,
      counters: { count: (status) => deps.metrics.inventories.inc({ status }) },
      credentialsOf: (queue, name) => deps.inventoryCredentials?.(queue, name),
      eventsOf,
      log: deps.log,
    },
  );

  const queues = new Map<SpoolQueue, Queue>([['reports', reports.queue], ...inventories.queues]);
  return {
    async start() {
      await reports.start();
      await inventories.start();
    },
    async stop(options = {}) {
      await Promise.all([reports.stop(options), inventories.stop(options)]);
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
