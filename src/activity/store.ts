// Writes and reads of the activity database. Writes come in batches (one transaction per flush), so a
// crash loses at most the batch in memory. Size stays bounded: per-file rows and per-node events live for
// the detail window, hourly totals and node records for the retention (README "Node activity").

import type { Statement } from 'better-sqlite3';
import type { Database } from './database.js';
import { NODE_ACTIONS, nodeOfFile, type ActivityEvent, type LedgerQueue, type NodeAction } from './events.js';

const HOUR_MS = 3_600_000;
const MINUTE_MS = 60_000;
/** the charts show 24 h; one more hour so that the first bar is whole */
const MINUTES_KEPT_MS = 25 * HOUR_MS;
/** rows deleted per statement while pruning, so that a flush never waits long behind it */
const PRUNE_CHUNK = 5_000;

export interface NodeRecord {
  readonly id: string;
  readonly last_seen_at: number | null;
  readonly last_ip: string | null;
  readonly agent_version: string | null;
  readonly refusal_at: number | null;
  readonly refusal_code: string | null;
  readonly refusal_ip: string | null;
  readonly refusal_action: string | null;
  readonly [column: string]: string | number | null;
}

export interface NodeEventRow {
  readonly at: number;
  readonly node: string;
  readonly action: string;
  readonly outcome: string;
  readonly code: string | null;
  readonly ip: string | null;
}

export interface LedgerRow {
  readonly queue: LedgerQueue;
  readonly file: string;
  readonly node: string | null;
  readonly received_at: number;
  readonly size: number | null;
  readonly sha256: string | null;
  readonly ip: string | null;
  readonly state: 'received' | 'forwarded' | 'failed' | 'skipped' | 'expired';
  readonly verified_at: number | null;
  readonly reason: string | null;
  readonly done_at: number | null;
  readonly attempts: number;
  readonly upstream_status: number | null;
  readonly upstream_ms: number | null;
}

export interface LedgerHour {
  readonly hour: number;
  readonly queue: LedgerQueue;
  readonly received: number;
  readonly bytes: number;
  readonly replaced: number;
  readonly forwarded: number;
  readonly failed: number;
  readonly skipped: number;
  readonly expired: number;
}

export interface ClientFailure {
  readonly ip: string;
  readonly count: number;
  readonly first_at: number;
  readonly last_at: number;
  readonly last_reason: string | null;
  /** failures per reason since the address's first one (at most MAX_FAILURE_REASONS reasons, the rest under "other") */
  readonly reasons: Readonly<Record<string, number>>;
}

/** distinct reasons kept per client address: a scanner trying every kind of handshake stays one bounded row */
const MAX_FAILURE_REASONS = 8;
const OTHER_REASONS = 'other';

export interface MinutePoint {
  readonly minute: number;
  readonly series: string;
  readonly value: number;
  readonly n: number;
}

export interface Store {
  /** resolves to the ids of the nodes whose record changed */
  write(events: readonly ActivityEvent[], queueDepth: number | undefined, now: number): Set<string>;
  nodesByIds(ids: readonly string[]): NodeRecord[];
  prune(now: number, detailWindowMs: number, retentionMs: number): number;
  createdAt(): number;
  nodes(): NodeRecord[];
  node(id: string): NodeRecord | undefined;
  nodeEvents(id: string, limit: number): NodeEventRow[];
  ledger(filter: { file?: string; node?: string; since?: number }, limit: number): LedgerRow[];
  hours(since: number): LedgerHour[];
  clientFailures(limit: number): ClientFailure[];
  minutes(since: number): MinutePoint[];
  close(): void;
}

function hourOf(at: number): number {
  return Math.floor(at / HOUR_MS) * HOUR_MS;
}

/** the outcome text of an HTTPS request: its status, and the refusal code if any */
function requestOutcome(status: number, code: string | undefined): string {
  return code === undefined ? String(status) : `${status} ${code}`;
}

export function createStore(db: Database, isKnownNode: (id: string) => boolean): Store {
  const nodeUpdates = new Map<NodeAction, Statement>();
  for (const action of NODE_ACTIONS) {
    nodeUpdates.set(
      action,
      db.prepare(`INSERT INTO nodes (id, last_seen_at, last_ip, ${action}_at, ${action}_outcome, ${action}_ok_at)
        VALUES (@node, @at, @ip, @at, @outcome, CASE WHEN @ok THEN @at END)
        ON CONFLICT (id) DO UPDATE SET
          last_seen_at = max(coalesce(last_seen_at, 0), excluded.last_seen_at),
          last_ip = coalesce(excluded.last_ip, last_ip),
          ${action}_at = excluded.${action}_at, ${action}_outcome = excluded.${action}_outcome,
          ${action}_ok_at = coalesce(excluded.${action}_ok_at, ${action}_ok_at)`),
    );
  }
  const nodeById = db.prepare('SELECT * FROM nodes WHERE id = ?');
  const agentVersion = db.prepare('UPDATE nodes SET agent_version = ? WHERE id = ?');
  const refusal = db.prepare(`INSERT INTO nodes (id, refusal_at, refusal_code, refusal_ip, refusal_action) VALUES (@node, @at, @code, @ip, @action)
    ON CONFLICT (id) DO UPDATE SET refusal_at = excluded.refusal_at, refusal_code = excluded.refusal_code, refusal_ip = excluded.refusal_ip, refusal_action = excluded.refusal_action`);
  const nodeEvent = db.prepare('INSERT INTO node_events (at, node, action, outcome, code, ip) VALUES (?, ?, ?, ?, ?, ?)');
  const clientFailureUpsert = db.prepare(`INSERT INTO client_failures (ip, count, first_at, last_at, last_reason, reasons) VALUES (@ip, 1, @at, @at, @reason, @reasons)
    ON CONFLICT (ip) DO UPDATE SET count = count + 1, last_at = excluded.last_at, last_reason = excluded.last_reason, reasons = excluded.reasons`);
  const clientFailureReasons = db.prepare<[string], { reasons: string | null }>('SELECT reasons FROM client_failures WHERE ip = ?');
  const clientFailure = (failure: { ip: string; at: number; reason: string }): void => {
    const counts = new Map(Object.entries(parseReasons(clientFailureReasons.get(failure.ip)?.reasons ?? null)));
    const key = counts.has(failure.reason) || counts.size < MAX_FAILURE_REASONS - 1 ? failure.reason : OTHER_REASONS;
    counts.set(key, (counts.get(key) ?? 0) + 1);
    clientFailureUpsert.run({ ...failure, reasons: JSON.stringify(Object.fromEntries(counts)) });
  };
  const received = db.prepare(`INSERT INTO ledger (queue, file, node, received_at, size, sha256, ip, state) VALUES (?, ?, ?, ?, ?, ?, ?, 'received')`);
  // a replaced upload (WebDAV 204) is the same file waiting in the queue: one ledger entry, updated
  const replacedRow = db.prepare(`UPDATE ledger SET size = ?, sha256 = ?, ip = ? WHERE id = (SELECT id FROM ledger WHERE file = ? AND queue = ? AND state = 'received' ORDER BY id DESC LIMIT 1)`);
  const latestRow = db.prepare<[string, string], { id: number; received_at: number; state: string; attempts: number }>(
    'SELECT id, received_at, state, attempts FROM ledger WHERE file = ? AND queue = ? ORDER BY id DESC LIMIT 1',
  );
  const lateRow = db.prepare('INSERT INTO ledger (queue, file, node, received_at, size, state, done_at, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)');
  const lateMatch = db.prepare<[string, string, number], { id: number }>(
    'SELECT id FROM ledger WHERE file = ? AND queue = ? AND ip IS NULL AND sha256 IS NULL AND coalesce(done_at, received_at) >= ? ORDER BY id DESC LIMIT 1',
  );
  // received_at stays: the row's hour already counted it (and its outcome is counted in that same hour)
  const fillLate = db.prepare('UPDATE ledger SET size = ?, sha256 = ?, ip = ?, node = coalesce(node, ?) WHERE id = ?');
  const forwardAttempt = db.prepare('UPDATE ledger SET attempts = attempts + 1, verified_at = coalesce(verified_at, ?), upstream_status = ?, upstream_ms = ? WHERE id = ?');
  const finished = db.prepare('UPDATE ledger SET state = ?, done_at = ?, reason = ? WHERE id = ?');
  // the counters of a batch are summed here and written once per (hour, queue, column) and (minute, series) at
  // its end: a forwarded report used to cost three or four of these upserts besides its ledger row's own
  // statements, the largest part of the ledger's CPU in the primary (bench/pipeline)
  const HOUR_COLUMNS = ['received', 'replaced', 'forwarded', 'failed', 'skipped', 'expired'] as const;
  const hourAddN = new Map<string, Statement>();
  for (const column of HOUR_COLUMNS) {
    hourAddN.set(
      column,
      db.prepare(`INSERT INTO ledger_hours (hour, queue, ${column}, bytes) VALUES (?, ?, ?, ?)
        ON CONFLICT (hour, queue) DO UPDATE SET ${column} = ${column} + excluded.${column}, bytes = bytes + excluded.bytes`),
    );
  }
  const minuteAddN = db.prepare(`INSERT INTO minutes (minute, series, value, n) VALUES (?, ?, ?, ?)
    ON CONFLICT (minute, series) DO UPDATE SET value = value + excluded.value, n = n + excluded.n`);
  const minuteMax = db.prepare(`INSERT INTO minutes (minute, series, value, n) VALUES (?, ?, ?, 1)
    ON CONFLICT (minute, series) DO UPDATE SET value = max(value, excluded.value)`);
  const pendingHours = new Map<string, { column: string; hour: number; queue: string; count: number; bytes: number }>();
  const pendingMinutes = new Map<string, { minute: number; series: string; value: number; n: number }>();
  const hourAdd = (column: string, hour: number, queue: string, bytes: number): void => {
    if (!hourAddN.has(column)) return;
    const key = `${column}\0${hour}\0${queue}`;
    const pending = pendingHours.get(key);
    if (pending === undefined) pendingHours.set(key, { column, hour, queue, count: 1, bytes });
    else {
      pending.count += 1;
      pending.bytes += bytes;
    }
  };
  const flushCounters = (): void => {
    for (const { column, hour, queue, count, bytes } of pendingHours.values()) hourAddN.get(column)?.run(hour, queue, count, bytes);
    for (const { minute: at, series, value, n } of pendingMinutes.values()) minuteAddN.run(at, series, value, n);
    pendingHours.clear();
    pendingMinutes.clear();
  };

  let touched = new Set<string>();
  const nodeOf = (node: string | undefined, action: NodeAction, at: number, ip: string | null, outcome: string, ok: boolean) => {
    if (node === undefined || !isKnownNode(node)) return;
    touched.add(node);
    nodeUpdates.get(action)?.run({ node, at, ip, outcome, ok: ok ? 1 : 0 });
    nodeEvent.run(at, node, action, outcome, null, ip);
  };
  const minute = (at: number, series: string, value = 1): void => {
    const start = Math.floor(at / MINUTE_MS) * MINUTE_MS;
    const key = `${start}\0${series}`;
    const pending = pendingMinutes.get(key);
    if (pending === undefined) pendingMinutes.set(key, { minute: start, series, value, n: 1 });
    else {
      pending.value += value;
      pending.n += 1;
    }
  };

  const writeOne = (event: ActivityEvent): void => {
    switch (event.t) {
      case 'request': {
        const ok = event.status < 400;
        if (event.code !== undefined && !ok) {
          minute(event.at, `refusal:${event.code}`);
          if (event.node !== undefined && isKnownNode(event.node)) {
            refusal.run({ node: event.node, at: event.at, code: event.code, ip: event.ip, action: event.action });
            touched.add(event.node);
            if (event.action === 'other') nodeEvent.run(event.at, event.node, 'refusal', String(event.status), event.code, event.ip);
          } else {
            clientFailure({ ip: event.ip, at: event.at, reason: event.code });
          }
        }
        if (event.action !== 'other') {
          nodeOf(event.node, event.action, event.at, event.ip, requestOutcome(event.status, event.code), ok);
        }
        if (event.queue !== undefined && event.file !== undefined && ok && event.bytes !== undefined) {
          minute(event.at, 'uploads');
          const sha = event.sha256 === undefined ? null : Buffer.from(event.sha256, 'hex');
          const replaced = event.created === false ? replacedRow.run(event.bytes, sha, event.ip, event.file, event.queue).changes > 0 : false;
          // the file already left the queue and was recorded then (its upload event came late): complete that row
          const late = replaced ? undefined : lateMatch.get(event.file, event.queue, event.at - 60_000);
          if (late !== undefined) {
            fillLate.run(event.bytes, sha, event.ip, event.node ?? null, late.id);
          } else if (replaced) {
            hourAdd('replaced', hourOf(event.at), event.queue, 0);
          } else {
            received.run(event.queue, event.file, event.node ?? null, event.at, event.bytes, sha, event.ip);
            hourAdd('received', hourOf(event.at), event.queue, event.bytes);
          }
        }
        return;
      }
      case 'tls':
        clientFailure({ ip: event.ip, at: event.at, reason: `tls: ${event.reason}` });
        minute(event.at, 'refusal:TLS');
        return;
      case 'cfengine': {
        if (event.node === undefined) {
          clientFailure({ ip: event.ip, at: event.at, reason: `cfengine: ${event.reason}` });
          return;
        }
        nodeOf(event.node, 'cfengine', event.at, event.ip, event.ok ? 'ok' : event.reason, event.ok);
        if (event.agent !== undefined) agentVersion.run(event.agent, event.node);
        return;
      }
      case 'remote_run':
        nodeOf(event.node, 'remote_run', event.at, null, event.detail, event.ok);
        return;
      case 'forward': {
        let id = latestRow.get(event.file, event.queue);
        if (id === undefined || id.state !== 'received') {
          // its upload event is not here yet (still in a worker's batch, or lost): the row starts now and the
          // upload event completes it (lateMatch)
          const received = hourOf(event.at);
          const inserted = lateRow.run(event.queue, event.file, nodeOfFile(event.queue, event.file) ?? null, event.at, null, 'received', null, null);
          hourAdd('received', received, event.queue, 0);
          id = { id: Number(inserted.lastInsertRowid), received_at: event.at, state: 'received', attempts: 0 };
        }
        forwardAttempt.run(event.at, event.status ?? null, Math.round(event.ms), id.id);
        if (event.result === 'ok') {
          minute(event.at, 'forwards');
          minute(event.at, 'latency', event.ms);
        }
        return;
      }
      case 'outcome': {
        const row = latestRow.get(event.file, event.queue);
        if (row !== undefined && row.state !== 'received') return; // already counted (a partner handled twice)
        // counted in the hour the file was received, so that each hour balances on its own
        const receivedAt = row?.received_at ?? event.receivedAt;
        // the queue says "done" for a report it skipped too (skip_event_types): nothing went upstream
        const outcome = event.outcome === 'forwarded' && row !== undefined && row.attempts === 0 ? 'skipped' : event.outcome;
        if (row !== undefined) finished.run(outcome, event.at, event.reason ?? null, row.id);
        else {
          // a file the ledger never saw arrive (events lost in a crash, recording off, a backlog older than the
          // database): recorded as it leaves, so that every hour still balances
          lateRow.run(event.queue, event.file, nodeOfFile(event.queue, event.file) ?? null, receivedAt, event.size ?? null, outcome, event.at, event.reason ?? null);
          hourAdd('received', hourOf(receivedAt), event.queue, event.size ?? 0);
        }
        hourAdd(outcome, hourOf(receivedAt), event.queue, 0);
        if (event.queue === 'reports' && event.outcome === 'failed') {
          // a report refused after upload (signature, unknown node, upstream refusal) is the node's last report outcome
          const node = nodeOfFile(event.queue, event.file);
          if (node !== undefined) nodeOf(node, 'report', event.at, null, `refused: ${event.reason ?? 'failed'}`, false);
        }
        return;
      }
    }
  };

  const writeBatch = db.transaction((events: readonly ActivityEvent[], queueDepth: number | undefined, now: number) => {
    // a batch that threw midway is rolled back: its sums with it
    pendingHours.clear();
    pendingMinutes.clear();
    for (const event of events) writeOne(event);
    flushCounters();
    if (queueDepth !== undefined) minuteMax.run(Math.floor(now / MINUTE_MS) * MINUTE_MS, 'queue', queueDepth);
  });

  const pruneStatements = [
    db.prepare(`DELETE FROM ledger WHERE id IN (SELECT id FROM ledger WHERE received_at < @detail AND state != 'received' LIMIT ${PRUNE_CHUNK})`),
    // a file still queued keeps its row until the retention, then the spool's own retention has removed it
    db.prepare(`DELETE FROM ledger WHERE id IN (SELECT id FROM ledger WHERE received_at < @retention LIMIT ${PRUNE_CHUNK})`),
    db.prepare(`DELETE FROM node_events WHERE rowid IN (SELECT rowid FROM node_events WHERE at < @detail LIMIT ${PRUNE_CHUNK})`),
    db.prepare('DELETE FROM ledger_hours WHERE hour < @retention'),
    db.prepare('DELETE FROM minutes WHERE minute < @minutes'),
    db.prepare('DELETE FROM client_failures WHERE last_at < @retention'),
    db.prepare('DELETE FROM nodes WHERE coalesce(last_seen_at, refusal_at, 0) < @retention'),
  ];

  const createdAt = Number((db.prepare("SELECT value FROM meta WHERE key = 'created_at'").get() as { value: string } | undefined)?.value ?? Date.now());
  const hex = <T extends { sha256: unknown }>(row: T): T => ({ ...row, sha256: Buffer.isBuffer(row.sha256) ? row.sha256.toString('hex') : null });

  return {
    write(events, queueDepth, now) {
      touched = new Set();
      writeBatch(events, queueDepth, now);
      return touched;
    },
    nodesByIds(ids) {
      const rows: NodeRecord[] = [];
      for (const id of ids) {
        const row = nodeById.get(id) as NodeRecord | undefined;
        if (row !== undefined) rows.push(row);
      }
      return rows;
    },
    prune(now, detailWindowMs, retentionMs) {
      const bounds = { detail: now - detailWindowMs, retention: now - retentionMs, minutes: now - MINUTES_KEPT_MS };
      let removed = 0;
      for (const statement of pruneStatements) {
        let changes: number;
        do {
          changes = statement.run(bounds).changes;
          removed += changes;
        } while (changes === PRUNE_CHUNK);
      }
      return removed;
    },
    createdAt: () => createdAt,
    nodes: () => db.prepare('SELECT * FROM nodes').all() as NodeRecord[],
    node: (id) => db.prepare('SELECT * FROM nodes WHERE id = ?').get(id) as NodeRecord | undefined,
    nodeEvents: (id, limit) => db.prepare('SELECT * FROM node_events WHERE node = ? ORDER BY at DESC LIMIT ?').all(id, limit) as NodeEventRow[],
    ledger(filter, limit) {
      const where: string[] = [];
      const args: Array<string | number> = [];
      if (filter.file !== undefined) (where.push('file = ?'), args.push(filter.file));
      if (filter.node !== undefined) (where.push('node = ?'), args.push(filter.node));
      if (filter.since !== undefined) (where.push('received_at >= ?'), args.push(filter.since));
      const sql = `SELECT queue, file, node, received_at, size, sha256, ip, state, verified_at, reason, done_at, attempts, upstream_status, upstream_ms
        FROM ledger ${where.length > 0 ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY received_at DESC, id DESC LIMIT ?`;
      return (db.prepare(sql).all(...args, limit) as LedgerRow[]).map(hex);
    },
    hours: (since) => db.prepare('SELECT * FROM ledger_hours WHERE hour >= ? ORDER BY hour, queue').all(hourOf(since)) as LedgerHour[],
    clientFailures: (limit) =>
      (db.prepare('SELECT * FROM client_failures ORDER BY last_at DESC LIMIT ?').all(limit) as Array<Omit<ClientFailure, 'reasons'> & { reasons: string | null }>).map((row) => ({
        ...row,
        reasons: parseReasons(row.reasons),
      })),
    minutes: (since) => db.prepare('SELECT * FROM minutes WHERE minute >= ? ORDER BY minute').all(since) as MinutePoint[],
    close: () => db.close(),
  };
}

/** a row's reasons column: {} for rows written before it existed (or unreadable) */
function parseReasons(text: string | null): Record<string, number> {
  if (text === null) return {};
  try {
    const parsed = JSON.parse(text) as unknown;
    return typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed) ? (parsed as Record<string, number>) : {};
  } catch {
    return {};
  }
}
