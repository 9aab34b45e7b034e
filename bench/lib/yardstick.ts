// The machine's yardstick for the pipeline bench, measured in the same run as the relay: what the physical
// work of one report costs on this machine today (machines and their load differ from day to day, so CPU ms
// per report is read next to it). One core each, no parallelism:
// - RSA-4096 verifications/s (`openssl speed rsa4096`): the one signature check of a report;
// - SHA-256 bytes/s on blocks the size of a run log (`openssl speed -bytes`): the content digest and the
//   signed attributes' digest;
// - gunzip of the bench's own report files (Node's zlib, as the relay decodes them).

import { execFileSync } from 'node:child_process';
import { gunzipSync } from 'node:zlib';

export interface Yardstick {
  readonly rsa4096VerifyPerSecond: number;
  /** SHA-256 throughput on blocks of `sha256BlockBytes` */
  readonly sha256BytesPerSecond: number;
  readonly sha256BlockBytes: number;
  /** µs to gunzip one report file (mean over the sample) */
  readonly gunzipMicroseconds: number;
  /** µs of one verify + two SHA-256 of the decoded size + one gunzip: the byte and crypto work of one report */
  readonly floorMicroseconds: number;
}

function opensslLines(args: readonly string[]): string[] {
  const out = execFileSync('openssl', ['speed', '-seconds', '1', '-mr', ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  return out.split('\n');
}

/** `samples`: a few report files as on disk (gzipped); `decodedBytes`: their mean decoded size */
export function measureYardstick(samples: readonly Buffer[], decodedBytes: number): Yardstick {
  // machine-readable line (OpenSSL 3): +F2:<index>:<bits>:<signs per second>:<verifications per second>
  const rsa = opensslLines(['rsa4096']).find((line) => line.startsWith('+F2:') && line.split(':')[2] === '4096');
  const rsa4096VerifyPerSecond = rsa === undefined ? Number.NaN : Number(rsa.split(':')[4]);
  const block = Math.max(1024, Math.round(decodedBytes / 1024) * 1024);
  // +F:<index>:sha256:<bytes per second at the one block size asked>
  const sha = opensslLines(['-bytes', String(block), 'sha256']).find((line) => line.startsWith('+F:') && line.includes(':sha256:'));
  const sha256BytesPerSecond = sha === undefined ? Number.NaN : Number(sha.split(':')[3]);
  let count = 0;
  const started = process.hrtime.bigint();
  const cpu = process.cpuUsage();
  while (process.hrtime.bigint() - started < 500_000_000n) {
    for (const sample of samples) gunzipSync(sample);
    count += samples.length;
  }
  const used = process.cpuUsage(cpu);
  const gunzipMicroseconds = (used.user + used.system) / count;
  const floorMicroseconds = 1e6 / rsa4096VerifyPerSecond + (2 * decodedBytes * 1e6) / sha256BytesPerSecond + gunzipMicroseconds;
  return { rsa4096VerifyPerSecond, sha256BytesPerSecond, sha256BlockBytes: block, gunzipMicroseconds, floorMicroseconds };
}
