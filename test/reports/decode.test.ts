// Decompression by extension (spec-relayd.md §7.4), bombs and damaged archives.

import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createGzip, gzipSync } from 'node:zlib';
import t from 'tap';
import { decodeReport, isReportError } from '../../src/reports/index.js';
import { gzipLikeAgent, run } from '../support/agent.js';
import { tempDir } from '../support/tmp.js';
import { FIXTURES } from '../support/fixtures.js';

const GZ = `${FIXTURES}/files/gz`;
const reference = readFileSync(join(GZ, 'normal.log'));
const MiB = 1024 * 1024;

function reasonOf(f: () => unknown): string | undefined {
  try {
    f();
  } catch (error) {
    if (isReportError(error)) return error.reason;
    throw error;
  }
  return undefined;
}

async function runOk(cmd: string, args: string[], opts: { cwd?: string; input?: Buffer } = {}): Promise<Buffer> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

t.test('fixtures: gz, zip and plain decode to gz/normal.log', async (t) => {
  t.ok(decodeReport('normal.log.gz', readFileSync(join(GZ, 'normal.log.gz')), MiB).equals(reference));
  t.ok(decodeReport('normal.log.zip', readFileSync(join(GZ, 'normal.log.zip')), MiB).equals(reference));
  t.ok(decodeReport('normal.log', reference, MiB).equals(reference));
  t.ok(decodeReport('2019-01-01T00:00:00+00:00@root.log.gz', gzipSync(reference), MiB).equals(reference), 'by last extension');
});

t.test('gzip as the agent makes it (gzip -f, original name in the header)', async (t) => {
  const gz = await gzipLikeAgent('2019-01-01T00:00:00+00:00@root.log', reference);
  t.equal(gz[3]! & 0x08, 0x08, 'FNAME flag set');
  t.ok(decodeReport('2019-01-01T00:00:00+00:00@root.log.gz', gz, MiB).equals(reference));
});

t.test('gzip: first member only, trailing bytes ignored (as relayd)', async (t) => {
  const gz = Buffer.concat([gzipSync(reference), Buffer.from('trailing garbage')]);
  t.ok(decodeReport('a.log.gz', gz, MiB).equals(reference));
});

t.test('gzip: the last four bytes (ISIZE) only size the output buffer, whatever they say', async (t) => {
  // a one-member file: the hint is exact (one inflate call, one buffer)
  t.ok(decodeReport('a.log.gz', gzipSync(reference), MiB).equals(reference));
  // a second member announcing 4 GiB - 1: the first member is decoded, nothing near that size allocated
  const huge = gzipSync(Buffer.from('second member'));
  huge.writeUInt32LE(0xffffffff, huge.length - 4);
  const before = process.memoryUsage().arrayBuffers;
  t.ok(decodeReport('a.log.gz', Buffer.concat([gzipSync(reference), huge]), 64 * MiB).equals(reference), 'first member, huge hint');
  t.ok(process.memoryUsage().arrayBuffers - before < 16 * MiB, 'no buffer sized by the hint beyond its cap');
  // trailing bytes announcing less than the first member (0 and 1 byte): more chunks, same content
  for (const announced of [0, 1, 100]) {
    const tail = Buffer.alloc(8);
    tail.writeUInt32LE(announced, 4);
    t.ok(decodeReport('a.log.gz', Buffer.concat([gzipSync(reference), tail]), MiB).equals(reference), `first member, hint ${announced}`);
  }
  // a larger content than one default zlib chunk (16 KiB) and than the hint's cap (1 MiB)
  const large = Buffer.alloc(3 * MiB + 17, 'report line\n');
  t.ok(decodeReport('a.log.gz', gzipSync(large), 4 * MiB).equals(large), '3 MiB content');
  // the bound still holds with a hint that fits under it
  t.equal(reasonOf(() => decodeReport('a.log.gz', Buffer.concat([gzipSync(Buffer.alloc(1001)), Buffer.from([0, 0, 0, 0, 10, 0, 0, 0])]), 1000)), 'too-large');
});

t.test('damaged gzip is undecodable', async (t) => {
  const gz = gzipSync(reference);
  t.equal(reasonOf(() => decodeReport('a.log.gz', gz.subarray(0, gz.length - 100), MiB)), 'undecodable', 'truncated data');
  t.equal(reasonOf(() => decodeReport('a.log.gz', gz.subarray(0, gz.length - 4), MiB)), 'undecodable', 'truncated trailer');
  t.equal(reasonOf(() => decodeReport('a.log.gz', gz.subarray(0, 5), MiB)), 'undecodable', 'header only');
  t.equal(reasonOf(() => decodeReport('a.log.gz', reference, MiB)), 'undecodable', 'not gzip at all');
  const badCrc = Buffer.from(gz);
  badCrc[badCrc.length - 8]! ^= 0xff;
  t.equal(reasonOf(() => decodeReport('a.log.gz', badCrc, MiB)), 'undecodable', 'CRC mismatch');
  try {
    decodeReport('a.log.gz', gz.subarray(0, gz.length - 100), MiB);
  } catch (error) {
    t.match((error as Error).message, /gzip/, 'the message names the format');
  }
});

t.test('gzip bomb: refused quickly as too-large, without inflating everything', async (t) => {
  // 200 MB of zeros, compressed by streaming (never held in memory here either)
  const bomb = await new Promise<Buffer>((resolve, reject) => {
    const gzip = createGzip({ level: 9 });
    const chunks: Buffer[] = [];
    gzip.on('data', (c: Buffer) => chunks.push(c));
    gzip.on('end', () => resolve(Buffer.concat(chunks)));
    gzip.on('error', reject);
    const zeros = Buffer.alloc(MiB);
    for (let i = 0; i < 200; i++) gzip.write(zeros);
    gzip.end();
  });
  t.ok(bomb.length < MiB, `bomb is ${bomb.length} bytes`);
  const before = process.memoryUsage().arrayBuffers;
  const started = performance.now();
  let error: unknown;
  try {
    decodeReport('bomb.log.gz', bomb, 10 * MiB);
  } catch (e) {
    error = e;
  }
  const elapsed = performance.now() - started;
  t.ok(isReportError(error) && error.reason === 'too-large', 'too-large');
  t.match((error as Error).message, /10485760 bytes/, 'the message states the bound');
  t.ok(elapsed < 2000, `refused in ${elapsed.toFixed(0)} ms`);
  t.ok(process.memoryUsage().arrayBuffers - before < 100 * MiB, 'did not allocate the 200 MB');
  t.comment(`gzip bomb (200 MB → ${bomb.length} B) refused in ${elapsed.toFixed(1)} ms`);
  // exactly at the bound is fine
  t.equal(decodeReport('a.log.gz', gzipSync(Buffer.alloc(1000)), 1000).length, 1000);
  t.equal(reasonOf(() => decodeReport('a.log.gz', gzipSync(Buffer.alloc(1001)), 1000)), 'too-large');
  t.equal(reasonOf(() => decodeReport('a.log', Buffer.alloc(1001), 1000)), 'too-large', 'plain files are bounded too');
});

t.test('zip made by Info-ZIP: deflated, stored, streamed (data descriptor)', async (t) => {
  const dir = tempDir(t, 'onerelay-zip-');
  writeFileSync(join(dir, 'run.log'), reference);
  writeFileSync(join(dir, 'second.log'), 'second entry\n');
  await runOk('zip', ['-q', '-9', 'deflated.zip', 'run.log', 'second.log'], { cwd: dir });
  await runOk('zip', ['-q', '-0', 'stored.zip', 'run.log'], { cwd: dir });
  const streamed = await runOk('zip', ['-q', '-', '-'], { cwd: dir, input: reference });
  t.ok(decodeReport('a.log.zip', readFileSync(join(dir, 'deflated.zip')), MiB).equals(reference), 'first of two entries');
  t.ok(decodeReport('a.log.zip', readFileSync(join(dir, 'stored.zip')), MiB).equals(reference), 'stored');
  t.ok(decodeReport('a.log.zip', streamed, MiB).equals(reference), 'streamed from stdin');
  t.equal(reasonOf(() => decodeReport('a.log.zip', readFileSync(join(dir, 'stored.zip')), 1000)), 'too-large', 'stored entry bound');
});

t.test('zip bomb: too-large', async (t) => {
  const dir = tempDir(t, 'onerelay-zip-');
  const script = [
    'import zipfile, sys',
    'with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED) as z:',
    '    with z.open("bomb.log", "w", force_zip64=False) as f:',
    '        zeros = bytes(1 << 20)',
    '        for _ in range(200): f.write(zeros)',
  ].join('\n');
  await runOk('python3', ['-c', script, join(dir, 'bomb.zip')]);
  const bomb = readFileSync(join(dir, 'bomb.zip'));
  const started = performance.now();
  t.equal(reasonOf(() => decodeReport('bomb.log.zip', bomb, 10 * MiB)), 'too-large');
  t.ok(performance.now() - started < 2000, 'quickly');
});

t.test('damaged zip is undecodable', async (t) => {
  const zip = readFileSync(join(GZ, 'normal.log.zip'));
  t.equal(reasonOf(() => decodeReport('a.log.zip', zip.subarray(0, zip.length - 30), MiB)), 'undecodable', 'truncated');
  t.equal(reasonOf(() => decodeReport('a.log.zip', reference, MiB)), 'undecodable', 'not a zip');
  t.equal(reasonOf(() => decodeReport('a.log.zip', Buffer.alloc(0), MiB)), 'undecodable', 'empty file');
  const emptyArchive = Buffer.alloc(22);
  emptyArchive.writeUInt32LE(0x06054b50, 0);
  t.equal(reasonOf(() => decodeReport('a.log.zip', emptyArchive, MiB)), 'undecodable', 'archive without entries');
  const damaged = Buffer.from(zip);
  damaged[500]! ^= 0xff; // inside the deflated data
  t.equal(reasonOf(() => decodeReport('a.log.zip', damaged, MiB)), 'undecodable', 'damaged data');
  // an unsupported method (e.g. bzip2 = 12) in both headers
  const dir = tempDir(t, 'onerelay-zip-');
  writeFileSync(join(dir, 'run.log'), reference);
  await runOk('zip', ['-q', '-0', 'stored.zip', 'run.log'], { cwd: dir });
  const stored = readFileSync(join(dir, 'stored.zip'));
  const central = stored.lastIndexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02]));
  stored.writeUInt16LE(12, 8);
  stored.writeUInt16LE(12, central + 10);
  t.equal(reasonOf(() => decodeReport('a.log.zip', stored, MiB)), 'undecodable', 'unsupported method');
});
