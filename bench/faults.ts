// Bench: the fault run (issue 16). N signed run logs are uploaded by agents (fresh TLS, retrying until
// 2xx, as agents keep a file they could not send) through onerelay, whose upstream answers 503 to half
// of its PUTs at random; the primary is SIGKILLed 5 times while reports flow, and restarted at once.
// Then: how many reached upstream byte-identical, how many twice ("maybe twice, never zero"), how many
// were lost, uploads refused while the relay was up, the drain time after the last restart, and the time
// a SIGTERM takes with a forward in flight to an upstream that took the request and never answers.
// No peer: rudder-relayd is not installable here. Figures go to bench/out/faults.json.

import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { cachedIdentities, cacheDirectory } from './lib/identities.js';
import { epochNow, onerelayMissing, startOnerelayUploads, type OnerelayUploads } from './lib/onerelay.js';
import { writeFigures } from './lib/output.js';
import { acceptsConnections, freePort } from './lib/processes.js';
import { cachedSignedRunlogs, type SignedRunlog } from './lib/runlogs.js';
import { fixed, table } from './lib/stats.js';
import { basicAuthorization, upload, uploadingAgent, type UploadingAgent } from './lib/upload-client.js';
import { startBenchUpstream, type BenchUpstream } from './lib/upstream.js';

export const description =
  'faults: signed reports through a relay whose upstream fails 50 % of requests, primary SIGKILLed 5 times, then SIGTERM with a forward in flight';

const env = (name: string, fallback: number): number => Number(process.env[name] ?? fallback);

const settings = {
  nodes: 20,
  reports: env('BENCH_FAULT_REPORTS', 10_000),
  runlogTextBytes: 15 * 1024,
  failShare: 0.5,
  kills: 5,
  /** uploads in flight, like as many agents whose runs end together */
  uploadConcurrency: 8,
  /** an agent whose upload failed tries again after this */
  uploadRetryMs: 250,
  /** how long the whole run may take before it fails */
  timeoutMs: env('BENCH_FAULT_TIMEOUT_S', 3_600) * 1000,
} as const;

const outFile = fileURLToPath(new URL('./out/faults.json', import.meta.url));

interface Counters {
  uploaded: number;
  /** answered with a status other than 2xx while the relay was up */
  refusedWhileUp: number;
  refusedStatuses: Record<string, number>;
  /** no answer (connection refused or cut): the relay was being killed or restarted */
  connectionFailures: number;
}

export async function run(): Promise<void> {
  console.log(description);
  const missing = onerelayMissing();
  if (missing !== undefined) throw new Error(missing);
  console.log(`  identities and signed run logs cached in ${cacheDirectory} (first run makes them: a few minutes)`);
  const names = ['relay', 'upstream', ...Array.from({ length: settings.nodes }, (_, index) => `agent${index}`)];
  const [relayIdentity, upstreamIdentity, ...nodes] = await cachedIdentities(names);
  if (relayIdentity === undefined || upstreamIdentity === undefined) throw new Error('no relay or upstream identity');
  // one more than N: the report in flight at the SIGTERM
  const perNode = Math.max(50, Math.ceil((settings.reports + 1) / settings.nodes));
  const runlogs = await cachedSignedRunlogs(
    nodes.map((identity, index) => ({ name: `agent${index}`, identity })),
    perNode,
    settings.runlogTextBytes,
  );
  const ordered = Array.from({ length: perNode }, (_, run) => nodes.map((_, node) => runlogs.files[node * perNode + run]!)).flat();
  const files = ordered.slice(0, settings.reports);
  const lastOne = ordered[settings.reports]!;
  console.log(
    `  ${files.length} run logs of ${settings.nodes} nodes; upstream fails ${settings.failShare * 100} % of PUTs; ` +
      `${settings.kills} SIGKILLs of the primary; ${settings.uploadConcurrency} uploads in flight`,
  );

  const directory = await mkdtemp(join(tmpdir(), 'onerelay-bench-faults-'));
  const password = randomBytes(12).toString('hex');
  const upstream = await startBenchUpstream({ directory, identity: upstreamIdentity, user: 'rudder', password });
  const relayDirectory = join(directory, 'relay');
  const httpsPort = await freePort();
  const start = (): Promise<OnerelayUploads> =>
    startOnerelayUploads({
      directory: relayDirectory,
      httpsPort,
      relay: relayIdentity,
      agents: nodes,
      password,
      workers: 0,
      upstream: { port: upstream.port, certificateFile: upstream.certificateFile },
    });
  let relay: OnerelayUploads | undefined;
  try {
    upstream.setFaults({ failShare: settings.failShare });
    relay = await start();
    const startedAt = epochNow();
    const counters: Counters = { uploaded: 0, refusedWhileUp: 0, refusedStatuses: {}, connectionFailures: 0 };
    let relayUp = true;
    const agents = new Map(nodes.map((node) => [node.nodeId, uploadingAgent(node)]));
    const authorization = basicAuthorization('rudder', password);
    const uploads = uploadAll(files, agents, authorization, httpsPort, counters, () => relayUp);

    // the kills, spread over the deliveries: after 1/7, 2/7, … 5/7 of the reports reached upstream
    let lastRestartAt = startedAt;
    let backlogAtLastRestart = 0;
    for (let kill = 1; kill <= settings.kills; kill++) {
      const threshold = Math.floor((settings.reports * kill) / (settings.kills + 2));
      await upstream.whenStored(threshold, settings.timeoutMs);
      relayUp = false;
      const killed = relay;
      killed.server.process.kill('SIGKILL');
      await killed.server.exited;
      // the workers follow their primary (IPC disconnect); the port is free once they are gone
      while (await acceptsConnections(httpsPort)) await sleep(50);
      relay = await startWithRetries(start);
      relayUp = true;
      lastRestartAt = relay.readyAt;
      backlogAtLastRestart = (await readdir(relay.reportsDirectory)).length;
      const stats = await upstream.stats();
      console.log(`  SIGKILL ${kill}: ${stats.files} of ${settings.reports} upstream; restarted with ${backlogAtLastRestart} files in the spool`);
    }
    await uploads;
    const uploadsDoneAt = epochNow();
    const allStoredAt = await upstream.whenStored(settings.reports, settings.timeoutMs);
    const stats = await upstream.stats();

    // byte comparison, upstream side
    const digests = await upstream.digests();
    let delivered = 0;
    for (const file of files) if (digests.get(`reports/${file.name}`) === file.sha256) delivered++;
    const lost = settings.reports - delivered;
    const duplicates = stats.puts - stats.files;

    // SIGTERM with a forward in flight: the upstream reads the next PUT and never answers
    upstream.setFaults({ hang: true });
    const body = await readFile(lastOne.file);
    const agent = agents.get(lastOne.nodeId)!;
    const outcome = await upload({ port: httpsPort, agent, fileName: lastOne.name, body, authorization });
    if (outcome.status !== 201 && outcome.status !== 204) throw new Error(`the last upload got ${String(outcome.status ?? outcome.error)}`);
    while ((await upstream.stats()).hung === 0) await sleep(50);
    const signalledAt = epochNow();
    relay.server.process.kill('SIGTERM');
    const exit = await relay.server.exited;
    const shutdownMs = epochNow() - signalledAt;
    const keptInSpool = existsSync(join(relay.reportsDirectory, lastOne.name));
    const log = await readFile(relay.server.logFile, 'utf8');
    const stoppedLogged = log.split('\n').some((line) => line.includes('"event":"stopped"'));
    relay = undefined;

    const drainMs = allStoredAt - lastRestartAt;
    console.log(
      table(
        ['figure', 'value'],
        [
          ['reports uploaded (2xx)', String(counters.uploaded)],
          ['delivered upstream byte-identical', `${delivered} of ${settings.reports}`],
          ['lost', String(lost)],
          ['sent twice (stored again: maybe twice, never zero)', String(duplicates)],
          ['upstream 503s (on purpose)', String(stats.failed)],
          ['uploads refused while the relay was up', `${counters.refusedWhileUp}${counters.refusedWhileUp > 0 ? ` ${JSON.stringify(counters.refusedStatuses)}` : ''}`],
          ['uploads without answer (relay being killed/restarted)', String(counters.connectionFailures)],
          ['whole run (first upload → all upstream)', `${fixed((allStoredAt - startedAt) / 1000)} s`],
          ['uploads done → all upstream', `${fixed(Math.max(0, allStoredAt - uploadsDoneAt) / 1000)} s`],
          ['drain after the last restart', `${fixed(drainMs / 1000)} s (${backlogAtLastRestart} files in the spool at that restart)`],
          ['SIGTERM with a forward in flight → exit', `${fixed(shutdownMs / 1000, 2)} s (${exit}); "onerelay stopped" ${stoppedLogged ? 'logged' : 'NOT logged'}; the file ${keptInSpool ? 'stays in the spool' : 'is NOT in the spool'}`],
        ],
      ),
    );
    const ok = lost === 0 && counters.refusedWhileUp === 0 && keptInSpool && stoppedLogged;
    console.log(`  check: ${ok ? 'ok' : 'FAILED'}`);
    await writeFigures(outFile, 'faults', {
      settings,
      uploaded: counters.uploaded,
      delivered,
      lost,
      duplicates,
      upstream503: stats.failed,
      refusedWhileUp: counters.refusedWhileUp,
      refusedStatuses: counters.refusedStatuses,
      connectionFailures: counters.connectionFailures,
      wholeRunMs: Math.round(allStoredAt - startedAt),
      drainAfterLastRestartMs: Math.round(drainMs),
      backlogAtLastRestart,
      shutdownMs: Math.round(shutdownMs),
      shutdownExit: exit,
      stoppedLogged,
      keptInSpool,
      check: ok,
    });
    if (!ok) throw new Error('fault run check failed (see the table)');
  } finally {
    await relay?.server.stop();
    await upstream.stop();
    await rm(directory, { recursive: true, force: true });
  }
}

/** every file uploaded until answered 2xx, `uploadConcurrency` at a time, in order */
async function uploadAll(
  files: readonly SignedRunlog[],
  agents: ReadonlyMap<string, UploadingAgent>,
  authorization: string,
  port: number,
  counters: Counters,
  isRelayUp: () => boolean,
): Promise<void> {
  let next = 0;
  const lane = async (): Promise<void> => {
    for (let index = next++; index < files.length; index = next++) {
      const file = files[index]!;
      const body = await readFile(file.file);
      const agent = agents.get(file.nodeId)!;
      for (;;) {
        const wasUp = isRelayUp();
        const outcome = await upload({ port, agent, fileName: file.name, body, authorization });
        if (outcome.status === 201 || outcome.status === 204) break;
        if (outcome.status === undefined) counters.connectionFailures++;
        else if (wasUp && isRelayUp()) {
          counters.refusedWhileUp++;
          counters.refusedStatuses[String(outcome.status)] = (counters.refusedStatuses[String(outcome.status)] ?? 0) + 1;
        } else counters.connectionFailures++;
        await sleep(settings.uploadRetryMs);
      }
      counters.uploaded++;
    }
  };
  await Promise.all(Array.from({ length: settings.uploadConcurrency }, lane));
}

/** a restart right after a SIGKILL may find a port still held for a moment */
async function startWithRetries(start: () => Promise<OnerelayUploads>): Promise<OnerelayUploads> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await start();
    } catch (error) {
      if (attempt >= 3) throw error;
      await sleep(500);
    }
  }
}

