// Inspection of spool files for the reporting queue, either inline (read + inspect on the event loop)
// or spread over worker threads: the primary's single event loop was the store-and-forward bottleneck
// (decode + S/MIME + run log parse ≈ 40% of its CPU per report), so the byte work goes to threads and
// the loop keeps only the queue, the registry lookups and the upstream requests. Threads are pure
// functions of (name, bytes, certificates): the queue stays the one owner of every file.

import { readFile } from 'node:fs/promises';
import { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import { relayError } from '../errors.js';
import type { NodesRegistry, SignerCertificate } from '../nodes/index.js';
import { removeIfSame, type FileIdentity, type FileRemover } from '../spool/index.js';
import type { Inspection, ReportInspectorOptions, RunInfo } from './index.js';
import { createReportInspector, planInspection } from './inspect.js';

export type FileInspection =
  | { readonly kind: 'gone' }
  | { readonly kind: 'inspected'; readonly inspection: Inspection; readonly bytes: Buffer; readonly seconds: number };

export interface FileInspector {
  /**
   * reads the spool file and inspects it; throws only for I/O errors other than the file being gone.
   * `size`: what the queue saw (threads read the files of one batch into one buffer sized by it)
   */
  inspectFile(name: string, path: string, size?: number): Promise<FileInspection>;
  /** the spool queue's removal of a handled file (see FileRemover): on a thread when one runs */
  removeFile: FileRemover;
  start(): Promise<void>;
  stop(): Promise<void>;
  /** inspection threads running now (0 inline, and while idle) */
  threadsRunning(): number;
}

/** @internal messages between the pool and its threads */
export interface ThreadSetup {
  readonly maxDecodedBytes: number;
  readonly skipEventTypes: readonly string[];
}
/** @internal */
export interface ThreadRequest {
  readonly id: number;
  readonly name: string;
  readonly path: string;
  readonly info: RunInfo;
  /** the size the queue saw: the file's place in the batch's buffer */
  readonly size?: number;
  /** drop every cached certificate before this request (bounds the cache across nodes reloads) */
  readonly forgetCertificates?: true;
  /** the certificate (its DER, or the parts of a SignerKey) only the first time a thread is sent it */
  readonly certificates: ReadonlyArray<ThreadCertificate> | undefined;
}
/** @internal */
export type ThreadCertificate =
  | { readonly key: number; readonly der?: Uint8Array }
  | { readonly key: number; readonly issuerDer: Uint8Array; readonly serialMagnitude: Uint8Array; readonly spki: Uint8Array };
/** @internal */
export interface ThreadRemoval {
  readonly id: number;
  readonly path: string;
  readonly expected: FileIdentity | undefined;
}
/** @internal what the primary asks a thread in one turn of its event loop */
export interface ThreadBatch {
  readonly inspect: readonly ThreadRequest[];
  readonly remove: readonly ThreadRemoval[];
}
/** @internal */
export type InspectReply =
  | { readonly id: number; readonly kind: 'gone' }
  | { readonly id: number; readonly kind: 'error'; readonly message: string }
  | { readonly id: number; readonly kind: 'inspected'; readonly inspection: Inspection; readonly bytes: Uint8Array; readonly seconds: number };
/** @internal */
export type RemovalReply =
  | { readonly id: number; readonly kind: 'removed' | 'replaced' | 'gone' }
  | { readonly id: number; readonly kind: 'error'; readonly message: string };
/** @internal the answer to one batch */
export interface ThreadReplies {
  readonly removed: readonly RemovalReply[];
  readonly inspected: readonly InspectReply[];
}

/** read with fs/promises and inspect on the event loop (threads = 0) */
export function createInlineFileInspector(options: ReportInspectorOptions, nodes: NodesRegistry): FileInspector {
  const inspector = createReportInspector(options, nodes);
  return {
    async inspectFile(name, path) {
      let bytes: Buffer;
      try {
        bytes = await readFile(path);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'ENOENT') return { kind: 'gone' };
        throw error;
      }
      const started = process.hrtime.bigint();
      const inspection = await inspector.inspect(name, bytes);
      return { kind: 'inspected', inspection, bytes, seconds: Number(process.hrtime.bigint() - started) / 1e9 };
    },
    removeFile: removeIfSame,
    start: async () => undefined,
    stop: async () => undefined,
    threadsRunning: () => 0,
  };
}

interface Pending<T> {
  resolve(result: T): void;
  reject(error: Error): void;
}

interface Thread {
  readonly worker: Worker;
  readonly pending: Map<number, Pending<FileInspection>>;
  readonly removals: Map<number, Pending<'removed' | 'replaced' | 'gone'>>;
  /** certificate keys whose DER this thread already holds */
  readonly certificatesSent: Set<number>;
  /** requests made in this turn of the event loop, sent as one message at its end */
  outbox: { inspect: ThreadRequest[]; remove: ThreadRemoval[] };
}

const emptyOutbox = (): Thread['outbox'] => ({ inspect: [], remove: [] });
const busy = (thread: Thread): number => thread.pending.size + thread.removals.size;

// dist/ runs the compiled thread; the tests run the TypeScript sources, whose thread must load tsx itself
// (a worker thread does not inherit the parent's --import=tsx hooks on Node 20)
const fromSources = import.meta.url.endsWith('.ts');
const threadFile = new URL(fromSources ? './inspect-thread.ts' : './inspect-thread.js', import.meta.url);

function newThread(setup: ThreadSetup): Worker {
  if (!fromSources) return new Worker(threadFile, { workerData: setup, name: 'onerelay-inspect' });
  const bootstrap = `import('tsx/esm/api').then((tsx) => { tsx.register(); return import(${JSON.stringify(threadFile.href)}); })`;
  return new Worker(bootstrap, { eval: true, workerData: setup, name: 'onerelay-inspect' });
}

/**
 * certificates a thread keeps (X509Certificate + public key, ~4 KB of malloc each) before it starts over:
 * 50,000 let a relay of 10,000 reporting nodes hold ~45 MB for good in the one thread of a 2-core machine;
 * beyond 2,000 reporting nodes a thread parses again the certificates of the ones it forgot (~0.2 ms each)
 */
const MAX_CERTIFICATES_PER_THREAD = 2_000;
/** threads start on the first report and end after this long without one: an idle relay holds no thread (~10 MB each) */
const IDLE_THREAD_MS = 30_000;

export function createThreadedFileInspector(
  options: ReportInspectorOptions,
  nodes: NodesRegistry,
  threadCount: number,
  parentLog: Logger,
  idleThreadMs: number = IDLE_THREAD_MS,
): FileInspector {
  const log = parentLog.child({ module: 'reports' });
  const setup: ThreadSetup = { maxDecodedBytes: options.maxDecodedBytes, skipEventTypes: options.skipEventTypes };
  const threads: Thread[] = [];
  const certificateKeys = new WeakMap<SignerCertificate, number>();
  let nextCertificateKey = 1;
  let nextId = 1;
  let running = false;

  const keyOf = (certificate: SignerCertificate): number => {
    let key = certificateKeys.get(certificate);
    if (key === undefined) {
      key = nextCertificateKey++;
      certificateKeys.set(certificate, key);
    }
    return key;
  };

  /**
   * a nodes reload, or the registry's eviction of a node's signer objects (it keeps the last 1,000 nodes'),
   * makes new certificate objects, so new keys: start the thread's cache over now and then. This bounds the
   * thread's cache (MAX_CERTIFICATES_PER_THREAD); the keys of objects gone die with them (a WeakMap)
   */
  const forgetCertificates = (thread: Thread): boolean => {
    if (thread.certificatesSent.size < MAX_CERTIFICATES_PER_THREAD) return false;
    thread.certificatesSent.clear();
    return true;
  };

  let idleTimer: NodeJS.Timeout | undefined;
  /** when nothing is pending anywhere, end the threads after IDLE_THREAD_MS (they start again on demand) */
  const armIdleTimer = (): void => {
    if (idleTimer !== undefined || threads.length === 0) return;
    if (threads.some((thread) => busy(thread) > 0)) return;
    idleTimer = setTimeout(() => {
      idleTimer = undefined;
      if (threads.some((thread) => busy(thread) > 0)) return;
      const idle = threads.splice(0);
      for (const thread of idle) void thread.worker.terminate();
      log.debug({ event: 'inspect_threads_idle', threads: idle.length }, 'report inspection threads ended after a quiet spell');
    }, idleThreadMs);
    idleTimer.unref();
  };

  function spawn(): Thread {
    const worker = newThread(setup);
    const thread: Thread = { worker, pending: new Map(), removals: new Map(), certificatesSent: new Set(), outbox: emptyOutbox() };
    worker.on('message', ({ removed, inspected }: ThreadReplies) => {
      for (const reply of removed) {
        const waiting = thread.removals.get(reply.id);
        if (waiting === undefined) continue;
        thread.removals.delete(reply.id);
        if (reply.kind === 'error') waiting.reject(relayError('RELAY_ERR_REPORT_INSPECTION', reply.message));
        else waiting.resolve(reply.kind);
      }
      for (const reply of inspected) {
        const waiting = thread.pending.get(reply.id);
        if (waiting === undefined) continue;
        thread.pending.delete(reply.id);
        if (reply.kind === 'gone') waiting.resolve({ kind: 'gone' });
        else if (reply.kind === 'error') waiting.reject(relayError('RELAY_ERR_REPORT_INSPECTION', reply.message));
        else {
          const bytes = Buffer.from(reply.bytes.buffer, reply.bytes.byteOffset, reply.bytes.byteLength);
          waiting.resolve({ kind: 'inspected', inspection: reply.inspection, bytes, seconds: reply.seconds });
        }
      }
      if (busy(thread) === 0) armIdleTimer();
    });
    const lost = (why: string) => {
      const index = threads.indexOf(thread);
      if (index < 0) return;
      threads.splice(index, 1);
      if (running) log.error({ event: 'inspect_thread_died', why, in_flight: thread.pending.size }, 'report inspection thread died; the next report starts another');
      // the files come back through the queue's retry: nothing is lost, nothing was half-done (a removal the
      // thread may have done before dying: the queue's next look finds the file gone)
      for (const waiting of thread.pending.values()) waiting.reject(relayError('RELAY_ERR_REPORT_INSPECTION', `inspection thread ${why}`));
      for (const waiting of thread.removals.values()) waiting.reject(relayError('RELAY_ERR_REPORT_INSPECTION', `inspection thread ${why}`));
      thread.pending.clear();
      thread.removals.clear();
    };
    worker.on('error', (error) => lost(`failed: ${error.message}`));
    worker.on('exit', (code) => lost(`exited with code ${code}`));
    return thread;
  }

  /** the least busy thread, starting one while fewer than threadCount run and all are busy */
  function threadFor(): Thread {
    let thread = threads[0];
    for (const other of threads) if (thread === undefined || busy(other) < busy(thread)) thread = other;
    if (thread === undefined || (busy(thread) > 0 && threads.length < Math.max(1, threadCount))) {
      thread = spawn();
      threads.push(thread);
    }
    return thread;
  }

  /** one message per thread and turn of the event loop: the queue hands several files over at once (start scan, bursts) */
  function post(thread: Thread, request: { inspect: ThreadRequest } | { remove: ThreadRemoval }): void {
    const first = thread.outbox.inspect.length + thread.outbox.remove.length === 0;
    if ('inspect' in request) thread.outbox.inspect.push(request.inspect);
    else thread.outbox.remove.push(request.remove);
    if (!first) return;
    // at the end of the event loop's turn, not of the current callback: the answers of several upstream
    // connections read in one poll are separate callbacks, and their removals (and the files dispatched after
    // them) then go in one message, not one each
    setImmediate(() => {
      const batch: ThreadBatch = thread.outbox;
      thread.outbox = emptyOutbox();
      if (threads.includes(thread)) thread.worker.postMessage(batch);
    });
  }

  return {
    async inspectFile(name, path, size) {
      const plan = planInspection(options, nodes, name);
      if (plan.kind === 'reject') return { kind: 'inspected', inspection: plan, bytes: Buffer.alloc(0), seconds: 0 };
      if (!running) throw relayError('RELAY_ERR_REPORT_INSPECTION', 'report inspection threads are stopped');
      if (idleTimer !== undefined) clearTimeout(idleTimer);
      idleTimer = undefined;
      const thread = threadFor();
      const request: ThreadRequest = {
        id: nextId++,
        name,
        path,
        info: plan.info,
        ...(size === undefined ? {} : { size }),
        ...(forgetCertificates(thread) ? { forgetCertificates: true } : {}),
        certificates: plan.certificates?.map((certificate) => {
          const key = keyOf(certificate);
          if (thread.certificatesSent.has(key)) return { key };
          thread.certificatesSent.add(key);
          // copies of their own: a view on the registry's DER store would clone the store's whole slab
          if ('issuerDer' in certificate) {
            return { key, issuerDer: new Uint8Array(certificate.issuerDer), serialMagnitude: new Uint8Array(certificate.serialMagnitude), spki: new Uint8Array(certificate.spki) };
          }
          return { key, der: new Uint8Array(certificate.raw) };
        }),
      };
      return new Promise<FileInspection>((resolve, reject) => {
        thread.pending.set(request.id, { resolve, reject });
        post(thread, { inspect: request });
      });
    },
    removeFile(path, expected) {
      // a thread that runs (the one that read the file, most often) unlinks with a synchronous call beside
      // its reads, in the batch it is sent anyway; with none running (ended idle), the thread pool as usual
      if (!running || threads.length === 0) return removeIfSame(path, expected);
      if (idleTimer !== undefined) clearTimeout(idleTimer);
      idleTimer = undefined;
      const thread = threadFor();
      const removal: ThreadRemoval = { id: nextId++, path, expected: expected === undefined ? undefined : { ino: expected.ino, size: expected.size, mtimeMs: expected.mtimeMs } };
      return new Promise((resolve, reject) => {
        thread.removals.set(removal.id, { resolve, reject });
        post(thread, { remove: removal });
      });
    },
    threadsRunning: () => threads.length,
    async start() {
      if (running) return;
      // no thread yet: the first report starts one (threadFor)
      running = true;
    },
    async stop() {
      if (!running) return;
      running = false;
      if (idleTimer !== undefined) clearTimeout(idleTimer);
      idleTimer = undefined;
      const stopping = threads.splice(0);
      await Promise.all(stopping.map((thread) => thread.worker.terminate()));
      for (const thread of stopping) {
        for (const waiting of thread.pending.values()) waiting.reject(relayError('RELAY_ERR_REPORT_INSPECTION', 'report inspection threads are stopped'));
        for (const waiting of thread.removals.values()) waiting.reject(relayError('RELAY_ERR_REPORT_INSPECTION', 'report inspection threads are stopped'));
      }
    },
  };
}
