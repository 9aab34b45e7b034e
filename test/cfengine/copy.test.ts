// The stock cf-agent 3.21 copying a policy tree from onerelay's CFEngine server, as a Rudder agent's update
// does (spec-https-front-cfserverd-sync.md §2.6): cold copy, no-change run, changed files (digest and
// mtime), purge, and a directory big enough for a multi-packet OPENDIR reply.

import { readFile, rm, stat, utimes, writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { compareTrees, createCfWorkdir, errorLines, hasCfengine, makeTree, runCopy, startCfengineFixture, type CopySpec } from '../support/cfengine.js';
import { tempDir } from '../support/tmp.js';

const NODE = 'a1b2c3d4-0000-4000-8000-000000000001';
const skip = hasCfengine() ? false : 'skipped: /usr/bin/cf-agent is not installed (Debian package cfengine3)';

t.test('cf-agent copies from onerelay like from cf-serverd', { skip }, async (t) => {
  const base = tempDir(t, 'onerelay-cfcopy-');
  const node = await createCfWorkdir(join(base, 'node'));
  const fixture = await startCfengineFixture({ base, nodes: [{ id: NODE, work: node }] });
  t.teardown(() => fixture.server.stop());
  const { counters } = fixture;
  const source = join(fixture.share, NODE, 'rules', 'cfengine-community');
  await mkdir(source, { recursive: true });
  const files = await makeTree(source, 300);
  const dest = join(base, 'inputs');
  const copy = (spec: Partial<CopySpec> = {}) =>
    runCopy(node, { port: fixture.port(), copies: [{ source, dest, compare: 'digest', preserve: true, ...spec }] });

  await t.test('cold copy: 300 files byte-identical, modes preserved', async (t) => {
    t.equal(files.length, 301);
    const sizes = await Promise.all(files.map(async (f) => (await stat(join(source, f))).size));
    t.equal(sizes.filter((size) => size > 1_000_000).length, 1, 'one file over 1 MB');
    t.ok(sizes.filter((size) => size === 0).length >= 5, 'some empty files');
    const run = await copy();
    t.equal(run.code, 0);
    t.same(errorLines(run.stdout), [], 'no error from cf-agent');
    t.same(await compareTrees(source, dest, { modes: true }), [], 'same tree, same bytes, same modes');
    t.equal(counters.count('GET', 'ok'), files.length, 'one GET per file, empty ones included');
    t.equal(counters.count('MD5', 'ok'), files.length, 'verify => true checks every copy');
    t.equal(counters.connections['accepted'], 1, 'one connection per agent run');
    const closed = fixture.logs.find((l) => l['msg'] === 'cfengine connection closed');
    t.equal(closed?.['node'], NODE, 'connection logged with the node id');
    t.equal(closed?.['key'], node.md5, 'and the key digest');
  });

  await t.test('no change: nothing transferred', async (t) => {
    const gets = counters.count('GET');
    const md5s = counters.count('MD5');
    const bytes = counters.bytes;
    const run = await copy();
    t.equal(run.code, 0);
    t.same(errorLines(run.stdout), []);
    t.equal(counters.count('GET') - gets, 0, 'no GET');
    t.equal(counters.count('MD5') - md5s, files.length, 'one digest comparison per file');
    t.ok(counters.bytes - bytes < 100_000, `only metadata sent (${counters.bytes - bytes} bytes)`);
    t.same(await compareTrees(source, dest, { modes: true }), []);
  });

  await t.test('digest compare: a file changed in place with the same size is re-copied', async (t) => {
    const file = join(source, 'file-0.cf');
    const before = await readFile(file);
    const changed = Buffer.from(before);
    changed[0] = (changed[0] ?? 0) ^ 0xff;
    const { atime, mtime } = await stat(file);
    await writeFile(file, changed);
    await utimes(file, atime, mtime); // same size, same mtime: only the digest tells
    const gets = counters.count('GET', 'ok');
    const run = await copy();
    t.equal(run.code, 0);
    t.same(errorLines(run.stdout), []);
    t.equal(counters.count('GET', 'ok') - gets, 1, 'exactly that file');
    t.same(await readFile(join(dest, 'file-0.cf')), changed);
    t.same(await compareTrees(source, dest), []);
  });

  await t.test('mtime compare: cold copy, no change, then a newer file', async (t) => {
    const mtimeDest = join(base, 'inputs-mtime');
    const run1 = await copy({ dest: mtimeDest, compare: 'mtime' });
    t.equal(run1.code, 0);
    t.same(errorLines(run1.stdout), []);
    t.same(await compareTrees(source, mtimeDest, { modes: true }), []);
    const gets = counters.count('GET');
    const md5s = counters.count('MD5');
    const run2 = await copy({ dest: mtimeDest, compare: 'mtime' });
    t.equal(run2.code, 0);
    t.equal(counters.count('GET') - gets, 0, 'no GET');
    t.equal(counters.count('MD5') - md5s, 0, 'no digest either: mtime is compared locally');
    const file = join(source, 'file-5.cf');
    await writeFile(file, 'changed content\n');
    const later = new Date(Date.now() + 5000);
    await utimes(file, later, later);
    const run3 = await copy({ dest: mtimeDest, compare: 'mtime' });
    t.equal(run3.code, 0);
    t.same(errorLines(run3.stdout), []);
    t.equal(counters.count('GET') - gets, 1, 'the newer file only');
    t.equal(await readFile(join(mtimeDest, 'file-5.cf'), 'utf8'), 'changed content\n');
  });

  await t.test('purge: a file deleted on the relay is deleted on the node', async (t) => {
    await rm(join(source, 'file-10.cf'));
    await rm(join(source, 'dir1', 'sub0'), { recursive: true, force: true });
    const run = await copy();
    t.equal(run.code, 0);
    t.same(errorLines(run.stdout), []);
    await t.rejects(stat(join(dest, 'file-10.cf')), { code: 'ENOENT' });
    t.same(await compareTrees(source, dest), [], 'the trees are equal again');
  });

  await t.test('a directory whose listing spans many OPENDIR packets (> 16 KB)', async (t) => {
    const big = join(fixture.share, NODE, 'rules', 'big');
    await mkdir(big, { recursive: true });
    // 150 names of ~230 bytes: ~35 KB of listing, 10 packets (cf-agent itself is slow on big directories)
    for (let i = 0; i < 150; i += 1) {
      await writeFile(join(big, `${'a-rather-long-file-name-to-fill-the-opendir-packets-'.repeat(4)}${String(i).padStart(5, '0')}.txt`), i % 2 ? `${i}\n` : '');
    }
    const bigDest = join(base, 'big');
    const run = await runCopy(node, { port: fixture.port(), copies: [{ source: big, dest: bigDest }] });
    t.equal(run.code, 0);
    t.same(errorLines(run.stdout), []);
    t.same(await compareTrees(big, bigDest), []);
  });
});
