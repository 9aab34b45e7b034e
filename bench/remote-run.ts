// Remote run of 50 nodes (each a stock cf-serverd 3.21 on its own loopback address, cfruncommand = a
// script printing its arguments): `POST …/remote-run/all` through onerelay's native runner (one process,
// parallel EXEC over the CFEngine protocol) vs a loop of stock `cf-runagent -H <node>` over the same nodes
// (what `rudder remote run` does, one process per node).

import { createPrivateKey, createPublicKey } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { keyDigests } from '../src/identity/index.js';
import { CF_BIN, createCfWorkdir, hasCfRunagent, runCf, startCfRunNode, trustKey, type RunningCfRunNode } from '../test/support/cfengine.js';
import { FIXTURE_KEYS, RELAY_ID, startRelay } from '../test/support/relay.js';
import { freePort, tempDir } from '../test/support/tmp.js';
import { cliFile } from './lib/onerelay.js';

export const description = 'remote run of 50 cf-serverd nodes: onerelay native EXEC (relay API, all) vs a loop of stock cf-runagent -H';

const NODES = Number(process.env['BENCH_REMOTE_RUN_NODES'] ?? 50);
const ROUNDS = 3;

export async function run(): Promise<void> {
  if (!hasCfRunagent()) {
    console.log('[remote-run] skipped: CFEngine (cf-serverd, cf-runagent) is not installed');
    return;
  }
  const teardowns: Array<() => unknown> = [];
  const t = { teardown: (fn: () => unknown) => void teardowns.push(fn) };
  try {
    const base = tempDir(t, 'onerelay-bench-rr-');
    const relayKey = createPrivateKey(await readFile(join(FIXTURE_KEYS, `${RELAY_ID}.nopass.priv`)));
    const relayMd5 = keyDigests(createPublicKey(relayKey)).cfengineMd5;
    const port = await freePort();
    // the stock client plays the relay with the same key
    const client = await createCfWorkdir(join(base, 'relay'));
    const { copyFile } = await import('node:fs/promises');
    await copyFile(join(FIXTURE_KEYS, `${RELAY_ID}.nopass.priv`), join(client.dir, 'ppkeys', 'localhost.priv'));
    await copyFile(join(FIXTURE_KEYS, `${RELAY_ID}.pub`), join(client.dir, 'ppkeys', 'localhost.pub'));
    const started = Date.now();
    const nodes: Array<{ id: string; node: RunningCfRunNode; pin: string }> = await Promise.all(
      Array.from({ length: NODES }, async (_, i) => {
        const address = `127.0.1.${i + 1}`;
        const work = await createCfWorkdir(join(base, `node${i}`));
        const node = await startCfRunNode(work, { address, port, admitKeys: [relayMd5], trust: [relayKey], lines: ['agent run done'] });
        teardowns.push(() => node.stop());
        await trustKey(client, work.publicKey, address);
        return { id: `c0c0c0c0-0000-4000-8000-${String(i).padStart(12, '0')}`, node, pin: work.sha256Pin };
      }),
    );
    console.log(`[remote-run] ${NODES} cf-serverd nodes up in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    const relay = await startRelay(t, {
      cli: cliFile,
      workers: 1,
      nodesList: Object.fromEntries(nodes.map(({ id, node, pin }) => [id, { hostname: node.address, 'key-hash': pin, 'policy-server': RELAY_ID }])),
      extraToml: `[remote_run]\nenabled = true\nmode = "native"\nport = ${port}\nmax_parallel = 32\n`,
    });

    const viaRelay = async (): Promise<number> => {
      const t0 = process.hrtime.bigint();
      const response = await fetch(`${relay.apiUrl}/rudder/relay-api/1/remote-run/all`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: 'classes=bench&keep_output=true&asynchronous=false',
      });
      const body = await response.text();
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      const done = body.split('\n').filter((l) => l.endsWith('(exit code: 0)')).length;
      if (done !== NODES) throw new Error(`onerelay: ${done}/${NODES} nodes ran:\n${body.slice(0, 2000)}`);
      return ms;
    };
    const viaLoop = async (): Promise<number> => {
      const t0 = process.hrtime.bigint();
      for (const { node } of nodes) {
        const result = await runCf(`${CF_BIN}/cf-runagent`, ['-H', `${node.address}:${port}`, '-D', 'bench'], client.dir, { timeoutMs: 60_000 });
        if (!result.stdout.includes('(exit code: 0)')) throw new Error(`cf-runagent ${node.address}: ${result.stdout}${result.stderr}`);
      }
      return Number(process.hrtime.bigint() - t0) / 1e6;
    };
    await viaRelay(); // warm-up
    const relayMs: number[] = [];
    const loopMs: number[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      relayMs.push(await viaRelay());
      loopMs.push(await viaLoop());
    }
    const median = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] ?? NaN;
    const r = median(relayMs);
    const l = median(loopMs);
    console.log(`[remote-run] ${NODES} nodes, median of ${ROUNDS} rounds`);
    console.log(`  onerelay native (relay API, all):   ${r.toFixed(0)} ms   (${relayMs.map((v) => v.toFixed(0)).join(', ')})`);
    console.log(`  loop of cf-runagent -H:             ${l.toFixed(0)} ms   (${loopMs.map((v) => v.toFixed(0)).join(', ')})`);
    console.log(`  ratio: onerelay is ${(l / r).toFixed(1)}× faster`);
  } finally {
    for (const fn of teardowns.reverse()) await Promise.resolve(fn()).catch(() => undefined);
  }
}
