// Durable intake on real directories: gathered and streamed bodies, replacement, refusals leave no
// temp file, and the shared directory fsync (group commit) answers every caller after a fresh fsync.

import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import t from 'tap';
import { directorySync, receiveInto } from '../../src/spool/receive.js';
import { tempDir, type Teardownable } from '../support/tmp.js';

async function spool(t: Teardownable): Promise<{ tmp: string; incoming: string }> {
  const base = tempDir(t);
  const tmp = join(base, '.tmp');
  const incoming = join(base, 'incoming');
  await mkdir(tmp, { recursive: true });
  await mkdir(incoming, { recursive: true });
  return { tmp, incoming };
}

/** a body in chunks of `chunk` bytes, as a socket delivers it */
function chunked(data: Buffer, chunk: number): Readable {
  const parts: Buffer[] = [];
  for (let offset = 0; offset < data.length; offset += chunk) parts.push(data.subarray(offset, offset + chunk));
  return Readable.from(parts);
}

t.test('concurrent uploads into one directory: every file whole, with its sha256, no temp file left', async (t) => {
  const { tmp, incoming } = await spool(t);
  const bodies = Array.from({ length: 24 }, (_, index) => randomBytes(1000 + index * 700));
  const results = await Promise.all(
    bodies.map((body, index) => receiveInto(tmp, incoming, `file-${index}.log.gz`, chunked(body, 4096), 1024 * 1024)),
  );
  for (const [index, body] of bodies.entries()) {
    t.ok(results[index]!.created, `file ${index} is new (201)`);
    t.equal(results[index]!.bytes, body.length);
    t.equal(results[index]!.sha256, createHash('sha256').update(body).digest('hex'));
    t.ok((await readFile(join(incoming, `file-${index}.log.gz`))).equals(body), `file ${index} identical`);
  }
  t.same(await readdir(tmp), [], 'no temp file left');
});

t.test('a body larger than what is gathered in memory streams to the file, whole', async (t) => {
  const { tmp, incoming } = await spool(t);
  const body = randomBytes(3 * 1024 * 1024 + 17);
  const result = await receiveInto(tmp, incoming, 'big.ocs', chunked(body, 65536), 8 * 1024 * 1024);
  t.equal(result.bytes, body.length);
  t.ok((await readFile(join(incoming, 'big.ocs'))).equals(body));
  t.same(await readdir(tmp), []);
});

t.test('an existing name is replaced (204), an oversized body is refused and leaves nothing', async (t) => {
  const { tmp, incoming } = await spool(t);
  await writeFile(join(incoming, 'again.log'), 'old');
  const replaced = await receiveInto(tmp, incoming, 'again.log', Readable.from([Buffer.from('new')]), 100);
  t.notOk(replaced.created, 'replaced: not created');
  t.equal(await readFile(join(incoming, 'again.log'), 'utf8'), 'new');

  for (const size of [150, 400 * 1024]) {
    await t.rejects(
      receiveInto(tmp, incoming, `too-big-${size}`, chunked(randomBytes(size), 50 * 1024), size - 1),
      { code: 'RELAY_ERR_UPLOAD_TOO_LARGE' },
    );
    t.same((await readdir(incoming)).filter((name) => name.startsWith('too-big')), [], `${size} bytes: nothing in incoming/`);
  }
  t.same(await readdir(tmp), [], 'no temp file left, streamed or gathered');
});

t.test('group commit: a caller arriving during an fsync gets the next one, and a failure is not sticky', async (t) => {
  const { incoming } = await spool(t);
  const sync = directorySync(incoming);
  const order: string[] = [];
  const first = sync.sync().then(() => order.push('first'));
  const second = sync.sync().then(() => order.push('second'));
  const third = sync.sync().then(() => order.push('third'));
  await Promise.all([first, second, third]);
  t.equal(order[0], 'first', 'callers during the running fsync are answered after it');
  t.same(order.slice(1).sort(), ['second', 'third'], 'and share the next one');
  t.equal(sync.fsyncs, 2, 'three callers, two fsyncs: the running one and the shared next');
  await sync.sync();
  t.equal(sync.fsyncs, 3, 'a caller alone gets its own');

  const base = tempDir(t);
  const missing = directorySync(join(base, 'missing'));
  await t.rejects(missing.sync(), { code: 'ENOENT' });
  await mkdir(join(base, 'missing'));
  await t.resolves(missing.sync(), 'opened again after a failure');
});

t.test('a body that fails or closes before its end is refused as incomplete and leaves nothing', async (t) => {
  const { tmp, incoming } = await spool(t);
  const failing = (after: Buffer[], ending: 'error' | 'close'): Readable => {
    const stream = new Readable({ read() {} });
    for (const chunk of after) stream.push(chunk);
    setImmediate(() => (ending === 'error' ? stream.destroy(new Error('connection reset')) : stream.destroy()));
    return stream;
  };
  // small (gathered) and large (streamed to the file when it fails)
  for (const size of [2000, 600 * 1024]) {
    for (const ending of ['error', 'close'] as const) {
      await t.rejects(receiveInto(tmp, incoming, `cut-${size}-${ending}`, failing([randomBytes(size)], ending), 1024 * 1024), { code: 'RELAY_ERR_UPLOAD_INCOMPLETE' }, `${size} bytes, then ${ending}`);
    }
  }
  const gone = new Readable({ read() {} });
  gone.destroy();
  await t.rejects(receiveInto(tmp, incoming, 'gone-before', gone, 1024), { code: 'RELAY_ERR_UPLOAD_INCOMPLETE' }, 'destroyed before the first read');
  t.same(await readdir(incoming), [], 'nothing in incoming/');
  t.same(await readdir(tmp), [], 'no temp file left');
});

t.test('an oversized body is refused at once and the rest of it is still read (dropped): closing a socket with unread bytes would reset it and lose the 413', async (t) => {
  const { tmp, incoming } = await spool(t);
  const body = chunked(randomBytes(400 * 1024), 16 * 1024);
  const ended = new Promise<void>((resolve) => body.once('end', () => resolve()));
  await t.rejects(receiveInto(tmp, incoming, 'too-big', body, 100 * 1024), { code: 'RELAY_ERR_UPLOAD_TOO_LARGE' });
  await ended;
  t.ok(body.readableEnded, 'read to its end');
  t.same(await readdir(tmp), [], 'no temp file left');
});

t.test('an empty body is stored as an empty file', async (t) => {
  const { tmp, incoming } = await spool(t);
  const result = await receiveInto(tmp, incoming, 'empty.log', Readable.from([]), 1024);
  t.ok(result.created);
  t.equal(result.bytes, 0);
  t.equal(result.sha256, createHash('sha256').digest('hex'));
  t.equal((await readFile(join(incoming, 'empty.log'))).length, 0);
  t.same(await readdir(tmp), []);
});

t.test('a body that stalls past the idle timeout is refused and leaves nothing; a slow steady one is stored', async (t) => {
  const { tmp, incoming } = await spool(t);
  // past what is gathered in memory, so that a part already went to the temp file when it stalls
  const stalled = new PassThrough();
  stalled.write(randomBytes(300 * 1024));
  const started = Date.now();
  await t.rejects(receiveInto(tmp, incoming, 'stalled.log', stalled, 1024 * 1024, 300), { code: 'RELAY_ERR_REQUEST_TIMEOUT', status: 408 });
  t.ok(Date.now() - started >= 300, 'not before the idle timeout');
  t.same(await readdir(incoming), [], 'nothing stored');
  t.same(await readdir(tmp), [], 'the partial temp file removed');
  stalled.destroy();

  // a chunk every 100 ms, 500 ms in all: never idle for 300 ms
  const steady = new PassThrough();
  const body = randomBytes(5000);
  let sent = 0;
  const timer = setInterval(() => {
    steady.write(body.subarray(sent, sent + 1000));
    sent += 1000;
    if (sent >= body.length) {
      clearInterval(timer);
      steady.end();
    }
  }, 100);
  t.teardown(() => clearInterval(timer));
  const result = await receiveInto(tmp, incoming, 'steady.log', steady, 1024 * 1024, 300);
  t.equal(result.bytes, body.length);
  t.ok((await readFile(join(incoming, 'steady.log'))).equals(body), 'stored whole');
});
