// Bench: policy downloads, onerelay against nginx serving the same files with the same RSA 4096 key.
// Each request is what rudder-client's curl does when an agent fetches its policies: a fresh TLS 1.3
// connection with the node's client certificate, `GET /policies/<uuid>/rules/rudder.tar.bz2` (a 400 KB
// archive, its own per node). Two modes: full download (200) and conditional (`If-None-Match` with the
// current ETag → 304). onerelay also checks that the certificate is the node's (nodes list key-hash) and
// that the node asks for its own policies; nginx (ssl_verify_client optional_no_ca) only asks for a cert.
// Targets alternate run by run; medians of the runs are quoted; figures also go to bench/out/policies.json.

import { createHash, randomBytes } from 'node:crypto';
import { writeFigures } from './lib/output.js';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { download } from './lib/download-client.js';
import { cachedIdentities, cacheDirectory, type NodeIdentity } from './lib/identities.js';
import { nginxVersion, startNginxPolicies } from './lib/nginx.js';
import { onerelayMissing, startOnerelayUploads } from './lib/onerelay.js';
import { freePort, waitForQuietMachine, type Server } from './lib/processes.js';
import { fixed, median, percentile, table } from './lib/stats.js';
import { uploadingAgent } from './lib/upload-client.js';
import { runUploadLoad, type DownloadTask, type LoadResult } from './lib/upload-load.js';

export const description = 'policy archive downloads (200) and conditional requests (304) over fresh TLS 1.3 connections with client certs: onerelay vs nginx';

const env = (name: string, fallback: number): number => Number(process.env[name] ?? fallback);

const settings = {
  agents: 8,
  loadProcesses: 2,
  concurrency: 16,
  warmupMs: 2_000,
  durationMs: env('BENCH_POLICIES_SECONDS', 10) * 1000,
  runs: env('BENCH_POLICIES_RUNS', 3),
  archiveBytes: 400 * 1024,
  onerelayWorkers: 0,
  targetRatio: 0.8,
  /** CPU % used by other processes during a run above which the run is repeated once */
  disturbedOtherCpuPercent: 25,
  /** before each run, wait up to this long (in all) for other work on the machine to calm down */
  quietWaitBudgetMs: 180_000,
} as const;

const outFile = fileURLToPath(new URL('./out/policies.json', import.meta.url));
const archivePath = (nodeId: string): string => `/policies/${nodeId}/rules/rudder.tar.bz2`;

type TargetName = 'nginx' | 'onerelay';
type Mode = 'full' | 'conditional';
const modes: readonly Mode[] = ['full', 'conditional'];

interface Target {
  readonly name: TargetName;
  readonly port: number;
  readonly server: Server;
}

interface Archive {
  readonly nodeId: string;
  readonly sha256: string;
}

interface Check {
  readonly ok: boolean;
  readonly detail: string;
}

interface RunFigures {
  readonly downloadsPerSecond: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly downloads: number;
  readonly failures: Readonly<Record<string, number>>;
  readonly serverCpuPercent: number;
  readonly loadCpuPercent: number;
  readonly otherCpuPercent: number;
  readonly serverCpuMsPerRequest: number;
}

interface TargetReport {
  available: boolean;
  note: string | undefined;
  checks: Check[];
  /** per agent: the ETag its archive has on this target */
  etags: string[];
  runs: Record<Mode, RunFigures[]>;
  discardedRuns: Record<Mode, RunFigures[]>;
}

export async function run(): Promise<void> {
  const version = await nginxVersion(false);
  console.log(`policies: ${description}`);
  console.log(
    `  ${settings.agents} nodes (RSA 4096), a ${settings.archiveBytes / 1024} KB random archive each, ${settings.concurrency} requests in flight over ` +
      `${settings.loadProcesses} load processes, ${settings.runs} runs of ${settings.durationMs / 1000} s per mode after ${settings.warmupMs / 1000} s warm-up, ` +
      `${availableParallelism()} cores shared by servers and load`,
  );
  console.log(`  identities cached in ${cacheDirectory}`);
  const [relay, ...agents] = await cachedIdentities(['relay', ...Array.from({ length: settings.agents }, (_, index) => `agent${index}`)]);
  if (relay === undefined) throw new Error('no relay identity');

  const directory = await mkdtemp(join(tmpdir(), 'onerelay-bench-policies-'));
  const policiesDirectory = join(directory, 'share');
  const archives: Archive[] = [];
  for (const agent of agents) {
    const body = randomBytes(settings.archiveBytes);
    await mkdir(join(policiesDirectory, agent.nodeId, 'rules'), { recursive: true });
    await writeFile(join(policiesDirectory, agent.nodeId, 'rules', 'rudder.tar.bz2'), body);
    archives.push({ nodeId: agent.nodeId, sha256: createHash('sha256').update(body).digest('hex') });
  }
  const emptyModes = (): Record<Mode, RunFigures[]> => ({ full: [], conditional: [] });
  const reports: Record<TargetName, TargetReport> = {
    nginx: { available: false, note: undefined, checks: [], etags: [], runs: emptyModes(), discardedRuns: emptyModes() },
    onerelay: { available: false, note: undefined, checks: [], etags: [], runs: emptyModes(), discardedRuns: emptyModes() },
  };
  const targets: Target[] = [];
  try {
    targets.push(await nginxTarget(join(directory, 'nginx'), relay, policiesDirectory));
    const onerelay = await onerelayTarget(join(directory, 'onerelay'), relay, agents, policiesDirectory);
    if (typeof onerelay === 'string') reports.onerelay.note = onerelay;
    else targets.push(onerelay);

    const measured: Target[] = [];
    for (const target of targets) {
      const report = reports[target.name];
      report.checks = await checkTarget(target, agents, archives);
      report.etags = await currentEtags(target, agents);
      for (const check of report.checks) console.log(`  ${target.name}: check ${check.ok ? 'ok' : 'FAILED'}: ${check.detail}`);
      const failed = report.checks.filter((check) => !check.ok);
      if (failed.length === 0 && report.etags.every((etag) => etag !== '')) {
        report.available = true;
        measured.push(target);
      } else {
        report.note = `check failed: ${failed.map((check) => check.detail).join('; ') || 'no ETag'}`;
      }
    }
    if (reports.onerelay.note !== undefined) console.log(`  onerelay not measured: ${reports.onerelay.note}`);

    let quietWaitLeftMs: number = settings.quietWaitBudgetMs;
    for (let runIndex = 0; runIndex < settings.runs; runIndex++) {
      for (const mode of modes) {
        // alternate which target goes first, so that a drift of the machine does not favour one
        const order = runIndex % 2 === 0 ? measured : [...measured].reverse();
        for (const target of order) {
          const report = reports[target.name];
          for (let attempt = 1; attempt <= 2; attempt++) {
            const waitedMs = await waitForQuietMachine(settings.disturbedOtherCpuPercent / 2, quietWaitLeftMs);
            quietWaitLeftMs = Math.max(0, quietWaitLeftMs - waitedMs);
            const downloads: DownloadTask[] = agents.map((agent, index) =>
              mode === 'full'
                ? { path: archivePath(agent.nodeId), expectedStatus: 200, expectedBytes: settings.archiveBytes }
                : { path: archivePath(agent.nodeId), ifNoneMatch: report.etags[index]!, expectedStatus: 304 },
            );
            const result = await runUploadLoad({
              port: target.port,
              agents,
              authorization: '',
              downloads,
              processes: settings.loadProcesses,
              concurrency: settings.concurrency,
              warmupMs: settings.warmupMs,
              durationMs: settings.durationMs,
              firstSecond: 0,
              serverPids: target.server.process.pid === undefined ? [] : [target.server.process.pid],
            });
            const figures = runFigures(result);
            const willRepeat = figures.otherCpuPercent > settings.disturbedOtherCpuPercent && attempt === 1;
            console.log(
              `  ${target.name.padEnd(8)} ${mode.padEnd(11)} run ${runIndex + 1}/${settings.runs}: ${fixed(figures.downloadsPerSecond)} requests/s, ` +
                `p50 ${fixed(figures.p50Ms)} ms, p99 ${fixed(figures.p99Ms)} ms, ${failureCount(figures)} errors, ` +
                `CPU server ${fixed(figures.serverCpuPercent, 0)}% load ${fixed(figures.loadCpuPercent, 0)}% ` +
                `other ${fixed(figures.otherCpuPercent, 0)}%` +
                (waitedMs > 1500 ? ` (waited ${fixed(waitedMs / 1000, 0)} s for a quiet machine)` : '') +
                (willRepeat ? ' (disturbed by other work: repeated)' : ''),
            );
            if (willRepeat) {
              report.discardedRuns[mode].push(figures);
              continue;
            }
            report.runs[mode].push(figures);
            break;
          }
        }
      }
    }
  } finally {
    await Promise.all(targets.map((target) => target.server.stop()));
    if (process.env['BENCH_KEEP'] === undefined) await rm(directory, { recursive: true, force: true });
    else console.log(`  kept ${directory} (servers' configs and logs)`);
  }

  const summary = summarize(reports);
  printSummary(reports, summary);
  await writeFigures(
    outFile,
    'policies',
    {
    settings,
    targets: reports,
    medians: summary.medians,
    ratios: summary.ratios,
    cpuPerRequestRatios: summary.cpuPerRequestRatios,
    target: settings.targetRatio,
    },
    { nginx: version },
  );
}

async function nginxTarget(directory: string, relay: NodeIdentity, policiesDirectory: string): Promise<Target> {
  await mkdir(directory, { recursive: true });
  const keyFile = join(directory, 'localhost.priv');
  const certificateFile = join(directory, 'agent.cert');
  await writeFile(keyFile, relay.privateKeyPem, { mode: 0o600 });
  await writeFile(certificateFile, relay.certificatePem);
  const port = await freePort();
  const server = await startNginxPolicies({ directory, port, keyFile, certificateFile, policiesDirectory });
  return { name: 'nginx', port, server };
}

/** The onerelay target, or why there is none. */
async function onerelayTarget(
  directory: string,
  relay: NodeIdentity,
  agents: readonly NodeIdentity[],
  policiesDirectory: string,
): Promise<Target | string> {
  const missing = onerelayMissing();
  if (missing !== undefined) return missing;
  await mkdir(directory, { recursive: true });
  const httpsPort = await freePort();
  try {
    const onerelay = await startOnerelayUploads({
      directory,
      httpsPort,
      relay,
      agents,
      password: randomBytes(12).toString('hex'),
      workers: settings.onerelayWorkers,
      policiesDirectory,
    });
    return { name: 'onerelay', port: httpsPort, server: onerelay.server };
  } catch (error) {
    return `could not start: ${error instanceof Error ? error.message : String(error)}`;
  }
}

/**
 * Once per target: the full download has the archive's bytes and an ETag; the conditional request with
 * that ETag is a 304 carrying the same ETag; on onerelay, another node's certificate is refused.
 */
async function checkTarget(target: Target, agents: readonly NodeIdentity[], archives: readonly Archive[]): Promise<Check[]> {
  const agent = uploadingAgent(agents[0]!);
  const path = archivePath(agents[0]!.nodeId);
  const checks: Check[] = [];
  const full = await download({ port: target.port, agent, path, hashBody: true });
  const bytesOk = full.status === 200 && full.sha256 === archives[0]!.sha256 && full.bytes === settings.archiveBytes;
  checks.push({
    ok: bytesOk && full.etag !== undefined,
    detail: bytesOk
      ? `200, ${full.bytes} bytes identical to the archive (SHA-256), ETag ${full.etag ?? 'MISSING'}`
      : `full download answered ${full.status ?? full.error ?? 'nothing'} with ${full.bytes} bytes (${full.sha256 === archives[0]!.sha256 ? 'same' : 'other'} bytes)`,
  });
  if (full.etag !== undefined) {
    const conditional = await download({ port: target.port, agent, path, ifNoneMatch: full.etag });
    checks.push({
      ok: conditional.status === 304 && conditional.etag === full.etag && conditional.bytes === 0,
      detail: `If-None-Match: ${full.etag} → ${conditional.status ?? conditional.error ?? 'nothing'}, ETag ${conditional.etag ?? 'absent'}, ${conditional.bytes} body bytes`,
    });
  }
  if (target.name === 'onerelay' && agents.length > 1) {
    const foreign = await download({ port: target.port, agent: uploadingAgent(agents[1]!), path });
    checks.push({
      ok: foreign.status === 403,
      detail: `another node's certificate asking for these policies → ${foreign.status ?? foreign.error ?? 'nothing'} (403 expected)`,
    });
  }
  return checks;
}

async function currentEtags(target: Target, agents: readonly NodeIdentity[]): Promise<string[]> {
  const etags: string[] = [];
  for (const agent of agents) {
    const outcome = await download({ port: target.port, agent: uploadingAgent(agent), path: archivePath(agent.nodeId) });
    etags.push(outcome.status === 200 ? (outcome.etag ?? '') : '');
  }
  return etags;
}

function runFigures(result: LoadResult): RunFigures {
  return {
    downloadsPerSecond: result.uploadsPerSecond,
    p50Ms: percentile(result.latenciesMs, 50),
    p99Ms: percentile(result.latenciesMs, 99),
    downloads: result.uploads,
    failures: result.failures,
    serverCpuPercent: result.serverCpuPercent,
    loadCpuPercent: result.loadCpuPercent,
    otherCpuPercent: result.otherCpuPercent,
    serverCpuMsPerRequest: (result.serverCpuPercent * 10) / result.uploadsPerSecond,
  };
}

function failureCount(figures: RunFigures): number {
  return Object.values(figures.failures).reduce((sum, count) => sum + count, 0);
}

interface MedianFigures {
  readonly downloadsPerSecond: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  /** over all runs */
  readonly errors: number;
  readonly serverCpuPercent: number;
  readonly loadCpuPercent: number;
  readonly otherCpuPercent: number;
  readonly serverCpuMsPerRequest: number;
}

interface Summary {
  readonly medians: Record<Mode, Partial<Record<TargetName, MedianFigures>>>;
  /** onerelay/nginx requests/s per mode */
  readonly ratios: Record<Mode, number | undefined>;
  /** onerelay/nginx server CPU per request per mode */
  readonly cpuPerRequestRatios: Record<Mode, number | undefined>;
}

function summarize(reports: Record<TargetName, TargetReport>): Summary {
  const medians: Record<Mode, Partial<Record<TargetName, MedianFigures>>> = { full: {}, conditional: {} };
  const ratios: Record<Mode, number | undefined> = { full: undefined, conditional: undefined };
  const cpuPerRequestRatios: Record<Mode, number | undefined> = { full: undefined, conditional: undefined };
  for (const mode of modes) {
    for (const [name, report] of Object.entries(reports) as [TargetName, TargetReport][]) {
      const runs = report.runs[mode];
      if (runs.length === 0) continue;
      const of = (pick: (figures: RunFigures) => number): number => median(runs.map(pick));
      medians[mode][name] = {
        downloadsPerSecond: of((figures) => figures.downloadsPerSecond),
        p50Ms: of((figures) => figures.p50Ms),
        p99Ms: of((figures) => figures.p99Ms),
        errors: runs.reduce((sum, figures) => sum + failureCount(figures), 0),
        serverCpuPercent: of((figures) => figures.serverCpuPercent),
        loadCpuPercent: of((figures) => figures.loadCpuPercent),
        otherCpuPercent: of((figures) => figures.otherCpuPercent),
        serverCpuMsPerRequest: of((figures) => figures.serverCpuMsPerRequest),
      };
    }
    const nginx = medians[mode].nginx;
    const onerelay = medians[mode].onerelay;
    if (nginx !== undefined && onerelay !== undefined && nginx.downloadsPerSecond > 0) {
      ratios[mode] = onerelay.downloadsPerSecond / nginx.downloadsPerSecond;
      cpuPerRequestRatios[mode] = onerelay.serverCpuMsPerRequest / nginx.serverCpuMsPerRequest;
    }
  }
  return { medians, ratios, cpuPerRequestRatios };
}

function printSummary(reports: Record<TargetName, TargetReport>, summary: Summary): void {
  const rows: string[][] = [];
  for (const mode of modes) {
    for (const name of Object.keys(reports) as TargetName[]) {
      const figures = summary.medians[mode][name];
      const label = `${name} ${mode === 'full' ? '200' : '304'}`;
      if (figures === undefined) {
        rows.push([label, 'not measured']);
        continue;
      }
      rows.push([
        label,
        fixed(figures.downloadsPerSecond),
        fixed(figures.p50Ms),
        fixed(figures.p99Ms),
        String(figures.errors),
        `${fixed(figures.serverCpuPercent, 0)}%`,
        `${fixed(figures.loadCpuPercent, 0)}%`,
        `${fixed(figures.otherCpuPercent, 0)}%`,
        fixed(figures.serverCpuMsPerRequest, 2),
      ]);
    }
  }
  console.log('');
  console.log(`policies — median of ${settings.runs} runs per mode (errors: all runs; CPU: % of one core, ${availableParallelism()} cores)`);
  console.log(table(['target', 'requests/s', 'p50 ms', 'p99 ms', 'errors', 'server CPU', 'load CPU', 'other CPU', 'server CPU ms/request'], rows));
  for (const [name, report] of Object.entries(reports)) {
    for (const mode of modes) {
      const failures: Record<string, number> = {};
      for (const figures of report.runs[mode]) {
        for (const [what, count] of Object.entries(figures.failures)) failures[what] = (failures[what] ?? 0) + count;
      }
      for (const [what, count] of Object.entries(failures)) console.log(`  ${name} ${mode}: ${count} × ${what}`);
    }
    if (report.note !== undefined) console.log(`  ${name}: ${report.note}`);
  }
  const busiest = Math.max(
    ...modes.flatMap((mode) => Object.values(summary.medians[mode]).map((figures) => figures.otherCpuPercent)),
  );
  if (busiest > 20) {
    console.log(`  note: other processes used up to ${fixed(busiest, 0)}% CPU during the runs; figures are noisy, rerun on an idle machine`);
  }
  const noisy = busiest > settings.disturbedOtherCpuPercent;
  for (const mode of modes) {
    const ratio = summary.ratios[mode];
    const verdict =
      (ratio === undefined ? 'n/a' : ratio >= settings.targetRatio ? 'met' : 'NOT met') + (noisy && ratio !== undefined ? ', unreliable: noisy machine' : '');
    const cost = summary.cpuPerRequestRatios[mode];
    console.log(
      `onerelay/nginx ${mode === 'full' ? 'downloads (200)' : 'conditional (304)'}/s: ${ratio === undefined ? 'n/a' : fixed(ratio, 2)}   ` +
        `target ≥ ${fixed(settings.targetRatio, 2)} (${verdict})` +
        (cost === undefined ? '' : `; server CPU per request ${fixed(cost, 2)}× nginx's (informative)`),
    );
  }
}
