// The handler of the two inventory queues. An inventory and its
// .sign travel together (spec-relayd.md §6; Rudder's webapp waits a bounded time for the pair):
// the inventory is forwarded first, then its signature; a lone file waits `signatureWaitMs` for
// its partner, then goes alone.

import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { QueueFile, QueueHandler, QueueOutcome } from '../spool/index.js';
import type { Upstream, UpstreamCredentials, UpstreamEndpoint } from '../upstream/index.js';

export interface InventoryCounters {
  /** rudder_relayd_inventories_total{status} */
  count(status: 'forward_ok' | 'forward_error'): void;
}

export interface InventoryHandlerOptions {
  readonly endpoint: Extract<UpstreamEndpoint, 'inventories' | 'inventory-updates'>;
  readonly directory: string;
  readonly signatureWaitMs: number;
}

const INVENTORY_EXTENSIONS = /\.(gz|xml|ocs|sign)$/;

/** `X.ocs.gz` and `X.ocs` pair with `X.ocs.sign` */
export function signatureOf(inventory: string): string {
  return `${inventory.replace(/\.gz$/, '')}.sign`;
}

export function inventoriesOf(signature: string): string[] {
  const base = signature.replace(/\.sign$/, '');
  return [base, `${base}.gz`];
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

export function createInventoryHandler(
  options: InventoryHandlerOptions,
  deps: {
    upstream: Upstream | undefined;
    counters: InventoryCounters;
    /** other credentials for some files (the relay's own inventory updates), else output.upstream's */
    credentialsOf?: (name: string) => UpstreamCredentials | undefined;
  },
  parentLog: Logger,
): QueueHandler {
  const log = parentLog.child({ module: 'inventories', endpoint: options.endpoint });
  const waitLeft = (file: QueueFile) => options.signatureWaitMs - (Date.now() - file.mtimeMs);

  async function send(file: QueueFile, signal: AbortSignal): Promise<QueueOutcome | undefined> {
    const result = await deps.upstream!.forward(options.endpoint, file.name, file, { signal, credentials: deps.credentialsOf?.(file.name) });
    if (result.kind === 'ok') {
      deps.counters.count('forward_ok');
      log.debug({ event: 'forwarded', file: file.name, ms: result.ms }, 'inventory file forwarded');
      return undefined;
    }
    // every failed forward, transient ones included (see reports/queue-handler.ts)
    deps.counters.count('forward_error');
    if (result.kind === 'transient') return { kind: 'retry', reason: result.reason };
    return { kind: 'failed', code: 'upstream-refused', reason: `upstream answered ${result.status}: ${result.reason}` };
  }

  return async (file, context) => {
    if (deps.upstream === undefined) return { kind: 'ignore' };
    if (!INVENTORY_EXTENSIONS.test(file.name)) return { kind: 'ignore' };
    if (file.name.endsWith('.sign')) {
      const partners = inventoriesOf(file.name);
      for (const partner of partners) {
        // the inventory's handler takes this signature with it
        if (await exists(join(options.directory, partner))) return { kind: 'defer', delayMs: Math.max(options.signatureWaitMs, 1_000) };
      }
      if (waitLeft(file) > 0) return { kind: 'defer', delayMs: waitLeft(file) };
      log.warn({ event: 'lone_signature', file: file.name }, 'signature without inventory: forwarding it alone');
      return (await send(file, context.signal)) ?? { kind: 'done' };
    }
    const signature = context.claim(signatureOf(file.name));
    if (signature === undefined && waitLeft(file) > 0) return { kind: 'defer', delayMs: waitLeft(file) };
    if (signature === undefined && !file.name.endsWith('.sign')) {
      log.warn({ event: 'unsigned_inventory', file: file.name }, 'no signature arrived in time: forwarding the inventory alone');
    }
    const inventoryOutcome = await send(file, context.signal);
    if (inventoryOutcome !== undefined) return inventoryOutcome;
    if (signature === undefined) return { kind: 'done' };
    const signatureOutcome = await send(signature, context.signal);
    // the inventory went through: it is done even if its signature must be retried alone
    return signatureOutcome === undefined ? { kind: 'done', also: [signature.name] } : { kind: 'done' };
  };
}
