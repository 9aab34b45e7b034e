// A load process (forked by upload-load.ts): keeps `concurrency` agent uploads in flight, each on
// its own connection, and counts those that complete inside the measuring window.

import { runlogFileName, upload, uploadingAgent, type UploadingAgent } from './upload-client.js';
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
    void measure(plan).then(
      () => process.disconnect(),
      (error: unknown) => {
        console.error(error);
        process.exit(1);
      },
    );
  }
});

async function measure(plan: WorkerPlan): Promise<void> {
  const body = Buffer.from(plan.body.buffer, plan.body.byteOffset, plan.body.byteLength);
  const nextSecond = agents.map(() => plan.firstSecond);
  let nextAgent = 0;
  const started = performance.now();
  const windowStart = started + plan.warmupMs;
  const windowEnd = windowStart + plan.durationMs;
  const latenciesMs: number[] = [];
  const failures: Record<string, number> = {};
  let uploads = 0;

  const lane = async (): Promise<void> => {
    while (performance.now() < windowEnd) {
      const agentIndex = nextAgent;
      nextAgent = (nextAgent + 1) % agents.length;
      const agent = agents[agentIndex]!;
      const second = nextSecond[agentIndex]!;
      nextSecond[agentIndex] = second + 1;
      const outcome = await upload({
        port: plan.port,
        agent,
        fileName: runlogFileName(second, agent.nodeId),
        body,
        authorization: plan.authorization,
      });
      const ended = performance.now();
      if (ended < windowStart || ended > windowEnd) continue;
      if (outcome.status !== undefined && outcome.status >= 200 && outcome.status < 300) {
        uploads++;
        latenciesMs.push(outcome.latencyMs);
      } else {
        const what = outcome.status !== undefined ? `HTTP ${outcome.status}` : (outcome.error ?? 'unknown error');
        failures[what] = (failures[what] ?? 0) + 1;
      }
    }
  };
  await Promise.all(Array.from({ length: plan.concurrency }, lane));
  send({ type: 'result', uploads, latenciesMs, failures });
}
