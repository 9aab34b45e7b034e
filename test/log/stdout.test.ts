// The process's buffered stdout (src/log.ts): a line reaches stdout about LOG_FLUSH_MS after it was logged,
// and an idle process writes nothing (sonic-boom's periodic flush wrote an empty buffer ten times a second).
// In a child process: the logger owns its stdout.

import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';

const root = join(fileURLToPath(import.meta.url), '..', '..', '..');

const child = `
import fs from 'node:fs';
const write = fs.writeSync;
const writes = [];
fs.writeSync = (fd, ...rest) => { if (fd === 1) writes.push(Date.now()); return write(fd, ...rest); };
const { createLogger } = await import(${JSON.stringify(join(root, 'src', 'log.ts'))});
const log = createLogger('info');
const loggedAt = Date.now();
log.info({ event: 'hello' }, 'one line');
setTimeout(() => {
  process.stderr.write(JSON.stringify({ loggedAt, writes }) + '\\n');
}, 1200);
`;

t.test('a logged line is written within the flush delay; then an idle process writes nothing', async (t) => {
  const proc = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', child], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  proc.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const code = await new Promise<number | null>((resolve) => proc.on('close', resolve));
  t.equal(code, 0, 'the child exits cleanly');
  const line = JSON.parse(stdout.trim().split('\n')[0]!) as { event?: string };
  t.equal(line.event, 'hello');
  const report = JSON.parse(stderr.trim().split('\n').at(-1)!) as { loggedAt: number; writes: number[] };
  t.equal(report.writes.length, 1, `one write(2) to stdout in 1.2 s, not one per 100 ms (${report.writes.length})`);
  t.ok(report.writes[0]! - report.loggedAt < 600, `the line was written ${report.writes[0]! - report.loggedAt} ms after it was logged, not at exit`);
});
