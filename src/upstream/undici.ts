// undici is loaded on first use, not at start: the primary and the front-door workers run the same
// bundle, and a worker talks to a peer only for the rare shared file or remote run it passes on, so
// loading undici up front cost every worker ~40 ms of its ~0.25 s start (bench/pipeline).
//
// Only the parts the relay uses (Pool, buildConnector, the request API the peer client calls), not undici's
// index: that one also loads fetch, WebSocket, EventSource, the cache and the mock agents, which the bundle
// then carried (~0.6 MB of the 2.5 MB every process parses at start) and the primary evaluated at its first
// forward (bench/pipeline).

import type { Dispatcher as DispatcherType, Pool as PoolType, buildConnector as buildConnectorType } from 'undici';

export interface Undici {
  readonly Pool: typeof PoolType;
  readonly buildConnector: typeof buildConnectorType;
}

let loading: Promise<Undici> | undefined;

export function loadUndici(): Promise<Undici> {
  loading ??= Promise.all([
    import('undici/lib/dispatcher/dispatcher.js'),
    import('undici/lib/api/index.js'),
    import('undici/lib/dispatcher/pool.js'),
    import('undici/lib/core/connect.js'),
  ]).then(([dispatcher, api, pool, connect]) => {
    // what undici's index does: request(), stream()… are mixed into every dispatcher (the peer client's request)
    const Dispatcher = dispatcher.default as unknown as typeof DispatcherType;
    if (!Object.hasOwn(Dispatcher.prototype, 'request')) Object.assign(Dispatcher.prototype, api.default);
    return { Pool: pool.default as unknown as typeof PoolType, buildConnector: connect.default as unknown as typeof buildConnectorType };
  });
  return loading;
}
