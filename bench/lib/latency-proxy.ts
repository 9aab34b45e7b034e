// A high-latency link simulated in user space (the kernel here has no netem): bench/lib/latency-link.ts in a
// process of its own, a TCP proxy on 127.0.0.1 that holds every chunk `delaySeconds` in each direction before
// forwarding it in order (0.05 gives a 100 ms round trip). Ready when it accepts connections; stopped with SIGTERM.

import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { acceptsConnections, freePort, startServer, waitUntilReady, type Server } from './processes.js';

const latencyLinkScript = join(dirname(fileURLToPath(import.meta.url)), 'latency-link.ts');

export interface LatencyProxy {
  readonly server: Server;
  /** clients connect here (127.0.0.1) */
  readonly port: number;
  readonly targetPort: number;
  readonly delaySeconds: number;
}

/** A proxy from a free 127.0.0.1 port to 127.0.0.1:`targetPort`; its log goes to `<directory>/latency-proxy-<port>.log`. */
export async function startLatencyProxy(directory: string, targetPort: number, delaySeconds: number): Promise<LatencyProxy> {
  if (!existsSync(latencyLinkScript)) throw new Error(`${latencyLinkScript} does not exist`);
  const port = await freePort();
  const server = startServer({
    name: `latency-proxy :${port}→:${targetPort}`,
    command: process.execPath,
    // tsx resolved here: the process runs in the bench's output folder, outside the project
    args: ['--import', import.meta.resolve('tsx'), latencyLinkScript, String(port), String(targetPort), String(delaySeconds)],
    cwd: directory,
    logFile: join(directory, `latency-proxy-${port}.log`),
    stopSignal: 'SIGTERM',
  });
  try {
    await waitUntilReady(server, () => acceptsConnections(port), 10_000);
  } catch (error) {
    await server.stop();
    throw error;
  }
  return { server, port, targetPort, delaySeconds };
}
