// A load process (forked by upload-load.ts): keeps `concurrency` agent uploads (or downloads) in
// flight, each on its own connection, and counts those that complete inside the measuring window.

import { download } from './download-client.js';
import { lightUpload, runlogFileName, upload, uploadingAgent, type UploadingAgent } from './upload-client.js';
import type { WorkerMessage, WorkerPlan, WorkerStart } from './upload-load.js';

function send(message: WorkerMessage): void {
  process.send?.(message);
}

let plan: WorkerPlan | undefined;
let agents: UploadingAgent[] = [];

process.on('message', (message: WorkerPlan | WorkerStart) => {
  if (message.type === 'plan') {
    plan = message;
    agents = message.agents.map(uploadingAgent);
    send({ type: 'ready' });
  } else if (plan !== undefined) {
    // after the result, stay (idle) until the bench kills us: its CPU reading at the end of the window,
    // when its timer fires late on a busy machine, must still find this process
    void measure(plan).then(
      () => undefined,
      (error: unknown) => {
        console.error(error);
        process.exit(1);
      },
    );
  }
});

async function measure(plan: WorkerPlan): Promise<void> {
  const bodies = plan.bodies.map((body) => Buffer.from(body.buffer, body.byteOffset, body.byteLength));
  const nextSecond = agents.map(() => plan.firstSecond);
  let nextAgent = 0;
  const started = performance.now();
  const windowStart = started + plan.warmupMs;
  const windowEnd = windowStart + plan.durationMs;
  const latenciesMs: number[] = [];
  const failures: Record<string, number> = {};
  let uploads = 0;
  let allUploads = 0;

  const lane = async (): Promise<void> => {
    while (performance.now() < windowEnd) {
      const agentIndex = nextAgent;
      nextAgent = (nextAgent + 1) % agents.length;
      const agent = agents[agentIndex]!;
      const second = nextSecond[agentIndex]!;
      nextSecond[agentIndex] = second + 1;
      const task = plan.downloads?.[agentIndex];
      let status: number | undefined;
      let error: string | undefined;
      let latencyMs: number;
      if (task === undefined) {
        const outcome = await (plan.lightClient ? lightUpload : upload)({
          port: plan.port,
          agent,
          fileName: runlogFileName(second, agent.nodeId),
          body: bodies[agentIndex]!,
          authorization: plan.authorization,
        });
        ({ status, error, latencyMs } = outcome);
        if (status !== undefined && (status < 200 || status >= 300)) error = `HTTP ${status}`;
      } else {
        const outcome = await download({
          port: plan.port,
          agent,
          path: task.path,
          ...(task.ifNoneMatch === undefined ? {} : { ifNoneMatch: task.ifNoneMatch }),
        });
        ({ status, error, latencyMs } = outcome);
        if (status !== undefined && status !== task.expectedStatus) error = `HTTP ${status}`;
        else if (status === 200 && task.expectedBytes !== undefined && outcome.bytes !== task.expectedBytes) {
          error = `body of ${outcome.bytes} bytes, expected ${task.expectedBytes}`;
        }
      }
      const ok = status !== undefined && error === undefined;
      if (ok) allUploads++;
      const ended = performance.now();
      if (ended < windowStart || ended > windowEnd) continue;
      if (ok) {
        uploads++;
        latenciesMs.push(latencyMs);
      } else {
        const what = error ?? 'unknown error';
        failures[what] = (failures[what] ?? 0) + 1;
      }
    }
  };
  await Promise.all(Array.from({ length: plan.concurrency }, lane));
  send({ type: 'result', uploads, allUploads, latenciesMs, failures });
}
