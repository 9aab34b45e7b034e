// Face of the activity module (issue 19): why is node X silent, and did file F reach upstream? A small
// database owned by the primary process records what the relay sees of every node (uploads, policy
// downloads, CFEngine connections with the agent version, remote runs, shared files, refusals) and a
// delivery ledger of every report and inventory. Other modules only get an ActivitySink; nothing else
// touches the database. The relay's job never depends on it: when it cannot be opened, recording is off.

import type { FastifyPluginAsync } from 'fastify';
import type { Logger } from 'pino';
import { RelayError, messageOf } from '../errors.js';
import { isCorruption, moveAside, openDatabase, SCHEMA_VERSION, type Database } from './database.js';
import { NODE_ACTIONS, type ActivityEvent, type ActivitySink, type LedgerQueue, type NodeAction } from './events.js';
import { createStore, type ClientFailure, type LedgerHour, type LedgerRow, type MinutePoint, type NodeEventRow, type Store } from './store.js';

export { createActivityBatcher, requestEvent, NO_ACTIVITY, NODE_ACTIONS } from './events.js';
export type { ActivityBatcher, ActivityEvent, ActivitySink, LedgerQueue, NodeAction, RequestFacts } from './events.js';
export { nodesTable, traceTimeline } from './timeline.js';
export { recordingRunner } from './remote-runs.js';
import { ACTIVITY_STYLE, renderActivitySections } from './page.js';
export { ACTIVITY_STYLE, renderActivitySections };

export interface ActivityOptions {
  readonly enabled: boolean;
  readonly stateDirectory: string;
  readonly ledgerRetentionMs: number;
  readonly detailWindowMs: number;
  readonly runIntervalMs: number;
}

export interface ActivityDeps {
  /** the nodes below this relay (the nodes list), so that a node never seen still shows, as silent */
  readonly nodes: () => ReadonlyArray<{ readonly id: string; readonly hostname: string }>;
  /**
   * whether an id is a node of the nodes list (below this relay, sub-relays' nodes included): ids taken from
   * file names and URLs are the client's word, so only known ones get a node record; refusals naming
   * another id are counted for the client address instead (a client cannot fill the table with made-up ids)
   */
  readonly isKnownNode: (id: string) => boolean;
  /** files waiting in the spool queues now: the ledger's "still queued" is checked against it */
  readonly queueDepth: () => number;
  readonly log: Logger;
}

export interface ActionView {
  readonly at: string | null;
  readonly outcome: string | null;
  readonly ok_at: string | null;
}

export interface NodeView {
  readonly id: string;
  readonly hostname: string | null;
  /** no report received for twice the run interval */
  readonly silent: boolean;
  readonly last_seen_at: string | null;
  readonly last_ip: string | null;
  readonly agent_version: string | null;
  readonly report: ActionView;
  readonly inventory: ActionView;
  readonly policy: ActionView;
  readonly cfengine: ActionView;
  readonly remote_run: ActionView;
  readonly shared_files: ActionView;
  readonly refusal: { readonly at: string; readonly code: string; readonly ip: string | null; readonly action: string | null } | null;
}

export interface LedgerView {
  readonly files: ReadonlyArray<LedgerRow & { readonly received: string; readonly done: string | null }>;
  readonly hours: ReadonlyArray<LedgerHour & { readonly pending: number; readonly at: string }>;
  /** received = forwarded + failed + skipped + expired + pending; pending is checked against the spool */
  readonly balance: {
    readonly received: number;
    readonly forwarded: number;
    readonly failed: number;
    readonly skipped: number;
    readonly expired: number;
    readonly pending: number;
    readonly queued_now: number;
    readonly balanced: boolean;
  };
}

export interface ChartData {
  readonly from: number;
  readonly to: number;
  readonly points: readonly MinutePoint[];
}

export interface Activity extends ActivitySink {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** true while the database is open and recording */
  isRecording(): boolean;
  /** write what is buffered now (tests, shutdown) */
  flush(): void;
  nodes(): NodeView[];
  node(id: string): { node: NodeView; events: NodeEventRow[]; files: LedgerView['files'] } | undefined;
  ledger(filter: { file?: string; node?: string; since?: number }): LedgerView;
  clientFailures(): ClientFailure[];
  charts(): ChartData;
  /** onerelay_nodes_silent */
  silentCount(): number;
  /** refusals seen since start, by RELAY_ERR_… code (and TLS): onerelay_refusals_total */
  refusals(): ReadonlyMap<string, number>;
  status(): { status: 'success' | 'error'; details?: string; recording: boolean; path: string | undefined; schema: number };
  /** the status page's sections (nodes table, charts) for a query string (sort=, q=) */
  pageSections(query: Readonly<Record<string, string | undefined>>): string;
  /** the local API routes (GET nodes, nodes/:id, ledger), to register under /rudder/relay-api/1 */
  readonly routes: FastifyPluginAsync;
}

/** one transaction per second at most: its fixed cost (WAL frames, commit) is shared by every event of that second */
const FLUSH_MS = 1_000;
/** longer than a worker's batch (250 ms) plus IPC: see flush() */
const HOLD_PRIMARY_MS = 1_000;
/** a queue-depth sample is written at least this often, events or not (the chart needs it) */
const DEPTH_SAMPLE_MS = 20_000;
const PRUNE_MS = 10 * 60_000;
/** events held in memory while a write fails; older ones are dropped */
const MAX_PENDING = 100_000;
const SILENT_CACHE_MS = 5_000;

const iso = (at: number | null | undefined): string | null => (at === null || at === undefined ? null : new Date(at).toISOString());

/** a node's database row as the API shows it, formatted once when the row changes */
interface NodeRecordView {
  readonly reportOkAt: number | undefined;
  readonly view: Omit<NodeView, 'id' | 'hostname' | 'silent'>;
  /** `view` as JSON without its braces: GET /nodes joins these instead of serialising 10,000 objects */
  readonly json: string;
}

const NO_ACTION: ActionView = { at: null, outcome: null, ok_at: null };
const EMPTY_RECORD: NodeRecordView['view'] = {
  last_seen_at: null,
  last_ip: null,
  agent_version: null,
  report: NO_ACTION,
  inventory: NO_ACTION,
  policy: NO_ACTION,
  cfengine: NO_ACTION,
  remote_run: NO_ACTION,
  shared_files: NO_ACTION,
  refusal: null,
};

function recordView(row: Record<string, unknown>): NodeRecordView {
  const action = (name: NodeAction): ActionView => ({
    at: iso(row[`${name}_at`] as number | null),
    outcome: (row[`${name}_outcome`] as string | null | undefined) ?? null,
    ok_at: iso(row[`${name}_ok_at`] as number | null),
  });
  const refusalAt = row['refusal_at'] as number | null | undefined;
  const view: NodeRecordView['view'] = {
    last_seen_at: iso(row['last_seen_at'] as number | null),
    last_ip: (row['last_ip'] as string | null | undefined) ?? null,
    agent_version: (row['agent_version'] as string | null | undefined) ?? null,
    ...(Object.fromEntries(NODE_ACTIONS.map((name) => [name, action(name)])) as Record<NodeAction, ActionView>),
    refusal:
        refusalAt === null || refusalAt === undefined
          ? null
          : { at: iso(refusalAt) ?? '', code: String(row['refusal_code']), ip: (row['refusal_ip'] as string | null) ?? null, action: (row['refusal_action'] as string | null) ?? null },
  };
  return { reportOkAt: (row['report_ok_at'] as number | null | undefined) ?? undefined, view, json: JSON.stringify(view).slice(1, -1) };
}

const EMPTY_JSON = JSON.stringify(EMPTY_RECORD).slice(1, -1);

export function createActivity(options: ActivityOptions, deps: ActivityDeps): Activity {
  const log = deps.log.child({ module: 'activity' });
  let db: Database | undefined;
  let store: Store | undefined;
  let path: string | undefined;
  let problem: string | undefined = options.enabled ? undefined : 'recording disabled (activity.enabled = false)';
  let pending: ActivityEvent[] = [];
  let flushTimer: NodeJS.Timeout | undefined;
  let pruneTimer: NodeJS.Timeout | undefined;
  let lastDepthAt = 0;
  let recovering = false;
  const refusals = new Map<string, number>();
  /**
   * every node's record as the API shows it, kept in step with the database after each write (re-read for
   * the nodes touched) so that GET /nodes does no SQL and no date formatting: 10,000 nodes in well under 100 ms
   */
  const records = new Map<string, NodeRecordView>();
  const refreshRecords = (rows: readonly Record<string, unknown>[]) => {
    for (const row of rows) records.set(String(row['id']), recordView(row));
  };
  const reloadRecords = () => {
    records.clear();
    if (store !== undefined) refreshRecords(store.nodes() as Array<Record<string, unknown>>);
  };
  let silentCache: { at: number; count: number } | undefined;

  const open = async () => {
    const opened = await openDatabase(options.stateDirectory, log);
    db = opened.db;
    path = opened.path;
    store = createStore(db, deps.isKnownNode);
    problem = undefined;
    reloadRecords();
  };

  /** a write failed: a corrupt database is moved aside and made again, anything else drops the batch */
  const onWriteError = (error: unknown) => {
    log.error({ event: 'activity_write_failed', code: 'RELAY_ERR_ACTIVITY_DATABASE', error: messageOf(error) }, 'activity events not recorded');
    if (!isCorruption(error) || recovering || path === undefined) return;
    recovering = true;
    const broken = path;
    try {
      store?.close();
    } catch {
      // closing a broken database may fail too; it is moved aside anyway
    }
    store = undefined;
    db = undefined;
    void moveAside(broken, log, messageOf(error))
      .then(open)
      .catch((reopenError: unknown) => {
        problem = messageOf(reopenError);
        log.error({ event: 'activity_unavailable', code: 'RELAY_ERR_ACTIVITY_DATABASE', error: problem }, 'activity recording disabled');
      })
      .finally(() => {
        recovering = false;
      });
  };

  const flush = (all = false) => {
    if (store === undefined) return;
    const now = Date.now();
    const sampleDepth = now - lastDepthAt >= DEPTH_SAMPLE_MS;
    if (pending.length === 0 && !sampleDepth) return;
    // the primary's own forward and outcome events wait a little: a worker's upload event of the same file
    // may still be in its batch, and the ledger must see "received" first
    const cutoff = all ? Infinity : now - HOLD_PRIMARY_MS;
    const events: ActivityEvent[] = [];
    const held: ActivityEvent[] = [];
    for (const event of pending) ((event.t === 'forward' || event.t === 'outcome') && event.at > cutoff ? held : events).push(event);
    pending = held;
    try {
      const touched = store.write(events, sampleDepth ? deps.queueDepth() : undefined, now);
      if (sampleDepth) lastDepthAt = now;
      if (touched.size > 0) refreshRecords(store.nodesByIds([...touched]) as Array<Record<string, unknown>>);
    } catch (error) {
      onWriteError(error);
    }
  };

  const prune = () => {
    if (store === undefined) return;
    try {
      const started = Date.now();
      const removed = store.prune(started, options.detailWindowMs, options.ledgerRetentionMs);
      if (removed > 0) reloadRecords();
      if (removed > 0) log.info({ event: 'activity_pruned', rows: removed, ms: Date.now() - started }, 'old activity rows removed');
    } catch (error) {
      onWriteError(error);
    }
  };

  const unavailable = (): RelayError => new RelayError('RELAY_ERR_ACTIVITY_DATABASE', `activity recording is not available: ${problem ?? 'not started'}`);
  const need = (): Store => {
    if (store === undefined) throw unavailable();
    return store;
  };

  const viewOf = (id: string, hostname: string | null, record: NodeRecordView | undefined, now: number, since: number): NodeView => ({
    id,
    hostname,
    silent: now - (record?.reportOkAt ?? since) > 2 * options.runIntervalMs,
    ...(record?.view ?? EMPTY_RECORD),
  });

  /** JSON of a node list, from the preformatted records (see NodeRecordView.json) */
  const nodesJson = (list: readonly NodeView[]): string =>
    `[${list.map((n) => `{"id":${JSON.stringify(n.id)},"hostname":${JSON.stringify(n.hostname)},"silent":${n.silent},${records.get(n.id)?.json ?? EMPTY_JSON}}`).join(',')}]`;

  const nodes = (): NodeView[] => {
    const s = need();
    const now = Date.now();
    // a node never seen is silent once the database has been watching for two run intervals
    const since = s.createdAt();
    const listed = new Set<string>();
    const views: NodeView[] = [];
    for (const entry of deps.nodes()) {
      views.push(viewOf(entry.id, entry.hostname, records.get(entry.id), now, since));
      listed.add(entry.id);
    }
    // seen but not in the nodes list (a sub-relay's nodes, or a node removed since)
    for (const [id, record] of records) if (!listed.has(id)) views.push(viewOf(id, null, record, now, since));
    // silent first, then refused (most recent refusal first), then by id; plain comparisons (localeCompare
    // alone cost 100 ms at 10,000 nodes)
    const text = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
    return views.sort((a, b) => Number(b.silent) - Number(a.silent) || text(b.refusal?.at ?? '', a.refusal?.at ?? '') || text(a.id, b.id));
  };

  const filesView = (rows: readonly LedgerRow[]): LedgerView['files'] => rows.map((row) => ({ ...row, received: iso(row.received_at) ?? '', done: iso(row.done_at) }));

  const ledger = (filter: { file?: string; node?: string; since?: number }): LedgerView => {
    const s = need();
    flush(true); // a read sees everything received so far (a late upload event completes its row: store.ts)
    const files = filesView(s.ledger(filter, 1_000));
    const hours = s.hours(filter.since ?? Date.now() - options.ledgerRetentionMs).map((h) => ({
      ...h,
      at: iso(h.hour) ?? '',
      pending: h.received - h.forwarded - h.failed - h.skipped - h.expired,
    }));
    const sum = (key: 'received' | 'forwarded' | 'failed' | 'skipped' | 'expired' | 'pending') => hours.reduce((total, h) => total + h[key], 0);
    const queued = deps.queueDepth();
    return {
      files,
      hours,
      balance: {
        received: sum('received'),
        forwarded: sum('forwarded'),
        failed: sum('failed'),
        skipped: sum('skipped'),
        expired: sum('expired'),
        pending: sum('pending'),
        queued_now: queued,
        balanced: sum('pending') === queued,
      },
    };
  };

  const routes: FastifyPluginAsync = async (api) => {
    const json = 'application/json';
    const answer = async (reply: import('fastify').FastifyReply, action: string, produce: () => unknown) => {
      try {
        return reply.header('content-type', json).send(JSON.stringify({ action, result: 'success', data: produce() }));
      } catch (error) {
        const relayError = error instanceof RelayError ? error : new RelayError('RELAY_ERR_INTERNAL', messageOf(error));
        return reply
          .code(relayError.status)
          .header('content-type', json)
          .send(JSON.stringify({ action, result: 'error', code: relayError.code, errorDetails: relayError.message }));
      }
    };
    api.get('/nodes', async (request, reply) => {
      try {
        const query = request.query as Record<string, string | undefined>;
        const silentOnly = query['silent'];
        // pages for a large relay (10,000 nodes are ~6 MiB of JSON): ?limit=N&offset=M, in the list's order
        const count = (name: 'limit' | 'offset'): number | undefined => {
          const text = query[name];
          if (text === undefined) return undefined;
          if (!/^\d{1,9}$/.test(text)) throw new RelayError('RELAY_ERR_BAD_REQUEST', `${name}=${text}: expected a whole number`);
          return Number(text);
        };
        const limit = count('limit');
        const offset = count('offset') ?? 0;
        const all = nodes();
        const matching = silentOnly === 'true' || silentOnly === '' ? all.filter((n) => n.silent) : all;
        const list = limit === undefined && offset === 0 ? matching : matching.slice(offset, limit === undefined ? undefined : offset + limit);
        // the envelope written by hand around the preformatted nodes: 10,000 nodes are ~4 MiB of JSON
        const body = `{"action":"getNodes","result":"success","data":{"total":${matching.length},"offset":${offset},"nodes":${nodesJson(list)},"client_failures":${JSON.stringify(need().clientFailures(50))}}}`;
        return reply.header('content-type', json).send(body);
      } catch (error) {
        return answer(reply, 'getNodes', () => {
          throw error;
        });
      }
    });
    api.get('/nodes/:id', async (request, reply) =>
      answer(reply, 'getNode', () => {
        flush(true);
        const id = (request.params as { id: string }).id;
        const found = activity.node(id);
        if (found === undefined) throw new RelayError('RELAY_ERR_NOT_FOUND', `node ${id} is neither in the nodes list nor seen by this relay`);
        return found;
      }),
    );
    api.get('/ledger', async (request, reply) =>
      answer(reply, 'getLedger', () => {
        const query = request.query as Record<string, string | undefined>;
        let since: number | undefined;
        if (query['since'] !== undefined) {
          since = /^\d+$/.test(query['since']) ? Number(query['since']) * 1000 : Date.parse(query['since']);
          if (Number.isNaN(since)) throw new RelayError('RELAY_ERR_BAD_REQUEST', `since=${query['since']}: expected an ISO 8601 date or seconds since the epoch`);
        }
        return ledger({
          ...(query['file'] !== undefined ? { file: query['file'] } : {}),
          ...(query['node'] !== undefined ? { node: query['node'] } : {}),
          ...(since !== undefined ? { since } : {}),
        });
      }),
    );
  };

  const activity: Activity = {
    record(event) {
      if (!options.enabled) return;
      if (event.t === 'request' && event.code !== undefined && event.status >= 400) refusals.set(event.code, (refusals.get(event.code) ?? 0) + 1);
      else if (event.t === 'tls') refusals.set('TLS', (refusals.get('TLS') ?? 0) + 1);
      if (store === undefined && !recovering) return;
      if (pending.length >= MAX_PENDING) pending.shift();
      pending.push(event);
    },
    async start() {
      if (!options.enabled) {
        log.info({ event: 'activity_disabled' }, 'activity recording disabled (activity.enabled = false)');
        return;
      }
      try {
        await open();
        log.info({ event: 'activity_ready', path, schema: SCHEMA_VERSION }, 'activity database open');
      } catch (error) {
        problem = messageOf(error);
        log.warn({ event: 'activity_unavailable', code: 'RELAY_ERR_ACTIVITY_DATABASE', error: problem }, 'activity recording disabled: the relay runs without it');
        return;
      }
      prune();
      flushTimer = setInterval(flush, FLUSH_MS).unref();
      pruneTimer = setInterval(prune, PRUNE_MS).unref();
    },
    async stop() {
      if (flushTimer !== undefined) clearInterval(flushTimer);
      if (pruneTimer !== undefined) clearInterval(pruneTimer);
      flushTimer = pruneTimer = undefined;
      flush(true);
      try {
        store?.close();
      } catch {
        // closing at shutdown: nothing more to record anyway
      }
      store = undefined;
    },
    isRecording: () => store !== undefined,
    flush: () => flush(true),
    nodes,
    node(id) {
      const s = need();
      const row = s.node(id) as Record<string, unknown> | undefined;
      const entry = deps.nodes().find((n) => n.id === id);
      if (row === undefined && entry === undefined) return undefined;
      return {
        node: viewOf(id, entry?.hostname ?? null, row === undefined ? undefined : recordView(row), Date.now(), s.createdAt()),
        events: s.nodeEvents(id, 200),
        files: filesView(s.ledger({ node: id }, 100)),
      };
    },
    ledger,
    clientFailures: () => need().clientFailures(50),
    charts() {
      const to = Date.now();
      const from = to - 24 * 3_600_000;
      return { from, to, points: need().minutes(from) };
    },
    silentCount() {
      if (store === undefined) return 0;
      const now = Date.now();
      if (silentCache === undefined || now - silentCache.at > SILENT_CACHE_MS) silentCache = { at: now, count: nodes().filter((n) => n.silent).length };
      return silentCache.count;
    },
    refusals: () => refusals,
    pageSections(query) {
      if (store === undefined) {
        const empty = { received: 0, forwarded: 0, failed: 0, skipped: 0, expired: 0, pending: 0, queued_now: 0, balanced: true };
        return renderActivitySections({ nodes: [], clientFailures: [], charts: { from: 0, to: 0, points: [] }, balance: empty, query, unavailable: problem ?? 'not started' });
      }
      flush(true);
      return renderActivitySections({ nodes: nodes(), clientFailures: need().clientFailures(10), charts: activity.charts(), balance: ledger({ file: '' }).balance, query });
    },
    status: () => ({
      ...(problem === undefined || !options.enabled ? { status: 'success' as const } : { status: 'error' as const, details: problem }),
      recording: store !== undefined,
      path,
      schema: SCHEMA_VERSION,
    }),
    routes,
  };
  return activity;
}

export type { ClientFailure, LedgerHour, LedgerRow, MinutePoint, NodeEventRow };
export type { LedgerQueue as ActivityQueue };
