// The old way, kept as a fallback (remote_run.mode = "command"): relayd's
// `[sudo] <command> remote run [-D c1,c2] -- host1,host2` (spec-relayd.md §4.6 "Local execution").

import { spawn } from 'node:child_process';
import type { Logger } from 'pino';
import type { NodeEntry } from '../nodes/index.js';
import { relayError } from '../errors.js';
import type { NodeRunner } from './index.js';

/**
 * why a hostname cannot go on the command line, undefined when it can: hosts are joined with ',' (a ',' in
 * one would make it several hosts), and one starting with '-' would be read as an option
 */
function hostnameProblem(hostname: string): string | undefined {
  if (hostname === '') return 'is empty';
  if (hostname.includes(',')) return "contains ',' (it would split into several hosts on the command line)";
  if (hostname.startsWith('-')) return "starts with '-' (it would be read as an option)";
  if (/[\s\x00-\x1f\x7f]/.test(hostname)) return 'contains a space or a control character';
  return undefined;
}

export function createCommandRunner(options: { command: string; useSudo: boolean; log: Logger }): NodeRunner {
  const log = options.log.child({ module: 'remote-run' });
  return {
    run(allNodes, conditions, output, signal) {
      const nodes: NodeEntry[] = [];
      let refused = 0;
      for (const node of allNodes) {
        const problem = hostnameProblem(node.hostname);
        if (problem === undefined) {
          nodes.push(node);
          continue;
        }
        refused += 1;
        log.error({ event: 'refused', code: 'RELAY_ERR_BAD_REQUEST', node: node.id, hostname: node.hostname }, `remote run: hostname of node ${node.id} ${problem}: not run`);
        output(Buffer.from(`${node.id}> !! not run: its hostname ${JSON.stringify(node.hostname)} in the nodes list ${problem}\n`));
      }
      if (nodes.length === 0) return Promise.resolve({ failed: refused });
      const args = ['remote', 'run', ...(conditions.length > 0 ? ['-D', conditions.join(',')] : []), '--', nodes.map((n) => n.hostname).join(',')];
      const [file, argv] = options.useSudo ? ['sudo', [options.command, ...args]] : [options.command, args];
      return new Promise((resolve, reject) => {
        const child = spawn(file, argv, { stdio: ['ignore', 'pipe', 'inherit'], signal });
        child.stdout.on('data', (chunk: Buffer) => output(chunk));
        child.on('error', (error) => reject(relayError('RELAY_ERR_REMOTE_RUN_COMMAND', file, error.message, { cause: error })));
        child.on('close', (code) => resolve({ failed: refused + (code === 0 ? 0 : nodes.length) }));
      });
    },
  };
}
