// What both pulling sides (HTTP from an onerelay upstream, CFEngine protocol from a stock root) share: one
// pull at a time, triggers during a pull coalesced into one more, the schedule, abort on stop, the status
// fields, counters, and logs (repeated identical failures logged at error level at most every 10 min).

import type { Logger } from 'pino';
import { RelayError, isRelayError, messageOf } from '../../errors.js';
import type { SyncCounters, SyncPuller, SyncStatus } from '../index.js';

/** the same failure again is logged at error level at most this often (CONVENTIONS.md "Logs") */
const REPEATED_ERROR_LOG_MS = 10 * 60_000;

/** thrown by a pull that saw its signal aborted (stop) */
export class PullAborted extends RelayError {
  constructor() {
    super('RELAY_ERR_SYNC_STOPPED', 'sync stopped');
    this.name = 'PullAborted';
  }
}

export interface PullDone {
  readonly unchanged: boolean;
  readonly requests: number;
  readonly files: number;
  readonly bytes: number;
  /** units switched or removed */
  readonly changedUnits: number;
  /** more fields for the "sync done" line */
  readonly fields?: Record<string, unknown>;
}

/** the mutable part of SyncStatus, owned by the loop; pulls may count rejected blobs and restore lastSuccessAt */
export interface PullState {
  running: boolean;
  lastSuccessAt: string | undefined;
  lastAttemptAt: string | undefined;
  lastError: string | undefined;
  lastDurationMs: number | undefined;
  lastBytes: number;
  lastFiles: number;
  lastRequests: number | undefined;
  lastChangedUnits: number;
  errors: number;
  rejectedBlobs: number;
}

export interface PullLoopOptions {
  readonly frequencyMs: number;
  readonly log: Logger;
  readonly counters: SyncCounters;
  /** once before the first pull (directories, crash leftovers, saved state); may be called again by pull */
  prepare(): Promise<void>;
  pull(signal: AbortSignal): Promise<PullDone>;
  /** the generation applied here, for status and logs */
  generation(): string | undefined;
}

export function createPullLoop(options: PullLoopOptions): SyncPuller & { readonly state: PullState } {
  const { log } = options;
  let started = false;
  let stopping = false;
  let timer: NodeJS.Timeout | undefined;
  let current: Promise<SyncStatus> | undefined;
  let queued: Promise<SyncStatus> | undefined;
  let abort: AbortController | undefined;
  let loggedError: { message: string; at: number } | undefined;

  const state: PullState = {
    running: false,
    lastSuccessAt: undefined,
    lastAttemptAt: undefined,
    lastError: undefined,
    lastDurationMs: undefined,
    lastBytes: 0,
    lastFiles: 0,
    lastRequests: undefined,
    lastChangedUnits: 0,
    errors: 0,
    rejectedBlobs: 0,
  };
  const status = (): SyncStatus => ({ enabled: true, generation: options.generation(), ...state });

  async function execute(): Promise<SyncStatus> {
    const controller = new AbortController();
    abort = controller;
    const begin = Date.now();
    state.running = true;
    state.lastAttemptAt = new Date(begin).toISOString();
    try {
      const done = await options.pull(controller.signal);
      const durationMs = Date.now() - begin;
      state.lastSuccessAt = new Date().toISOString();
      if (state.lastError !== undefined) log.info('sync works again');
      state.lastError = undefined;
      loggedError = undefined;
      state.lastDurationMs = durationMs;
      state.lastRequests = done.requests;
      state.lastBytes = done.bytes;
      state.lastFiles = done.files;
      state.lastChangedUnits = done.changedUnits;
      reportDone(done, durationMs);
    } catch (error) {
      const durationMs = Date.now() - begin;
      state.errors += 1;
      state.lastDurationMs = durationMs;
      const aborted = error instanceof PullAborted || controller.signal.aborted;
      const code = aborted ? 'RELAY_ERR_UPSTREAM_UNAVAILABLE' : isRelayError(error) ? error.code : 'RELAY_ERR_INTERNAL';
      state.lastError = `${code}: ${messageOf(error)}`;
      options.counters.synced('error', durationMs, 0, 0);
      if (aborted) {
        log.info('sync stopped before the end; the next pull resumes');
      } else if (loggedError?.message === state.lastError && Date.now() - loggedError.at < REPEATED_ERROR_LOG_MS) {
        log.debug({ code, err: messageOf(error), durationMs }, 'sync failed again');
      } else {
        loggedError = { message: state.lastError, at: Date.now() };
        log.error({ code, err: messageOf(error), durationMs }, 'sync failed');
      }
    } finally {
      state.running = false;
      if (abort === controller) abort = undefined;
    }
    return status();
  }

  function reportDone(done: PullDone, durationMs: number): void {
    options.counters.synced(done.unchanged ? 'unchanged' : 'ok', durationMs, done.bytes, done.files);
    const fields = { generation: options.generation(), files: done.files, bytes: done.bytes, changedUnits: done.changedUnits, ...done.fields, requests: done.requests, durationMs };
    if (done.unchanged) log.debug(fields, 'sync: unchanged');
    else log.info(fields, 'sync done');
  }

  /** one pull at a time; a trigger during a pull runs one more after it (the pull may predate the change) */
  function runPull(): Promise<SyncStatus> {
    if (current === undefined) {
      current = execute().finally(() => {
        current = undefined;
      });
      return current;
    }
    queued ??= current.then(() => {
      queued = undefined;
      return stopping ? status() : runPull();
    });
    return queued;
  }

  function schedule(delayMs: number): void {
    if (!started) return;
    timer = setTimeout(() => {
      timer = undefined;
      // a pull already running or queued covers this tick
      const run = current === undefined ? runPull() : Promise.resolve(status());
      void run.finally(() => schedule(options.frequencyMs));
    }, delayMs);
    timer.unref();
  }

  return {
    state,
    async start() {
      if (started) return;
      started = true;
      stopping = false;
      await options.prepare();
      schedule(0);
    },
    async stop() {
      started = false;
      stopping = true;
      if (timer !== undefined) clearTimeout(timer);
      timer = undefined;
      abort?.abort();
      await Promise.allSettled([current, queued]);
    },
    trigger: () => runPull(),
    status,
  };
}
