// Measurement, not a test (run: npx tsx test/cfengine/measure.ts [rounds]): stock cf-agent copying the
// 300-file tree from onerelay's CFEngine server and from Debian's cf-serverd (same tree, same key ACL,
// same client), interleaved; prints medians and ranges of the whole cf-agent wall time.

import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { createCfengineServer } from '../../src/cfengine/index.js';
import { createNodesRegistry } from '../../src/nodes/index.js';
import { freePort } from '../support/tmp.js';
import { compareTrees, createCfWorkdir, hasCfengine, makeTree, runCopy, startCfServerd, writeNodesList, type CopySpec } from '../support/cfengine.js';

const rounds = Number(process.argv[2] ?? 7);
if (!hasCfengine()) {
  console.log('cf-agent not installed: nothing to measure');
  process.exit(0);
}

const base = await mkdtemp(join(tmpdir(), 'onerelay-cfmeasure-'));
try {
  const nodeId = 'aaaaaaaa-0000-4000-8000-000000000001';
  const [client, relay, serverd] = await Promise.all([
    createCfWorkdir(join(base, 'client'), 4096),
    createCfWorkdir(join(base, 'relay'), 4096),
    createCfWorkdir(join(base, 'serverd'), 4096),
  ]);
  const share = join(base, 'share');
  const source = join(share, nodeId, 'rules', 'cfengine-community');
  await mkdir(source, { recursive: true });
  const files = await makeTree(source, 300);
  await writeNodesList(join(base, 'nodeslist.json'), [{ id: nodeId, work: client }]);
  const nodes = createNodesRegistry({
    myId: 'root',
    nodesListFile: join(base, 'nodeslist.json'),
    nodesCertsFile: join(base, 'nodescerts.pem'),
    log: pino({ level: 'silent' }),
  });
  await nodes.reload();
  let gets = 0;
  const onerelay = createCfengineServer(
    {
      listen: { host: '127.0.0.1', port: 0 },
      privateKey: relay.privateKey,
      nodeId: 'root',
      policiesDirectory: share,
      sharedFolderPath: join(base, 'shared-files'),
      allowedNetworks: ['127.0.0.0/8'],
    },
    {
      nodes,
      log: pino({ level: 'silent' }),
      counters: { connection: () => undefined, command: (c) => void (c === 'GET' && (gets += 1)), bytesSent: () => undefined },
    },
  );
  await onerelay.start();
  const stock = await startCfServerd(serverd, await freePort(), { keys: [{ path: `${share}/${nodeId}/`, admit: [client.md5] }] });

  const servers = [
    { name: 'onerelay', port: onerelay.port() },
    { name: 'cf-serverd', port: stock.port },
  ];
  const times: Record<string, number[]> = {};
  const record = (key: string, ms: number): void => void (times[key] ??= []).push(ms);
  for (let round = 0; round < rounds; round += 1) {
    for (const server of servers) {
      for (const compare of ['digest', 'mtime'] as const) {
        const dest = join(base, `dest-${server.name}-${compare}`);
        await rm(dest, { recursive: true, force: true });
        const copy: CopySpec = { source, dest, compare };
        const opts = { port: server.port, copies: [copy] };
        const cold = await runCopy(client, opts, 'measure.cf', { inform: false });
        if (cold.code !== 0) throw new Error(`${server.name} cold copy failed: ${cold.stdout}`);
        record(`${server.name} ${compare} cold`, cold.durationMs);
        const same = await runCopy(client, opts, 'measure.cf', { inform: false });
        record(`${server.name} ${compare} no change`, same.durationMs);
        if (round === 0) {
          const problems = await compareTrees(source, dest);
          if (problems.length > 0) throw new Error(`${server.name}: ${problems.slice(0, 5).join(', ')}`);
        }
      }
    }
  }
  await onerelay.stop();
  await stock.stop();
  const median = (v: number[]): number => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)] ?? NaN;
  console.log(`${files.length} files, ${rounds} interleaved rounds, RSA-4096 keys, TLS 1.3, whole cf-agent wall time (ms)`);
  console.log('scenario'.padEnd(22), 'onerelay median (min–max)'.padEnd(28), 'cf-serverd median (min–max)'.padEnd(28), 'ratio');
  for (const scenario of ['digest cold', 'digest no change', 'mtime cold', 'mtime no change']) {
    const a = times[`onerelay ${scenario}`] ?? [];
    const b = times[`cf-serverd ${scenario}`] ?? [];
    const fmt = (v: number[]): string => `${median(v).toFixed(0)} (${Math.min(...v).toFixed(0)}–${Math.max(...v).toFixed(0)})`;
    console.log(scenario.padEnd(22), fmt(a).padEnd(28), fmt(b).padEnd(28), (median(a) / median(b)).toFixed(2));
  }
  console.log(`GET commands served by onerelay: ${gets} (${rounds * 2} cold copies)`);
} finally {
  await rm(base, { recursive: true, force: true });
}
