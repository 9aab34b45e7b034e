// Part of the composition root: the stop sequence. Every step has a bound and two log lines (begin,
// end or overrun), so a stop always ends and the log says which step took the time (issue 16:
// an upstream that never answered once held the primary for 546 s after SIGTERM).

import type { Logger } from 'pino';
import { messageOf } from '../errors.js';

/** a stop function, optionally named and bounded (steps pushed without a name are numbered) */
export type Stopper = (() => Promise<void>) & { stepName?: string; boundMs?: number };

/** default bound of one stop step (closing a listener, a watcher, a pool) */
export const STOP_STEP_MS = 5_000;

export function stopStep(name: string, stop: () => Promise<void>, boundMs = STOP_STEP_MS): Stopper {
  const step: Stopper = () => stop();
  step.stepName = name;
  step.boundMs = boundMs;
  return step;
}

/**
 * Runs the steps in order, each at most its bound and never past `deadline` (epoch ms). A step that
 * overruns is left behind (its work is either done or safe to abandon: files stay in the spool).
 */
export async function runStopSteps(steps: readonly Stopper[], deadline: number, log: Logger): Promise<void> {
  let index = 0;
  for (const step of steps) {
    index += 1;
    const name = step.stepName ?? `step ${index}`;
    const boundMs = Math.max(0, Math.min(step.boundMs ?? STOP_STEP_MS, deadline - Date.now()));
    const startedAt = Date.now();
    log.info({ event: 'stop_step', step: name, bound_ms: boundMs }, `stopping: ${name}`);
    let timer: NodeJS.Timeout | undefined;
    const result = await Promise.race([
      step().then(
        () => 'done' as const,
        (error: unknown) => {
          log.warn({ event: 'stop_step_error', step: name, error: messageOf(error) }, `stopping ${name} failed`);
          return 'error' as const;
        },
      ),
      new Promise<'overrun'>((resolve) => (timer = setTimeout(() => resolve('overrun'), boundMs))),
    ]);
    clearTimeout(timer);
    const ms = Date.now() - startedAt;
    if (result === 'overrun') log.warn({ event: 'stop_step_overrun', step: name, ms }, `${name} did not stop within ${boundMs} ms: going on without it`);
    else log.info({ event: 'stop_step_done', step: name, ms }, `stopped: ${name}`);
  }
}
