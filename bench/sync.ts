// Bench (issue 7): relay data sync over a high-latency link. Every client talks through a user-space TCP proxy on
// loopback holding every chunk 50 ms in each direction (100 ms RTT, bench/lib/latency-proxy.ts).
// onerelay: two real processes (`node dist/cli.js start`): an upstream with `[sync] serve = true` holding 20 nodes ×
// 400 files below `share/<relay>/share/<node>/`, and a relay with `[sync] upstream = true` whose https_port is the
// proxy's; each sync is `POST /rudder/relay-api/1/sync` on the relay's local API, which answers once the pull is
// done: cold sync (fresh relay), no-change sync, one-file change. Several rounds, a fresh relay each; medians.
// Classic, in the same run: Debian's cf-agent copy_from (digest, recursive, purge: Rudder's relay update) of the same
// tree from Debian's cf-serverd through the same kind of proxy — about 2 RTT per file, so ~27 min per copy of the
// whole 8000 files: by default only BENCH_SYNC_CLASSIC_NODES (1) node's 400 files are copied, cold once and no-change
// once, and the time is extrapolated linearly to 20 nodes (said in the output). BENCH_SYNC_CLASSIC_NODES=20 copies
// everything. Then onerelay's CFEngine-client pull (`[sync] protocol = "cfengine"`) of all 20 nodes from that same
// cf-serverd through that same proxy: cold (fresh relay: the in-process duration of its first pull, from its
// "sync done" log line) and no change (POST …/sync, wall time), compared with the classic copy (same extrapolation).
// Server and client CPU per file are printed for every figure, both sides measured in the same run from /proc:
// onerelay's upstream (serving) and relay (pulling) process trees, cf-serverd's process, and cf-agent's CPU as a
// reaped child of the bench. Figures also go to bench/out/sync.json.

import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeServerCertificate } from '../src/cfengine/index.js';
import { compareTrees, createCfWorkdir, hasCfengine, loadCfWorkdir, runCopy, startCfServerd, type CopySpec } from '../test/support/cfengine.js';
import { FIXTURE_KEYS, RELAY_ID, startRelay, type RunningRelay } from '../test/support/relay.js';
import { freePort, tempDir } from '../test/support/tmp.js';
import { startLatencyProxy } from './lib/latency-proxy.js';
import { cliFile, onerelayMissing } from './lib/onerelay.js';
import { cpuTimeOfTreesMs, reapedChildrenCpuTimeMs, waitForQuietMachine } from './lib/processes.js';
import { fixed, median, table } from './lib/stats.js';

export const description = '20 nodes × 400 files synced over a 100 ms RTT link: onerelay HTTP sync vs cf-agent copy_from from cf-serverd';

const env = (name: string, fallback: number): number => Number(process.env[name] ?? fallback);

const settings = {
  nodes: 20,
  filesPerNode: 400,
  delaySeconds: 0.05,
  rttSeconds: 0.1,
  rounds: env('BENCH_SYNC_RUNS', 3),
  classicNodes: Math.min(20, Math.max(1, env('BENCH_SYNC_CLASSIC_NODES', 1))),
  targets: { coldSpeedup: 50, noChangeRtt: 2, oneFileRtt: 4, cfengineSpeedup: 5 },
  cfengineRounds: env('BENCH_SYNC_CF_RUNS', 3),
  /** the upstream's manifest_ttl is 1 s: wait past it before each sync after the first */
  pastManifestTtlMs: 1_200,
} as const;

const outFile = fileURLToPath(new URL('./out/sync.json', import.meta.url));
/** the fixture relay identity (e745a140…) and its pin, as in test/e2e/sync.test.ts */
const RELAY = 'e745a140-40bc-4b86-b6dc-084488fc906b';
const RELAY_PIN = 'sha256//I8utFWGj+OpqpbiAIZ/s8qRC4fQXxQ8IRVjFe0X1Lug=';
const nodeId = (index: number): string => `aaaaaaaa-0000-4000-8000-${String(index + 1).padStart(12, '0')}`;

/** A node's policy-like tree: 400 files of 200 B – 9 KB of random bytes over a few nested directories. */
async function makeNodeTree(root: string, files: number): Promise<void> {
  for (let i = 0; i < files; i += 1) {
    const dir = i % 5 === 0 ? '' : join(`dir${i % 7}`, i % 3 === 0 ? `sub${i % 4}` : '');
    await mkdir(join(root, dir), { recursive: true });
    await writeFile(join(root, dir, `file-${i}.cf`), randomBytes(200 + ((i * 7919) % 9_000)));
  }
}

async function syncNow(relay: RunningRelay): Promise<number> {
  const started = performance.now();
  const response = await fetch(`${relay.apiUrl}/rudder/relay-api/1/sync`, { method: 'POST' });
  const body = (await response.json()) as { result?: string };
  const elapsed = performance.now() - started;
  if (body.result !== 'success') throw new Error(`sync failed: ${JSON.stringify(body)}`);
  return elapsed;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export async function run(): Promise<void> {
  if (!hasCfengine()) throw new Error('cf-agent not installed (apt-get install -y cfengine3)');
  const missing = onerelayMissing();
  if (missing !== undefined) throw new Error(missing);
  const teardowns: Array<() => unknown> = [];
  const t = { teardown: (fn: () => unknown) => void teardowns.push(fn) };
  try {
    const base = tempDir(t, 'onerelay-bench-sync-');
    const nodes = Array.from({ length: settings.nodes }, (_, index) => nodeId(index));
    const nodesList: Record<string, { hostname: string; 'key-hash'?: string; 'policy-server': string }> = {
      [RELAY]: { hostname: '127.0.0.1', 'key-hash': RELAY_PIN, 'policy-server': RELAY_ID },
    };
    for (const [index, node] of nodes.entries()) nodesList[node] = { hostname: `n${index}`, 'policy-server': RELAY };
    const upstream = await startRelay(t, { cli: cliFile, workers: 1, nodesList, extraToml: '[sync]\nserve = true\nmanifest_ttl = "1s"\n' });
    teardowns.push(() => upstream.stop());
    const relayShare = join(upstream.dir, 'share', RELAY, 'share');
    for (const node of nodes) await makeNodeTree(join(relayShare, node, 'rules', 'cfengine-community'), settings.filesPerNode);
    const totalFiles = settings.nodes * settings.filesPerNode;
    const httpProxy = await startLatencyProxy(base, upstream.httpsPort, settings.delaySeconds);
    teardowns.push(() => httpProxy.server.stop());
    console.log(
      `${settings.nodes} nodes × ${settings.filesPerNode} files (${totalFiles}), every client through a latency proxy ` +
        `holding each chunk ${settings.delaySeconds * 1000} ms per direction (${settings.rttSeconds * 1000} ms RTT)`,
    );

    // ---- onerelay: HTTP sync, a fresh relay per round ----
    const times: Record<'cold' | 'no change' | 'one file', number[]> = { cold: [], 'no change': [], 'one file': [] };
    /** CPU ms of the serving upstream and of the pulling relay, per scenario and round */
    const cpu: Record<'cold' | 'no change' | 'one file', Array<{ server: number; client: number }>> = { cold: [], 'no change': [], 'one file': [] };
    const upstreamPid = upstream.child.pid ?? 0;
    const measured = async (relay: RunningRelay, scenario: keyof typeof times): Promise<void> => {
      const pids = [upstreamPid, relay.child.pid ?? 0];
      const before = pids.map((pid) => cpuTimeOfTreesMs([pid]));
      times[scenario].push(await syncNow(relay));
      const after = pids.map((pid) => cpuTimeOfTreesMs([pid]));
      cpu[scenario].push({ server: after[0]! - before[0]!, client: after[1]! - before[1]! });
    };
    for (let round = 0; round < settings.rounds; round += 1) {
      await waitForQuietMachine(25, 10_000);
      const relay = await startRelay(t, {
        cli: cliFile,
        workers: 1,
        relayId: RELAY,
        upstream: { port: httpProxy.port, certificateFile: join(FIXTURE_KEYS, `${RELAY_ID}.cert`) },
        extraToml: `[sync]\nupstream = true\nfrequency = "1h"\nstate_directory = "${join(base, `sync-state-${round}`)}"\n`,
      });
      try {
        await sleep(settings.pastManifestTtlMs);
        await measured(relay, 'cold');
        if (round === 0) {
          for (const node of nodes) {
            const problems = await compareTrees(join(relayShare, node), join(relay.dir, 'share', node));
            if (problems.length > 0) throw new Error(`HTTP sync of ${node} differs: ${problems.slice(0, 5).join(', ')}`);
          }
        }
        await sleep(settings.pastManifestTtlMs);
        await measured(relay, 'no change');
        const changed = join(relayShare, nodes[round % nodes.length]!, 'rules', 'cfengine-community', 'file-7.cf');
        await writeFile(changed, randomBytes(4_000));
        await sleep(settings.pastManifestTtlMs);
        await measured(relay, 'one file');
        if (round === 0) {
          const problems = await compareTrees(join(relayShare, nodes[0]!), join(relay.dir, 'share', nodes[0]!));
          if (problems.length > 0) throw new Error(`one-file change not synced: ${problems.slice(0, 5).join(', ')}`);
        }
      } finally {
        await relay.stop();
      }
      console.log(
        `  onerelay round ${round + 1}/${settings.rounds}: cold ${fixed(times.cold.at(-1)!, 0)} ms, no change ` +
          `${fixed(times['no change'].at(-1)!, 0)} ms, one file ${fixed(times['one file'].at(-1)!, 0)} ms`,
      );
    }

    // ---- classic: cf-agent copy_from from cf-serverd, same tree, same kind of link ----
    const [client, serverd] = await Promise.all([
      createCfWorkdir(join(base, 'cf-client'), 4096),
      createCfWorkdir(join(base, 'cf-serverd'), 4096),
    ]);
    // the onerelay relay (fixture key e745a140…) is admitted on its own directory upstream, as on a Rudder root
    const relayKeyDir = join(base, 'relay-key');
    await mkdir(join(relayKeyDir, 'ppkeys'), { recursive: true });
    await copyFile(join(FIXTURE_KEYS, `${RELAY}.nopass.priv`), join(relayKeyDir, 'ppkeys', 'localhost.priv'));
    const relayKey = await loadCfWorkdir(relayKeyDir);
    const stock = await startCfServerd(serverd, await freePort(), {
      keys: [
        { path: `${relayShare}/`, admit: [client.md5, relayKey.md5] },
        { path: `${join(upstream.dir, 'share', RELAY)}/`, admit: [relayKey.md5] },
      ],
    });
    teardowns.push(() => stock.stop());
    const cfProxy = await startLatencyProxy(base, stock.port, settings.delaySeconds);
    teardowns.push(() => cfProxy.server.stop());
    const classicDest = join(base, 'classic-share');
    const copies: CopySpec[] =
      settings.classicNodes === settings.nodes
        ? [{ source: relayShare, dest: classicDest, compare: 'digest' }]
        : nodes.slice(0, settings.classicNodes).map((node) => ({ source: join(relayShare, node), dest: join(classicDest, node), compare: 'digest' }));
    const classicFiles = settings.classicNodes * settings.filesPerNode;
    const scale = settings.nodes / settings.classicNodes;
    console.log(
      `  classic: cf-agent copy_from of ${settings.classicNodes} node(s) / ${classicFiles} files through the proxy, ` +
        'cold once and no-change once (about 2 RTT per file)…',
    );
    const classic: Record<'cold' | 'no change', number> = { cold: Number.NaN, 'no change': Number.NaN };
    const classicCpu: Record<'cold' | 'no change', { server: number; client: number }> = { cold: { server: Number.NaN, client: Number.NaN }, 'no change': { server: Number.NaN, client: Number.NaN } };
    for (const scenario of ['cold', 'no change'] as const) {
      await waitForQuietMachine(25, 10_000);
      const serverBefore = cpuTimeOfTreesMs([stock.pid]);
      const clientBefore = reapedChildrenCpuTimeMs();
      const result = await runCopy(client, { port: cfProxy.port, copies, timeoutS: 60 }, 'classic.cf', { timeoutMs: 3 * 3600_000 });
      classicCpu[scenario] = { server: cpuTimeOfTreesMs([stock.pid]) - serverBefore, client: reapedChildrenCpuTimeMs() - clientBefore };
      if (result.code !== 0) throw new Error(`classic ${scenario} copy failed (${result.code}): ${result.stdout}${result.stderr}`);
      classic[scenario] = result.durationMs;
      console.log(`  classic ${scenario}: ${fixed(result.durationMs / 1000, 1)} s for ${classicFiles} files`);
    }
    for (const copy of copies) {
      const problems = await compareTrees(copy.source, copy.dest);
      if (problems.length > 0) throw new Error(`classic copy differs: ${problems.slice(0, 5).join(', ')}`);
    }

    // ---- onerelay's CFEngine client, all nodes, from the same cf-serverd through the same proxy ----
    // the Rudder paths it asks for (/var/rudder/share/<relay>/share/…) live under a prefix: a link to the upstream's share
    const cfRoot = join(base, 'cf-root');
    await mkdir(join(cfRoot, 'var', 'rudder'), { recursive: true });
    await symlink(join(upstream.dir, 'share'), join(cfRoot, 'var', 'rudder', 'share'));
    const pinFile = join(base, 'cf-serverd.cert');
    await writeFile(pinFile, makeServerCertificate(serverd.privateKey));
    const closedPort = await freePort();
    const cfTimes: Record<'cold' | 'no change', number[]> = { cold: [], 'no change': [] };
    /** cf-serverd's CPU serving onerelay's pull (the relay's own CPU includes its start for the cold pull: not comparable) */
    const cfServerCpu: Record<'cold' | 'no change', number[]> = { cold: [], 'no change': [] };
    for (let round = 0; round < settings.cfengineRounds; round += 1) {
      await waitForQuietMachine(25, 10_000);
      const serverAtStart = cpuTimeOfTreesMs([stock.pid]);
      const relay = await startRelay(t, {
        cli: cliFile,
        workers: 1,
        relayId: RELAY,
        // https_port: a closed port, so the library-archive fetch (HTTPS, not cf-agent's job) fails at once and is not timed
        upstream: { port: closedPort, certificateFile: pinFile },
        extraToml:
          `[sync]\nupstream = true\nprotocol = "cfengine"\ncfengine_port = ${cfProxy.port}\ncfengine_path_prefix = "${cfRoot}"\n` +
          `frequency = "1h"\nstate_directory = "${join(base, `cf-sync-state-${round}`)}"\n`,
      });
      try {
        // the first pull starts with the relay: its own duration, from its log line
        const done = await relay.waitForLog((line) => line.msg === 'sync done' || line.msg === 'sync failed', 30 * 60_000);
        if (done.msg !== 'sync done') throw new Error(`CFEngine pull failed: ${JSON.stringify(done)}`);
        cfTimes.cold.push(Number(done['durationMs']));
        cfServerCpu.cold.push(cpuTimeOfTreesMs([stock.pid]) - serverAtStart);
        if (round === 0) {
          for (const node of nodes) {
            const problems = await compareTrees(join(relayShare, node), join(relay.dir, 'share', node));
            if (problems.length > 0) throw new Error(`CFEngine pull of ${node} differs: ${problems.slice(0, 5).join(', ')}`);
          }
        }
        const serverBefore = cpuTimeOfTreesMs([stock.pid]);
        cfTimes['no change'].push(await syncNow(relay));
        cfServerCpu['no change'].push(cpuTimeOfTreesMs([stock.pid]) - serverBefore);
      } finally {
        await relay.stop();
      }
      console.log(
        `  onerelay CFEngine pull round ${round + 1}/${settings.cfengineRounds}: cold ${fixed(cfTimes.cold.at(-1)!, 0)} ms, ` +
          `no change ${fixed(cfTimes['no change'].at(-1)!, 0)} ms (${totalFiles} files, all ${settings.nodes} nodes)`,
      );
    }
    const cfm = { cold: median(cfTimes.cold), same: median(cfTimes['no change']) };

    // ---- report ----
    const rtt = (ms: number): number => ms / 1000 / settings.rttSeconds;
    const classicCold = classic.cold * scale;
    const classicSame = classic['no change'] * scale;
    const m = { cold: median(times.cold), same: median(times['no change']), one: median(times['one file']) };
    const coldSpeedup = classicCold / m.cold;
    const verdict = (ok: boolean): string => (ok ? 'met' : 'MISSED');
    const extrapolated = scale === 1 ? '' : ` (×${scale} extrap.)`;
    console.log(
      table(
        ['scenario', 'onerelay ms', 'RTT', `classic ms${extrapolated}`, 'RTT', 'classic/onerelay', 'target', ''],
        [
          ['cold', fixed(m.cold, 0), fixed(rtt(m.cold), 1), fixed(classicCold, 0), fixed(rtt(classicCold), 0), `${fixed(coldSpeedup, 0)}×`, `≥ ${settings.targets.coldSpeedup}× faster`, verdict(coldSpeedup >= settings.targets.coldSpeedup)],
          ['no change', fixed(m.same, 0), fixed(rtt(m.same), 1), fixed(classicSame, 0), fixed(rtt(classicSame), 0), `${fixed(classicSame / m.same, 0)}×`, `≤ ${settings.targets.noChangeRtt} RTT`, verdict(rtt(m.same) <= settings.targets.noChangeRtt)],
          ['one-file change', fixed(m.one, 0), fixed(rtt(m.one), 1), '', '', '', `≤ ${settings.targets.oneFileRtt} RTT`, verdict(rtt(m.one) <= settings.targets.oneFileRtt)],
        ],
      ),
    );
    const cfColdSpeedup = classicCold / cfm.cold;
    const cfSameSpeedup = classicSame / cfm.same;
    console.log('onerelay CFEngine-client pull vs cf-agent copy_from, both from the same cf-serverd through the same proxy:');
    console.log(
      table(
        ['scenario', 'onerelay cf ms', 'RTT', `classic ms${extrapolated}`, 'RTT', 'classic/onerelay', 'target', ''],
        [
          ['cold', fixed(cfm.cold, 0), fixed(rtt(cfm.cold), 1), fixed(classicCold, 0), fixed(rtt(classicCold), 0), `${fixed(cfColdSpeedup, 1)}×`, `≥ ${settings.targets.cfengineSpeedup}× faster`, verdict(cfColdSpeedup >= settings.targets.cfengineSpeedup)],
          ['no change', fixed(cfm.same, 0), fixed(rtt(cfm.same), 1), fixed(classicSame, 0), fixed(rtt(classicSame), 0), `${fixed(cfSameSpeedup, 1)}×`, `≥ ${settings.targets.cfengineSpeedup}× faster`, verdict(cfSameSpeedup >= settings.targets.cfengineSpeedup)],
        ],
      ),
    );
    // CPU per file: onerelay's figures cover all files; the classic one the files it copied (or compared)
    const perFile = (ms: number, files: number): string => fixed(ms / files, 3);
    const cpuMedian = (list: ReadonlyArray<{ server: number; client: number }>, side: 'server' | 'client'): number => median(list.map((c) => c[side]));
    console.log('CPU per file (user + system, ms, from /proc; onerelay over all files, classic over the files it measured):');
    console.log(
      table(
        ['scenario', 'onerelay server', 'onerelay client', 'cf-serverd', 'cf-agent', 'server ratio', 'client ratio'],
        (['cold', 'no change'] as const).map((scenario) => {
          const server = cpuMedian(cpu[scenario], 'server') / totalFiles;
          const clientSide = cpuMedian(cpu[scenario], 'client') / totalFiles;
          const stockServer = classicCpu[scenario].server / classicFiles;
          const stockClient = classicCpu[scenario].client / classicFiles;
          return [
            scenario,
            fixed(server, 3),
            fixed(clientSide, 3),
            fixed(stockServer, 3),
            fixed(stockClient, 3),
            stockServer > 0 ? `${fixed(server / stockServer, 2)}×` : 'n/a',
            stockClient > 0 ? `${fixed(clientSide / stockClient, 2)}×` : 'n/a',
          ];
        }),
      ),
    );
    console.log(
      `  one-file change: onerelay server ${fixed(cpuMedian(cpu['one file'], 'server'), 0)} ms, client ${fixed(cpuMedian(cpu['one file'], 'client'), 0)} ms in all. ` +
        `cf-serverd serving onerelay's CFEngine pull: cold ${perFile(median(cfServerCpu.cold), totalFiles)} ms per file, ` +
        `no change ${fixed(median(cfServerCpu['no change']), 0)} ms in all (serving cf-agent: ${perFile(classicCpu.cold.server, classicFiles)} ms per file cold).`,
    );
    console.log(
      `onerelay CFEngine pull: medians of ${settings.cfengineRounds} rounds (fresh relay each), all ${totalFiles} files of ${settings.nodes} nodes measured, ` +
        `cold = the first pull's own duration, no change = POST …/sync wall time (flag files STATed, no node walked). ` +
        (scale === 1 ? 'Classic measured on all nodes.' : `Classic measured on ${settings.classicNodes} node(s) and extrapolated ×${scale}.`),
    );
    console.log(
      `onerelay: medians of ${settings.rounds} rounds (fresh relay each); RTT = time / ${settings.rttSeconds} s. Classic: one run each` +
        (scale === 1 ? '.' : `, ${classicFiles} of ${totalFiles} files measured (${fixed(classic.cold / 1000, 1)} s cold, ${fixed(classic['no change'] / 1000, 1)} s no change) and scaled ×${scale}; BENCH_SYNC_CLASSIC_NODES=20 measures all.`),
    );
    await mkdir(dirname(outFile), { recursive: true });
    await writeFile(
      outFile,
      `${JSON.stringify(
        {
          bench: 'sync',
          date: new Date().toISOString(),
          settings,
          onerelayMs: times,
          onerelayMedianMs: { cold: m.cold, noChange: m.same, oneFile: m.one },
          onerelayRtt: { cold: rtt(m.cold), noChange: rtt(m.same), oneFile: rtt(m.one) },
          classic: { nodesMeasured: settings.classicNodes, filesMeasured: classicFiles, measuredMs: classic, scale, extrapolatedMs: { cold: classicCold, noChange: classicSame } },
          coldSpeedup,
          cpuMs: { onerelay: cpu, classic: classicCpu, cfServerdServingOnerelay: cfServerCpu },
          cfengineClient: {
            nodesMeasured: settings.nodes,
            filesMeasured: totalFiles,
            ms: cfTimes,
            medianMs: { cold: cfm.cold, noChange: cfm.same },
            rtt: { cold: rtt(cfm.cold), noChange: rtt(cfm.same) },
            speedupVsClassic: { cold: cfColdSpeedup, noChange: cfSameSpeedup },
            classicExtrapolated: scale !== 1,
          },
          targetsMet: {
            cfengineColdSpeedup: cfColdSpeedup >= settings.targets.cfengineSpeedup,
            cfengineNoChangeSpeedup: cfSameSpeedup >= settings.targets.cfengineSpeedup,
            coldSpeedup: coldSpeedup >= settings.targets.coldSpeedup,
            noChangeRtt: rtt(m.same) <= settings.targets.noChangeRtt,
            oneFileRtt: rtt(m.one) <= settings.targets.oneFileRtt,
          },
        },
        null,
        2,
      )}\n`,
    );
    console.log(`figures: ${outFile}`);
  } finally {
    for (const fn of teardowns.reverse()) await Promise.resolve(fn()).catch(() => undefined);
  }
}
