// Part of the composition room: the primary and its front-door workers. One front-door process per core,
// because TLS 1.3 handshakes with Rudder's RSA-4096 key are the cost that dominates uploads and one event loop
// cannot use both cores (DEVELOPERS.md "Stack"); the primary is one of them (a process less: ~60 MB of RSS,
// bench/footprint), so it forks cores - 1 workers. This file owns the typed messages between them, forking,
// supervision (a worker that dies is replaced), the listening socket the primary opens and hands to each
// worker, the metrics each worker reports, and the admission of uploads against the spool's disk budget,
// which the primary holds and lends as byte leases to the workers and, in-process, to its own front door
// (http/admission.ts).

import cluster, { type Worker } from 'node:cluster';
import type { Server } from 'node:net';
import type { Logger } from 'pino';
import type { ActivityEvent } from '../activity/index.js';
import type { LogLevel } from '../config/index.js';
import { RelayError, messageOf } from '../errors.js';
import { createLeaseHolder, createLeaseKeeper, type FrontDoorSettings, type LeaseBudget, type LeaseGrant, type LeaseRequest, type UploadAdmission } from '../http/index.js';
import type { MetricsSnapshot } from '../metrics/index.js';
import type { SpoolQueue } from '../spool/index.js';

/** from a front-door worker to the primary */
export type WorkerMessage =
  | { type: 'ready' }
  /** asks for the front door's listening socket (answered with 'listen-handle' and the handle) */
  | { type: 'listen-handle-request' }
  | { type: 'remote-run-error'; message: string }
  | { type: 'failed'; message: string; exitCode: number }
  | { type: 'metrics'; id: number; snapshot: MetricsSnapshot }
  | LeaseRequest
  | { type: 'activity'; events: ActivityEvent[] };
/** from the primary to its front-door workers */
export type PrimaryMessage =
  | { type: 'reload'; level: LogLevel }
  /** sent with the primary's listening server as the handle */
  | { type: 'listen-handle' }
  | { type: 'shutdown' }
  | { type: 'spool-full'; queue: SpoolQueue; full: boolean }
  | { type: 'metrics-request'; id: number }
  | LeaseGrant
  | { type: 'own-settings'; settings: FrontDoorSettings };

/** how the primary tells a worker what to run: the configuration file and the --log-level override */
const ENV_CONFIG = 'ONERELAY_CONFIG';
const ENV_LOG_LEVEL = 'ONERELAY_LOG_LEVEL';
/** how long a worker waits for the primary's grant of a lease */
const ADMIT_TIMEOUT_MS = 2_000;
/** how long the primary waits for a worker's metrics before leaving it out */
const METRICS_TIMEOUT_MS = 2_000;
/** how long a worker waits for the listening socket */
const LISTEN_HANDLE_TIMEOUT_MS = 10_000;
/** pause before a dead worker is replaced (a worker that dies at once must not spin) */
const RESTART_DELAY_MS = 1_000;
const SPOOL_QUEUES: readonly SpoolQueue[] = ['reports', 'inventories', 'inventory-updates'];

// ---------------------------------------------------------------- primary side

export interface FrontDoorWorkers {
  /** forks `count` workers (0: none); resolves once every one is ready, rejects if one fails to start */
  start(count: number): Promise<void>;
  broadcast(message: PrimaryMessage): void;
  /** every worker's metrics; a worker that does not answer in time is left out */
  snapshots(): Promise<MetricsSnapshot[]>;
  /** workers alive, and ready among them (status page) */
  counts(): { workers: number; ready: number };
  /** asks every worker to stop; those still running after `killAfterMs` get SIGKILL */
  stop(killAfterMs: number): Promise<void>;
  /** start failed: no restart, SIGKILL to every worker */
  kill(): void;
}

export function createFrontDoorWorkers(
  options: { readonly configPath: string; readonly logLevel: LogLevel | undefined },
  deps: {
    /** the spool's disk budget, held by the primary (see Queue.reserve), lent to workers as byte leases */
    readonly admission: LeaseBudget & { isFull(queue: SpoolQueue): boolean };
    /** networks and credentials in force, sent to each worker when it is ready */
    readonly frontDoorSettings: () => FrontDoorSettings;
    readonly onRemoteRunError: (message: string) => void;
    readonly onActivity: (events: readonly ActivityEvent[]) => void;
    /** the primary's listening front-door server, handed to each worker that asks */
    readonly listener: () => Server | undefined;
    readonly log: Logger;
  },
): FrontDoorWorkers {
  const { admission, log } = deps;
  const workers = new Set<Worker>();
  let stopping = false;
  let readyWorkers = 0;
  let metricsRequest = 0;
  const metricsWaiters = new Map<number, (snapshot: MetricsSnapshot) => void>();

  const fork = (): Promise<void> =>
    new Promise((resolve, reject) => {
      const worker = cluster.fork({
        [ENV_CONFIG]: options.configPath,
        ...(options.logLevel ? { [ENV_LOG_LEVEL]: options.logLevel } : {}),
      });
      workers.add(worker);
      let ready = false;
      // this worker's byte leases on the disk budget (given back if it dies)
      const leases = createLeaseKeeper(admission);
      worker.on('message', (message: WorkerMessage) => {
        if (message.type === 'admit' || message.type === 'admit-end') {
          const grant = leases.handle(message);
          if (grant !== undefined && worker.isConnected()) worker.send(grant satisfies PrimaryMessage);
          else if (grant?.reservation != null) void admission.release(grant.queue, grant.reservation);
        } else if (message.type === 'ready') {
          ready = true;
          readyWorkers += 1;
          worker.send({ type: 'own-settings', settings: deps.frontDoorSettings() } satisfies PrimaryMessage);
          // workers that were not ready yet learn the spool-full state here
          for (const queue of SPOOL_QUEUES) {
            if (admission.isFull(queue)) worker.send({ type: 'spool-full', queue, full: true } satisfies PrimaryMessage);
          }
          resolve();
        } else if (message.type === 'listen-handle-request') {
          const server = deps.listener();
          // no server: the worker's start fails on its timeout and says so
          if (server !== undefined && worker.isConnected()) worker.send({ type: 'listen-handle' } satisfies PrimaryMessage, server);
        } else if (message.type === 'remote-run-error') {
          deps.onRemoteRunError(message.message);
        } else if (message.type === 'activity') {
          deps.onActivity(message.events);
        } else if (message.type === 'metrics') {
          metricsWaiters.get(message.id)?.(message.snapshot);
        } else if (message.type === 'failed') {
          reject(new RelayError('RELAY_ERR_LISTEN', message.message));
        }
      });
      worker.on('exit', (code, signal) => {
        workers.delete(worker);
        leases.workerGone();
        if (ready) readyWorkers -= 1;
        if (!ready) {
          reject(new RelayError('RELAY_ERR_LISTEN', `front-door worker exited during start (code ${code}, signal ${signal})`));
          return;
        }
        if (stopping) return;
        log.error({ event: 'worker_died', worker: worker.id, code, signal }, 'front-door worker died; starting another');
        setTimeout(() => {
          if (!stopping) fork().catch((error: unknown) => log.error({ event: 'worker_restart_failed', error: messageOf(error) }, 'could not restart a front-door worker'));
        }, RESTART_DELAY_MS).unref();
      });
    });

  const broadcast = (message: PrimaryMessage) => {
    for (const worker of workers) if (worker.isConnected()) worker.send(message);
  };

  return {
    async start(count) {
      if (count <= 0) return;
      // every front-door process accepts on the one listening socket itself (the primary's, handed over at
      // start: 'listen-handle'): round-robin would pass every connection through the primary (an IPC handle
      // transfer and an ack per upload, ~10 % of a worker's CPU); an idle process is the one waiting in
      // accept, so the CPU-bound handshakes still spread over the processes (bench/uploads). SCHED_NONE for
      // any other listen a worker might make.
      cluster.schedulingPolicy = cluster.SCHED_NONE;
      // V8's young generation grows to 3 x 16 MB per worker under uploads, whose bodies live outside the heap
      // anyway; 2 MB semi-spaces keep each worker ~30 MB smaller at no measured CPU per upload (bench/footprint,
      // bench/uploads). First, so that an operator's own flag (process.execArgv) still wins.
      cluster.setupPrimary({ silent: false, execArgv: ['--max-semi-space-size=2', ...process.execArgv] });
      await Promise.all(Array.from({ length: count }, fork));
    },
    broadcast,
    async snapshots() {
      const answers = [...workers]
        .filter((worker) => worker.isConnected())
        .map(
          (worker) =>
            new Promise<MetricsSnapshot | undefined>((resolve) => {
              const id = (metricsRequest += 1);
              const timer = setTimeout(() => {
                metricsWaiters.delete(id);
                resolve(undefined);
              }, METRICS_TIMEOUT_MS);
              metricsWaiters.set(id, (snapshot) => {
                clearTimeout(timer);
                metricsWaiters.delete(id);
                resolve(snapshot);
              });
              worker.send({ type: 'metrics-request', id } satisfies PrimaryMessage);
            }),
        );
      return (await Promise.all(answers)).filter((s): s is MetricsSnapshot => s !== undefined);
    },
    counts: () => ({ workers: workers.size, ready: readyWorkers }),
    async stop(killAfterMs) {
      stopping = true;
      const exits = [...workers].map((worker) => new Promise<void>((resolve) => worker.once('exit', () => resolve())));
      broadcast({ type: 'shutdown' });
      const kill = setTimeout(() => {
        for (const worker of workers) worker.process.kill('SIGKILL');
      }, killAfterMs);
      await Promise.all(exits);
      clearTimeout(kill);
    },
    kill() {
      stopping = true;
      for (const worker of workers) worker.process.kill('SIGKILL');
    },
  };
}

// ---------------------------------------------------------------- worker side

/** what the primary asks of a worker */
export interface PrimaryRequests {
  shutdown(): void;
  reload(level: LogLevel): void;
  ownSettings(settings: FrontDoorSettings): void;
  metrics(): Promise<MetricsSnapshot>;
}

export interface PrimaryLink {
  /** the configuration file and the --log-level override the primary started this worker with */
  readonly configPath: string;
  /** the primary's listening front-door socket, to accept on */
  listeningSocket(): Promise<Server>;
  readonly logLevel: LogLevel | undefined;
  /** uploads are admitted on byte leases the primary grants (http/admission.ts): no round trip per upload */
  admit(queue: SpoolQueue, bytes: number): Promise<UploadAdmission>;
  /** reports stored files not reported yet and gives every lease back (the worker stops) */
  closeLeases(): void;
  /** the primary's last word on the queue's disk budget */
  isSpoolFull(queue: SpoolQueue): boolean;
  /** node activity, in batches; done() once the primary has it */
  sendActivity(events: ActivityEvent[], done: () => void): void;
  remoteRunError(message: string): void;
  /** from now on the primary's requests reach `requests` */
  listen(requests: PrimaryRequests): void;
  ready(): void;
  failed(message: string, exitCode: number): void;
}

export function connectToPrimary(): PrimaryLink {
  const send = (message: WorkerMessage) => process.send?.(message);
  const fullQueues = new Set<SpoolQueue>();
  const leases = createLeaseHolder({
    send: (message) => {
      if (!process.connected || process.send === undefined) return false;
      process.send(message satisfies WorkerMessage);
      return true;
    },
    isFull: (queue) => fullQueues.has(queue),
    timeoutMs: ADMIT_TIMEOUT_MS,
  });
  return {
    configPath: process.env[ENV_CONFIG] ?? '',
    logLevel: process.env[ENV_LOG_LEVEL] as LogLevel | undefined,
    listeningSocket: () =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          process.off('message', answer);
          reject(new RelayError('RELAY_ERR_LISTEN', `the primary did not hand over the listening socket within ${LISTEN_HANDLE_TIMEOUT_MS} ms`));
        }, LISTEN_HANDLE_TIMEOUT_MS);
        const answer = (message: PrimaryMessage, handle: unknown): void => {
          if (message.type !== 'listen-handle') return;
          clearTimeout(timer);
          process.off('message', answer);
          resolve(handle as Server);
        };
        process.on('message', answer);
        send({ type: 'listen-handle-request' });
      }),
    admit: (queue, bytes) => leases.admit(queue, bytes),
    closeLeases: () => leases.close(),
    isSpoolFull: (queue) => fullQueues.has(queue),
    sendActivity(events, done) {
      if (process.send === undefined) return done();
      process.send({ type: 'activity', events } satisfies WorkerMessage, undefined, {}, () => done());
    },
    remoteRunError: (message) => send({ type: 'remote-run-error', message }),
    listen(requests) {
      process.on('message', (message: PrimaryMessage) => {
        if (message.type === 'shutdown') requests.shutdown();
        else if (message.type === 'reload') requests.reload(message.level);
        else if (message.type === 'admitted') leases.granted(message);
        else if (message.type === 'metrics-request') {
          void requests.metrics().then((snapshot) => send({ type: 'metrics', id: message.id, snapshot }));
        } else if (message.type === 'spool-full') {
          if (message.full) fullQueues.add(message.queue);
          else fullQueues.delete(message.queue);
        } else if (message.type === 'own-settings') {
          requests.ownSettings(message.settings);
        }
      });
    },
    ready: () => send({ type: 'ready' }),
    failed: (message, exitCode) => send({ type: 'failed', message, exitCode }),
  };
}

// ---------------------------------------------------------------- the primary's own front door

/**
 * The admission of the primary's own front door: the same byte leases as a worker's, the keeper and the
 * holder wired in-process (no IPC), so the budget and the queue's settle are kept by one mechanism.
 */
export function createLocalAdmission(budget: LeaseBudget & { isFull(queue: SpoolQueue): boolean }): {
  admit(queue: SpoolQueue, bytes: number): Promise<UploadAdmission>;
  close(): void;
} {
  const keeper = createLeaseKeeper(budget);
  const holder = createLeaseHolder({
    send: (message) => {
      const grant = keeper.handle(message);
      // answered after the request is registered, as over IPC
      if (grant !== undefined) queueMicrotask(() => holder.granted(grant));
      return true;
    },
    isFull: (queue) => budget.isFull(queue),
    timeoutMs: ADMIT_TIMEOUT_MS,
  });
  return { admit: (queue, bytes) => holder.admit(queue, bytes), close: () => holder.close() };
}
