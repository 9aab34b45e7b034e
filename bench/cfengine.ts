// Bench: stock cf-agent (Debian cfengine3 3.21) copying the same 300-file / ~3 MB policy tree from onerelay's
// CFEngine server (the real relay: `node dist/cli.js start` with a [cfengine] listen) and from Debian's
// cf-serverd, in the same run: cold copy (empty destination) and no-change re-run, `compare => "digest"`,
// recursive, purge (Rudder's update). Whole cf-agent wall time; targets alternate round by round; medians of
// the runs are quoted. Warm-up rounds come first and are not counted: both servers are then in the state a
// relay serving agents all day is in (our JIT-compiled request path, cf-serverd's and the kernel's caches).
// V8 optimises a function after some thousands of calls, and each agent run calls the request path's
// functions a few hundred times: measured with --trace-opt, the last hot ones were optimised only after
// ~10 agent runs (~7,000 requests), and one warm-up round left three or four counted rounds 5–25% slower.
// Five rounds (~8,500 requests, a few seconds of a relay's life) reach that state; they are printed apart,
// so the cost of a fresh process stays visible. Figures also go to bench/out/cfengine.json.
// BENCH_CFENGINE_FIRST=N measures issue 20's other figure, the first cold copy right after a start, alone:
// both servers are started N times (the relay in the same folder, as a service restarts) and only the
// first copy after each start is timed, in alternating order, with the server CPU of that copy (the relay's
// start-up left over before it is printed apart): one first copy per run of the steady mode was too few to
// tell a warm-up's effect from noise. Figures: bench/out/cfengine-first.json. BENCH_ONERELAY_NODE_ARGS
// (e.g. "--cpu-prof --cpu-prof-dir=/tmp/p", V8 flags) goes to the relay's processes in both modes.
// (Was test/cfengine/measure.ts.)

import { mkdir, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { compareTrees, createCfWorkdir, hasCfengine, makeTree, runCopy, startCfServerd, type CfWorkdir, type CopySpec } from '../test/support/cfengine.js';
import { RELAY_ID, startRelay } from '../test/support/relay.js';
import { freePort, tempDir } from '../test/support/tmp.js';
import { applyShippedEnvironment, cliFile, onerelayMissing, shippedNodeArgs } from './lib/onerelay.js';
import { cpuTimeOfTreesMs, waitForQuietMachine } from './lib/processes.js';
import { fixed, median, table } from './lib/stats.js';

export const description = 'stock cf-agent copy_from of a 300-file tree, cold and no-change: onerelay CFEngine server vs cf-serverd';

const settings = {
  files: 300,
  runs: Number(process.env['BENCH_CFENGINE_RUNS'] ?? 7),
  warmupRounds: Number(process.env['BENCH_CFENGINE_WARMUP'] ?? 5),
  targetRatio: 1.0,
  /** issue 20: the first cold copy right after start */
  firstColdTargetRatio: 1.1,
  /** BENCH_CFENGINE_FIRST=N: measure only the first cold copy after a start, N starts per target */
  firstRounds: Number(process.env['BENCH_CFENGINE_FIRST'] ?? 0),
  quietWaitBudgetMs: 60_000,
} as const;

const outFile = fileURLToPath(new URL('./out/cfengine.json', import.meta.url));
const firstOutFile = fileURLToPath(new URL('./out/cfengine-first.json', import.meta.url));
const NODE = 'aaaaaaaa-0000-4000-8000-000000000001';
type TargetName = 'onerelay' | 'cf-serverd';
type Scenario = 'cold' | 'no change';
const scenarios: readonly Scenario[] = ['cold', 'no change'];

export async function run(): Promise<void> {
  if (!hasCfengine()) throw new Error('cf-agent not installed (apt-get install -y cfengine3)');
  const missing = onerelayMissing();
  if (missing !== undefined) throw new Error(missing);
  const teardowns: Array<() => unknown> = [];
  const t = { teardown: (fn: () => unknown) => void teardowns.push(fn) };
  try {
    const base = tempDir(t, 'onerelay-bench-cf-');
    const [client, serverd] = await Promise.all([
      createCfWorkdir(join(base, 'client'), 4096),
      createCfWorkdir(join(base, 'serverd'), 4096),
    ]);
    // the relay's folder outlives its processes: first-copy mode restarts it there, as a service restarts
    const relayDir = tempDir(t, 'onerelay-bench-cf-relay-');
    const share = join(relayDir, 'share');
    const source = join(share, NODE, 'rules', 'cfengine-community');
    await mkdir(source, { recursive: true });
    const files = await makeTree(source, settings.files);
    const setup: Setup = { base, client, serverd, relayDir, share, source, files: files.length };
    if (settings.firstRounds > 0) await firstCopies(t, setup);
    else await steadyState(t, teardowns, setup);
  } finally {
    for (const fn of teardowns.reverse()) await Promise.resolve(fn()).catch(() => undefined);
  }
}

interface Setup {
  readonly base: string;
  readonly client: CfWorkdir;
  readonly serverd: CfWorkdir;
  readonly relayDir: string;
  readonly share: string;
  readonly source: string;
  readonly files: number;
}

interface Target {
  readonly name: TargetName;
  readonly port: number;
  readonly pid: number;
  /** CPU of the process tree from spawn to ready (relay only) */
  readonly startCpuMs?: number;
  /** the relay's CFEngine warm-up, as it logged it */
  readonly warmUpMs?: number;
  stop(): Promise<unknown>;
}

/** the real relay in setup.relayDir (fixture identity, RSA 4096) and a stock cf-serverd admitting the client to the same tree */
async function startTargets(t: { teardown(fn: () => unknown): void }, setup: Setup): Promise<Target[]> {
  const relay = await startRelay(t, {
    cli: cliFile,
    dir: setup.relayDir,
    workers: 1,
    nodesList: { [NODE]: { hostname: 'node1', 'key-hash': setup.client.sha256Pin, 'policy-server': RELAY_ID } },
    nodeArgs: nodeArgs(),
  });
  const startCpuMs = relay.child.pid === undefined ? NaN : cpuTimeOfTreesMs([relay.child.pid]);
  const stock = await startCfServerd(setup.serverd, await freePort(), { keys: [{ path: `${setup.share}/${NODE}/`, admit: [setup.client.md5] }] });
  // server CPU (user + system, every process and thread of it) per agent run: steadier than wall time
  if (relay.child.pid === undefined) throw new Error('the relay has no process id');
  return [
    {
      name: 'onerelay',
      port: relay.cfenginePort,
      pid: relay.child.pid,
      startCpuMs,
      warmUpMs: Number(relay.logs.find((line) => line.msg === 'cfengine request path warmed up')?.['ms'] ?? NaN),
      stop: () => relay.stop(),
    },
    { name: 'cf-serverd', port: stock.port, pid: stock.pid, stop: () => stock.stop() },
  ];
}

/** the shipped unit's flags and environment, then BENCH_ONERELAY_NODE_ARGS (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof" or V8 flags) */
function nodeArgs(): string[] {
  applyShippedEnvironment();
  return [...shippedNodeArgs(), ...(process.env['BENCH_ONERELAY_NODE_ARGS']?.split(' ').filter((arg) => arg !== '') ?? [])];
}

/** one cold copy (empty destination) from `target`: cf-agent's wall time and the server's CPU */
async function coldCopy(setup: Setup, target: Target): Promise<{ ms: number; cpuMs: number; dest: string }> {
  const dest = join(setup.base, `dest-${target.name}`);
  await rm(dest, { recursive: true, force: true });
  const cpuBefore = cpuTimeOfTreesMs([target.pid]);
  const cold = await runCopy(setup.client, { port: target.port, copies: [{ source: setup.source, dest, compare: 'digest' }] }, 'bench.cf');
  if (cold.code !== 0) throw new Error(`${target.name} cold copy failed (${cold.code}): ${cold.stdout}${cold.stderr}`);
  return { ms: cold.durationMs, cpuMs: cpuTimeOfTreesMs([target.pid]) - cpuBefore, dest };
}

/**
 * BENCH_CFENGINE_FIRST=N: both servers started N times, and only the first cold copy after each start
 * measured (issue 20's first-copy target). Each round starts both, waits for a quiet machine (the relay's
 * start-up is over: its CPU in that wait is printed apart), then copies from each, in alternating order;
 * both read the same source tree, so both find it in the page cache.
 */
async function firstCopies(t: { teardown(fn: () => unknown): void }, setup: Setup): Promise<void> {
  const rounds = settings.firstRounds;
  console.log(
    `${setup.files} files, first cold copy after a start, ${rounds} starts per target (alternating order), RSA-4096 keys, TLS 1.3, compare digest, whole cf-agent wall time` +
      (nodeArgs().length > 0 ? `; relay node flags: ${nodeArgs().join(' ')}` : ''),
  );
  const ms: Record<TargetName, number[]> = { onerelay: [], 'cf-serverd': [] };
  const cpuMs: Record<TargetName, number[]> = { onerelay: [], 'cf-serverd': [] };
  const settleCpuMs: number[] = [];
  const startCpuMs: number[] = [];
  const warmUpMs: number[] = [];
  for (let round = 0; round < rounds; round += 1) {
    const targets = await startTargets(t, setup);
    try {
      startCpuMs.push(targets[0]!.startCpuMs ?? NaN);
      warmUpMs.push(targets[0]!.warmUpMs ?? NaN);
      const started = cpuTimeOfTreesMs([targets[0]!.pid]);
      await waitForQuietMachine(25, settings.quietWaitBudgetMs / rounds);
      settleCpuMs.push(cpuTimeOfTreesMs([targets[0]!.pid]) - started);
      for (const target of round % 2 === 0 ? targets : [...targets].reverse()) {
        const copy = await coldCopy(setup, target);
        ms[target.name].push(copy.ms);
        cpuMs[target.name].push(copy.cpuMs);
        if (round === 0) {
          const problems = await compareTrees(setup.source, copy.dest);
          if (problems.length > 0) throw new Error(`${target.name} copy differs: ${problems.slice(0, 5).join(', ')}`);
        }
      }
    } finally {
      for (const target of targets) await target.stop();
    }
  }
  const range = (values: number[]): string => `${fixed(Math.min(...values), 0)}–${fixed(Math.max(...values), 0)}`;
  const ratio = median(ms.onerelay) / median(ms['cf-serverd']);
  const paired = ms.onerelay.map((value, i) => value / (ms['cf-serverd'][i] ?? NaN));
  console.log(
    table(
      ['first cold copy', 'ms median', 'range', 'server CPU ms median', 'range', 'runs (ms)'],
      (['onerelay', 'cf-serverd'] as const).map((name) => [
        name,
        fixed(median(ms[name]), 0),
        range(ms[name]),
        fixed(median(cpuMs[name]), 0),
        range(cpuMs[name]),
        ms[name].map((value) => fixed(value, 0)).join(' '),
      ]),
    ),
  );
  console.log(
    `ratio of medians ${fixed(ratio, 2)}× (target ≤ ${fixed(settings.firstColdTargetRatio, 1)}×: ${ratio <= settings.firstColdTargetRatio ? 'met' : 'MISSED'}); ` +
      `start by start ${paired.map((r) => `${fixed(r, 2)}×`).join(' ')} (median ${fixed(median(paired), 2)}×); ` +
      `relay CPU between ready and the copy (start-up left over): median ${fixed(median(settleCpuMs), 0)} ms`,
  );
  console.log(
    `relay start: CPU from spawn to ready (primary and worker) median ${fixed(median(startCpuMs), 0)} ms, ` +
      `of which the CFEngine warm-up's wall time median ${fixed(median(warmUpMs.filter((ms) => !Number.isNaN(ms))), 0)} ms`,
  );
  await mkdir(dirname(outFile), { recursive: true });
  await writeFile(
    firstOutFile,
    `${JSON.stringify({ bench: 'cfengine-first', date: new Date().toISOString(), settings, nodeArgs: nodeArgs(), files: setup.files, onerelayMs: ms.onerelay, cfServerdMs: ms['cf-serverd'], onerelayCpuMs: cpuMs.onerelay, cfServerdCpuMs: cpuMs['cf-serverd'], settleCpuMs, startCpuMs, warmUpMs, ratio, paired }, null, 2)}\n`,
  );
  console.log(`figures: ${firstOutFile}`);
}

/** the steady state: warm-up rounds, then alternating counted rounds of a cold copy and a no-change re-run */
async function steadyState(t: { teardown(fn: () => unknown): void }, teardowns: Array<() => unknown>, setup: Setup): Promise<void> {
  const { base, client, source, files } = setup;
  const targets = await startTargets(t, setup);
  for (const target of targets) teardowns.push(() => target.stop());
  console.log(
    `${files} files, ${settings.runs} runs per target (alternating), RSA-4096 keys, TLS 1.3, compare digest, ` +
      `whole cf-agent wall time, after ${settings.warmupRounds} warm-up rounds per target (not counted, shown below)`,
  );

  const times: Record<string, number[]> = {};
  const record = (key: string, ms: number): void => void (times[key] ??= []).push(ms);
  const cpu: Record<string, number> = {};
  const countCpu = (key: string, ms: number): void => void (cpu[key] = (cpu[key] ?? 0) + ms);
  /** server CPU of each target's first cold copy */
  const firstCpuMs: Record<string, number> = {};
  for (let round = -settings.warmupRounds; round < settings.runs; round += 1) {
    await waitForQuietMachine(25, settings.quietWaitBudgetMs / settings.runs);
    const order = round % 2 === 0 ? targets : [...targets].reverse();
    for (const target of order) {
      const dest = join(base, `dest-${target.name}`);
      await rm(dest, { recursive: true, force: true });
      const copy: CopySpec = { source, dest, compare: 'digest' };
      const options = { port: target.port, copies: [copy] };
      const phase = round >= 0 ? '' : ' warm-up';
      const cpuBefore = cpuTimeOfTreesMs([target.pid]);
      const cold = await runCopy(client, options, 'bench.cf');
      if (cold.code !== 0) throw new Error(`${target.name} cold copy failed (${cold.code}): ${cold.stdout}${cold.stderr}`);
      record(`${target.name} cold${phase}`, cold.durationMs);
      const cpuBetween = cpuTimeOfTreesMs([target.pid]);
      countCpu(`${target.name} cold${phase}`, cpuBetween - cpuBefore);
      firstCpuMs[target.name] ??= cpuBetween - cpuBefore;
      const same = await runCopy(client, options, 'bench.cf');
      if (same.code !== 0) throw new Error(`${target.name} no-change copy failed (${same.code}): ${same.stdout}${same.stderr}`);
      record(`${target.name} no change${phase}`, same.durationMs);
      countCpu(`${target.name} no change${phase}`, cpuTimeOfTreesMs([target.pid]) - cpuBetween);
      if (round === -settings.warmupRounds) {
        const problems = await compareTrees(source, dest);
        if (problems.length > 0) throw new Error(`${target.name} copy differs: ${problems.slice(0, 5).join(', ')}`);
      }
    }
  }

  const rows: string[][] = [];
  const results: Record<string, unknown>[] = [];
  for (const scenario of scenarios) {
    const ours = times[`onerelay ${scenario}`] ?? [];
    const theirs = times[`cf-serverd ${scenario}`] ?? [];
    const ratio = median(ours) / median(theirs);
    // mean server CPU per run (10 ms clock ticks, summed over the runs)
    const ourCpu = (cpu[`onerelay ${scenario}`] ?? NaN) / ours.length;
    const theirCpu = (cpu[`cf-serverd ${scenario}`] ?? NaN) / theirs.length;
    const range = (values: number[]): string => `${fixed(Math.min(...values), 0)}–${fixed(Math.max(...values), 0)}`;
    rows.push([
      scenario,
      fixed(median(ours), 0),
      range(ours),
      fixed(median(theirs), 0),
      range(theirs),
      `${fixed(ratio, 2)}×`,
      ratio <= settings.targetRatio ? 'met' : 'MISSED',
      `${fixed(ourCpu, 0)} / ${fixed(theirCpu, 0)}`,
    ]);
    results.push({
      scenario,
      onerelayMs: ours,
      cfServerdMs: theirs,
      onerelayMedianMs: median(ours),
      cfServerdMedianMs: median(theirs),
      ratio,
      onerelayCpuMsPerRun: ourCpu,
      cfServerdCpuMsPerRun: theirCpu,
    });
  }
  console.log(
    table(['scenario', 'onerelay ms', 'range', 'cf-serverd ms', 'range', 'ratio', 'target', 'server CPU ms/run (onerelay / cf-serverd)'], rows),
  );
  // the warm-up rounds, round by round: what agents see in the first seconds after a start
  const warmup: Record<string, unknown>[] = [];
  for (const scenario of scenarios) {
    const ours = times[`onerelay ${scenario} warm-up`] ?? [];
    const theirs = times[`cf-serverd ${scenario} warm-up`] ?? [];
    const ratios = ours.map((ms, i) => ms / (theirs[i] ?? NaN));
    console.log(`warm-up, ${scenario}: onerelay/cf-serverd round by round ${ratios.map((r) => `${fixed(r, 2)}×`).join(' ')} (first: ${fixed(ours[0] ?? NaN, 0)} vs ${fixed(theirs[0] ?? NaN, 0)} ms)`);
    warmup.push({ scenario, onerelayMs: ours, cfServerdMs: theirs, ratios });
  }
  // issue 20: the first cold copy by stock cf-agent right after the relay started (no warm-up before it)
  const firstOurs = times['onerelay cold warm-up']?.[0] ?? times['onerelay cold']?.[0] ?? NaN;
  const firstTheirs = times['cf-serverd cold warm-up']?.[0] ?? times['cf-serverd cold']?.[0] ?? NaN;
  const firstRatio = firstOurs / firstTheirs;
  const firstCpu = firstCpuMs['onerelay'] ?? NaN;
  const firstCpuTheirs = firstCpuMs['cf-serverd'] ?? NaN;
  console.log(
    `first cold copy after start: onerelay ${fixed(firstOurs, 0)} ms, cf-serverd ${fixed(firstTheirs, 0)} ms: ${fixed(firstRatio, 2)}× ` +
      `(target ≤ ${fixed(settings.firstColdTargetRatio, 1)}×: ${firstRatio <= settings.firstColdTargetRatio ? 'met' : 'MISSED'}); ` +
      `server CPU ${fixed(firstCpu, 0)} / ${fixed(firstCpuTheirs, 0)} ms`,
  );
  console.log(`target: onerelay ≤ ${fixed(settings.targetRatio, 1)}× cf-serverd's time (ratio = median onerelay / median cf-serverd)`);
  await mkdir(dirname(outFile), { recursive: true });
  await writeFile(
    outFile,
    `${JSON.stringify({ bench: 'cfengine', date: new Date().toISOString(), settings, files, results, warmup, firstCold: { onerelayMs: firstOurs, cfServerdMs: firstTheirs, ratio: firstRatio, onerelayCpuMs: firstCpu, cfServerdCpuMs: firstCpuTheirs } }, null, 2)}\n`,
  );
  console.log(`figures: ${outFile}`);
}
