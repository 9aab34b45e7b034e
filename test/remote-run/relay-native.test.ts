// The native remote run through a whole onerelay (node dist/cli.js): the relay API reaching two stock
// cf-serverd nodes on their own loopback addresses with the relay's key, and the relay's own CFEngine
// server taking EXEC from the pinned upstream key (stock cf-runagent).

import { copyFile, readFile } from 'node:fs/promises';
import { createPrivateKey, createPublicKey } from 'node:crypto';
import { join } from 'node:path';
import t from 'tap';
import { keyDigests } from '../../src/identity/index.js';
import { CF_BIN, createCfWorkdir, hasCfRunagent, runCf, startCfRunNode, trustKey } from '../support/cfengine.js';
import { FIXTURE_KEYS, RELAY_ID, startRelay } from '../support/relay.js';
import { freePort, tempDir } from '../support/tmp.js';

const UPSTREAM_ID = 'e745a140-40bc-4b86-b6dc-084488fc906b';
const NODE_A = 'c0c0c0c0-0000-4000-8000-00000000000a';
const NODE_B = 'c0c0c0c0-0000-4000-8000-00000000000b';

async function post(url: string, form: string): Promise<{ status: number; body: string; ms: number }> {
  const started = Date.now();
  const response = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: form });
  return { status: response.status, body: await response.text(), ms: Date.now() - started };
}

if (!hasCfRunagent()) {
  void t.test('remote run with real CFEngine', { skip: 'CFEngine (cf-serverd, cf-runagent, cf-key from Debian cfengine3) is not installed: .ci/run installs it' }, () => undefined);
} else {
  t.test('native remote run through onerelay', async (t) => {
    const base = tempDir(t, 'onerelay-rr-e2e-');
    const relayKey = createPrivateKey(await readFile(join(FIXTURE_KEYS, `${RELAY_ID}.nopass.priv`)));
    const relayMd5 = keyDigests(createPublicKey(relayKey)).cfengineMd5;
    const port = await freePort();
    const nodes: Array<{ id: string; node: Awaited<ReturnType<typeof startCfRunNode>>; work: Awaited<ReturnType<typeof createCfWorkdir>> }> = [];
    for (const [id, address] of [
      [NODE_A, '127.0.0.2'],
      [NODE_B, '127.0.0.3'],
    ] as const) {
      const work = await createCfWorkdir(join(base, id));
      const node = await startCfRunNode(work, { address, port, admitKeys: [relayMd5], trust: [relayKey], lines: [`agent on ${address} done`] });
      t.teardown(() => node.stop());
      nodes.push({ id, node, work });
    }
    // the upstream: its key signs its certificate, which the relay pins for inbound EXEC
    const upstream = await createCfWorkdir(join(base, 'upstream'));
    await copyFile(join(FIXTURE_KEYS, `${UPSTREAM_ID}.nopass.priv`), join(upstream.dir, 'ppkeys', 'localhost.priv'));
    await copyFile(join(FIXTURE_KEYS, `${UPSTREAM_ID}.pub`), join(upstream.dir, 'ppkeys', 'localhost.pub'));
    await trustKey(upstream, relayKey);
    const stranger = await createCfWorkdir(join(base, 'stranger'));
    await trustKey(stranger, relayKey);

    const relay = await startRelay(t, {
      workers: 1,
      upstream: { port: await freePort(), certificateFile: join(FIXTURE_KEYS, `${UPSTREAM_ID}.cert`) },
      nodesList: Object.fromEntries(
        nodes.map(({ id, node, work }) => [id, { hostname: node.address, 'key-hash': work.sha256Pin, 'policy-server': RELAY_ID }]),
      ),
      extraToml: `[remote_run]\nenabled = true\nmode = "native"\nport = ${port}\n`,
    });
    const api = `${relay.apiUrl}/rudder/relay-api/1/remote-run`;

    await t.test('all, synchronous, with output: both nodes ran with the classes', async (t) => {
      const result = await post(`${api}/all`, 'classes=class_x,class_y&keep_output=true&asynchronous=false');
      t.equal(result.status, 200);
      // Nodes run in parallel: their lines interleave (never mid-line), so each node's lines are
      // compared in their own order.
      const lines = result.body.split('\n');
      t.equal(lines.pop(), '', 'the body ends with a whole line');
      for (const { node } of nodes) {
        t.same(
          lines.filter((line) => line.startsWith(`${node.address}> `)),
          [
            `${node.address}> cf-serverd executing cfruncommand: ${node.script} -D class_x,class_y`,
            `${node.address}> -> args: -D class_x,class_y`,
            `${node.address}> -> agent on ${node.address} done`,
            `${node.address}> (exit code: 0)`,
          ],
        );
      }
      t.equal(lines.filter((line) => !nodes.some(({ node }) => line.startsWith(`${node.address}> `))).length, 0, 'every line names its node');
      t.notMatch(result.body, '!!');
    });

    await t.test('one node by id', async (t) => {
      const result = await post(`${api}/nodes/${NODE_B}`, 'keep_output=true&asynchronous=false');
      t.equal(result.status, 200);
      t.match(result.body, /^127\.0\.0\.3> cf-serverd executing cfruncommand: /);
      t.notMatch(result.body, '127.0.0.2>');
    });

    await t.test('asynchronous answers at once; the run still happens', async (t) => {
      const before = await Promise.all(nodes.map(({ node }) => readFile(node.runsLog, 'utf8')));
      const result = await post(`${api}/all`, 'classes=async_run&keep_output=false&asynchronous=true');
      t.equal(result.status, 200);
      t.equal(result.body, '');
      const deadline = Date.now() + 10_000;
      for (const [i, { node }] of nodes.entries()) {
        let log = '';
        while (Date.now() < deadline) {
          log = await readFile(node.runsLog, 'utf8');
          if (log.length > (before[i] ?? '').length) break;
          await new Promise((r) => setTimeout(r, 50));
        }
        t.match(log.slice((before[i] ?? '').length), '-D async_run', `${node.address} ran`);
      }
    });

    await t.test('inbound: cf-runagent with the upstream key runs; another key is refused', async (t) => {
      const runagent = (dir: string) =>
        runCf(`${CF_BIN}/cf-runagent`, ['-H', `127.0.0.1:${relay.cfenginePort}`, '-D', 'force_inventory'], dir, { timeoutMs: 30_000 });
      const ok = await runagent(upstream.dir);
      t.equal(
        ok.stdout,
        '127.0.0.1> cf-serverd executing cfruncommand: onerelay sync -D force_inventory\n' +
          '127.0.0.1> -> onerelay: no data sync from upstream is configured here (sync.upstream): nothing to run\n' +
          '127.0.0.1> (exit code: 0)\n',
      );
      const refused = await runagent(stranger.dir);
      t.equal(refused.stdout, '127.0.0.1> !!  Unspecified server refusal (see verbose server output)\n\n');
    });

    await t.test("the CFEngine server's counters reach the relay's metrics", async (t) => {
      const metrics = await (await fetch(`${relay.apiUrl}/metrics`)).text();
      const value = (series: string): number => Number(new RegExp(`^${series.replace(/[{}]/g, '\\$&')} (\\S+)$`, 'm').exec(metrics)?.[1] ?? NaN);
      t.equal(value('onerelay_cfengine_commands_total{command="EXEC",result="ok"}'), 1, 'the admitted EXEC');
      t.equal(value('onerelay_cfengine_commands_total{command="EXEC",result="denied"}'), 1, 'the refused one');
      t.ok(value('onerelay_cfengine_connections_total{result="accepted"}') >= 2, 'both connections counted');
      t.ok(value('onerelay_cfengine_sent_bytes_total') > 100, 'bytes sent');
      const again = await (await fetch(`${relay.apiUrl}/metrics`)).text();
      t.match(again, /^onerelay_cfengine_commands_total\{command="EXEC",result="ok"\} 1$/m, 'a second scrape counts nothing twice');
    });
  });
}
