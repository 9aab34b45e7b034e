// The spool's on-disk format marker: written on a fresh spool, migrated from an older format, and a newer one
// refused (a downgrade must not misread, or leave unforwarded, what a newer build left there).

import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import pino from 'pino';
import t from 'tap';
import { isRelayError } from '../../src/errors.js';
import { createSpool, SPOOL_FORMAT } from '../../src/spool/index.js';
import { tempDir } from '../support/tmp.js';

function spoolIn(dir: string, lines: Array<Record<string, unknown>>) {
  const log = pino({ level: 'info' }, { write: (line: string) => lines.push(JSON.parse(line) as Record<string, unknown>) });
  return createSpool({ reportsDirectory: join(dir, 'reports'), inventoriesDirectory: join(dir, 'inventories') }, log);
}

const formatIn = async (base: string): Promise<unknown> => (JSON.parse(await readFile(join(base, '.onerelay-format'), 'utf8')) as { format: unknown }).format;

t.test('a fresh spool is marked with the current format (2: it may hold .taken/)', async (t) => {
  const dir = tempDir(t);
  const lines: Array<Record<string, unknown>> = [];
  await spoolIn(dir, lines).prepare({ cleanTmp: true });
  t.equal(SPOOL_FORMAT, 2);
  t.equal(await formatIn(join(dir, 'reports')), 2);
  t.equal(await formatIn(join(dir, 'inventories')), 2);
});

t.test('a format 1 spool is migrated to 2 at start, its files kept, and the migration logged', async (t) => {
  const dir = tempDir(t);
  for (const base of ['reports', 'inventories']) {
    await mkdir(join(dir, base, 'incoming'), { recursive: true });
    await writeFile(join(dir, base, '.onerelay-format'), '{"format":1}\n');
  }
  await writeFile(join(dir, 'reports', 'incoming', 'kept.log.gz'), 'a queued report');
  const lines: Array<Record<string, unknown>> = [];
  await spoolIn(dir, lines).prepare({ cleanTmp: true });
  t.equal(await formatIn(join(dir, 'reports')), 2);
  t.equal(await formatIn(join(dir, 'inventories')), 2);
  t.equal(await readFile(join(dir, 'reports', 'incoming', 'kept.log.gz'), 'utf8'), 'a queued report');
  t.equal(lines.filter((l) => l['event'] === 'spool_format_migrated').length, 2, 'one line per spool migrated');
});

t.test('a newer format is refused with RELAY_ERR_STATE_FORMAT naming the file', async (t) => {
  const dir = tempDir(t);
  await mkdir(join(dir, 'reports'), { recursive: true });
  await writeFile(join(dir, 'reports', '.onerelay-format'), '{"format":3}\n');
  const lines: Array<Record<string, unknown>> = [];
  const error: unknown = await spoolIn(dir, lines).prepare({ cleanTmp: true }).then(() => undefined, (rejected: unknown) => rejected);
  t.ok(isRelayError(error) && error.code === 'RELAY_ERR_STATE_FORMAT', 'refused with RELAY_ERR_STATE_FORMAT');
  t.match(String((error as Error | undefined)?.message), join(dir, 'reports', '.onerelay-format'), 'naming the file');
  t.equal(await formatIn(join(dir, 'reports')), 3, 'the marker is left as it was');
});

t.test('an unreadable marker (empty, not JSON) is refused with RELAY_ERR_STATE_FORMAT saying what to do', async (t) => {
  const dir = tempDir(t);
  await mkdir(join(dir, 'reports'), { recursive: true });
  await writeFile(join(dir, 'reports', '.onerelay-format'), '');
  const lines: Array<Record<string, unknown>> = [];
  const error: unknown = await spoolIn(dir, lines).prepare({ cleanTmp: true }).then(() => undefined, (rejected: unknown) => rejected);
  t.ok(isRelayError(error) && error.code === 'RELAY_ERR_STATE_FORMAT', 'refused with RELAY_ERR_STATE_FORMAT');
  t.match(String((error as Error | undefined)?.message), /is not a spool format marker .*write \{"format":2\} into it/);
});
