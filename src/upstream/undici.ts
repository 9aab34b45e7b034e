// undici is loaded on first use, not at start: the primary and the front-door workers run the same
// bundle, and a worker talks to a peer only for the rare shared file or remote run it passes on, so
// loading undici up front cost every worker ~40 ms of its ~0.25 s start (bench/pipeline).

export type Undici = typeof import('undici');

let loading: Promise<Undici> | undefined;

export function loadUndici(): Promise<Undici> {
  loading ??= import('undici');
  return loading;
}
