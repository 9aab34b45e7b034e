// The native remote run's outbound half against stock cf-serverd 3.21 playing the nodes: a cfruncommand
// script printing its arguments, admitted only for the relay's key; compared byte for byte with what the
// stock cf-runagent prints for the same node.

import { generateKeyPairSync } from 'node:crypto';
import { createServer } from 'node:net';
import { pino } from 'pino';
import t from 'tap';
import type { NodeEntry } from '../../src/nodes/index.js';
import { createNativeRunner } from '../../src/remote-run/native-runner.js';
import { keyDigests } from '../../src/identity/index.js';
import { CF_BIN, createCfWorkdir, hasCfRunagent, keyHashOf, runCf, startCfRunNode, trustKey } from '../support/cfengine.js';
import { freePort, tempDir } from '../support/tmp.js';

if (!hasCfRunagent()) {
  void t.test('remote run with real CFEngine', { skip: 'CFEngine (cf-serverd, cf-runagent, cf-key from Debian cfengine3) is not installed: .ci/run installs it' }, () => undefined);
} else {
  t.test('native remote run against stock cf-serverd', async (t) => {
    const base = tempDir(t, 'onerelay-rr-');
    const relayWork = await createCfWorkdir(`${base}/relay`);
    const nodeWork = await createCfWorkdir(`${base}/node`);
    const otherKey = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
    const untrustedKey = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
    const port = await freePort();
    const node = await startCfRunNode(nodeWork, {
      address: '127.0.0.2',
      port,
      admitKeys: [keyDigests(relayWork.publicKey).cfengineMd5],
      trust: [relayWork.publicKey, generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey, otherKey],
      lines: ['first line', 'second line'],
    });
    t.teardown(() => node.stop());
    const entry: NodeEntry = { id: 'n1', hostname: '127.0.0.2', policyServer: 'root', keyHash: keyHashOf(nodeWork) };
    const log = pino({ level: 'silent' });
    const runner = createNativeRunner({ privateKey: relayWork.privateKey, port, connectTimeoutMs: 2_000, maxParallel: 4, log });
    const run = async (r = runner, nodes: readonly NodeEntry[] = [entry], classes: readonly string[] = ['class_a', 'class_b'], signal = AbortSignal.timeout(20_000)) => {
      const chunks: Buffer[] = [];
      const started = Date.now();
      const result = await r.run(nodes, classes, (chunk) => chunks.push(chunk), signal);
      return { ...result, output: Buffer.concat(chunks).toString('utf8'), ms: Date.now() - started };
    };

    await t.test('the script runs with the requested classes; output as cf-runagent prints it', async (t) => {
      const result = await run();
      t.equal(result.failed, 0);
      t.equal(
        result.output,
        `127.0.0.2> cf-serverd executing cfruncommand: ${node.script} -D class_a,class_b\n` +
          '127.0.0.2> -> args: -D class_a,class_b\n' +
          '127.0.0.2> -> first line\n' +
          '127.0.0.2> -> second line\n' +
          '127.0.0.2> (exit code: 0)\n',
      );
      // the stock cf-runagent, same key, same node: the same bytes
      await trustKey(relayWork, nodeWork.publicKey, '127.0.0.2');
      const stock = await runCf(`${CF_BIN}/cf-runagent`, ['-H', `127.0.0.2:${port}`, '-D', 'class_a,class_b'], relayWork.dir, { timeoutMs: 30_000 });
      t.equal(result.output, stock.stdout, 'identical to cf-runagent');
    });

    await t.test('no classes: plain EXEC', async (t) => {
      const result = await run(runner, [entry], []);
      t.equal(result.failed, 0);
      t.match(result.output, `127.0.0.2> cf-serverd executing cfruncommand: ${node.script}\n127.0.0.2> -> args: \n`);
    });

    await t.test('a key trusted but not admitted for cfruncommand: cf-serverd refuses', async (t) => {
      const other = createNativeRunner({ privateKey: otherKey, port, connectTimeoutMs: 2_000, maxParallel: 1, log });
      const result = await run(other);
      t.equal(result.failed, 1);
      t.equal(result.output, '127.0.0.2> !!  Unspecified server refusal (see verbose server output)\n\n', 'as cf-runagent prints it');
    });

    await t.test('a key the node does not trust: dropped during identification', async (t) => {
      const other = createNativeRunner({ privateKey: untrustedKey, port, connectTimeoutMs: 2_000, maxParallel: 1, log });
      const result = await run(other);
      t.equal(result.failed, 1);
      t.match(result.output, /^127\.0\.0\.2> !! cannot run the agent on 127\.0\.0\.2:\d+: .*identification\n$/);
    });

    await t.test('the node presents a key that does not match its pin: we refuse before sending anything', async (t) => {
      const wrong = { ...entry, keyHash: { type: 'sha256' as const, bytes: Buffer.alloc(32, 7) } };
      const noPin = { ...entry, id: 'n2', keyHash: undefined };
      const result = await run(runner, [wrong, noPin]);
      t.equal(result.failed, 2);
      const lines = result.output.trimEnd().split('\n').sort((x, y) => (x.includes('no key hash') ? 1 : 0) - (y.includes('no key hash') ? 1 : 0));
      t.equal(lines.length, 2);
      t.match(lines[0], /^127\.0\.0\.2> !! cannot run the agent on .*does not match its pin/);
      t.match(lines[1], /^127\.0\.0\.2> !! cannot run the agent on .*no key hash/);
    });

    await t.test('a node that is down, and one that never answers: one error line each, quickly', async (t) => {
      const downPort = await freePort();
      const down: NodeEntry = { ...entry, id: 'down', hostname: '127.0.0.3' };
      // a listener that accepts and stays silent (TLS never completes)
      const silent = createServer(() => undefined);
      await new Promise<void>((resolve) => silent.listen(0, '127.0.0.4', () => resolve()));
      t.teardown(() => silent.close());
      const silentPort = (silent.address() as { port: number }).port;
      const r1 = createNativeRunner({ privateKey: relayWork.privateKey, port: downPort, connectTimeoutMs: 500, maxParallel: 4, log });
      const r2 = createNativeRunner({ privateKey: relayWork.privateKey, port: silentPort, connectTimeoutMs: 500, maxParallel: 4, log });
      const a = await run(r1, [down]);
      t.equal(a.failed, 1);
      t.match(a.output, /^127\.0\.0\.3> !! cannot run the agent on 127\.0\.0\.3:\d+: cannot connect: .*ECONNREFUSED.*\n$/);
      t.ok(a.ms < 1_000, `refused at once (${a.ms} ms)`);
      const b = await run(r2, [{ ...entry, id: 'silent', hostname: '127.0.0.4' }]);
      t.equal(b.failed, 1);
      t.match(b.output, /^127\.0\.0\.4> !! cannot run the agent on 127\.0\.0\.4:\d+: connection timed out after 500 ms\n$/);
      t.ok(b.ms < 1_500, `connect timeout honoured (${b.ms} ms)`);
      const r3 = createNativeRunner({ privateKey: relayWork.privateKey, port: silentPort, connectTimeoutMs: 10_000, maxParallel: 4, log });
      const c = await run(r3, [{ ...entry, id: 'silent', hostname: '127.0.0.4' }], [], AbortSignal.timeout(200));
      t.equal(c.failed, 1);
      t.match(c.output, /^127\.0\.0\.4> !! cannot run the agent on 127\.0\.0\.4:\d+: timed out\n$/);
      t.ok(c.ms >= 150 && c.ms < 1_000, `signal honoured (${c.ms} ms)`);
    });

    await t.test('many nodes at once, bounded parallelism', async (t) => {
      const nodes = Array.from({ length: 12 }, (_, i) => ({ ...entry, id: `n${i}` }));
      const result = await run(createNativeRunner({ privateKey: relayWork.privateKey, port, connectTimeoutMs: 2_000, maxParallel: 3, log }), nodes);
      t.equal(result.failed, 0);
      t.equal(result.output.split('\n').filter((l) => l.endsWith('(exit code: 0)')).length, 12);
    });
  });
}
