// A high-latency link simulated in user space (the kernel here has no netem): /work/shared/tools/latency-proxy.py,
// a TCP proxy on 127.0.0.1 that holds every chunk `delaySeconds` in each direction before forwarding it in order
// (0.05 gives a 100 ms round trip). Ready when it accepts connections; stopped with SIGTERM.

import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { acceptsConnections, freePort, startServer, waitUntilReady, type Server } from './processes.js';

/** BENCH_LATENCY_PROXY points at another copy of the script */
export const latencyProxyScript = process.env['BENCH_LATENCY_PROXY'] ?? '/work/shared/tools/latency-proxy.py';

export interface LatencyProxy {
  readonly server: Server;
  /** clients connect here (127.0.0.1) */
  readonly port: number;
  readonly targetPort: number;
  readonly delaySeconds: number;
}

/** A proxy from a free 127.0.0.1 port to 127.0.0.1:`targetPort`; its log goes to `<directory>/latency-proxy-<port>.log`. */
export async function startLatencyProxy(directory: string, targetPort: number, delaySeconds: number): Promise<LatencyProxy> {
  if (!existsSync(latencyProxyScript)) throw new Error(`${latencyProxyScript} does not exist`);
  const port = await freePort();
  const server = startServer({
    name: `latency-proxy :${port}→:${targetPort}`,
    command: 'python3',
    args: [latencyProxyScript, String(port), String(targetPort), String(delaySeconds)],
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
