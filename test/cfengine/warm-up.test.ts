// The warm-up at start (src/cfengine/warm-up.ts, issue 20): the request path answers a cf-agent-like copy
// of a private tree before the server listens, and leaves nothing a user would see: no counters, no node
// activity, no access log lines, no temporary tree; the server then serves as usual.

import { generateKeyPairSync } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { call, inThreadPoolMode, resetFileSystemMode } from '../../src/fs-direct/index.js';
import { connectCfengine, sha256PinOf, startCfengineFixture } from '../support/cfengine.js';
import { tempDir } from '../support/tmp.js';

const NODE = 'aaaaaaaa-1111-4000-8000-000000000001';

const warmUpTrees = (): string[] => readdirSync(tmpdir()).filter((name) => name.startsWith('onerelay-cfengine-warm-up-'));

t.test('the warm-up answers its requests before listening and leaves no trace', async (t) => {
  const before = new Set(warmUpTrees());
  const key = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const fixture = await startCfengineFixture({
    base: tempDir(t, 'onerelay-warm-up-'),
    nodes: [{ id: NODE, sha256Pin: sha256PinOf(key) }],
    server: { warmUpRequests: 600 },
  });
  t.teardown(() => fixture.server.stop());
  const warmed = fixture.logs.find((line) => line['msg'] === 'cfengine request path warmed up');
  t.ok(warmed, 'the warm-up is logged once');
  t.ok(Number(warmed?.['requests']) >= 600, `it answered the requests asked (${String(warmed?.['requests'])})`);
  t.same(fixture.counters.commands, {}, 'no request counted');
  t.same(fixture.counters.connections, {}, 'no connection counted');
  t.notOk(
    fixture.logs.some((line) => String(line['msg']).startsWith('cfengine connection closed') || line['event'] === 'denied'),
    'no connection or denial line',
  );
  t.same(warmUpTrees().filter((name) => !before.has(name)), [], 'its temporary tree is gone');

  // then a node reads its own policies as usual
  const rules = join(fixture.share, NODE, 'rules');
  await mkdir(rules, { recursive: true });
  await writeFile(join(rules, 'x.cf'), 'x\n');
  const client = await connectCfengine(fixture.port(), key);
  t.teardown(() => client.socket.destroy());
  await client.send(`SYNCH ${Math.floor(Date.now() / 1000)} STAT ${join(rules, 'x.cf')}`);
  t.match((await client.readFrame()).payload.toString(), /^OK: 0 /, 'STAT answered');
  t.equal(fixture.counters.count('STAT', 'ok'), 1, 'and counted');
});

t.test('a slow file system call during the warm-up does not leave file access in the thread pool', async (t) => {
  resetFileSystemMode();
  t.teardown(resetFileSystemMode);
  const key = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  let switched = false;
  const fixture = await startCfengineFixture({
    base: tempDir(t, 'onerelay-warm-up-slow-'),
    nodes: [{ id: NODE, sha256Pin: sha256PinOf(key) }],
    server: { warmUpRequests: 200 },
    // direct calls preempted for longer than the slow-call threshold (10 ms), enough of them to switch, as on a busy start
    whileStarting: () => {
      for (let i = 0; i < 3; i += 1) {
        call(
          () => {
            const until = performance.now() + 20;
            while (performance.now() < until);
          },
          async () => undefined,
        );
      }
      switched = inThreadPoolMode();
    },
  });
  t.teardown(() => fixture.server.stop());
  t.ok(switched, 'the slow calls switched to the thread pool meanwhile');
  t.notOk(inThreadPoolMode(), 'direct again once the server listens');
  t.ok(
    fixture.logs.some((line) => String(line['msg']).startsWith('cfengine: a slow file system call during the warm-up')),
    'and logged',
  );
  t.notOk(
    fixture.logs.some((line) => String(line['msg']).startsWith('cfengine: slow file system call')),
    'not as a slow disk',
  );
});
