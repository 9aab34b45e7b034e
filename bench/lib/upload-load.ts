// Upload load: a fixed number of agents in flight, spread over a few load processes (each its own
// event loop and core share), a warm-up, then a fixed measuring window. Completions inside the
// window are counted; 2xx are uploads, anything else is reported as a failure.
// The same load can be downloads instead (`downloads`): fresh TLS connections with client certificates,
// GETs whose expected status (200 with the whole body, or 304) counts as success; then "uploads" in the
// result means successful requests.

import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { cpuTimeOfTreesMs, machineBusyCpuTimeMs } from './processes.js';
import type { AgentKeys } from './upload-client.js';

export interface LoadPlan {
  readonly port: number;
  readonly agents: readonly AgentKeys[];
  readonly authorization: string;
  /** the upload body of every agent, unless `bodies` gives each its own */
  readonly body?: Buffer;
  /** per agent (same order as `agents`): its own upload body, e.g. a run log signed with its key */
  readonly bodies?: readonly Buffer[];
  /** per agent (same order as `agents`): GET this instead of uploading */
  readonly downloads?: readonly DownloadTask[];
  readonly processes: number;
  /** uploads with the lighter raw-socket client (`lightUpload`) instead of node:https */
  readonly lightClient?: boolean;
  /** uploads in flight overall, split evenly between the processes */
  readonly concurrency: number;
  readonly warmupMs: number;
  readonly durationMs: number;
  /** runlog timestamps start here and advance by one second per upload of each agent: names never repeat */
  readonly firstSecond: number;
  /** process trees whose CPU use is reported (the server measured) */
  readonly serverPids: readonly number[];
  /** called at the start and the end of the measuring window, e.g. to read other counters at the same instants */
  readonly onWindowEdge?: (edge: 'start' | 'end') => void;
}

/** a GET an agent repeats: success is `expectedStatus`, and for 200 exactly `expectedBytes` of body */
export interface DownloadTask {
  readonly path: string;
  readonly ifNoneMatch?: string;
  readonly expectedStatus: number;
  readonly expectedBytes?: number;
}

export interface LoadResult {
  readonly uploads: number;
  /** successful requests overall, warm-up and the requests finishing after the window included */
  readonly allUploads: number;
  readonly uploadsPerSecond: number;
  readonly latenciesMs: readonly number[];
  /** non-2xx answers by status, and transport errors by message */
  readonly failures: Readonly<Record<string, number>>;
  /** CPU used during the window, in % of one core (200 = both cores of this machine) */
  readonly serverCpuPercent: number;
  readonly loadCpuPercent: number;
  /** everything else busy on the machine meanwhile (other processes, kernel): noise when high */
  readonly otherCpuPercent: number;
}

// ---- messages between the bench and a load process ----
export interface WorkerPlan {
  readonly type: 'plan';
  readonly port: number;
  readonly agents: readonly AgentKeys[];
  readonly authorization: string;
  /** per agent: its upload body */
  readonly bodies: readonly Uint8Array[];
  /** per agent, when downloading */
  readonly downloads: readonly DownloadTask[] | undefined;
  readonly concurrency: number;
  readonly warmupMs: number;
  readonly durationMs: number;
  readonly firstSecond: number;
  readonly lightClient: boolean;
}
export interface WorkerStart {
  readonly type: 'start';
}
export interface WorkerReady {
  readonly type: 'ready';
}
export interface WorkerResult {
  readonly type: 'result';
  readonly uploads: number;
  readonly allUploads: number;
  readonly latenciesMs: readonly number[];
  readonly failures: Readonly<Record<string, number>>;
}
export type WorkerMessage = WorkerReady | WorkerResult;

const workerScript = fileURLToPath(new URL('./upload-load-worker.ts', import.meta.url));

export async function runUploadLoad(plan: LoadPlan): Promise<LoadResult> {
  const bodyOf = (index: number): Buffer => plan.bodies?.[index] ?? plan.body ?? Buffer.alloc(0);
  if (plan.downloads === undefined && plan.bodies === undefined && plan.body === undefined) throw new Error('upload load without a body');
  // inherits process.execArgv, i.e. the tsx loader the bench itself runs under
  const workers = Array.from({ length: plan.processes }, () =>
    fork(workerScript, [], { serialization: 'advanced', stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }),
  );
  try {
    const readiness = workers.map((worker) => nextMessage(worker, 'ready'));
    workers.forEach((worker, index) => {
      const mine = (_: unknown, agentIndex: number): boolean => agentIndex % plan.processes === index;
      const agents = plan.agents.filter(mine);
      const concurrency = Math.floor(plan.concurrency / plan.processes) + (index < plan.concurrency % plan.processes ? 1 : 0);
      const message: WorkerPlan = {
        type: 'plan',
        port: plan.port,
        agents,
        authorization: plan.authorization,
        bodies: plan.agents.map((_, agentIndex) => bodyOf(agentIndex)).filter(mine),
        downloads: plan.downloads?.filter(mine),
        concurrency,
        warmupMs: plan.warmupMs,
        durationMs: plan.durationMs,
        firstSecond: plan.firstSecond,
        lightClient: plan.lightClient ?? false,
      };
      worker.send(message);
    });
    await Promise.all(readiness);

    const results = workers.map((worker) => nextMessage(worker, 'result'));
    const start: WorkerStart = { type: 'start' };
    for (const worker of workers) worker.send(start);
    const loadPids = workers.map((worker) => worker.pid ?? -1);
    // CPU readings at the edges of the window, which every load process times the same way
    const cpuAtStart = await after(plan.warmupMs, () => {
      plan.onWindowEdge?.('start');
      return cpuReading(plan.serverPids, loadPids);
    });
    const cpuAtEnd = await after(plan.durationMs, () => {
      plan.onWindowEdge?.('end');
      return cpuReading(plan.serverPids, loadPids);
    });
    const finished = (await Promise.all(results)) as WorkerResult[];

    const latenciesMs = finished.flatMap((result) => result.latenciesMs);
    const failures: Record<string, number> = {};
    for (const result of finished) {
      for (const [what, count] of Object.entries(result.failures)) failures[what] = (failures[what] ?? 0) + count;
    }
    const uploads = finished.reduce((sum, result) => sum + result.uploads, 0);
    const allUploads = finished.reduce((sum, result) => sum + result.allUploads, 0);
    const windowMs = cpuAtEnd.at - cpuAtStart.at;
    return {
      uploads,
      allUploads,
      uploadsPerSecond: uploads / (plan.durationMs / 1000),
      latenciesMs,
      failures,
      serverCpuPercent: (100 * (cpuAtEnd.serverMs - cpuAtStart.serverMs)) / windowMs,
      loadCpuPercent: (100 * (cpuAtEnd.loadMs - cpuAtStart.loadMs)) / windowMs,
      otherCpuPercent:
        (100 *
          (cpuAtEnd.machineMs - cpuAtStart.machineMs -
            (cpuAtEnd.serverMs - cpuAtStart.serverMs) -
            (cpuAtEnd.loadMs - cpuAtStart.loadMs))) /
        windowMs,
    };
  } finally {
    for (const worker of workers) if (worker.exitCode === null) worker.kill();
  }
}

interface CpuReading {
  readonly at: number;
  readonly serverMs: number;
  readonly loadMs: number;
  readonly machineMs: number;
}

function cpuReading(serverPids: readonly number[], loadPids: readonly number[]): CpuReading {
  return {
    at: performance.now(),
    serverMs: cpuTimeOfTreesMs(serverPids),
    loadMs: cpuTimeOfTreesMs(loadPids),
    machineMs: machineBusyCpuTimeMs(),
  };
}

function after<T>(ms: number, what: () => T): Promise<T> {
  return new Promise((resolve) => setTimeout(() => resolve(what()), ms));
}

function nextMessage(worker: ChildProcess, type: WorkerMessage['type']): Promise<WorkerMessage> {
  return new Promise((resolve, reject) => {
    const onMessage = (message: WorkerMessage): void => {
      if (message.type !== type) return;
      cleanup();
      resolve(message);
    };
    const onExit = (code: number | null): void => {
      cleanup();
      reject(new Error(`load process exited (code ${String(code)}) before sending '${type}'`));
    };
    const cleanup = (): void => {
      worker.off('message', onMessage);
      worker.off('exit', onExit);
    };
    worker.on('message', onMessage);
    worker.once('exit', onExit);
  });
}
