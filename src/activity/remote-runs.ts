// Remote runs in the node activity: the runner the remote-run module gets is wrapped, so that module
// knows nothing of the activity database.

import type { NodeRunner } from '../remote-run/index.js';
import type { ActivitySink } from './events.js';

/** each local run recorded in the node's activity (a run of several nodes only knows how many failed) */
export function recordingRunner(runner: NodeRunner, activity: ActivitySink | undefined): NodeRunner {
  if (activity === undefined) return runner;
  return {
    async run(nodes, conditions, output, signal) {
      const result = await runner.run(nodes, conditions, output, signal);
      const detail = result.failed === 0 ? 'ok' : nodes.length === 1 ? 'failed' : `${result.failed} of ${nodes.length} nodes failed`;
      for (const node of nodes) activity.record({ t: 'remote_run', at: Date.now(), node: node.id, ok: result.failed === 0, detail });
      return result;
    },
  };
}
