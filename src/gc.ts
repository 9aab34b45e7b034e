// One full garbage collection, for the few places that just made tens of MB of garbage once (a nodes load,
// the CFEngine warm-up at start) in a process that may then stay idle for hours: V8 runs its next full
// collection only when the heap grows again, so an idle relay otherwise keeps that garbage committed
// (bench/footprint). ~20 ms each time; never on a request path.

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
    fullCollection();
  } catch {
    // an optimisation only: a runtime without it keeps the garbage until V8 collects it
  }
}
