// The compact events other modules emit about nodes and files, and the two ways they travel: a worker
// batches them over IPC to the primary (never a write on the upload path), the primary buffers its own.

/** what a node did, as the relay saw it (one column group per action in the nodes table) */
export type NodeAction = 'report' | 'inventory' | 'policy' | 'cfengine' | 'remote_run' | 'shared_files';
export const NODE_ACTIONS: readonly NodeAction[] = ['report', 'inventory', 'policy', 'cfengine', 'remote_run', 'shared_files'];

/** the spool queues a file goes through (spool's SpoolQueue, repeated: events cross process boundaries as plain data) */
export type LedgerQueue = 'reports' | 'inventories' | 'inventory-updates';

export type ActivityEvent =
  /** an HTTPS request about a node: upload, policy download, shared file, or a refusal */
  | {
      readonly t: 'request';
      readonly at: number;
      readonly action: NodeAction | 'other';
      readonly node: string | undefined;
      readonly ip: string;
      readonly status: number;
      readonly code: string | undefined;
      /** uploads: the spool queue, file name; stored ones also size, sha256 and whether it was new */
      readonly queue?: LedgerQueue;
      readonly file?: string;
      readonly bytes?: number;
      readonly sha256?: string;
      readonly created?: boolean;
    }
  /** a TLS handshake that failed: no node known yet, counted per client address */
  | { readonly t: 'tls'; readonly at: number; readonly ip: string; readonly reason: string }
  /** a CFEngine connection closed: agent version from its version line; node undefined = key not known */
  | { readonly t: 'cfengine'; readonly at: number; readonly node: string | undefined; readonly ip: string; readonly agent: string | undefined; readonly ok: boolean; readonly reason: string }
  | { readonly t: 'remote_run'; readonly at: number; readonly node: string; readonly ok: boolean; readonly detail: string }
  /** one forwarding request upstream */
  | { readonly t: 'forward'; readonly at: number; readonly queue: LedgerQueue; readonly file: string; readonly result: 'ok' | 'transient' | 'permanent'; readonly status: number | undefined; readonly ms: number }
  /** a file left the queue (or retention removed it) */
  | {
      readonly t: 'outcome';
      readonly at: number;
      readonly queue: LedgerQueue;
      readonly file: string;
      /** the spool file's mtime: when it was received, for files the ledger has no row of */
      readonly receivedAt: number;
      /** the spool file's size, for files the ledger has no row of */
      readonly size?: number;
      readonly outcome: 'forwarded' | 'failed' | 'skipped' | 'expired';
      readonly reason?: string;
    };

/** where modules send their events; never throws, never blocks */
export interface ActivitySink {
  record(event: ActivityEvent): void;
}

export const NO_ACTIVITY: ActivitySink = { record: () => undefined };

/** what the front door knows about a finished request */
export interface RequestFacts {
  readonly method: string;
  readonly path: string;
  readonly status: number;
  readonly node: string | undefined;
  readonly ip: string;
  readonly code: string | undefined;
  readonly upload?: { readonly bytes: number; readonly sha256: string; readonly created: boolean };
}

const UUID = '[0-9A-Za-z][0-9A-Za-z_-]*';
const REPORT_NODE = new RegExp(`@(${UUID})\\.log(?:\\.gz|\\.zip)?$`);
// Rudder inventories are named <hostname>-<uuid>.ocs[.gz|.sign]
const INVENTORY_NODE = /-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|root)\.ocs/i;
const UPLOAD = /^\/(reports|inventories|inventory-updates)\/([^/]+)$/;
const POLICIES = new RegExp(`^/(?:policies|rudder/relay-api(?:/1)?/policies)/(${UUID})/`);
const SHARED_FILES = new RegExp(`^/rudder/relay-api(?:/1)?/shared-files/${UUID}/(${UUID})/`);

function decoded(name: string): string {
  try {
    return decodeURIComponent(name);
  } catch {
    return name;
  }
}

/** the node a file is about, from its name (reports: date@uuid.log.gz; inventories: host-uuid.ocs) */
export function nodeOfFile(queue: LedgerQueue, file: string): string | undefined {
  const match = queue === 'reports' ? REPORT_NODE.exec(file) : INVENTORY_NODE.exec(file);
  return match?.[1];
}

/** a front-door request as an activity event; undefined for requests that say nothing about a node */
export function requestEvent(facts: RequestFacts, at = Date.now()): ActivityEvent | undefined {
  const path = facts.path;
  const base = { t: 'request' as const, at, ip: facts.ip, status: facts.status, code: facts.code };
  const upload = facts.method === 'PUT' ? UPLOAD.exec(path) : null;
  if (upload !== null) {
    const queue = upload[1] as LedgerQueue;
    const file = decoded(upload[2] ?? '');
    return {
      ...base,
      action: queue === 'reports' ? 'report' : 'inventory',
      // the file's node first: a sub-relay uploads the reports of the nodes below it
      node: nodeOfFile(queue, file) ?? facts.node,
      queue,
      file,
      ...(facts.upload ?? {}),
    };
  }
  const policy = POLICIES.exec(path);
  if (policy !== null && (facts.method === 'GET' || facts.method === 'HEAD')) return { ...base, action: 'policy', node: facts.node ?? policy[1] };
  const shared = SHARED_FILES.exec(path);
  if (shared !== null) return { ...base, action: 'shared_files', node: facts.node ?? shared[1] };
  // any other refusal still tells why a node (or an address) gets nowhere
  if (facts.code !== undefined && (facts.status === 401 || facts.status === 403)) return { ...base, action: 'other', node: facts.node };
  return undefined;
}

/** flush a worker's batch this often, or when it holds this many events */
const BATCH_MS = 250;
const BATCH_EVENTS = 512;
/** events held while the primary is not reachable; older ones are dropped (recording is best effort) */
const MAX_HELD = 20_000;

export interface ActivityBatcher extends ActivitySink {
  flush(): void;
  /** sends what is left; resolves once it is handed to the IPC channel (a worker exits right after) */
  stop(): Promise<void>;
}

/** a worker's sink: events go to the primary in batches over IPC; `send` calls `done` once the batch is out */
export function createActivityBatcher(send: (events: ActivityEvent[], done: () => void) => void): ActivityBatcher {
  let batch: ActivityEvent[] = [];
  let timer: NodeJS.Timeout | undefined;
  const flush = (done: () => void = () => undefined) => {
    if (timer !== undefined) clearTimeout(timer);
    timer = undefined;
    if (batch.length === 0) return done();
    const events = batch;
    batch = [];
    try {
      send(events, done);
    } catch {
      // the primary is gone (shutdown): these events are the "last batch" a stop may lose
      done();
    }
  };
  return {
    record(event) {
      if (batch.length >= MAX_HELD) batch.shift();
      batch.push(event);
      if (batch.length >= BATCH_EVENTS) flush();
      else timer ??= setTimeout(flush, BATCH_MS).unref();
    },
    flush: () => flush(),
    stop: () => new Promise<void>((resolve) => flush(resolve)),
  };
}
