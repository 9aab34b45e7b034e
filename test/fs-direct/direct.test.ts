// Bounded synchronous file access (src/fs-direct): fast calls run on the event loop, repeated slow calls send
// every call to the thread pool for a while, and the servers built on it keep answering right in both modes.

import { randomBytes } from 'node:crypto';
import { fstatSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { call, inThreadPoolMode, onSlowFileSystem, resetFileSystemMode } from '../../src/fs-direct/index.js';
import { closeFile, fileStream, openBelow } from '../../src/policies/index.js';
import { tempDir } from '../support/tmp.js';

async function readAll(fd: number, size: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of fileStream(fd, 0, size - 1)) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

t.test('a slow synchronous call switches to the thread pool, and files are still served whole', async (t) => {
  t.teardown(resetFileSystemMode);
  const root = tempDir(t);
  const content = randomBytes(700 * 1024); // three chunks
  await writeFile(join(root, 'archive.tar.bz2'), content);

  resetFileSystemMode();
  let ranSync = false;
  await call(
    () => {
      ranSync = true;
    },
    async () => undefined,
  );
  t.ok(ranSync, 'a fast file system: synchronous');
  const direct1 = await openBelow(root, 'archive.tar.bz2');
  t.equal(direct1.kind, 'file');
  if (direct1.kind === 'file') t.ok((await readAll(direct1.fd, Number(direct1.size))).equals(content), 'read directly');

  const slow: number[] = [];
  const unsubscribe = onSlowFileSystem((ms) => slow.push(ms));
  t.teardown(unsubscribe);
  const slowDirect = (): void => {
    const until = performance.now() + 15;
    while (performance.now() < until);
  };
  await call(slowDirect, async () => undefined);
  // one slow call may be a preemption on a busy CPU, not the disk
  t.equal(slow.length, 0, 'one slow call is not reported');
  t.notOk(inThreadPoolMode(), 'one slow call does not switch');
  await call(slowDirect, async () => undefined);
  await call(slowDirect, async () => undefined);
  t.equal(slow.length, 1, 'the third slow call within the window is reported, once');
  t.ok(slow[0]! >= 15, `with the slowest call's time (${slow[0]} ms)`);
  t.ok(inThreadPoolMode(), 'then calls go to the thread pool');
  let usedPool = false;
  await call(
    () => {
      t.fail('not synchronous while held');
    },
    async () => {
      usedPool = true;
    },
  );
  t.ok(usedPool);
  const pooled = await openBelow(root, 'archive.tar.bz2');
  t.equal(pooled.kind, 'file');
  if (pooled.kind === 'file') t.ok((await readAll(pooled.fd, Number(pooled.size))).equals(content), 'read through the pool');
  t.equal((await openBelow(root, 'missing')).kind, 'refused');

  // a client that goes away mid-file: the descriptor is released once, after the read in flight
  const early = await openBelow(root, 'archive.tar.bz2');
  if (early.kind === 'file') {
    const stream = fileStream(early.fd, 0, Number(early.size) - 1);
    stream.once('data', () => stream.destroy());
    await new Promise((resolve) => stream.once('close', resolve));
    // a read in flight when destroyed: the descriptor is closed once that read is back
    const deadline = Date.now() + 2_000;
    while (Date.now() < deadline && isOpen(early.fd)) await new Promise((resolve) => setTimeout(resolve, 10));
    t.throws(() => closeFileStrict(early.fd), /EBADF/, 'closed by the stream');
  }
});

function isOpen(fd: number): boolean {
  try {
    fstatSync(fd);
    return true;
  } catch {
    return false;
  }
}

function closeFileStrict(fd: number): void {
  // closeFile swallows errors; fstat tells whether the descriptor is still open
  fstatSync(fd);
  closeFile(fd);
}
