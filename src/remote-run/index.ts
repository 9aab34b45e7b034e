// Face of the remote-run module: relayd's remote-run API (spec-relayd.md §4.6) — parameters,
// validation and answers as relayd's — with local runs through a pluggable runner (native CFEngine
// EXEC, or the old `rudder remote run` command) and forwarding to sub-relays, concurrently.

import type { Logger } from 'pino';
import type { NodeEntry, NodesRegistry } from '../nodes/index.js';

export interface RunRequest {
  /** validated CFEngine class names */
  readonly conditions: readonly string[];
  readonly keepOutput: boolean;
  readonly asynchronous: boolean;
}

/** runs the agent of nodes directly under this relay; output is raw bytes as the node sends them */
export interface NodeRunner {
  run(nodes: readonly NodeEntry[], conditions: readonly string[], output: (chunk: Buffer) => void, signal: AbortSignal): Promise<{ failed: number }>;
}

export interface SubRelayCaller {
  /**
   * POST https://<relay>:<https_port>/rudder/relay-api/remote-run/<target> with the form fields;
   * resolves with the response body stream (2xx), rejects otherwise
   */
  call(relay: NodeEntry, target: 'all' | 'nodes', form: Record<string, string>, path: readonly string[], signal: AbortSignal): Promise<AsyncIterable<Buffer>>;
}

export interface RemoteRunCounters {
  run(result: 'ok' | 'error', seconds: number): void;
}

export interface RemoteRunOptions {
  readonly enabled: boolean;
  /** nodes run at once (local runs) */
  readonly maxParallel: number;
  /** whole request */
  readonly timeoutMs: number;
}

export interface RemoteRunDeps {
  readonly nodes: NodesRegistry;
  readonly runner: NodeRunner;
  readonly subRelays: SubRelayCaller;
  readonly counters: RemoteRunCounters;
  /** every error, for the status page of the primary (runs also happen in front-door workers) */
  readonly onError?: (message: string) => void;
  readonly log: Logger;
}

export interface RemoteRunStatus {
  readonly runs: number;
  readonly lastErrors: ReadonlyArray<{ readonly at: string; readonly message: string }>;
}

export { RELAY_PATH_HEADER, createRemoteRun, validateConditions } from './remote-run.js';
export type { RemoteRun } from './remote-run.js';
export { createCommandRunner } from './command-runner.js';
export { createNativeRunner } from './native-runner.js';
