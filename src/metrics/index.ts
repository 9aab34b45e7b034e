// Face of the metrics module. The primary process owns relayd's metric names and the gauges it can
// compute; each front-door worker owns its request counters, which the primary aggregates over the
// cluster at scrape time (prom-client AggregatorRegistry). Names: relayd's where they exist
// (spec-relayd.md §10), then onerelay_<module>_<what>_<unit>.

import { AggregatorRegistry, Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';

export interface SpoolGaugeSource {
  inspect(): Promise<ReadonlyArray<{ readonly path: string; readonly files: number }>>;
}

export interface NodesGaugeSource {
  status(): { readonly nodes: number; readonly managedNodes: number };
}

export interface PrimaryMetrics {
  readonly reports: Counter<'status'>;
  readonly inventories: Counter<'status'>;
  /** Prometheus text of the primary and of every worker */
  render(): Promise<{ contentType: string; body: string }>;
}

export interface FrontDoorMetrics {
  readonly uploads: Counter<'endpoint' | 'status'>;
  readonly uploadBytes: Counter<'endpoint'>;
  readonly requests: Counter<'route' | 'status'>;
  readonly tlsFailures: Counter<'reason'>;
}

export function createPrimaryMetrics(sources: { spool: SpoolGaugeSource; nodes: NodesGaugeSource }): PrimaryMetrics {
  const registry = new Registry();
  const aggregator = new AggregatorRegistry();
  collectDefaultMetrics({ register: registry, prefix: 'onerelay_primary_' });
  const reports = new Counter({
    name: 'rudder_relayd_reports_total',
    help: 'Agent run reports',
    labelNames: ['status'] as const,
    registers: [registry],
  });
  for (const status of ['invalid', 'ok', 'error', 'forward_ok', 'forward_error']) reports.inc({ status }, 0);
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
  return {
    reports,
    inventories,
    async render() {
      const own = await registry.metrics();
      let workers = '';
      try {
        workers = await aggregator.clusterMetrics();
      } catch {
        // no worker answered (none running yet): the primary's own figures still count
      }
      return { contentType: registry.contentType, body: `${own}\n${workers}` };
    },
  };
}

export function createFrontDoorMetrics(): FrontDoorMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  // constructing one installs the worker side of prom-client's cluster protocol (answers the primary)
  new AggregatorRegistry();
  AggregatorRegistry.setRegistries([registry]);
  return {
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
