// Bench: report verification on one core, the part of the pipeline that is pure computation.
// - inspections/s of relayd's 2018 fixture run log (17.7 KB, 72 reports, S/MIME RSA-4096 SHA-256, gzipped
//   to ~3 KB): gunzip + S/MIME verify + run log parse, 1 and 8 in flight;
// - verifySmime/s of smime/normal.signed (17 KB);
// next to the machine's yardstick measured in the same run: `openssl speed` RSA-4096 verify/s on one core
// (the floor of one signature check), so that figures from different days compare by their ratio.
// These ran inside `npm test` as informational tests; timing belongs here (CONVENTIONS.md "Benchmarks").

import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { pino } from 'pino';
import { createNodesRegistry } from '../src/nodes/index.js';
import { createReportInspector, verifySmime } from '../src/reports/index.js';
import { FIXTURES } from '../test/support/fixtures.js';
import { table } from './lib/stats.js';

export const description = 'report verification on one core (inspections/s, S/MIME verify/s) next to openssl speed rsa4096 verify/s';

const FILES = join(FIXTURES, 'files');
const E745 = 'e745a140-40bc-4b86-b6dc-084488fc906b';
const RUN_2018 = `2018-08-24T15_55_01+00_00@${E745}`;

/** RSA-4096 verifications per second on one core, as openssl measures them */
function opensslRsa4096Verify(): number {
  const out = execFileSync('openssl', ['speed', '-seconds', '2', '-mr', 'rsa4096'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  // machine-readable line (OpenSSL 3): +F2:<index>:<bits>:<signs per second>:<verifications per second>
  const line = out.split('\n').find((l) => l.startsWith('+F2:') && l.split(':')[2] === '4096');
  if (line === undefined) return Number.NaN;
  return Number(line.split(':')[4]);
}

async function timed(seconds: number, concurrency: number, step: () => Promise<unknown> | unknown): Promise<{ wall: number; cpu: number }> {
  let count = 0;
  const started = performance.now();
  const cpu = process.cpuUsage();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() - started < seconds * 1000) {
        await step();
        count++;
      }
    }),
  );
  const used = process.cpuUsage(cpu);
  return { wall: count / ((performance.now() - started) / 1000), cpu: count / ((used.user + used.system) / 1e6) };
}

export async function run(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'onerelay-bench-verify-'));
  try {
    copyFileSync(join(FILES, 'nodeslist.json'), join(dir, 'nodeslist.json'));
    copyFileSync(join(FILES, 'keys', 'nodescerts.pem'), join(dir, 'nodescerts.pem'));
    const registry = createNodesRegistry({ myId: 'root', nodesListFile: join(dir, 'nodeslist.json'), nodesCertsFile: join(dir, 'nodescerts.pem'), log: pino({ level: 'silent' }) });
    await registry.reload();
    const inspector = createReportInspector({ myId: 'root', verifyMode: 'direct', skipEventTypes: [], maxDecodedBytes: 64 * 1024 * 1024 }, registry);
    const signed2018 = readFileSync(join(FILES, 'runlogs', `${RUN_2018}.signed`));
    const gz = gzipSync(signed2018);
    const name = `${RUN_2018}.log.gz`;
    for (let i = 0; i < 200; i++) await inspector.inspect(name, gz);
    const first = await inspector.inspect(name, gz);
    if (first.kind === 'reject') throw new Error(`fixture run log refused: ${first.reason}`); // bench code, not src: a plain Error is fine

    const normal = readFileSync(join(FILES, 'smime', 'normal.signed'));
    const e745 = new X509Certificate(readFileSync(join(FILES, 'keys', `${E745}.cert`)));
    const yardstick = opensslRsa4096Verify();
    const one = await timed(2, 1, () => inspector.inspect(name, gz));
    const eight = await timed(2, 8, () => inspector.inspect(name, gz));
    const smime = await timed(2, 1, () => verifySmime(normal, [e745]));
    console.log(
      table(
        ['what (one core)', 'per wall second', 'per CPU second', 'vs openssl rsa4096 verify/s'],
        [
          ['openssl speed rsa4096 verify', yardstick.toFixed(0), yardstick.toFixed(0), '1.00'],
          ['inspect, 1 in flight', one.wall.toFixed(0), one.cpu.toFixed(0), (one.cpu / yardstick).toFixed(2)],
          ['inspect, 8 in flight', eight.wall.toFixed(0), eight.cpu.toFixed(0), (eight.cpu / yardstick).toFixed(2)],
          ['verifySmime normal.signed', smime.wall.toFixed(0), smime.cpu.toFixed(0), (smime.cpu / yardstick).toFixed(2)],
        ],
      ),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
