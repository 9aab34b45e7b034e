// The inbound remote run (spec §2.5): onerelay's CFEngine server answers EXEC from the pinned upstream
// key only, checks the classes, runs onExec and answers in cf-serverd's framing; driven by the stock
// cf-runagent 3.21 and by our own client.

import t from 'tap';
import { connectCfengineServer, runExec } from '../../src/cfengine/index.js';
import { keyDigests } from '../../src/identity/index.js';
import { CF_BIN, createCfWorkdir, hasCfRunagent, runCf, startCfengineFixture, trustKey } from '../support/cfengine.js';
import { tempDir } from '../support/tmp.js';

if (!hasCfRunagent()) {
  void t.test('remote run with real CFEngine', { skip: 'CFEngine (cf-runagent, cf-key from Debian cfengine3) is not installed: .ci/run installs it' }, () => undefined);
} else {
  t.test('inbound EXEC on onerelay’s CFEngine server', async (t) => {
    const base = tempDir(t, 'onerelay-rr-in-');
    const upstream = await createCfWorkdir(`${base}/upstream`);
    const stranger = await createCfWorkdir(`${base}/stranger`);
    const calls: Array<readonly string[]> = [];
    let exitCode = 0;
    const fixture = await startCfengineFixture({
      base: `${base}/relay`,
      nodes: [],
      server: {
        execKeys: [keyDigests(upstream.publicKey).sha256Pin],
        onExec: async (classes, writeLine) => {
          calls.push(classes);
          writeLine('sync started');
          await new Promise((r) => setTimeout(r, 50));
          writeLine('sync done\nsecond line');
          return exitCode;
        },
      },
    });
    t.teardown(() => fixture.server.stop());
    await trustKey(upstream, fixture.relayKey);
    await trustKey(stranger, fixture.relayKey);
    const runagent = (work: { dir: string }, ...args: string[]) =>
      runCf(`${CF_BIN}/cf-runagent`, ['-H', `127.0.0.1:${fixture.port()}`, ...args], work.dir, { timeoutMs: 30_000 });

    await t.test('cf-runagent with the upstream key: executing, lines, exit code', async (t) => {
      const result = await runagent(upstream, '-D', 'force_inventory');
      t.equal(
        result.stdout,
        '127.0.0.1> cf-serverd executing cfruncommand: onerelay sync -D force_inventory\n' +
          '127.0.0.1> -> sync started\n' +
          '127.0.0.1> -> sync done\n' +
          '127.0.0.1> -> second line\n' +
          '127.0.0.1> (exit code: 0)\n',
      );
      t.same(calls, [['force_inventory']]);
      const plain = await runagent(upstream);
      t.match(plain.stdout, /^127\.0\.0\.1> cf-serverd executing cfruncommand: onerelay sync\n/);
      t.same(calls[1], []);
    });

    await t.test('a failing run reports its exit code', async (t) => {
      exitCode = 3;
      const result = await runagent(upstream, '-D', 'info,debug');
      exitCode = 0;
      t.match(result.stdout, '127.0.0.1> (exit code: 3)\n');
      t.same(calls.at(-1), ['info', 'debug']);
    });

    await t.test("a class outside Rudder's roles (force_inventory, info, debug, trace) is denied, nothing runs", async (t) => {
      const before = calls.length;
      const result = await runagent(upstream, '-D', 'debug,my_class');
      t.equal(result.stdout, '127.0.0.1> EXEC denied role activation (check cf-serverd verbose output)\n');
      const partial = await runagent(upstream, '-D', 'force_inventory_now');
      t.equal(partial.stdout, '127.0.0.1> EXEC denied role activation (check cf-serverd verbose output)\n', 'roles match whole names');
      t.equal(calls.length, before);
    });

    await t.test('cf-runagent with another (trusted) key: cf-serverd’s refusal, nothing runs', async (t) => {
      const before = calls.length;
      const denied = fixture.counters.count('EXEC', 'denied');
      const result = await runagent(stranger, '-D', 'force_inventory');
      t.equal(result.stdout, '127.0.0.1> !!  Unspecified server refusal (see verbose server output)\n\n');
      t.equal(calls.length, before);
      t.equal(fixture.counters.count('EXEC', 'denied'), denied + 1);
    });

    await t.test('our client: bad class names, bundles, unknown options, class selection', async (t) => {
      const before = calls.length;
      const ask = async (classes: string[], extra: { bundles?: string[]; select?: string[] } = {}) => {
        const client = await connectCfengineServer({
          host: '127.0.0.1',
          port: fixture.port(),
          privateKey: upstream.privateKey,
          connectTimeoutMs: 2_000,
          verifyServerKey: () => undefined,
        });
        const lines: string[] = [];
        try {
          const result = await runExec(client, { classes, ...extra }, 'relay', (line) => lines.push(line));
          return { lines, result };
        } finally {
          client.close();
        }
      };
      const bad = await ask(['info', 'bad-class']);
      t.same(bad.lines, ['relay> EXEC denied role activation (check cf-serverd verbose output)\n']);
      const spaced = await ask(['info', 'debug -rf']);
      t.same(spaced.lines, ['relay> EXEC denied: invalid arguments: -rf\n'], 'parsed as cf-serverd does');
      t.equal(bad.result.complete, true);
      const bundles = await ask([], { bundles: ['main'] });
      t.same(bundles.lines, ['relay> EXEC denied bundle activation (check cf-serverd verbose output)\n']);
      const selected = await ask(['info'], { select: ['some_host_class'] });
      t.equal(selected.lines.length, 2);
      t.match(selected.lines[0], /^relay> Hello 127\.0\.0\.1 \(127\.0\.0\.1\), nothing relevant to do here/);
      t.equal(selected.lines.at(-1), 'relay> EXEC denied due to failed class match (check cf-serverd verbose output)\n');
      t.equal(calls.length, before, 'nothing ran');
    });

    await t.test("the upstream's key with a user other than root (not in allowusers): refused, nothing runs", async (t) => {
      const before = calls.length;
      const denied = fixture.counters.count('EXEC', 'denied');
      const client = await connectCfengineServer({
        host: '127.0.0.1',
        port: fixture.port(),
        privateKey: upstream.privateKey,
        username: 'rudder',
        connectTimeoutMs: 2_000,
        verifyServerKey: () => undefined,
      });
      const lines: string[] = [];
      try {
        const result = await runExec(client, { classes: ['info'] }, 'r', (line) => lines.push(line));
        t.equal(result.refused, true);
      } finally {
        client.close();
      }
      t.same(lines, ['r> !!  Unspecified server refusal (see verbose server output)\n\n']);
      t.equal(calls.length, before);
      t.equal(fixture.counters.count('EXEC', 'denied'), denied + 1, 'counted as a refusal');
    });

    await t.test('without onExec, EXEC is refused to everyone', async (t) => {
      const other = await startCfengineFixture({ base: `${base}/relay2`, nodes: [], server: { execKeys: [keyDigests(upstream.publicKey).sha256Pin] } });
      t.teardown(() => other.server.stop());
      const client = await connectCfengineServer({
        host: '127.0.0.1',
        port: other.port(),
        privateKey: upstream.privateKey,
        connectTimeoutMs: 2_000,
        verifyServerKey: () => undefined,
      });
      const lines: string[] = [];
      const result = await runExec(client, { classes: ['a'] }, 'r', (line) => lines.push(line));
      client.close();
      t.same(lines, ['r> !!  Unspecified server refusal (see verbose server output)\n\n']);
      t.equal(result.refused, true);
    });
  });
}
