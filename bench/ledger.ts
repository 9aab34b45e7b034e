// Issue 19's budgets for the activity database (a benchmark, not a test):
//  1. recording cost per event, in the primary's writer (batched transactions, as the relay flushes them);
//  2. database size and GET /nodes latency for 10,000 nodes with 5-minute runs (2.9 million reports a day),
//     measured on BENCH_LEDGER_RUNS runs and projected to the steady state of the default windows;
//  3. the relay with and without recording in the same run (activity.enabled), CPU per uploaded and
//     forwarded report: the budget is ≤ 2 %.
// Small by default (the machine is shared): BENCH_LEDGER_RUNS=2, BENCH_LEDGER_REPORTS=150, 2 rounds.

import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import Fastify from 'fastify';
import { pino } from 'pino';
import { createActivity, type ActivityEvent } from '../src/activity/index.js';
import { cachedAgentIdentity, sampleRunlog, signedGzippedReport, type AgentIdentity } from '../test/support/agent.js';
import { inParallel, putFile } from '../test/support/put.js';
import { DAV_PASSWORD, RELAY_ID, startRelay } from '../test/support/relay.js';
import { startUpstream } from '../test/support/upstream.js';
import { cpuTimeOfTreesMs } from './lib/processes.js';
import { writeFigures } from './lib/output.js';
import { median } from './lib/stats.js';

export const description = 'activity database: recording cost per event, size and GET /nodes at 10,000 nodes, relay CPU with vs without recording';

const NODES = 10_000;
const RUN_MS = 5 * 60_000;
const DETAIL_WINDOW_MS = 6 * 3_600_000;
const RUNS = Number(process.env['BENCH_LEDGER_RUNS'] ?? 2);
const REPORTS = Number(process.env['BENCH_LEDGER_REPORTS'] ?? 150);
const ROUNDS = Number(process.env['BENCH_LEDGER_ROUNDS'] ?? 2);

const nodeId = (i: number) => `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`;

/** what one agent run leaves: its report's upload, forward and outcome, and a policy check on 5309 */
function runEvents(i: number, at: number): ActivityEvent[] {
  const file = `${new Date(at).toISOString().slice(0, 19)}+00:00@${nodeId(i)}.log.gz`;
  const ip = `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;
  return [
    { t: 'cfengine', at, node: nodeId(i), ip, agent: 'cf-agent 3.21.4', ok: true, reason: 'ok' },
    { t: 'request', at: at + 1, action: 'report', node: nodeId(i), ip, status: 201, code: undefined, queue: 'reports', file, bytes: 4_000 + (i % 500), sha256: randomBytes(32).toString('hex'), created: true },
    { t: 'forward', at: at + 20, queue: 'reports', file, result: 'ok', status: 201, ms: 12 },
    { t: 'outcome', at: at + 21, queue: 'reports', file, receivedAt: at + 1, size: 4_000, outcome: 'forwarded' },
  ];
}

async function store(): Promise<Record<string, unknown>> {
  const directory = mkdtempSync(join(tmpdir(), 'onerelay-bench-ledger-'));
  try {
    const nodes = Array.from({ length: NODES }, (_, i) => ({ id: nodeId(i), hostname: `node-${i}.example` }));
    const activity = createActivity(
      { enabled: true, stateDirectory: directory, ledgerRetentionMs: 7 * 86_400_000, detailWindowMs: DETAIL_WINDOW_MS, runIntervalMs: RUN_MS },
      { nodes: () => nodes, isKnownNode: () => true, queueDepth: () => 0, log: pino({ level: 'warn' }) },
    );
    await activity.start();
    const start = Date.now() - RUNS * RUN_MS;
    let events = 0;
    let recordNs = 0n;
    let writeMs = 0;
    for (let run = 0; run < RUNS; run += 1) {
      for (let i = 0; i < NODES; i += 1) {
        const batch = runEvents(i, start + run * RUN_MS + Math.floor((i / NODES) * RUN_MS));
        const before = process.hrtime.bigint();
        for (const event of batch) activity.record(event);
        recordNs += process.hrtime.bigint() - before;
        events += batch.length;
        // the relay flushes every 500 ms: at 2.9 M reports a day that is ~17 runs, ~70 events per transaction
        if (i % 17 === 16) {
          const flushStart = performance.now();
          activity.flush();
          writeMs += performance.now() - flushStart;
        }
      }
    }
    const flushStart = performance.now();
    activity.flush();
    writeMs += performance.now() - flushStart;

    // over real HTTP on loopback, as the CLI and the status page's users ask
    const api = Fastify();
    await api.register(activity.routes, { prefix: '/rudder/relay-api/1' });
    const address = await api.listen({ host: '127.0.0.1', port: 0 });
    const latencies: number[] = [];
    let bodyBytes = 0;
    for (let k = 0; k < 7; k += 1) {
      const t0 = performance.now();
      const answer = await (await fetch(`${address}/rudder/relay-api/1/nodes`)).text();
      latencies.push(performance.now() - t0);
      bodyBytes = answer.length;
    }
    const nodeT0 = performance.now();
    await (await fetch(`${address}/rudder/relay-api/1/nodes/${nodeId(4242)}`)).text();
    const nodeMs = performance.now() - nodeT0;
    const cpu = process.cpuUsage();
    for (let k = 0; k < 5; k += 1) await (await fetch(`${address}/rudder/relay-api/1/nodes`)).text();
    const used = process.cpuUsage(cpu);
    const nodesCpuMs = (used.user + used.system) / 1000 / 5;
    const pruneT0 = performance.now();
    await activity.stop();
    await api.close();

    // size per report from the rows written, projected to the windows' steady state
    const { default: Database } = await import('better-sqlite3');
    const db = new Database(join(directory, 'activity.sqlite'));
    db.pragma('wal_checkpoint(TRUNCATE)');
    const tableBytes = (name: string) => (db.prepare('SELECT sum(pgsize) AS bytes FROM dbstat WHERE name = ? OR name IN (SELECT name FROM sqlite_master WHERE tbl_name = ? AND type = \'index\')').get(name, name) as { bytes: number | null }).bytes ?? 0;
    const reports = RUNS * NODES;
    const perReport = { ledger: tableBytes('ledger') / reports, node_events: tableBytes('node_events') / (reports * 2) };
    const fixed = tableBytes('nodes') + tableBytes('ledger_hours') + tableBytes('minutes') + tableBytes('meta');
    db.close();
    const reportsInWindow = (DETAIL_WINDOW_MS / RUN_MS) * NODES;
    const projected = fixed + reportsInWindow * (perReport.ledger + perReport.node_events * 2);
    const hoursRows = 7 * 24 * 3;
    const figures = {
      nodes: NODES,
      runs_simulated: RUNS,
      events: events,
      record_ns_per_event: Number(recordNs / BigInt(events)),
      write_us_per_event: Math.round((writeMs * 1000) / events),
      write_us_per_report: Math.round((writeMs * 1000) / reports),
      db_file_bytes: statSync(join(directory, 'activity.sqlite')).size,
      bytes_per_report_ledger: Math.round(perReport.ledger),
      bytes_per_node_event: Math.round(perReport.node_events),
      projected_bytes_default_windows: Math.round(projected),
      projected_hour_rows_7days: hoursRows,
      get_nodes_ms_median: Math.round(median(latencies) * 10) / 10,
      get_nodes_cpu_ms: Math.round(nodesCpuMs * 10) / 10,
      get_nodes_body_bytes: bodyBytes,
      get_node_ms: Math.round(nodeMs * 10) / 10,
      stop_ms: Math.round(performance.now() - pruneT0),
    };
    console.log('  store, 10,000 nodes, 5-minute runs:');
    console.log(`    record() on the hot path      ${figures.record_ns_per_event} ns/event`);
    console.log(`    write (batched transactions)  ${figures.write_us_per_event} µs/event, ${figures.write_us_per_report} µs per agent run (4 events)`);
    console.log(`    at 2.9 M reports a day         ${((figures.write_us_per_report * 2_880_000) / 1e6 / 86_400 * 100).toFixed(2)} % of one core`);
    console.log(`    bytes per report (ledger row)  ${figures.bytes_per_report_ledger}, per node event ${figures.bytes_per_node_event}`);
    console.log(`    projected size, 6 h of files + 7 days of hours: ${(projected / 2 ** 20).toFixed(0)} MiB (budget 1 GiB)`);
    console.log(`    GET /nodes (10,000 nodes)      ${figures.get_nodes_ms_median} ms median (${figures.get_nodes_cpu_ms} ms of CPU, server and client), ${(bodyBytes / 2 ** 20).toFixed(1)} MiB; GET /nodes/<id> ${figures.get_node_ms} ms`);
    console.log(`    machine load average           ${loadavg()[0]?.toFixed(1)} on ${availableParallelism()} cores`);
    return figures;
  } finally {
    rmSync(directory, { recursive: true, force: true });
  }
}

/** relay CPU (primary + worker) per report uploaded and forwarded, with and without recording */
async function relayCost(): Promise<Record<string, unknown>> {
  const teardowns: Array<() => unknown> = [];
  const t = { teardown: (fn: () => unknown) => teardowns.push(fn) };
  try {
    const agents = await Promise.all(Array.from({ length: 10 }, (_, i) => cachedAgentIdentity(`be000000-0000-4000-8000-${String(i).padStart(12, '0')}`)));
    const nodesList = Object.fromEntries(agents.map((a) => [a.nodeId, { hostname: 'n.example', 'key-hash': a.sha256Pin, 'policy-server': RELAY_ID }]));
    const samples: Record<'with' | 'without', number[]> = { with: [], without: [] };
    /** the primary process alone (its threads included), where the database lives */
    const primarySamples: Record<'with' | 'without', number[]> = { with: [], without: [] };
    const ownCpuMs = (pid: number) => {
      const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
      return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
    };
    let round = 0;
    for (let r = 0; r < ROUNDS; r += 1) {
      for (const mode of ['without', 'with'] as const) {
        round += 1;
        const upstream = await startUpstream(t, { password: DAV_PASSWORD });
        const relay = await startRelay(t, {
          workers: 1,
          upstream,
          nodesList,
          nodesCerts: agents.map((a) => a.certificatePem).join(''),
          activityToml: mode === 'with' ? '' : 'enabled = false\n',
        });
        const reports = await Promise.all(
          Array.from({ length: REPORTS }, async (_, i) => {
            const node = agents[i % agents.length] as AgentIdentity;
            const date = new Date(Date.UTC(2026, 11, 6, 0, 0, 0) + (round * REPORTS + i) * 1000);
            return { ...(await signedGzippedReport(node, sampleRunlog(node.nodeId, { start: date }), date)), node };
          }),
        );
        const pid = relay.child.pid ?? 0;
        const cpu0 = cpuTimeOfTreesMs([pid]);
        const own0 = ownCpuMs(pid);
        await inParallel(reports, 4, async (report) => {
          await putFile({ port: relay.httpsPort, endpoint: 'reports', name: report.name, body: report.body, password: DAV_PASSWORD, identity: report.node });
        });
        await upstream.waitFor(REPORTS, 120_000);
        // the last batch written too
        await new Promise((resolve) => setTimeout(resolve, 1_500));
        samples[mode].push((cpuTimeOfTreesMs([pid]) - cpu0) / REPORTS);
        primarySamples[mode].push((ownCpuMs(pid) - own0) / REPORTS);
        await relay.stop();
        await upstream.close();
      }
    }
    const withMs = median(samples.with);
    const withoutMs = median(samples.without);
    console.log(`  relay CPU per report (upload over TLS + verify + forward), ${REPORTS} reports × ${ROUNDS} rounds, same run:`);
    console.log(`    without recording  ${withoutMs.toFixed(2)} ms   samples ${samples.without.map((v) => v.toFixed(2)).join(' ')}`);
    console.log(`    with recording     ${withMs.toFixed(2)} ms   samples ${samples.with.map((v) => v.toFixed(2)).join(' ')}`);
    console.log(`    ratio              ${(withMs / withoutMs).toFixed(3)} (budget ≤ 1.02)`);
    console.log(`    primary alone      without ${median(primarySamples.without).toFixed(2)} ms, with ${median(primarySamples.with).toFixed(2)} ms per report`);
    return { reports: REPORTS, rounds: ROUNDS, cpu_ms_per_report_with: withMs, cpu_ms_per_report_without: withoutMs, ratio: withMs / withoutMs, samples, primary_samples: primarySamples };
  } finally {
    for (const fn of teardowns.reverse()) await fn();
  }
}

export async function run(): Promise<void> {
  console.log(description);
  const storeFigures = await store();
  // BENCH_LEDGER_PARTS=store: only the in-process part (no relay started)
  const relayFigures = process.env['BENCH_LEDGER_PARTS'] === 'store' ? {} : await relayCost();
  await writeFigures(join('bench', 'out', 'ledger.json'), 'ledger', { store: storeFigures, relay: relayFigures });
}
