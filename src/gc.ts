// One full garbage collection, for the few places that just made tens of MB of garbage once (a nodes load,
// the CFEngine warm-up at start) in a process that may then stay idle for hours: V8 runs its next full
// collection only when the heap grows again, so an idle relay otherwise keeps that garbage committed
// (bench/footprint). ~20 ms each time; never on a request path.
// The collection compacts (--compact-on-every-full-gc, set around it only): a load leaves its survivors
// scattered among the pages of its garbage, which a plain full collection cannot give back; V8's memory
// reducer compacts them only 20-30 s later. At 10,000 nodes, 5 s after start: primary 90-91 -> 88 MB,
// worker 75-76 -> 71 MB (/proc/<pid>/smaps_rollup).

import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

let fullCollection: (() => void) | undefined;

/** The flag only exposes gc() to the new context asked for it, not to the relay's own code. */
export function collectGarbage(): void {
  try {
    if (fullCollection === undefined) {
      setFlagsFromString('--expose-gc');
      fullCollection = runInNewContext('gc') as () => void;
    }
    setFlagsFromString('--compact-on-every-full-gc');
    try {
      fullCollection();
    } finally {
      setFlagsFromString('--no-compact-on-every-full-gc');
    }
  } catch {
    // an optimisation only: a runtime without it keeps the garbage until V8 collects it
  }
}
