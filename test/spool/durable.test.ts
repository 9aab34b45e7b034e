// spool's atomic writes on real files: what reaches the target, and that a failed or discarded write leaves
// neither a partial target nor a temp file behind.

import { chmod, lstat, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import t from 'tap';
import { copyFileAtomically, openAtomicFile, writeFileAtomically, writeStreamAtomically } from '../../src/spool/index.js';
import { tempDir } from '../support/tmp.js';

t.test('writeFileAtomically replaces the target whole, with the mode asked, and leaves no temp file', async (t) => {
  const dir = tempDir(t);
  const target = join(dir, 'state.json');
  await writeFile(target, 'old');
  await writeFileAtomically(target, 'new content', { mode: 0o600 });
  t.equal(await readFile(target, 'utf8'), 'new content');
  t.equal((await stat(target)).mode & 0o777, 0o600);
  t.same(await readdir(dir), ['state.json']);
});

t.test('writeStreamAtomically: a stream over its bound writes nothing; a failing stream neither', async (t) => {
  const dir = tempDir(t);
  const target = join(dir, 'archive.tar.bz2');
  await writeFile(target, 'previous archive');
  const big = Readable.from([Buffer.alloc(600, 1), Buffer.alloc(600, 2)]);
  await t.rejects(writeStreamAtomically(target, big, { maxBytes: 1000, tempPrefix: '.archive.' }), { code: 'RELAY_ERR_SPOOL_WRITE' });
  t.equal(await readFile(target, 'utf8'), 'previous archive', 'the previous file stays');
  async function* broken(): AsyncGenerator<Buffer> {
    yield Buffer.from('half of it');
    throw new Error('connection reset');
  }
  await t.rejects(writeStreamAtomically(target, broken()), /connection reset/, "the stream's own error comes back as is");
  t.equal(await readFile(target, 'utf8'), 'previous archive');
  t.same(await readdir(dir), ['archive.tar.bz2'], 'no temp file left');
  const bytes = await writeStreamAtomically(target, Readable.from([Buffer.from('new '), Buffer.from('archive')]), { maxBytes: 1000 });
  t.equal(bytes, 11);
  t.equal(await readFile(target, 'utf8'), 'new archive');
});

t.test('openAtomicFile: keepExisting keeps the first file at a content-addressed name; discard leaves nothing', async (t) => {
  const dir = tempDir(t);
  const tmp = join(dir, '.tmp');
  await mkdir(tmp);
  const target = join(dir, 'ab12');
  const first = await openAtomicFile(target, { tempDirectory: tmp, keepExisting: true, syncDirectory: false });
  await first.write(Buffer.from('same content'));
  await first.commit();
  const inode = (await lstat(target)).ino;
  const second = await openAtomicFile(target, { tempDirectory: tmp, keepExisting: true });
  await second.write(Buffer.from('same content'));
  await second.commit();
  t.equal((await lstat(target)).ino, inode, 'the existing inode stays (it may be linked into trees)');
  const dropped = await openAtomicFile(join(dir, 'cd34'), { tempDirectory: tmp });
  await dropped.write(Buffer.from('not verified'));
  await dropped.discard();
  await dropped.discard();
  t.same(await readdir(dir), ['.tmp', 'ab12']);
  t.same(await readdir(tmp), [], 'temp files gone');
  await t.rejects(dropped.write(Buffer.from('x')), { code: 'RELAY_ERR_INTERNAL' });
});

t.test('copyFileAtomically gives the copy its own inode, mode and mtime', async (t) => {
  const dir = tempDir(t);
  const source = join(dir, 'source');
  await writeFile(source, 'nodes list');
  await chmod(source, 0o600);
  const target = join(dir, 'nodeslist.json');
  await copyFileAtomically(source, target, { mode: 0o644, mtimeMs: 1_700_000_000_123 });
  const s = await stat(target);
  t.equal(await readFile(target, 'utf8'), 'nodes list');
  t.not(s.ino, (await stat(source)).ino);
  t.equal(s.mode & 0o777, 0o644);
  t.equal(Math.round(s.mtimeMs), 1_700_000_000_123);
  await t.rejects(copyFileAtomically(join(dir, 'absent'), target), { code: 'RELAY_ERR_SPOOL_WRITE' });
  t.equal(await readFile(target, 'utf8'), 'nodes list');
  t.same((await readdir(dir)).sort(), ['nodeslist.json', 'source']);
});
