// Face of the metrics module. The primary process owns relayd's metric names and the gauges it can
// compute; every process (primary and front-door workers) has the service counters (requests,
// downloads, shared files); at scrape time the primary gathers every worker's registry over IPC and
// aggregates them with its own (prom-client AggregatorRegistry.aggregate: counters summed).
// Names: relayd's where they exist (spec-relayd.md §10), then onerelay_<module>_<what>_<unit>.

import { AggregatorRegistry, Counter, Gauge, Histogram, Registry, collectDefaultMetrics, type MetricObjectWithValues, type MetricValue } from 'prom-client';

/**
 * the event-loop lag metrics sample the loop this often: prom-client's default (10 ms) woke every
 * process of an idle relay 100 times a second
 */
const EVENT_LOOP_SAMPLE_MS = 100;

export type MetricsSnapshot = Array<MetricObjectWithValues<MetricValue<string>>>;

/** counters every process that serves requests has */
export interface ServiceMetrics {
  readonly downloads: Counter<'kind' | 'status'>;
  readonly downloadBytes: Counter<'kind'>;
  readonly sharedFiles: Counter<'event'>;
  readonly remoteRuns: Histogram<'result'>;
}

function createServiceMetrics(registry: Registry): ServiceMetrics {
  return {
    downloads: new Counter({
      name: 'onerelay_http_downloads_total',
      help: 'Downloads (policies, common, shared-folder) by kind and HTTP status; 304s show the cache ratio',
      labelNames: ['kind', 'status'] as const,
      registers: [registry],
    }),
    downloadBytes: new Counter({
      name: 'onerelay_http_download_bytes_total',
      help: 'Bytes of downloads by kind',
      labelNames: ['kind'] as const,
      registers: [registry],
    }),
    sharedFiles: new Counter({
      name: 'onerelay_shared_files_total',
      help: 'Shared files by event: stored, forwarded, expired',
      labelNames: ['event'] as const,
      registers: [registry],
    }),
    remoteRuns: new Histogram({
      name: 'onerelay_remote_run_duration_seconds',
      help: 'Remote-run requests by result (ok, error: a node or sub-relay failed), and their duration',
      labelNames: ['result'] as const,
      buckets: [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300],
      registers: [registry],
    }),
  };
}

export interface SpoolGaugeSource {
  inspect(): Promise<ReadonlyArray<{ readonly path: string; readonly files: number }>>;
}

export interface NodesGaugeSource {
  status(): { readonly nodes: number; readonly managedNodes: number };
}

export interface QueueGaugeSource {
  queues(): ReadonlyArray<{ readonly queue: string; readonly files: number; readonly bytes: number; readonly oldestMtimeMs: number | undefined }>;
}

export interface PrimaryMetrics extends ServiceMetrics {
  readonly reports: Counter<'status'>;
  readonly inventories: Counter<'status'>;
  readonly reportsProcessing: Histogram;
  readonly reportsSize: Histogram;
  readonly expired: Counter<'queue' | 'directory'>;
  readonly failed: Counter<'queue' | 'reason'>;
  readonly upstreamRequests: Histogram<'endpoint' | 'result'>;
  readonly cfengineConnections: Counter<'result'>;
  /**
   * the CFEngine server's per-request counts: plain additions on the request path (an agent waits for
   * each reply), added to their prom-client counters when scraped
   */
  cfengineCommand(command: string, result: string): void;
  cfengineSent(bytes: number): void;
  readonly syncs: Histogram<'result'>;
  readonly syncBytes: Counter;
  readonly syncFiles: Counter;
  readonly syncLastSuccess: Gauge;
  /** records a pull's outcome for onerelay_sync_lag_seconds */
  syncOutcome(ok: boolean, attemptStartedMs: number): void;
  /** Prometheus text of the primary and of every worker */
  render(): Promise<{ contentType: string; body: string }>;
}

export interface FrontDoorMetrics extends ServiceMetrics {
  /** what the primary asks for at scrape time */
  snapshot(): Promise<MetricsSnapshot>;
  readonly uploads: Counter<'endpoint' | 'status'>;
  readonly uploadBytes: Counter<'endpoint'>;
  readonly requests: Counter<'route' | 'status'>;
  readonly tlsFailures: Counter<'reason'>;
}

export function createPrimaryMetrics(sources: {
  spool: SpoolGaugeSource;
  nodes: NodesGaugeSource;
  queues: QueueGaugeSource;
  /** every worker's snapshot (workers that do not answer in time are left out) */
  workers: () => Promise<MetricsSnapshot[]>;
  /** node activity (src/activity): silent nodes, refusals by code */
  activity?: { silentCount(): number; refusals(): ReadonlyMap<string, number> };
}): PrimaryMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });
  const service = createServiceMetrics(registry);
  const reports = new Counter({
    name: 'rudder_relayd_reports_total',
    help: 'Agent run reports',
    labelNames: ['status'] as const,
    registers: [registry],
  });
  for (const status of ['invalid', 'ok', 'error', 'forward_ok', 'forward_error', 'skipped']) reports.inc({ status }, 0);
  const inventories = new Counter({
    name: 'rudder_relayd_inventories_total',
    help: 'Agent inventories',
    labelNames: ['status'] as const,
    registers: [registry],
  });
  for (const status of ['forward_ok', 'forward_error']) inventories.inc({ status }, 0);
  new Gauge({
    name: 'rudder_relayd_managed_nodes_total',
    help: 'Managed Nodes',
    registers: [registry],
    collect() {
      this.set(sources.nodes.status().managedNodes);
    },
  });
  new Gauge({
    name: 'rudder_relayd_sub_nodes_total',
    help: 'Nodes behind this policy server',
    registers: [registry],
    collect() {
      this.set(sources.nodes.status().nodes);
    },
  });
  new Gauge({
    name: 'onerelay_spool_files',
    help: 'Files waiting in each spool directory',
    labelNames: ['directory'] as const,
    registers: [registry],
    async collect() {
      for (const directory of await sources.spool.inspect()) this.set({ directory: directory.path }, directory.files);
    },
  });
  const reportsProcessing = new Histogram({
    name: 'rudder_relayd_reports_processing_duration_seconds',
    help: 'Reports processing',
    registers: [registry],
  });
  // relayd observes this one but never registers it (spec-relayd.md §10)
  const reportsSize = new Histogram({
    name: 'rudder_relayd_reports_size_bytes',
    help: 'Reports size',
    buckets: [1_024, 4_096, 16_384, 65_536, 262_144, 1_048_576, 4_194_304, 16_777_216],
    registers: [registry],
  });
  const expired = new Counter({
    name: 'onerelay_spool_expired_total',
    help: 'Files removed by retention, by queue and directory (incoming or failed)',
    labelNames: ['queue', 'directory'] as const,
    registers: [registry],
  });
  const failed = new Counter({
    name: 'onerelay_spool_failed_total',
    help: 'Files moved to failed/, by queue and reason',
    labelNames: ['queue', 'reason'] as const,
    registers: [registry],
  });
  const upstreamRequests = new Histogram({
    name: 'onerelay_upstream_request_duration_seconds',
    help: 'Forwarding requests to the upstream server, by endpoint and result (ok, transient, permanent)',
    labelNames: ['endpoint', 'result'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [registry],
  });
  new Gauge({
    name: 'onerelay_spool_queue_files',
    help: 'Files waiting in each queue (incoming, retrying or deferred)',
    labelNames: ['queue'] as const,
    registers: [registry],
    collect() {
      for (const queue of sources.queues.queues()) this.set({ queue: queue.queue }, queue.files);
    },
  });
  new Gauge({
    name: 'onerelay_spool_queue_bytes',
    help: 'Bytes waiting in each queue',
    labelNames: ['queue'] as const,
    registers: [registry],
    collect() {
      for (const queue of sources.queues.queues()) this.set({ queue: queue.queue }, queue.bytes);
    },
  });
  new Gauge({
    name: 'onerelay_spool_oldest_file_age_seconds',
    help: 'Age of the oldest file waiting in each queue (0 when empty)',
    labelNames: ['queue'] as const,
    registers: [registry],
    collect() {
      const now = Date.now();
      for (const queue of sources.queues.queues()) {
        this.set({ queue: queue.queue }, queue.oldestMtimeMs === undefined ? 0 : Math.max(0, (now - queue.oldestMtimeMs) / 1000));
      }
    },
  });
  const activity = sources.activity;
  if (activity !== undefined) {
    new Gauge({
      name: 'onerelay_nodes_silent',
      help: 'Nodes below this relay with no report for twice the run interval (activity.run_interval)',
      registers: [registry],
      collect() {
        this.set(activity.silentCount());
      },
    });
    // the totals live in the activity module, which sees every worker's refusals; the counter catches up at scrape time
    const reported = new Map<string, number>();
    new Counter({
      name: 'onerelay_refusals_total',
      help: 'Requests refused by the front door, by RELAY_ERR_… code (TLS: failed handshakes)',
      labelNames: ['code'] as const,
      registers: [registry],
      collect() {
        for (const [code, count] of activity.refusals()) {
          this.inc({ code }, count - (reported.get(code) ?? 0));
          reported.set(code, count);
        }
      },
    });
  }
  const cfengineConnections = new Counter({
    name: 'onerelay_cfengine_connections_total',
    help: 'CFEngine protocol connections by result (accepted, refused-network, refused-limit, refused-address-limit, closed-error)',
    labelNames: ['result'] as const,
    registers: [registry],
  });
  // keyed by command, then result: two Map lookups, no label hashing or validation per request
  const commandTallies = new Map<string, Map<string, number>>();
  new Counter({
    name: 'onerelay_cfengine_commands_total',
    help: 'CFEngine protocol commands by type and result (ok, denied, absent, error)',
    labelNames: ['command', 'result'] as const,
    registers: [registry],
    collect() {
      for (const [command, results] of commandTallies) {
        for (const [result, count] of results) this.inc({ command, result }, count);
        results.clear();
      }
    },
  });
  let sentTally = 0;
  new Counter({
    name: 'onerelay_cfengine_sent_bytes_total',
    help: 'Bytes sent by the CFEngine server',
    registers: [registry],
    collect() {
      // inc(0) still makes the series appear before the first byte, as an eager counter does
      this.inc(sentTally);
      sentTally = 0;
    },
  });
  const syncs = new Histogram({
    name: 'onerelay_sync_duration_seconds',
    help: 'Data syncs from upstream by result (ok, unchanged, error) and their duration',
    labelNames: ['result'] as const,
    buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
    registers: [registry],
  });
  const syncBytes = new Counter({ name: 'onerelay_sync_bytes_total', help: 'Bytes fetched by data sync', registers: [registry] });
  const syncFiles = new Counter({ name: 'onerelay_sync_files_total', help: 'Files changed by data sync', registers: [registry] });
  const syncLastSuccess = new Gauge({ name: 'onerelay_sync_last_success_timestamp_seconds', help: 'When the last data sync succeeded', registers: [registry] });
  // in step with upstream as of the last successful pull; behind since the first failed pull after it
  let syncBehindSinceMs: number | undefined;
  new Gauge({
    name: 'onerelay_sync_lag_seconds',
    help: 'How long the data sync has been failing to bring the relay in step with upstream (0 while pulls succeed)',
    registers: [registry],
    collect() {
      this.set(syncBehindSinceMs === undefined ? 0 : (Date.now() - syncBehindSinceMs) / 1000);
    },
  });
  return {
    syncOutcome(ok, attemptStartedMs) {
      if (ok) syncBehindSinceMs = undefined;
      else syncBehindSinceMs ??= attemptStartedMs;
    },
    syncs,
    syncBytes,
    syncFiles,
    syncLastSuccess,
    cfengineConnections,
    cfengineCommand(command, result) {
      let results = commandTallies.get(command);
      if (results === undefined) commandTallies.set(command, (results = new Map()));
      results.set(result, (results.get(result) ?? 0) + 1);
    },
    cfengineSent(bytes) {
      sentTally += bytes;
    },
    reports,
    inventories,
    reportsProcessing,
    reportsSize,
    expired,
    failed,
    upstreamRequests,
    async render() {
      const own = await registry.getMetricsAsJSON();
      const workers = await sources.workers().catch(() => [] as MetricsSnapshot[]);
      const aggregated = AggregatorRegistry.aggregate([own, ...workers] as Parameters<typeof AggregatorRegistry.aggregate>[0]);
      return { contentType: registry.contentType, body: await aggregated.metrics() };
    },
    ...service,
  };
}

/** `processMetrics: false` for the primary's own front door: its process is counted by the primary's registry */
export function createFrontDoorMetrics(options: { readonly processMetrics?: boolean } = {}): FrontDoorMetrics {
  const registry = new Registry();
  if (options.processMetrics ?? true) collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });
  return {
    ...createServiceMetrics(registry),
    snapshot: () => registry.getMetricsAsJSON() as Promise<MetricsSnapshot>,
    uploads: new Counter({
      name: 'onerelay_http_uploads_total',
      help: 'WebDAV uploads by endpoint and HTTP status',
      labelNames: ['endpoint', 'status'] as const,
      registers: [registry],
    }),
    uploadBytes: new Counter({
      name: 'onerelay_http_upload_bytes_total',
      help: 'Bytes of accepted uploads by endpoint',
      labelNames: ['endpoint'] as const,
      registers: [registry],
    }),
    requests: new Counter({
      name: 'onerelay_http_requests_total',
      help: 'HTTPS front-door requests by route and status',
      labelNames: ['route', 'status'] as const,
      registers: [registry],
    }),
    tlsFailures: new Counter({
      name: 'onerelay_https_tls_failures_total',
      help: 'TLS handshakes that failed on the front door, by reason',
      labelNames: ['reason'] as const,
      registers: [registry],
    }),
  };
}
