// The reports pipeline, as relayd's processing/reporting.rs: the reports spool directory watched (and
// scanned at catch-up), each run log inspected (decode, S/MIME at the first hop, parse) on threads,
// forwarded upstream unchanged, and incoming/ and failed/ cleaned after their retention.

import type { X509Certificate } from 'node:crypto';
import type { Logger } from 'pino';
import type { QueueTiming } from '../config/index.js';
import type { NodesRegistry } from '../nodes/index.js';
import { createQueue, type Queue, type QueueEvents, type QueueStopOptions } from '../spool/index.js';
import type { Upstream } from '../upstream/index.js';
import type { VerifyMode } from './index.js';
import { createThreadedFileInspector } from './inspect-pool.js';
import { createReportHandler, type ReportCounters } from './queue-handler.js';

export interface ReportsPipelineOptions {
  /** this relay's node id */
  readonly myId: string;
  /** this relay's certificate, to verify its own run logs (src/agentless) */
  readonly ownCertificate?: X509Certificate;
  /** processing.reporting: the spool's timing and the inspection's settings */
  readonly reporting: QueueTiming & {
    readonly skipEventTypes: readonly string[];
    readonly verifySignature: VerifyMode;
    readonly maxDecodedSize: number;
  };
  /** the reports spool: incoming/ watched, failed/ keeps the evidence */
  readonly directory: string;
  readonly failedDirectory: string;
  /** a run log larger than an upload may be (https.max_upload_size) is failed unread */
  readonly maxFileBytes: number;
  /** files in hand at once */
  readonly concurrency: number;
  readonly inspectionThreads: number;
}

export interface ReportsPipeline {
  /** the spool queue: its disk budget (admission of uploads) and its figures */
  readonly queue: Queue;
  start(): Promise<void>;
  /** files in flight get graceMs to finish, then are interrupted (they stay in the spool) */
  stop(options?: QueueStopOptions): Promise<void>;
}

export function createReportsPipeline(
  options: ReportsPipelineOptions,
  deps: {
    /** undefined: processing.reporting.output is not "upstream", files stay where they are */
    readonly upstream: Upstream | undefined;
    readonly nodes: NodesRegistry;
    readonly counters: ReportCounters;
    readonly events: QueueEvents;
    readonly log: Logger;
  },
): ReportsPipeline {
  const { reporting } = options;
  // decode + S/MIME + run log parse on threads, one per core beside the event loop's: the event loop keeps the queue and the
  // upstream requests, which were the other half of a report's cost (bench/pipeline)
  const inspector = createThreadedFileInspector(
    {
      myId: options.myId,
      ...(options.ownCertificate ? { ownCertificate: options.ownCertificate } : {}),
      verifyMode: reporting.verifySignature,
      skipEventTypes: reporting.skipEventTypes,
      maxDecodedBytes: reporting.maxDecodedSize,
    },
    deps.nodes,
    options.inspectionThreads,
    deps.log,
  );
  const queue = createQueue(
    {
      name: 'reports',
      directory: options.directory,
      failedDirectory: options.failedDirectory,
      catchupFrequencyMs: reporting.catchup.frequencyMs,
      catchupLimit: reporting.catchup.limit,
      cleanupFrequencyMs: reporting.cleanup.frequencyMs,
      retentionMs: reporting.cleanup.retentionMs,
      failedRetentionMs: reporting.cleanup.failedRetentionMs,
      concurrency: options.concurrency,
      maxBytes: reporting.maxSpoolSize,
      // a forwarded file is removed by the inspection thread, beside its read: no thread-pool hand-offs
      // (stat, unlink) in the primary per report (bench/pipeline)
      remove: inspector.removeFile,
    },
    createReportHandler({ inspector, upstream: deps.upstream, counters: deps.counters, maxFileBytes: options.maxFileBytes }, deps.log),
    deps.events,
    deps.log,
  );

  let unsubscribeNodes: (() => void) | undefined;
  return {
    queue,
    async start() {
      if (deps.upstream !== undefined) await inspector.start();
      await queue.start();
      // reports held for a node the list did not name: look again whenever the list changes (issue 15)
      unsubscribeNodes ??= deps.nodes.onChange(() => queue.releaseHeld());
    },
    async stop(stopOptions = {}) {
      unsubscribeNodes?.();
      unsubscribeNodes = undefined;
      await queue.stop(stopOptions);
      await inspector.stop();
    },
  };
}
