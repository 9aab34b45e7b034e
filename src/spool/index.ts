// Face of the spool module: the durable directory queues of reports and inventories
// (ARCHITECTURE.md disk layout). Writers call `receive`; processors (later) consume `incoming/`.

import { mkdir, readdir, readFile, rm, stat, access, constants } from 'node:fs/promises';
import { RelayError, messageOf } from '../errors.js';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { writeFileAtomically } from './durable.js';
import { receiveInto, type ReceiveResult } from './receive.js';

export type { ReceiveResult };
export { ABORT_SETTLE_MS, createQueue, isSameFile, removeIfSame } from './queue.js';
export { copyFileAtomically, fsyncDirectory, openAtomicFile, writeFileAtomically, writeStreamAtomically } from './durable.js';
export type { AtomicFile, AtomicWriteOptions, CopyOptions, StreamWriteOptions } from './durable.js';
export type { FileIdentity, FileRemover, Queue, QueueContext, QueueEvents, QueueFile, QueueHandler, QueueOptions, QueueOutcome, QueueStats, QueueStopOptions } from './queue.js';

/** Where an upload lands: the three WebDAV endpoints of a Rudder relay. */
export type SpoolQueue = 'reports' | 'inventories' | 'inventory-updates';

export interface SpoolOptions {
  readonly reportsDirectory: string;
  readonly inventoriesDirectory: string;
}

export interface SpoolDirectoryStatus {
  readonly path: string;
  readonly files: number;
  readonly writable: boolean;
  readonly error: string | undefined;
}

export interface Spool {
  /** the directory a queue's uploads land in */
  incomingOf(queue: SpoolQueue): string;
  /** where a queue's refused files go */
  failedOf(queue: SpoolQueue): string;
  /** create every directory; removes temp files left by a crash when `cleanTmp` (primary only, before workers start) */
  prepare(options: { cleanTmp: boolean }): Promise<void>;
  /** `idleTimeoutMs` (default none): a body that sends no byte for that long is refused, RELAY_ERR_REQUEST_TIMEOUT */
  receive(queue: SpoolQueue, name: string, body: Readable, maxBytes: number, idleTimeoutMs?: number): Promise<ReceiveResult>;
  /** file counts and writability of every spool directory (status page, metrics) */
  inspect(): Promise<SpoolDirectoryStatus[]>;
}

const TMP = '.tmp';
/**
 * Version of the on-disk layout onerelay keeps in a spool (incoming/, failed/ with .reason sidecars,
 * .tmp/). relayd's spools are format 0 and are used as they are; a newer format than this build
 * knows is refused, so that a downgrade never misreads data.
 * 2: `.taken/<queue>/` may hold files half-removed (see spool/queue.ts takeIfSame) that the start and a tick
 * put back; the builds of format 1 made before `.taken/` existed would leave them there, unforwarded.
 */
export const SPOOL_FORMAT = 2;
const FORMAT_FILE = '.onerelay-format';

async function checkFormat(base: string): Promise<'written' | 'current' | 'migrated'> {
  const file = join(base, FORMAT_FILE);
  const marker = `${JSON.stringify({ format: SPOOL_FORMAT })}\n`;
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new RelayError('RELAY_ERR_STATE_FORMAT', `cannot read the spool format marker ${file}: ${messageOf(error)}`, { cause: error });
    }
    await mkdir(base, { recursive: true });
    // fsynced and renamed into place: a crash never leaves an empty marker that the next start cannot read
    await writeFileAtomically(file, marker);
    return 'written';
  }
  let format: number;
  try {
    format = Number((JSON.parse(text) as { format?: unknown }).format);
  } catch {
    format = Number.NaN;
  }
  if (Number.isNaN(format)) {
    throw new RelayError(
      'RELAY_ERR_STATE_FORMAT',
      `${file} is not a spool format marker (${JSON.stringify(text.slice(0, 40))}): write ${marker.trim()} into it if this spool was last used by this onerelay, or remove it for a relayd spool`,
    );
  }
  if (!Number.isInteger(format) || format > SPOOL_FORMAT) {
    throw new RelayError(
      'RELAY_ERR_STATE_FORMAT',
      `${file} says spool format ${String(format)}, newer than this onerelay (${SPOOL_FORMAT}): upgrade onerelay, or move the spool aside`,
    );
  }
  if (format < SPOOL_FORMAT) {
    // 1 → 2: nothing to move. Builds of format 1 made before .taken/ existed would leave what it holds there,
    // unforwarded; with 2 they refuse the spool instead (builds of format 1 that have .taken/ recover it as 2 does)
    await writeFileAtomically(file, marker);
    return 'migrated';
  }
  return 'current';
}

export function createSpool(options: SpoolOptions, log: Logger): Spool {
  const spoolLog = log.child({ module: 'spool' });
  const incoming: Record<SpoolQueue, string> = {
    reports: join(options.reportsDirectory, 'incoming'),
    inventories: join(options.inventoriesDirectory, 'incoming'),
    'inventory-updates': join(options.inventoriesDirectory, 'accepted-nodes-updates'),
  };
  const tmpOf: Record<SpoolQueue, string> = {
    reports: join(options.reportsDirectory, TMP),
    inventories: join(options.inventoriesDirectory, TMP),
    'inventory-updates': join(options.inventoriesDirectory, TMP),
  };
  const directories = [
    incoming.reports,
    join(options.reportsDirectory, 'failed'),
    incoming.inventories,
    incoming['inventory-updates'],
    join(options.inventoriesDirectory, 'failed'),
  ];

  return {
    incomingOf: (queue) => incoming[queue],
    failedOf: (queue) => join(queue === 'reports' ? options.reportsDirectory : options.inventoriesDirectory, 'failed'),

    async prepare({ cleanTmp }) {
      for (const base of new Set([options.reportsDirectory, options.inventoriesDirectory])) {
        const checked = await checkFormat(base);
        if (checked === 'written') spoolLog.info({ directory: base, format: SPOOL_FORMAT }, 'spool format marked');
        if (checked === 'migrated') spoolLog.info({ event: 'spool_format_migrated', directory: base, format: SPOOL_FORMAT }, 'spool format migrated');
      }
      for (const tmp of new Set(Object.values(tmpOf))) {
        if (cleanTmp) {
          const left = await readdir(tmp).catch(() => [] as string[]);
          if (left.length > 0) spoolLog.warn({ directory: tmp, files: left.length }, 'removing partial uploads left by an earlier stop');
          await rm(tmp, { recursive: true, force: true });
        }
        await mkdir(tmp, { recursive: true, mode: 0o770 });
      }
      for (const directory of directories) await mkdir(directory, { recursive: true, mode: 0o770 });
    },

    receive: (queue, name, body, maxBytes, idleTimeoutMs) => receiveInto(tmpOf[queue], incoming[queue], name, body, maxBytes, idleTimeoutMs),

    async inspect() {
      return Promise.all(
        directories.map(async (path): Promise<SpoolDirectoryStatus> => {
          try {
            await stat(path);
            await access(path, constants.W_OK);
            const files = (await readdir(path)).filter((n) => !n.startsWith('.')).length;
            return { path, files, writable: true, error: undefined };
          } catch (error) {
            return { path, files: 0, writable: false, error: messageOf(error) };
          }
        }),
      );
    },
  };
}
