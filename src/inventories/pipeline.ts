// The inventories pipeline, as relayd's processing/inventory.rs: the two inventory spool directories
// (new inventories, updates) watched and scanned at catch-up, each inventory forwarded upstream with
// its signature, incoming/ and failed/ cleaned after their retention.

import type { Logger } from 'pino';
import type { QueueTiming } from '../config/index.js';
import { createQueue, type Queue, type QueueEvents, type QueueStopOptions } from '../spool/index.js';
import type { Upstream, UpstreamCredentials, UpstreamEndpoint } from '../upstream/index.js';
import { createInventoryHandler, type InventoryCounters } from './queue-handler.js';

export type InventoryQueue = Extract<UpstreamEndpoint, 'inventories' | 'inventory-updates'>;

export interface InventoriesPipelineOptions {
  /** processing.inventory: the spool's timing and how long an inventory waits for its signature */
  readonly inventory: QueueTiming & { readonly signatureWaitMs: number };
  /** each queue's spool directories: incoming/ watched, failed/ keeps the evidence */
  readonly directories: Readonly<Record<InventoryQueue, { readonly incoming: string; readonly failed: string }>>;
  /** files in hand at once, per queue */
  readonly concurrency: number;
}

export interface InventoriesPipeline {
  /** the spool queues: their disk budgets (admission of uploads) and their figures */
  readonly queues: ReadonlyMap<InventoryQueue, Queue>;
  start(): Promise<void>;
  /** files in flight get graceMs to finish, then are interrupted (they stay in the spool) */
  stop(options?: QueueStopOptions): Promise<void>;
}

export const INVENTORY_QUEUES: readonly InventoryQueue[] = ['inventories', 'inventory-updates'];

export function createInventoriesPipeline(
  options: InventoriesPipelineOptions,
  deps: {
    /** undefined: processing.inventory.output is not "upstream", files stay where they are */
    readonly upstream: Upstream | undefined;
    readonly counters: InventoryCounters;
    /** other credentials for some files (the relay's own inventory updates), else output.upstream's */
    readonly credentialsOf?: (queue: InventoryQueue, name: string) => UpstreamCredentials | undefined;
    readonly eventsOf: (queue: InventoryQueue) => QueueEvents;
    readonly log: Logger;
  },
): InventoriesPipeline {
  const { inventory } = options;
  const queues = new Map<InventoryQueue, Queue>();
  for (const queue of INVENTORY_QUEUES) {
    const directories = options.directories[queue];
    queues.set(
      queue,
      createQueue(
        {
          name: queue,
          directory: directories.incoming,
          failedDirectory: directories.failed,
          catchupFrequencyMs: inventory.catchup.frequencyMs,
          catchupLimit: inventory.catchup.limit,
          cleanupFrequencyMs: inventory.cleanup.frequencyMs,
          retentionMs: inventory.cleanup.retentionMs,
          failedRetentionMs: inventory.cleanup.failedRetentionMs,
          concurrency: options.concurrency,
          maxBytes: inventory.maxSpoolSize,
        },
        createInventoryHandler(
          { endpoint: queue, directory: directories.incoming, signatureWaitMs: inventory.signatureWaitMs },
          {
            upstream: deps.upstream,
            counters: deps.counters,
            credentialsOf: (name) => deps.credentialsOf?.(queue, name),
          },
          deps.log,
        ),
        deps.eventsOf(queue),
        deps.log,
      ),
    );
  }
  return {
    queues,
    async start() {
      for (const queue of queues.values()) await queue.start();
    },
    async stop(stopOptions = {}) {
      await Promise.all([...queues.values()].map((queue) => queue.stop(stopOptions)));
    },
  };
}
