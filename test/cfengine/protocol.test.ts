// The server's replies on the wire, request by request, with a scriptable client (no cf-agent needed):
// identification, STAT/OPENDIR/GET/MD5 formats, refusals that keep the connection, protocol errors that
// close it (spec-cfengine-protocol.md §6–7, §13).

import { createHash, generateKeyPairSync } from 'node:crypto';
import { lstat, mkdir, rename, symlink, utimes, writeFile } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import { connect } from 'node:tls';
import { join } from 'node:path';
import t from 'tap';
import {
  CFD_FALSE,
  CFD_TERMINATOR,
  CFD_TRUE,
  decodeOpendirPacket,
  encodeFrame,
  encodeMd5Request,
  parseStatLine,
} from '../../src/cfengine/codec.js';
import { holdThreadPoolMode, inThreadPoolMode, resetFileSystemMode } from '../../src/fs-direct/index.js';
import { connectCfengine, sha256PinOf, startCfengineFixture } from '../support/cfengine.js';
import { tempDir } from '../support/tmp.js';

const NODE_A = 'aaaaaaaa-1111-4000-8000-000000000001';
const NODE_B = 'bbbbbbbb-2222-4000-8000-000000000002';
const FAILED = 'BAD: Unspecified server refusal (see verbose server output)';

const keyA = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
const keyB = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
const now = () => Math.floor(Date.now() / 1000);

/** direct: file-system calls on the event loop; thread pool: as after a slow call (src/fs-direct) */
async function useMode(mode: 'direct' | 'thread pool'): Promise<void> {
  resetFileSystemMode();
  if (mode === 'direct') return;
  holdThreadPoolMode();
  if (!inThreadPoolMode()) throw new Error('could not switch to the thread pool');
}

for (const mode of ['direct', 'thread pool'] as const) {
  t.test(`protocol (file system calls: ${mode})`, async (t) => {
    // the synchronous answers (direct mode) and the asynchronous ones (thread pool) must say the same
    t.beforeEach(() => useMode(mode));
    t.teardown(resetFileSystemMode);
    const base = tempDir(t, 'onerelay-cfproto-');
    const fixture = await startCfengineFixture({
      base,
      nodes: [
        { id: NODE_A, sha256Pin: sha256PinOf(keyA) },
        { id: NODE_B, sha256Pin: sha256PinOf(keyB) },
      ],
    });
    t.teardown(() => fixture.server.stop());
    const rules = join(fixture.share, NODE_A, 'rules');
    await mkdir(join(rules, 'empty-dir'), { recursive: true });
    const content = Buffer.from(Array.from({ length: 5000 }, (_, i) => i % 251));
    await writeFile(join(rules, 'data.bin'), content, { mode: 0o640 });
    await writeFile(join(rules, 'empty'), '');
    await writeFile(join(rules, 'name with spaces'), 'spaces\n');
    await symlink(join(rules, 'gone'), join(rules, 'dead-link'));
    await mkdir(join(fixture.share, NODE_B), { recursive: true });
    await writeFile(join(fixture.share, NODE_B, 'secret'), 'b\n');
    const port = fixture.port();

    await t.test('identification: banner, then OK WELCOME', async (t) => {
      const client = await connectCfengine(port, keyA);
      t.equal(client.banner, 'CFE_v3 cf-serverd 3.21.0', 'announces protocol 3 like cf-serverd 3.21');
      t.equal(client.welcome, 'OK WELCOME USERNAME=root');
      client.send('VERSION');
      t.equal((await client.readFrame()).payload.toString(), 'OK: 3.21.0');
      client.close();
    });

    await t.test('a protocol version the server does not speak: closed without welcome', async (t) => {
      for (const version of [1, 4]) {
        const client = await connectCfengine(port, keyA, { version });
        t.equal(client.welcome, undefined, `CFE_v${version}`);
        await client.closed;
      }
    });

    await t.test('the welcome line begins when the version line is in, and ends once IDENTITY is checked', async (t) => {
      // cf-agent's IDENTITY waits (Nagle) until its version line is acknowledged: an early "OK" carries the
      // ACK, and the agent reads the welcome up to its newline
      const client = await connectCfengine(port, keyA, { identify: false });
      client.sendRaw('CFE_v2 cf-agent 3.21.0\n');
      t.equal((await client.readBytes(2)).toString(), 'OK', 'before IDENTITY is sent');
      client.sendRaw('IDENTITY USERNAME=root\n');
      t.equal((await client.readBytes(23)).toString(), ' WELCOME USERNAME=root\n');
      client.send('VERSION');
      t.equal((await client.readFrame()).payload.toString(), 'OK: 3.21.0');
      client.close();

      const together = await connectCfengine(port, keyA, { identify: false });
      together.sendRaw('CFE_v2 cf-agent 3.21.0\nIDENTITY USERNAME=root\n');
      t.equal((await together.readBytes(25)).toString(), 'OK WELCOME USERNAME=root\n', 'both lines in one record: the line once');
      together.send('VERSION');
      t.equal((await together.readFrame()).payload.toString(), 'OK: 3.21.0');
      together.close();

      const refused = await connectCfengine(port, keyA, { identify: false });
      refused.sendRaw('CFE_v4 cf-agent 3.21.0\n');
      await refused.closed;
      await t.rejects(refused.readBytes(1, 100), 'a refused version line gets nothing, not even the start');

      const bad = await connectCfengine(port, keyA, { identify: false });
      bad.sendRaw('CFE_v2 cf-agent 3.21.0\n');
      t.equal((await bad.readBytes(2)).toString(), 'OK');
      bad.sendRaw('IDENTITY USERNAME=../root\n');
      await bad.closed;
      await t.rejects(bad.readBytes(1, 100), 'an invalid IDENTITY after the start: closed, the line never ends');
    });

    await t.test('a client without certificate is dropped', async (t) => {
      const socket = connect({ host: '127.0.0.1', port, rejectUnauthorized: false });
      socket.on('error', () => undefined);
      const received: Buffer[] = [];
      socket.on('data', (b: Buffer) => received.push(b));
      await new Promise((resolve) => socket.on('close', resolve));
      t.equal(Buffer.concat(received).length, 0, 'no banner');
    });

    await t.test('STAT: two transactions, 13 decimal fields, then OK:', async (t) => {
      const client = await connectCfengine(port, keyA);
      client.send(`SYNCH ${now()} STAT ${rules}/data.bin`);
      const first = await client.readFrame();
      const second = await client.readFrame();
      t.equal(first.status, 't');
      const fields = parseStatLine(first.payload.toString());
      const real = await lstat(join(rules, 'data.bin'), { bigint: true });
      t.equal(fields?.type, 0);
      t.equal(fields?.mode, 0o640);
      t.equal(fields?.size, 5000n);
      t.equal(fields?.mtime, real.mtimeMs / 1000n);
      t.equal(fields?.dev, real.dev);
      t.equal(first.payload.toString().split(' ').length, 14, '"OK:" + 13 fields');
      t.equal(second.payload.toString(), 'OK:');

      client.send(`SYNCH ${now()} STAT ${rules}/`);
      t.match((await client.readFrame()).payload.toString(), /^OK: 2 /, 'a directory');
      await client.readFrame();

      client.send(`SYNCH ${now()} STAT ${rules}/dead-link`);
      const link = (await client.readFrame()).payload.toString();
      t.match(link, /^OK: 1 511 511 /, 'a dead symlink is reported as a link');
      t.equal((await client.readFrame()).payload.toString(), `OK:${join(rules, 'gone')}`, 'with its target');

      client.send(`SYNCH ${now()} STAT ${rules}/name with spaces`);
      t.match((await client.readFrame()).payload.toString(), /^OK: 0 /, 'spaces in a path');
      await client.readFrame();
      client.close();
    });

    await t.test('requests sent together are answered in order, whole', async (t) => {
      // the first is answered at once; the others find its write still in flight and are answered after it
      // (commands.ts: the asynchronous handlers), in order
      const client = await connectCfengine(port, keyA);
      const data = join(rules, 'data.bin');
      client.sendRaw(
        Buffer.concat([
          encodeFrame(`SYNCH ${now()} STAT ${data}`),
          encodeFrame(`GET 2048 ${data}`),
          encodeFrame(`SYNCH ${now()} STAT ${fixture.share}/${NODE_B}/secret`),
          encodeMd5Request(data, createHash('md5').update(content).digest()),
          encodeFrame(`OPENDIR ${rules}/empty-dir`),
          encodeFrame('VERSION'),
        ]),
      );
      t.match((await client.readFrame()).payload.toString(), /^OK: 0 416 0 \d+ \d+ 5000 /, 'STAT');
      t.equal((await client.readFrame()).payload.toString(), 'OK:');
      t.same(await client.readBytes(content.length), content, 'GET: the bytes');
      t.equal((await client.readFrame()).payload.toString(), FAILED, "another node's file: refused");
      t.equal((await client.readFrame()).payload.toString(), 'CFD_FALSE', 'MD5: the same');
      t.same((await client.readFrame()).payload, Buffer.from(`.\0..\0${CFD_TERMINATOR}\0\0`, 'latin1'), 'OPENDIR');
      t.equal((await client.readFrame()).payload.toString(), 'OK: 3.21.0', 'VERSION');
      client.close();
    });

    await t.test('refusals keep the connection open', async (t) => {
      const client = await connectCfengine(port, keyA);
      const cases = [
        `SYNCH ${now()} STAT ${rules}/missing`,
        `SYNCH ${now()} STAT ${fixture.share}/${NODE_B}/secret`,
        `SYNCH ${now()} STAT ${rules}/../../${NODE_B}/secret`,
        `SYNCH ${now()} STAT ${fixture.share}`,
        `SYNCH ${now()} STAT relative/path`,
        `SYNCH ${now()} STAT /etc/passwd`,
        `OPENDIR ${fixture.share}/${NODE_B}`,
        `GET 2048 ${fixture.share}/${NODE_B}/secret`,
      ];
      for (const request of cases) {
        client.send(request);
        t.equal((await client.readFrame()).payload.toString(), FAILED, request);
      }
      client.send(encodeMd5Request(`${fixture.share}/${NODE_B}/secret`, Buffer.alloc(16)).subarray(8));
      t.equal((await client.readFrame()).payload.toString(), FAILED, 'MD5 of another node file');
      client.send('VERSION');
      t.equal((await client.readFrame()).payload.toString(), 'OK: 3.21.0', 'still connected');
      t.notOk(client.isClosed());
      client.close();
    });

    await t.test("a directory swapped for a link to another node's folder after it was read: denied", async (t) => {
      const swap = join(fixture.share, NODE_A, `swap-${mode.replace(' ', '-')}`);
      await mkdir(join(swap, 'inner'), { recursive: true });
      await writeFile(join(swap, 'inner', 'f.txt'), 'A!!\n');
      await mkdir(join(fixture.share, NODE_B, 'inner'), { recursive: true });
      const secret = Buffer.from('B!!\n'); // the same size as A's file
      await writeFile(join(fixture.share, NODE_B, 'inner', 'f.txt'), secret);
      const client = await connectCfengine(port, keyA);
      const stat = `SYNCH ${now()} STAT ${swap}/inner/f.txt`;
      client.send(stat);
      t.match((await client.readFrame()).payload.toString(), /^OK: 0 /, 'read once');
      await client.readFrame();
      client.send(`OPENDIR ${swap}/inner`);
      t.match((await client.readFrame()).payload.toString('latin1'), /f\.txt/);
      await rename(swap, `${swap}-old`);
      await symlink(join(fixture.share, NODE_B), swap);
      // MD5 and GET right after the STAT that resolved the path: what it resolved is not trusted blindly
      client.send(encodeMd5Request(`${swap}/inner/f.txt`, createHash('md5').update(secret).digest()).subarray(8));
      t.equal((await client.readFrame()).payload.toString(), FAILED, 'MD5 through the link');
      client.send(`GET 2048 ${swap}/inner/f.txt`);
      t.equal((await client.readFrame()).payload.toString(), FAILED, 'GET through the link');
      client.send(stat);
      t.equal((await client.readFrame()).payload.toString(), FAILED, 'STAT through the link');
      client.send(`OPENDIR ${swap}/inner`);
      t.equal((await client.readFrame()).payload.toString(), FAILED, 'OPENDIR through the link');
      client.send('VERSION');
      t.equal((await client.readFrame()).payload.toString(), 'OK: 3.21.0', 'still connected');
      client.close();
    });

    await t.test('clock check: SYNCH more than an hour off is refused', async (t) => {
      const client = await connectCfengine(port, keyA);
      client.send(`SYNCH ${now() - 7200} STAT ${rules}/data.bin`);
      t.match((await client.readFrame()).payload.toString(), /^BAD: Clocks are too far unsynchronized \d+\/\d+$/);
      client.close();
    });

    await t.test('OPENDIR: names with . and .., terminator, even for an empty directory', async (t) => {
      const client = await connectCfengine(port, keyA);
      client.send(`OPENDIR ${rules}`);
      const names: string[] = [];
      const frame = await client.readFrame();
      t.equal(frame.status, 't');
      t.ok(frame.payload.toString('latin1').endsWith(`${CFD_TERMINATOR}\0\0`));
      t.same(decodeOpendirPacket(frame.payload, names), { done: true });
      t.same([...names].sort(), ['.', '..', 'data.bin', 'dead-link', 'empty', 'empty-dir', 'name with spaces']);
      client.send(`OPENDIR ${rules}/empty-dir`);
      t.equal((await client.readFrame()).payload.toString('latin1'), `.\0..\0${CFD_TERMINATOR}\0\0`);
      client.send(`OPENDIR ${rules}/data.bin`);
      t.equal((await client.readFrame()).payload.toString(), `BAD: cfengine, couldn't open dir ${rules}/data.bin/`);
      client.close();
    });

    await t.test('GET: raw bytes, exactly the size, nothing for an empty file', async (t) => {
      const client = await connectCfengine(port, keyA);
      client.send(`SYNCH ${now()} STAT ${rules}/data.bin`);
      await client.readFrame();
      await client.readFrame();
      client.send(`GET 2048 ${rules}/data.bin`);
      t.same(await client.readBytes(5000), content, 'unframed file content');
      client.send(`SYNCH ${now()} STAT ${rules}/empty`);
      await client.readFrame();
      await client.readFrame();
      client.send(`GET 2048 ${rules}/empty`);
      client.send('VERSION');
      t.equal((await client.readFrame()).payload.toString(), 'OK: 3.21.0', 'the next reply follows at once: no bytes for an empty file');
      client.close();
    });

    await t.test('GET of a file whose size changed since its STAT: "File changed" block, then close', async (t) => {
      const file = join(rules, 'changing');
      await writeFile(file, 'short\n');
      const client = await connectCfengine(port, keyA);
      client.send(`SYNCH ${now()} STAT ${file}`);
      t.match((await client.readFrame()).payload.toString(), /^OK: 0 \d+ 0 \d+ \d+ 6 /);
      await client.readFrame();
      await writeFile(file, 'much longer now\n');
      client.send(`GET 2048 ${file}`);
      const block = await client.readBytes(2048);
      t.equal(block.toString('latin1').replace(/\0+$/, ''), `BAD: File changed while copying: ${file}`, 'as cf-serverd, NUL-padded to 2048');
      await client.closed;
      t.pass('the byte stream is out of step: closed');
    });

    await t.test('GET of a file replaced by a rename since its STAT', async (t) => {
      // what our own sync does when a policy file changes: a new inode under the same name
      const file = join(rules, 'renamed');
      const replace = async (content: string): Promise<void> => {
        await writeFile(`${file}.new`, content);
        await rename(`${file}.new`, file);
      };
      await replace('old content\n');
      const client = await connectCfengine(port, keyA);
      client.send(`SYNCH ${now()} STAT ${file}`);
      await client.readFrame();
      await client.readFrame();
      await replace('new content\n');
      client.send(`GET 2048 ${file}`);
      t.equal((await client.readBytes(12)).toString(), 'new content\n', 'same size: the new bytes, exactly the announced count');
      client.send('VERSION');
      t.equal((await client.readFrame()).payload.toString(), 'OK: 3.21.0', 'the stream is in step');
      client.send(`SYNCH ${now()} STAT ${file}`);
      await client.readFrame();
      await client.readFrame();
      await replace('a longer new content\n');
      client.send(`GET 2048 ${file}`);
      const block = await client.readBytes(2048);
      t.equal(block.toString('latin1').replace(/\0+$/, ''), `BAD: File changed while copying: ${file}`, 'another size: never the new file at its new size');
      await client.closed;
    });

    await t.test('GET of an empty file that grew since its STAT: no bytes, the stream stays in step', async (t) => {
      const file = join(rules, 'was-empty');
      await writeFile(file, '');
      const client = await connectCfengine(port, keyA);
      client.send(`SYNCH ${now()} STAT ${file}`);
      await client.readFrame();
      await client.readFrame();
      await writeFile(file, 'grown\n');
      client.send(`GET 2048 ${file}`);
      client.send('VERSION');
      t.equal((await client.readFrame()).payload.toString(), 'OK: 3.21.0', 'nothing sent for the announced 0 bytes');
      client.close();
    });

    await t.test('a FIFO in a served tree blocks nothing', async (t) => {
      const fifo = join(rules, 'fifo');
      execFileSync('mkfifo', [fifo]);
      const client = await connectCfengine(port, keyA);
      client.send(`SYNCH ${now()} STAT ${fifo}`);
      t.match((await client.readFrame()).payload.toString(), /^OK: 3 /, 'reported as a FIFO');
      await client.readFrame();
      client.send(encodeMd5Request(fifo, Buffer.alloc(16, 1)).subarray(8));
      t.equal((await client.readFrame(3000)).payload.toString(), CFD_TRUE, 'MD5 answers at once');
      client.send(`GET 2048 ${fifo}`);
      t.match((await client.readBytes(2048, 3000)).toString('latin1'), /^BAD: File changed while copying/, 'GET refuses it');
      await client.closed;
    });

    await t.test('a user other than root gets only world-readable files', async (t) => {
      await writeFile(join(rules, 'world.txt'), 'for all\n', { mode: 0o644 });
      const client = await connectCfengine(port, keyA, { username: 'nobody' });
      t.equal(client.welcome, 'OK WELCOME USERNAME=nobody');
      client.send(`GET 2048 ${rules}/world.txt`);
      t.equal((await client.readBytes(8)).toString(), 'for all\n');
      client.send(`GET 2048 ${rules}/data.bin`);
      t.equal((await client.readFrame()).payload.toString(), FAILED, 'a 0640 file is refused');
      await client.closed;
    });

    await t.test('MD5: CFD_FALSE when the digests are the same, CFD_TRUE when they differ', async (t) => {
      const client = await connectCfengine(port, keyA);
      const md5 = createHash('md5').update(content).digest();
      client.send(encodeMd5Request(`${rules}/data.bin`, md5).subarray(8));
      t.equal((await client.readFrame()).payload.toString(), CFD_FALSE, 'same');
      client.send(encodeMd5Request(`${rules}/data.bin`, Buffer.alloc(16, 1)).subarray(8));
      t.equal((await client.readFrame()).payload.toString(), CFD_TRUE, 'different');
      client.close();
    });

    await t.test('MD5 after a same-size change with the mtime put back: the new content counts', async (t) => {
      const file = join(rules, 'tricky.cf');
      await writeFile(file, 'version one\n');
      const before = await lstat(file);
      const client = await connectCfengine(port, keyA);
      const ask = async (text: string): Promise<string> => {
        client.send(encodeMd5Request(file, createHash('md5').update(text).digest()).subarray(8));
        return (await client.readFrame()).payload.toString();
      };
      client.send(`SYNCH ${now()} STAT ${file}`);
      await client.readFrame();
      await client.readFrame();
      t.equal(await ask('version one\n'), CFD_FALSE);
      await new Promise((resolve) => setTimeout(resolve, 50)); // let the digest be cached
      t.equal(await ask('version one\n'), CFD_FALSE, 'again (from the digest cache)');
      await writeFile(file, 'version two\n');
      await utimes(file, before.atime, before.mtime);
      t.equal(await ask('version one\n'), CFD_TRUE, 'the old digest no longer matches');
      t.equal(await ask('version two\n'), CFD_FALSE, 'the new one does');
      client.close();
    });

    await t.test('protocol errors: BAD: Request denied, then the connection closes', async (t) => {
      for (const request of ['HELLO', 'GET 0 /x', 'GET 9999 /x', 'SYNCH STAT /x', 'COOKIE', 'QUERY delta']) {
        const client = await connectCfengine(port, keyA);
        client.send(request);
        t.equal((await client.readFrame()).payload.toString(), 'BAD: Request denied', request);
        await client.closed;
        t.ok(client.isClosed(), `${request}: closed`);
      }
      const exec = await connectCfengine(port, keyA);
      exec.send('EXEC -Dfoo');
      t.equal((await exec.readFrame()).payload.toString(), FAILED, 'EXEC without cfruncommand is refused');
      t.equal((await exec.readFrame()).payload.toString('latin1'), `${CFD_TERMINATOR}\0`, 'then the terminator');
      await exec.closed;
      const unframed = await connectCfengine(port, keyA);
      unframed.sendRaw('GET 2048 /etc/passwd\n');
      await unframed.closed;
      t.pass('an unframed request closes the connection without a reply');
      t.ok(fixture.counters.count('BAD', 'error') >= 1, 'counted');
      // each refusal's closing line carries its code (the server may log it just after the client saw the close)
      const closedOnError = () => fixture.logs.filter((l) => l['msg'] === 'cfengine connection closed on error').map((l) => `${String(l['code'])} ${String(l['reason'])}`);
      for (let i = 0; i < 100 && closedOnError().length < 8; i += 1) await new Promise((resolve) => setTimeout(resolve, 20));
      t.ok(closedOnError().includes('RELAY_ERR_CFENGINE_CODEC illegal request "HELLO"'), 'an illegal request: RELAY_ERR_CFENGINE_CODEC');
      t.ok(closedOnError().includes('RELAY_ERR_CFENGINE_ACCESS EXEC refused'), 'a refused EXEC: RELAY_ERR_CFENGINE_ACCESS');
      t.ok(closedOnError().every((line) => line.startsWith('RELAY_ERR_')), 'every one has a code');
    });
  });
}
