// Upload admission against the spools' disk budget without a round trip to the primary per upload.
// The primary holds the budget (spool queues: tracked files + reservations <= max_spool_size). A worker
// holds byte *leases*: reservations of a chunk of the budget, granted by the primary. It admits an upload
// locally while a lease has room; asks for a new lease (one IPC round trip) when none has.
// A stored file's bytes leave the lease on both sides: the worker shrinks its lease when it reports the
// file, the primary tracks the file and then shrinks the reservation by as much. In between, the primary
// counts the bytes at least once (the lease, then the file too), the worker never more than its lease:
// the budget holds across workers at every instant. Unused lease bytes go back after a quiet second, and
// near the budget's edge a lease is only as large as the upload (the old per-upload reservation).

import type { UploadAdmission } from './front-door.js';

/** the spool queue names, repeated (this module is used in both processes; no spool import needed) */
export type LeaseQueue = 'reports' | 'inventories' | 'inventory-updates';

/** worker → primary */
export type LeaseRequest =
  /** a lease of `bytes`, or at least `min` (the upload at hand) when the budget has no more room */
  | { readonly type: 'admit'; readonly id: number; readonly queue: LeaseQueue; readonly bytes: number; readonly min: number }
  /** `bytes` leave the lease `reservation`: stored as `names` (tracked first), or unused */
  | { readonly type: 'admit-end'; readonly queue: LeaseQueue; readonly reservation: number; readonly bytes: number; readonly names: readonly string[] };
/** primary → worker: the lease granted (reservation null: over budget) */
export interface LeaseGrant {
  readonly type: 'admitted';
  readonly id: number;
  readonly queue: LeaseQueue;
  readonly reservation: number | null;
  readonly bytes: number;
}

/** what the primary's budget offers (pipelines → spool queues) */
export interface LeaseBudget {
  reserve(queue: LeaseQueue, bytes: number): number | undefined;
  /** `bytes` leave `reservation`, after the files `names` are tracked */
  settle(queue: LeaseQueue, reservation: number, bytes: number, names: readonly string[]): Promise<void>;
  release(queue: LeaseQueue, reservation: number): Promise<void>;
}

/** a lease is at most this large: 64 run logs of 15 KB between two round trips */
export const LEASE_CHUNK_BYTES = 1024 * 1024;
/** stored files are reported in batches at most this late (the lease counts them meanwhile) */
const REPORT_MS = 20;
/** a lease unused this long goes back to the primary */
const IDLE_RETURN_MS = 1_000;

/** The primary's side, one per worker: its leases, given back if the worker dies. */
export interface LeaseKeeper {
  /** answers a request (undefined: nothing to answer) */
  handle(message: LeaseRequest): LeaseGrant | undefined;
  /** the worker is gone: its leases go back (files it stored meanwhile are found by the queue's watch and scan) */
  workerGone(): void;
}

export function createLeaseKeeper(budget: LeaseBudget): LeaseKeeper {
  /** reservation → its queue and the bytes it still holds */
  const leases = new Map<number, { queue: LeaseQueue; size: number }>();
  return {
    handle(message) {
      if (message.type === 'admit') {
        let bytes = message.bytes;
        let reservation = budget.reserve(message.queue, bytes);
        if (reservation === undefined && message.min < bytes) {
          bytes = message.min;
          reservation = budget.reserve(message.queue, bytes);
        }
        if (reservation !== undefined) leases.set(reservation, { queue: message.queue, size: bytes });
        return { type: 'admitted', id: message.id, queue: message.queue, reservation: reservation ?? null, bytes };
      }
      const lease = leases.get(message.reservation);
      if (lease !== undefined) {
        lease.size -= message.bytes;
        if (lease.size <= 0) leases.delete(message.reservation);
        void budget.settle(message.queue, message.reservation, message.bytes, message.names);
      }
      return undefined;
    },
    workerGone() {
      for (const [reservation, { queue }] of leases) void budget.release(queue, reservation);
      leases.clear();
    },
  };
}

/** The worker's side. */
export interface LeaseHolder {
  admit(queue: LeaseQueue, bytes: number): Promise<UploadAdmission>;
  /** the primary's answer to a request */
  granted(message: LeaseGrant): void;
  /** reports what is pending and gives every lease back (the worker stops) */
  close(): void;
}

export interface LeaseHolderOptions {
  /** to the primary; false when the channel is closed */
  readonly send: (message: LeaseRequest) => boolean;
  /** the primary's last full/not-full word, used when it does not answer in time */
  readonly isFull: (queue: LeaseQueue) => boolean;
  readonly timeoutMs: number;
  readonly chunkBytes?: number;
}

interface Lease {
  readonly queue: LeaseQueue;
  readonly reservation: number;
  /** bytes of the budget this lease still holds */
  size: number;
  /** of which admitted uploads use this many */
  used: number;
  /** stored files not reported yet, and their bytes */
  names: string[];
  storedBytes: number;
  idleTimer: NodeJS.Timeout | undefined;
}

export function createLeaseHolder(options: LeaseHolderOptions): LeaseHolder {
  const chunk = options.chunkBytes ?? LEASE_CHUNK_BYTES;
  const leases = new Map<LeaseQueue, Lease[]>();
  const waiters = new Map<number, (message: LeaseGrant | undefined) => void>();
  let lastId = 0;
  let reportTimer: NodeJS.Timeout | undefined;
  const unreported = new Set<Lease>();
  /** a lease request in flight, per queue */
  const asking = new Map<LeaseQueue, Promise<void>>();

  const leasesOf = (queue: LeaseQueue): Lease[] => {
    let list = leases.get(queue);
    if (list === undefined) leases.set(queue, (list = []));
    return list;
  };

  /** `bytes` leave the lease on the worker's side now, on the primary's when the message arrives */
  const settle = (lease: Lease, bytes: number, names: string[]): void => {
    lease.size -= bytes;
    if (lease.size <= 0 && lease.used === 0) dropLocally(lease);
    options.send({ type: 'admit-end', queue: lease.queue, reservation: lease.reservation, bytes, names });
  };

  const report = (): void => {
    if (reportTimer !== undefined) clearTimeout(reportTimer);
    reportTimer = undefined;
    for (const lease of unreported) {
      const names = lease.names;
      const bytes = lease.storedBytes;
      lease.names = [];
      lease.storedBytes = 0;
      settle(lease, bytes, names);
    }
    unreported.clear();
  };

  const dropLocally = (lease: Lease): void => {
    if (lease.idleTimer !== undefined) clearTimeout(lease.idleTimer);
    const list = leasesOf(lease.queue);
    const index = list.indexOf(lease);
    if (index >= 0) list.splice(index, 1);
  };

  const whenIdle = (lease: Lease): void => {
    if (lease.idleTimer !== undefined) clearTimeout(lease.idleTimer);
    lease.idleTimer = setTimeout(() => {
      lease.idleTimer = undefined;
      if (lease.used > 0) return;
      if (lease.names.length > 0) report();
      // nothing in flight and nothing to report: the whole rest goes back
      dropLocally(lease);
      if (lease.size > 0) settle(lease, lease.size, []);
    }, IDLE_RETURN_MS).unref();
  };

  const admitOn = (lease: Lease, bytes: number): UploadAdmission => {
    lease.used += bytes;
    if (lease.idleTimer !== undefined) clearTimeout(lease.idleTimer);
    lease.idleTimer = undefined;
    let ended = false;
    return {
      admitted: true,
      release(name) {
        if (ended) return;
        ended = true;
        lease.used -= bytes;
        if (name !== undefined) {
          lease.names.push(name);
          lease.storedBytes += bytes;
          unreported.add(lease);
          reportTimer ??= setTimeout(report, REPORT_MS).unref();
        }
        if (lease.used === 0) whenIdle(lease);
      },
    };
  };

  const requestLease = (queue: LeaseQueue, bytes: number): Promise<LeaseGrant | undefined> =>
    new Promise((resolve) => {
      const id = (lastId += 1);
      const timer = setTimeout(() => {
        waiters.delete(id);
        resolve(undefined);
      }, options.timeoutMs);
      waiters.set(id, (message) => {
        clearTimeout(timer);
        waiters.delete(id);
        resolve(message);
      });
      if (!options.send({ type: 'admit', id, queue, bytes: Math.max(bytes, chunk), min: bytes })) {
        clearTimeout(timer);
        waiters.delete(id);
        resolve(undefined);
      }
    });

  const unreserved = (queue: LeaseQueue): UploadAdmission => ({ admitted: !options.isFull(queue), release: () => undefined });

  return {
    async admit(queue, bytes) {
      const roomFor = () => leasesOf(queue).find((lease) => lease.size - lease.used - lease.storedBytes >= bytes);
      let room = roomFor();
      // uploads arriving together while a lease is asked for wait for it rather than each asking
      const asked = asking.get(queue);
      if (room === undefined && asked !== undefined) {
        await asked;
        room = roomFor();
      }
      if (room !== undefined) return admitOn(room, bytes);
      const request = requestLease(queue, bytes);
      const settled = request.then(() => undefined);
      asking.set(queue, settled);
      const grant = await request;
      if (asking.get(queue) === settled) asking.delete(queue);
      // no answer in time (a primary too busy must not refuse uploads), or no channel: its last word decides
      if (grant === undefined) return unreserved(queue);
      if (grant.reservation === null) return { admitted: false, release: () => undefined };
      const lease: Lease = { queue, reservation: grant.reservation, size: grant.bytes, used: 0, names: [], storedBytes: 0, idleTimer: undefined };
      leasesOf(queue).push(lease);
      return admitOn(lease, bytes);
    },
    granted(message) {
      const waiter = waiters.get(message.id);
      if (waiter !== undefined) waiter(message);
      // answered after the timeout: the upload went on without it, the lease goes back whole
      else if (message.reservation !== null) {
        options.send({ type: 'admit-end', queue: message.queue, reservation: message.reservation, bytes: message.bytes, names: [] });
      }
    },
    close() {
      report();
      for (const list of leases.values()) {
        for (const lease of [...list]) {
          dropLocally(lease);
          if (lease.used === 0 && lease.size > 0) settle(lease, lease.size, []);
        }
      }
    },
  };
}
