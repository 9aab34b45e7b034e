// Opening the activity database: better-sqlite3 loaded lazily (a relay without it still runs), WAL, a
// schema version with migrations (as the spool's format marker), and a corrupt or unreadable file moved
// aside and recreated: the relay's main job never depends on this database.

import { mkdir, rename } from 'node:fs/promises';
import { join } from 'node:path';
import type BetterSqlite3 from 'better-sqlite3';
import type { Logger } from 'pino';
import { RelayError, messageOf } from '../errors.js';

export type Database = BetterSqlite3.Database;

export const DATABASE_FILE = 'activity.sqlite';

/**
 * MIGRATIONS[i] brings the schema from version i to i + 1; the version is in PRAGMA user_version.
 * Times are milliseconds since the epoch; sha256 is stored as 32 bytes (half the size of hex).
 */
const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
  -- one row per node: the last time and outcome of each action, the last refusal, where it was seen
  CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    last_seen_at INTEGER, last_ip TEXT,
    report_at INTEGER, report_outcome TEXT, report_ok_at INTEGER,
    inventory_at INTEGER, inventory_outcome TEXT, inventory_ok_at INTEGER,
    policy_at INTEGER, policy_outcome TEXT, policy_ok_at INTEGER,
    cfengine_at INTEGER, cfengine_outcome TEXT, cfengine_ok_at INTEGER, agent_version TEXT,
    remote_run_at INTEGER, remote_run_outcome TEXT, remote_run_ok_at INTEGER,
    shared_files_at INTEGER, shared_files_outcome TEXT, shared_files_ok_at INTEGER,
    refusal_at INTEGER, refusal_code TEXT, refusal_ip TEXT, refusal_action TEXT
  ) WITHOUT ROWID;
  -- what each node did, kept for activity.detail_window
  CREATE TABLE node_events (at INTEGER NOT NULL, node TEXT NOT NULL, action TEXT NOT NULL, outcome TEXT NOT NULL, code TEXT, ip TEXT);
  CREATE INDEX node_events_node ON node_events (node, at);
  CREATE INDEX node_events_at ON node_events (at);
  -- handshakes that failed before any node was known
  CREATE TABLE client_failures (ip TEXT PRIMARY KEY, count INTEGER NOT NULL, first_at INTEGER NOT NULL, last_at INTEGER NOT NULL, last_reason TEXT) WITHOUT ROWID;
  -- one row per received file, kept for activity.detail_window (longer while still queued)
  CREATE TABLE ledger (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL, file TEXT NOT NULL, node TEXT,
    received_at INTEGER NOT NULL, size INTEGER, sha256 BLOB, ip TEXT,
    state TEXT NOT NULL,
    verified_at INTEGER, reason TEXT,
    done_at INTEGER, attempts INTEGER NOT NULL DEFAULT 0, upstream_status INTEGER, upstream_ms INTEGER
  );
  CREATE INDEX ledger_file ON ledger (file);
  CREATE INDEX ledger_node ON ledger (node, received_at);
  CREATE INDEX ledger_received ON ledger (received_at);
  -- per hour of reception, for activity.ledger_retention: received = forwarded + failed + skipped + expired + still queued
  CREATE TABLE ledger_hours (
    hour INTEGER NOT NULL, queue TEXT NOT NULL,
    received INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0, replaced INTEGER NOT NULL DEFAULT 0,
    forwarded INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0, skipped INTEGER NOT NULL DEFAULT 0, expired INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, queue)
  ) WITHOUT ROWID;
  -- per-minute series of the status page's charts (last 24 h): value summed, n counted (latency = value / n)
  CREATE TABLE minutes (minute INTEGER NOT NULL, series TEXT NOT NULL, value REAL NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (minute, series)) WITHOUT ROWID;
  `,
  `
  -- per address, how many failures of each reason (a JSON object), not only the last one
  ALTER TABLE client_failures ADD COLUMN reasons TEXT;
  `,
];
export const SCHEMA_VERSION = MIGRATIONS.length;

type DatabaseConstructor = typeof BetterSqlite3;

/** better-sqlite3 is a native module: a missing or broken build disables recording, not the relay */
async function loadDriver(): Promise<DatabaseConstructor> {
  try {
    const module = (await import('better-sqlite3')) as { default: DatabaseConstructor };
    return module.default;
  } catch (error) {
    throw new RelayError('RELAY_ERR_ACTIVITY_DATABASE', `better-sqlite3 could not be loaded: ${messageOf(error)}`, { cause: error });
  }
}

function migrate(db: Database, path: string): void {
  const version = Number(db.pragma('user_version', { simple: true }));
  if (version > SCHEMA_VERSION) {
    // a newer onerelay wrote it: keep it for that version rather than destroying its data
    throw new RelayError('RELAY_ERR_ACTIVITY_DATABASE', `${path} has schema ${version}, newer than this onerelay (${SCHEMA_VERSION}): recording disabled`);
  }
  for (let v = version; v < SCHEMA_VERSION; v += 1) {
    db.transaction(() => {
      db.exec(MIGRATIONS[v] ?? '');
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
  db.prepare("INSERT OR IGNORE INTO meta (key, value) VALUES ('created_at', ?)").run(String(Date.now()));
}

function openAt(Driver: DatabaseConstructor, path: string): Database {
  const db = new Driver(path);
  try {
    db.pragma('journal_mode = WAL');
    // WAL + NORMAL: a crash loses at most the last transactions (one batch), never the database
    db.pragma('synchronous = NORMAL');
    db.pragma('busy_timeout = 2000');
    // reading the schema touches the first pages: a file that is not a database fails here
    db.prepare('SELECT count(*) FROM sqlite_master').get();
    migrate(db, path);
    return db;
  } catch (error) {
    db.close();
    throw error;
  }
}

function isCorruption(error: unknown): boolean {
  const code = (error as { code?: unknown }).code;
  return typeof code === 'string' && /^SQLITE_(CORRUPT|NOTADB|CANTOPEN|IOERR)/.test(code);
}

/** moves the database (and its WAL) aside so that a fresh one can be made; the old file is evidence */
export async function moveAside(path: string, log: Logger, why: string): Promise<string> {
  const aside = `${path}.broken-${new Date().toISOString().replace(/[:.]/g, '-')}`;
  for (const suffix of ['', '-wal', '-shm']) await rename(`${path}${suffix}`, `${aside}${suffix}`).catch(() => undefined);
  log.error({ event: 'activity_database_moved', code: 'RELAY_ERR_ACTIVITY_DATABASE', path, moved_to: aside, error: why }, 'activity database unreadable: moved aside, starting a new one');
  return aside;
}

export async function openDatabase(directory: string, log: Logger): Promise<{ db: Database; path: string }> {
  const Driver = await loadDriver();
  const path = join(directory, DATABASE_FILE);
  try {
    await mkdir(directory, { recursive: true, mode: 0o750 });
  } catch (error) {
    throw new RelayError('RELAY_ERR_ACTIVITY_DATABASE', `cannot create ${directory} (activity.state_directory): ${messageOf(error)}`, { cause: error });
  }
  try {
    return { db: openAt(Driver, path), path };
  } catch (error) {
    if (error instanceof RelayError || !isCorruption(error)) {
      if (error instanceof RelayError) throw error;
      throw new RelayError('RELAY_ERR_ACTIVITY_DATABASE', `cannot open ${path}: ${messageOf(error)}`, { cause: error });
    }
    await moveAside(path, log, messageOf(error));
    return { db: openAt(Driver, path), path };
  }
}

export { isCorruption };
