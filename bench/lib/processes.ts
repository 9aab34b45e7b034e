// Child processes for benches: the servers measured (nginx, onerelay) and their CPU use.
// Output goes to a log file, not a pipe, so the bench process never spends CPU relaying it.

import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Children still running; killed if the bench dies without stopping them, each with its whole process group
 * (each child leads its own): killing nginx's master alone left its workers running, holding the port.
 */
const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of running) {
    try {
      if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
    } catch {
      child.kill('SIGKILL');
    }
  }
});

export interface Server {
  readonly name: string;
  readonly process: ChildProcess;
  readonly logFile: string;
  /** resolves with the exit code (or signal) once the process has ended */
  readonly exited: Promise<string>;
  stop(): Promise<void>;
}

export interface StartOptions {
  readonly name: string;
  readonly command: string;
  readonly args: readonly string[];
  readonly cwd: string;
  readonly logFile: string;
  /** signal that asks the process to stop (SIGKILL after 10 s) */
  readonly stopSignal?: NodeJS.Signals;
}

export function startServer(options: StartOptions): Server {
  const log = openSync(options.logFile, 'a');
  const child = spawn(options.command, options.args, {
    cwd: options.cwd,
    stdio: ['ignore', log, log],
    // a process group of its own, so that the exit handler above can take the server's children with it
    detached: true,
  });
  closeSync(log);
  running.add(child);
  const exited = new Promise<string>((resolve) => {
    child.once('error', (error) => resolve(`spawn error: ${error.message}`));
    child.once('exit', (code, signal) => resolve(signal ?? `exit code ${String(code)}`));
  }).finally(() => running.delete(child));
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      if (!running.has(child)) return;
      child.kill(options.stopSignal ?? 'SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    })();
    return stopping;
  };
  return { name: options.name, process: child, logFile: options.logFile, exited, stop };
}

/**
 * Poll `isReady` until it answers true; fail early if the server exits, or after `timeoutMs`.
 * The error carries the tail of the server's log, which usually says why.
 */
export async function waitUntilReady(server: Server, isReady: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  let exit: string | undefined;
  void server.exited.then((how) => (exit = how));
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (exit !== undefined) throw new Error(`${server.name} exited (${exit}) before it was ready\n${logTail(server.logFile)}`);
    if (await isReady().catch(() => false)) return;
    await sleep(100);
  }
  throw new Error(`${server.name} not ready after ${timeoutMs} ms\n${logTail(server.logFile)}`);
}

export function logTail(file: string, lines = 15): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).map((line) => `  | ${line}`).join('\n');
  } catch {
    return '  | (no log)';
  }
}

// one port allocator for benches and test support alike: it never hands the same port out twice in a
// process (the kernel may), and benches mix both (bench/sync: latency proxies and test relays)
export { freePort } from '../../test/support/tmp.js';

export function acceptsConnections(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

const clockTicksPerSecond = 100; // USER_HZ, 100 on every Linux this runs on (getconf CLK_TCK)

/**
 * CPU time (user + system, ms) used so far by the processes `pids` and all their descendants
 * that are still alive (Linux /proc). Differences of two readings give the CPU used in between.
 */
export function cpuTimeOfTreesMs(pids: readonly number[]): number {
  const stats = new Map<number, { parent: number; ticks: number }>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // fields after "(comm)": state ppid ... utime(14) stime(15), numbered from pid = 1
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      stats.set(Number(entry), { parent: Number(fields[1]), ticks: Number(fields[11]) + Number(fields[12]) });
    } catch {
      // the process ended while we listed them
    }
  }
  const inTree = new Set(pids);
  let grew = true;
  while (grew) {
    grew = false;
    for (const [pid, stat] of stats) {
      if (!inTree.has(pid) && inTree.has(stat.parent)) {
        inTree.add(pid);
        grew = true;
      }
    }
  }
  let ticks = 0;
  for (const pid of inTree) ticks += stats.get(pid)?.ticks ?? 0;
  return (ticks * 1000) / clockTicksPerSecond;
}

/**
 * CPU time (user + system, ms) of this process's children that have ended and been waited for (Linux
 * /proc/self/stat cutime + cstime): the CPU of a short-lived client such as cf-agent, read before and after it.
 */
export function reapedChildrenCpuTimeMs(): number {
  const stat = readFileSync('/proc/self/stat', 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(fields[13]) + Number(fields[14])) * 1000) / clockTicksPerSecond;
}

/** CPU time (ms) all cores of the machine have spent busy since boot (Linux /proc/stat). */
export function machineBusyCpuTimeMs(): number {
  const fields = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal ...: everything but idle and iowait is busy
  const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = fields;
  return ((user + nice + system + irq + softirq + steal) * 1000) / clockTicksPerSecond;
}

/**
 * Wait until the machine is quiet (under `maxBusyPercent` of one core busy over a 1 s sample), for at
 * most `budgetMs`. Returns the time waited; benches sharing a machine with other work call it between runs.
 */
export async function waitForQuietMachine(maxBusyPercent: number, budgetMs: number): Promise<number> {
  const started = performance.now();
  for (;;) {
    const before = machineBusyCpuTimeMs();
    await sleep(1000);
    const busyPercent = (machineBusyCpuTimeMs() - before) / 10;
    const waited = performance.now() - started;
    if (busyPercent <= maxBusyPercent || waited >= budgetMs) return waited;
  }
}
