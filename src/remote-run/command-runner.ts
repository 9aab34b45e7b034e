// The old way, kept as a fallback (remote_run.mode = "command"): relayd's
// `[sudo] <command> remote run [-D c1,c2] -- host1,host2` (spec-relayd.md §4.6 "Local execution").

import { spawn } from 'node:child_process';
import { relayError } from '../errors.js';
import type { NodeRunner } from './index.js';

export function createCommandRunner(options: { command: string; useSudo: boolean }): NodeRunner {
  return {
    run(nodes, conditions, output, signal) {
      const args = ['remote', 'run', ...(conditions.length > 0 ? ['-D', conditions.join(',')] : []), '--', nodes.map((n) => n.hostname).join(',')];
      const [file, argv] = options.useSudo ? ['sudo', [options.command, ...args]] : [options.command, args];
      return new Promise((resolve, reject) => {
        const child = spawn(file, argv, { stdio: ['ignore', 'pipe', 'inherit'], signal });
        child.stdout.on('data', (chunk: Buffer) => output(chunk));
        child.on('error', (error) => reject(relayError('RELAY_ERR_REMOTE_RUN_COMMAND', file, error.message, { cause: error })));
        child.on('close', (code) => resolve({ failed: code === 0 ? 0 : nodes.length }));
      });
    },
  };
}
