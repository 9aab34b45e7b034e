// The same requests to onerelay and to Debian's cf-serverd 3.21 (same files, same key ACL): the replies must
// be byte-identical, transaction by transaction, including where the connection is closed.

import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { encodeMd5Request } from '../../src/cfengine/codec.js';
import { CF_BIN, connectCfengine, createCfWorkdir, hasCfengine, startCfServerd, startCfengineFixture } from '../support/cfengine.js';
import { freePort, tempDir } from '../support/tmp.js';

const skip = hasCfengine() && existsSync(`${CF_BIN}/cf-serverd`) ? false : 'skipped: cf-serverd/cf-agent are not installed (Debian package cfengine3)';

t.test('replies are those of cf-serverd', { skip }, async (t) => {
  const base = tempDir(t, 'onerelay-cfconf-');
  const [node, serverd] = await Promise.all([createCfWorkdir(join(base, 'node')), createCfWorkdir(join(base, 'serverd'))]);
  const fixture = await startCfengineFixture({ base, nodes: [{ id: 'N', work: node }] });
  t.teardown(() => fixture.server.stop());
  const mine = join(fixture.share, 'N');
  await mkdir(join(mine, 'sub', 'empty'), { recursive: true });
  await writeFile(join(mine, 'sub', 'a.txt'), 'hello\n');
  await writeFile(join(mine, 'sub', 'empty.txt'), '');
  await symlink(join(fixture.share, 'O', 'x'), join(mine, 'sub', 'escape'));
  await mkdir(join(fixture.share, 'O'), { recursive: true });
  await writeFile(join(fixture.share, 'O', 'x'), 'x');
  const stock = await startCfServerd(serverd, await freePort(), { keys: [{ path: `${mine}/`, admit: [node.md5] }] });
  t.teardown(() => stock.stop());

  const now = Math.floor(Date.now() / 1000);
  const md5 = (path: string, digest: Buffer) => encodeMd5Request(path, digest).subarray(8);
  const requests: Array<[string, string | Buffer]> = [
    ['STAT file', `SYNCH ${now} STAT ${mine}/sub/a.txt`],
    ['STAT directory', `SYNCH ${now} STAT ${mine}/sub`],
    ['STAT directory/', `SYNCH ${now} STAT ${mine}/sub/`],
    ['STAT through ..', `SYNCH ${now} STAT ${mine}/sub/../sub/a.txt`],
    ['STAT missing', `SYNCH ${now} STAT ${mine}/missing`],
    ['STAT outside the ACL', `SYNCH ${now} STAT ${fixture.share}/O/x`],
    ['STAT symlink escaping', `SYNCH ${now} STAT ${mine}/sub/escape`],
    ['STAT relative', `SYNCH ${now} STAT sub/a.txt`],
    ['OPENDIR empty', `OPENDIR ${mine}/sub/empty`],
    ['OPENDIR of a file', `OPENDIR ${mine}/sub/a.txt`],
    ['OPENDIR outside the ACL', `OPENDIR ${fixture.share}/O`],
    ['MD5 same', md5(`${mine}/sub/a.txt`, createHash('md5').update('hello\n').digest())],
    ['MD5 different', md5(`${mine}/sub/a.txt`, Buffer.alloc(16))],
    ['MD5 missing', md5(`${mine}/sub/nothere`, Buffer.alloc(16))],
    ['GET outside the ACL', `GET 2048 ${fixture.share}/O/x`],
    ['GET bad bufsize', `GET 0 ${mine}/sub/a.txt`],
    ['unknown command', 'HELLO world'],
    ['VERSION', 'VERSION'],
  ];

  /** the reply transactions, up to the VERSION sent after as a marker, or up to the close */
  const exchange = async (port: number, request: string | Buffer): Promise<string[]> => {
    const client = await connectCfengine(port, node.privateKey);
    const seen = [`banner ${client.banner}`, `welcome ${client.welcome ?? '-'}`];
    client.send(request);
    client.send('VERSION');
    let markers = request === 'VERSION' ? 2 : 1;
    try {
      while (markers > 0) {
        const frame = await client.readFrame(5000);
        const text = frame.payload.toString('latin1');
        if (text === 'OK: 3.21.0') markers -= 1;
        seen.push(`${frame.status} ${frame.payload.length} ${JSON.stringify(text)}`);
      }
    } catch {
      await client.closed;
      seen.push('closed');
    }
    client.close();
    return seen;
  };

  for (const [name, request] of requests) {
    const ours = await exchange(fixture.port(), request);
    const theirs = await exchange(stock.port, request);
    // the clock-refusal and STAT lines carry times; both servers read the same files within a second
    const normalise = (lines: string[]) => lines.map((l) => l.replace(/unsynchronized \d+\/\d+/, 'unsynchronized T/T'));
    t.same(normalise(ours), normalise(theirs), name);
  }
  const skewed = await exchange(fixture.port(), `SYNCH ${now - 7200} STAT ${mine}/sub/a.txt`);
  const skewedStock = await exchange(stock.port, `SYNCH ${now - 7200} STAT ${mine}/sub/a.txt`);
  t.equal(skewed[2]?.replace(/\d{6,}\/\d+/, 'T'), skewedStock[2]?.replace(/\d{6,}\/\d+/, 'T'), 'clock refusal');
});
