// The activity module on a real database file: the ledger balances even when a worker's upload event
// arrives after the file already left the queue, pruning keeps what is still queued, and a database from a
// newer onerelay is left alone (recording off) rather than rewritten.

import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { pino } from 'pino';
import { createActivity, type ActivityEvent } from '../../src/activity/index.js';
import { openDatabase } from '../../src/activity/database.js';
import { createStore } from '../../src/activity/store.js';
import { tempDir } from '../support/tmp.js';

const NODE = 'd7000000-0000-4000-8000-000000000001';
const log = pino({ level: 'silent' });

function activityIn(directory: string, queueDepth = () => 0) {
  return createActivity(
    { enabled: true, stateDirectory: directory, ledgerRetentionMs: 7 * 86_400_000, detailWindowMs: 3_600_000, runIntervalMs: 300_000 },
    { nodes: () => [{ id: NODE, hostname: 'd.example' }], isKnownNode: (id) => id === NODE, queueDepth, log },
  );
}

const upload = (file: string, at: number): ActivityEvent => ({
  t: 'request', at, action: 'report', node: NODE, ip: '192.0.2.7', status: 201, code: undefined, queue: 'reports', file, bytes: 100, sha256: 'ab'.repeat(32), created: true,
});
const forwarded = (file: string, at: number): ActivityEvent[] => [
  { t: 'forward', at, queue: 'reports', file, result: 'ok', status: 201, ms: 5 },
  { t: 'outcome', at, queue: 'reports', file, receivedAt: at - 10, size: 100, outcome: 'forwarded' },
];

t.test('an upload event that arrives after its file was forwarded completes the same row', async (t) => {
  const activity = activityIn(tempDir(t));
  await activity.start();
  t.teardown(() => activity.stop());
  const now = Date.now();
  const file = `2026-12-06T07:00:00+00:00@${NODE}.log.gz`;
  // the primary's forward and outcome are written first (flush of everything), the worker's batch later
  for (const event of forwarded(file, now)) activity.record(event);
  activity.flush();
  activity.record(upload(file, now - 5));
  activity.flush();
  const ledger = activity.ledger({ file });
  t.equal(ledger.files.length, 1, 'one row, not two');
  t.equal(ledger.files[0]?.state, 'forwarded');
  t.equal(ledger.files[0]?.sha256, 'ab'.repeat(32), 'with the upload details');
  t.equal(ledger.files[0]?.ip, '192.0.2.7');
  t.equal(ledger.files[0]?.attempts, 1, 'the forward attempt kept');
  t.equal(ledger.files[0]?.upstream_status, 201);
  t.equal(ledger.balance.received, 1);
  t.equal(ledger.balance.forwarded, 1);
  t.ok(ledger.balance.balanced);
});

t.test('a replaced upload (204) is one file; a refused report is the node’s last report outcome', async (t) => {
  let queued = 1;
  const activity = activityIn(tempDir(t), () => queued);
  await activity.start();
  t.teardown(() => activity.stop());
  const now = Date.now();
  const file = `2026-12-06T07:05:00+00:00@${NODE}.log.gz`;
  activity.record(upload(file, now));
  activity.record({ ...(upload(file, now + 1) as ActivityEvent & { t: 'request' }), created: false, bytes: 120 });
  activity.flush();
  let ledger = activity.ledger({ file });
  t.equal(ledger.files.length, 1);
  t.equal(ledger.files[0]?.size, 120, 'the replacement is what is queued');
  t.equal(ledger.balance.pending, 1);
  t.ok(ledger.balance.balanced, 'one file queued, one pending');
  activity.record({ t: 'outcome', at: now + 2, queue: 'reports', file, receivedAt: now, outcome: 'failed', reason: 'bad-signature' });
  queued = 0;
  activity.flush();
  ledger = activity.ledger({ file });
  t.equal(ledger.files[0]?.state, 'failed');
  t.equal(ledger.files[0]?.reason, 'bad-signature');
  t.equal(ledger.balance.failed, 1);
  t.ok(ledger.balance.balanced);
  t.equal(activity.node(NODE)?.node.report.outcome, 'refused: bad-signature');
});

t.test('a database of schema 1 (before the reasons column) is migrated in place, its rows kept', async (t) => {
  const directory = tempDir(t);
  const first = activityIn(directory);
  await first.start();
  await first.stop();
  const { default: Database } = await import('better-sqlite3');
  // back to what the first schema was (client_failures without reasons), with a row in it
  const db = new Database(join(directory, 'activity.sqlite'));
  db.exec('ALTER TABLE client_failures DROP COLUMN reasons');
  db.prepare(`INSERT INTO client_failures VALUES ('192.0.2.5', 4, ?, ?, 'tls: old')`).run(Date.now() - 2000, Date.now() - 1000);
  db.pragma('user_version = 1');
  db.close();
  const activity = activityIn(directory);
  await activity.start();
  t.teardown(() => activity.stop());
  t.equal(activity.isRecording(), true, 'recording');
  t.match(activity.clientFailures().find((f) => f.ip === '192.0.2.5'), { count: 4, last_reason: 'tls: old', reasons: {} }, 'the old row, its reasons unknown');
  activity.record({ t: 'tls', at: Date.now(), ip: '192.0.2.5', reason: 'new' });
  activity.flush();
  t.match(activity.clientFailures().find((f) => f.ip === '192.0.2.5'), { count: 5, last_reason: 'tls: new', reasons: { 'tls: new': 1 } }, 'counted from then on');
});

t.test('a database written by a newer onerelay is left alone', async (t) => {
  const directory = tempDir(t);
  const first = activityIn(directory);
  await first.start();
  await first.stop();
  const { default: Database } = await import('better-sqlite3');
  const db = new Database(join(directory, 'activity.sqlite'));
  db.pragma('user_version = 99');
  db.close();
  const size = statSync(join(directory, 'activity.sqlite')).size;
  const second = activityIn(directory);
  await second.start();
  t.teardown(() => second.stop());
  t.equal(second.isRecording(), false, 'recording off');
  t.match(second.status().details ?? '', /schema 99, newer than this onerelay/);
  t.equal(statSync(join(directory, 'activity.sqlite')).size, size, 'the file is untouched');
  t.notOk(existsSync(join(directory, 'activity.sqlite.broken')), 'not moved aside');
  t.throws(() => second.nodes(), { code: 'RELAY_ERR_ACTIVITY_DATABASE' });
});

t.test('ids a client makes up get no node record: the refusal is counted for its address', async (t) => {
  const activity = activityIn(tempDir(t));
  await activity.start();
  t.teardown(() => activity.stop());
  const made = 'f0000000-0000-4000-8000-000000000bad';
  activity.record({ t: 'request', at: Date.now(), action: 'report', node: made, ip: '192.0.2.9', status: 401, code: 'RELAY_ERR_AUTH_REQUIRED', queue: 'reports', file: `2026-12-06T07:00:00+00:00@${made}.log.gz` });
  activity.flush();
  t.equal(activity.node(made), undefined, 'no record for the made-up id');
  t.same(activity.nodes().map((n) => n.id), [NODE], 'only the nodes list');
  const failure = activity.clientFailures().find((f) => f.ip === '192.0.2.9');
  t.equal(failure?.count, 1);
  t.equal(failure?.last_reason, 'RELAY_ERR_AUTH_REQUIRED');
  t.equal(activity.refusals().get('RELAY_ERR_AUTH_REQUIRED'), 1, 'still counted in the metric');
});

t.test('client failures: every reason counted per address, bounded, not only the last one', async (t) => {
  const activity = activityIn(tempDir(t));
  await activity.start();
  t.teardown(() => activity.stop());
  const at = Date.now();
  activity.record({ t: 'tls', at, ip: '192.0.2.7', reason: 'no certificate' });
  activity.record({ t: 'request', at: at + 1, action: 'other', node: undefined, ip: '192.0.2.7', status: 401, code: 'RELAY_ERR_AUTH_REQUIRED' });
  activity.record({ t: 'tls', at: at + 2, ip: '192.0.2.7', reason: 'no certificate' });
  for (let i = 0; i < 12; i++) activity.record({ t: 'tls', at: at + 3 + i, ip: '192.0.2.8', reason: `reason ${i}` });
  activity.flush();
  const failures = new Map(activity.clientFailures().map((f) => [f.ip, f]));
  t.match(failures.get('192.0.2.7'), { count: 3, last_reason: 'tls: no certificate' });
  t.same(failures.get('192.0.2.7')?.reasons, { 'tls: no certificate': 2, RELAY_ERR_AUTH_REQUIRED: 1 }, 'both reasons, each counted');
  const many = failures.get('192.0.2.8')!;
  t.equal(many.count, 12);
  t.equal(Object.keys(many.reasons).length, 8, 'at most 8 reasons per address');
  t.equal(many.reasons['other'], 5, 'the rest counted together');
  t.equal(Object.values(many.reasons).reduce((a, b) => a + b, 0), 12, 'every failure counted once');
});

t.test('pruning: per-file rows and node events older than the detail window go, queued files and hourly totals stay', async (t) => {
  const directory = tempDir(t);
  const first = activityIn(directory, () => 1);
  await first.start();
  const old = Date.now() - 3 * 3_600_000; // detail window is 1 h here
  const done = `2026-12-06T04:00:00+00:00@${NODE}.log.gz`;
  const waiting = `2026-12-06T04:00:01+00:00@${NODE}.log.gz`;
  first.record(upload(done, old));
  for (const event of forwarded(done, old + 1000)) first.record(event);
  first.record(upload(waiting, old));
  first.record({ t: 'request', at: old, action: 'policy', node: NODE, ip: '192.0.2.7', status: 304, code: undefined });
  await first.stop();
  // the prune runs at start (then every 10 minutes)
  const second = activityIn(directory, () => 1);
  await second.start();
  t.teardown(() => second.stop());
  const ledger = second.ledger({});
  t.same(ledger.files.map((f) => f.file), [waiting], 'the forwarded file’s row is gone, the queued one stays');
  t.equal(ledger.balance.received, 2, 'hourly totals kept for the retention');
  t.equal(ledger.balance.forwarded, 1);
  t.ok(ledger.balance.balanced, 'and still balance against the spool');
  t.same(second.node(NODE)?.events, [], 'old node events pruned');
  t.equal(second.node(NODE)?.node.policy.outcome, '304', 'the node record stays');
});

t.test('the counters of a batch are summed: per minute and per hour, as one upsert per event gave them', async (t) => {
  const { db } = await openDatabase(tempDir(t), log);
  t.teardown(() => db.close());
  const store = createStore(db, (id) => id === NODE);
  const minuteStart = Math.floor(Date.now() / 3_600_000) * 3_600_000 + 60_000;
  const file = (n: number) => `2026-12-06T07:00:0${n}+00:00@${NODE}.log.gz`;
  const forward = (n: number, at: number, ms: number): ActivityEvent[] => [
    { t: 'forward', at, queue: 'reports', file: file(n), result: 'ok', status: 201, ms },
    { t: 'outcome', at, queue: 'reports', file: file(n), receivedAt: at, size: 100, outcome: 'forwarded' },
  ];
  // one batch over two minutes, then a second batch into the first minute again
  store.write([upload(file(1), minuteStart), ...forward(1, minuteStart + 1, 10), ...forward(2, minuteStart + 2, 20), ...forward(3, minuteStart + 60_000, 40)], 3, minuteStart + 60_000);
  store.write(forward(4, minuteStart + 5, 30), undefined, minuteStart + 60_000);
  const points = store.minutes(0);
  const at = (minute: number, series: string) => points.find((p) => p.minute === minute && p.series === series);
  t.match(at(minuteStart, 'forwards'), { value: 3, n: 3 });
  t.match(at(minuteStart, 'latency'), { value: 60, n: 3 }, 'latency sums and counts');
  t.match(at(minuteStart + 60_000, 'forwards'), { value: 1, n: 1 });
  t.match(at(minuteStart, 'uploads'), { value: 1, n: 1 });
  t.match(at(minuteStart + 60_000, 'queue'), { value: 3 }, 'the queue depth sample is a maximum, not summed');
  const hour = store.hours(0).find((h) => h.queue === 'reports');
  t.match(hour, { received: 4, forwarded: 4, bytes: 100 }, 'four files received (one upload, three seen first as they left), four forwarded');
});
