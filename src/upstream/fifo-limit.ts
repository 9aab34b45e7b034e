// At most `limit` forwards in flight across every dispatcher (old ones draining after a reload included);
// the others wait in arrival order.

import { RelayError } from '../errors.js';

export interface FifoLimit {
  /** resolves with a release function once a slot is free */
  acquire(): Promise<() => void>;
  readonly inFlight: number;
  readonly waiting: number;
}

export function createFifoLimit(limit: number): FifoLimit {
  if (!Number.isInteger(limit) || limit < 1) throw new RelayError('RELAY_ERR_INTERNAL', `concurrency limit must be a positive integer, got ${limit}`);
  let inFlight = 0;
  const waiters: Array<() => void> = [];

  function grant(): () => void {
    inFlight += 1;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = waiters.shift();
      // hand the slot over directly so a newcomer cannot overtake the queue
      if (next !== undefined) next();
      else inFlight -= 1;
    };
  }

  return {
    acquire() {
      if (inFlight < limit && waiters.length === 0) return Promise.resolve(grant());
      return new Promise((resolve) => {
        waiters.push(() => {
          inFlight -= 1;
          resolve(grant());
        });
      });
    },
    get inFlight() {
      return inFlight;
    },
    get waiting() {
      return waiters.length;
    },
  };
}
