// Upload admission on byte leases: two workers' holders and the primary's keepers on a real spool
// queue with a disk budget; the IPC between them is an asynchronous hop (setImmediate), as a pipe is.

import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pino } from 'pino';
import t from 'tap';
import { createLeaseHolder, createLeaseKeeper, type LeaseBudget, type LeaseGrant, type LeaseHolder, type LeaseKeeper, type LeaseRequest } from '../../src/http/index.js';
import { createQueue, type Queue } from '../../src/spool/index.js';
import { tempDir } from '../support/tmp.js';

const log = pino({ level: 'silent' });

async function budgetQueue(dir: string, maxBytes: number): Promise<Queue> {
  await mkdir(join(dir, 'incoming'), { recursive: true });
  // not started: nothing is forwarded or removed, so the files fill the budget
  return createQueue(
    {
      name: 'reports',
      directory: join(dir, 'incoming'),
      failedDirectory: join(dir, 'failed'),
      catchupFrequencyMs: 60_000,
      catchupLimit: 50,
      cleanupFrequencyMs: 60_000,
      retentionMs: 60_000,
      failedRetentionMs: 60_000,
      concurrency: 1,
      maxBytes,
      settleMs: 20,
    },
    async () => ({ kind: 'done' }),
    {},
    log,
  );
}

function budgetOf(queue: Queue): LeaseBudget {
  return {
    reserve: (_queue, bytes) => queue.reserve(bytes),
    settle: (_queue, reservation, bytes, names) => queue.settle(reservation, bytes, names),
    release: (_queue, reservation) => queue.release(reservation),
  };
}

/** a worker: its holder, wired to its own keeper in the "primary" through asynchronous hops */
function worker(budget: LeaseBudget, counts: { requests: number; grants: number }, chunkBytes: number): { holder: LeaseHolder; keeper: LeaseKeeper } {
  const keeper = createLeaseKeeper(budget);
  const holder: LeaseHolder = createLeaseHolder({
    send: (message: LeaseRequest) => {
      if (message.type === 'admit') counts.requests += 1;
      setImmediate(() => {
        const grant = keeper.handle(message);
        if (grant?.reservation != null) counts.grants += 1;
        if (grant !== undefined) setImmediate(() => holder.granted(grant satisfies LeaseGrant));
      });
      return true;
    },
    isFull: () => false,
    timeoutMs: 5_000,
    chunkBytes,
  });
  return { holder, keeper };
}

const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

t.test('two workers on leases never admit past the budget, and round trips are rare', async (t) => {
  const dir = tempDir(t);
  const budget = 400_000;
  const queue = await budgetQueue(dir, budget);
  const counts = { requests: 0, grants: 0 };
  const workers = [worker(budgetOf(queue), counts, 50_000), worker(budgetOf(queue), counts, 50_000)];
  let onDisk = 0;
  let inFlight = 0;
  let worst = 0;
  let admitted = 0;
  let refused = 0;
  let next = 0;
  const upload = async (index: number): Promise<void> => {
    const { holder } = workers[index % 2]!;
    const size = 1_000 + ((index * 7919) % 9_000);
    const admission = await holder.admit('reports', size);
    if (!admission.admitted) {
      refused += 1;
      admission.release();
      return;
    }
    admitted += 1;
    inFlight += size;
    worst = Math.max(worst, onDisk + inFlight);
    await pause(index % 3);
    if (index % 5 === 4) {
      // the upload broke off: nothing stored
      inFlight -= size;
      admission.release();
      return;
    }
    const name = `2026-12-06T10:00:${String(index).padStart(4, '0')}@node.log.gz`;
    await writeFile(join(dir, 'incoming', name), Buffer.alloc(size));
    onDisk += size;
    inFlight -= size;
    admission.release(name);
  };
  // 16 agents at a time until 200 uploads were tried
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      for (let index = next++; index < 200; index = next++) await upload(index);
    }),
  );
  t.ok(worst <= budget, `at most ${worst} bytes admitted or stored at once, budget ${budget}`);
  t.ok(admitted > 40 && refused > 0, `${admitted} admitted, ${refused} refused once the budget was full`);
  // far from the edge a lease serves several uploads; near it, each upload gets a lease of its own size
  t.ok(counts.grants < admitted / 2, `${counts.grants} leases granted (${counts.requests} asked) for ${admitted} admissions`);

  // once quiet, every unused lease byte goes back: the rest of the budget is there to reserve
  await pause(1_300);
  const rest = queue.reserve(budget - onDisk);
  t.not(rest, undefined, `the ${budget - onDisk} bytes not on disk can be reserved again`);
  t.equal(queue.reserve(1), undefined, 'and not a byte more');
  await queue.stop();
});

t.test('a worker that dies gives its leases back; a lease answered too late is given back whole', async (t) => {
  const dir = tempDir(t);
  const budget = 100_000;
  const queue = await budgetQueue(dir, budget);
  const counts = { requests: 0, grants: 0 };
  const { holder, keeper } = worker(budgetOf(queue), counts, 60_000);
  const admission = await holder.admit('reports', 5_000);
  t.ok(admission.admitted);
  t.equal(queue.reserve(50_000), undefined, 'the lease holds 60,000 of the 100,000 bytes');
  keeper.workerGone();
  await pause(10);
  const again = queue.reserve(100_000);
  t.not(again, undefined, 'all of it back when the worker is gone');
  await queue.release(again!);

  // a primary that answers after the timeout: the upload goes on (not refused), the late lease goes back
  const sent: LeaseRequest[] = [];
  const lateKeeper = createLeaseKeeper(budgetOf(queue));
  const slow: LeaseHolder = createLeaseHolder({
    send: (message) => {
      sent.push(message);
      const grant = lateKeeper.handle(message);
      if (grant !== undefined) setTimeout(() => slow.granted(grant), 100);
      return true;
    },
    isFull: () => false,
    timeoutMs: 20,
    chunkBytes: 60_000,
  });
  const late = await slow.admit('reports', 5_000);
  t.ok(late.admitted, 'admitted on the last full/not-full word');
  await pause(150);
  t.match(sent.at(-1), { type: 'admit-end', bytes: 60_000, names: [] }, 'the late lease given back whole');
  t.not(queue.reserve(100_000), undefined, 'nothing left reserved');
  await queue.stop();
});
