// A local HTTPS upstream for forwarding benches, in its own process (upstream-server.ts) so that it
// neither shares an event loop with the bench nor with the relay measured: it presents an RSA 4096
// certificate (the relay pins it), keeps connections alive, answers PUTs 201 and counts them.

import { fork, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { NodeIdentity } from './identities.js';
import { logTail } from './processes.js';

export interface UpstreamStats {
  /** distinct files stored (endpoint/name) */
  readonly files: number;
  /** PUTs stored, overwrites included */
  readonly puts: number;
  readonly bytes: number;
  /** requests refused (bad path, method or credentials) */
  readonly refused: number;
  /** TLS handshakes completed: few when the relay keeps its connections alive */
  readonly handshakes: number;
  /** PUTs answered 503 on purpose (failShare) */
  readonly failed: number;
  /** PUTs read and never answered (hang) */
  readonly hung: number;
  /** epoch ms (high resolution) of the first PUT stored */
  readonly firstAt: number | undefined;
  readonly at: number;
}

// ---- messages between the bench and the upstream process ----
/** faults on demand: a share of PUTs answered 503 (at random), or every PUT read and never answered */
export interface UpstreamFaults {
  readonly failShare?: number;
  readonly hang?: boolean;
}

export type UpstreamParentMessage =
  | { readonly type: 'start'; readonly key: string; readonly cert: string; readonly user: string; readonly password: string }
  | ({ readonly type: 'faults' } & UpstreamFaults)
  | { readonly type: 'watch'; readonly count: number }
  | { readonly type: 'stats'; readonly id: number }
  | { readonly type: 'digests'; readonly id: number };
export type UpstreamChildMessage =
  | { readonly type: 'listening'; readonly port: number }
  | { readonly type: 'first'; readonly at: number }
  | { readonly type: 'reached'; readonly count: number; readonly at: number }
  | { readonly type: 'stats'; readonly id: number; readonly stats: UpstreamStats }
  | { readonly type: 'digests'; readonly id: number; readonly digests: readonly (readonly [string, string])[] };

export interface BenchUpstream {
  readonly port: number;
  /** the certificate it presents, for output.upstream.server_certificate_file */
  readonly certificateFile: string;
  readonly pid: number;
  stats(): Promise<UpstreamStats>;
  /** epoch ms of the first PUT stored, once there is one */
  whenFirst(): Promise<number>;
  /** epoch ms at which `count` distinct files had been stored; rejects after timeoutMs */
  whenStored(count: number, timeoutMs: number): Promise<number>;
  /** `<endpoint>/<name>` → hex SHA-256 of the body last stored */
  digests(): Promise<Map<string, string>>;
  /** from now on (no answer is sent for this message: the next stats() call comes after it) */
  setFaults(faults: UpstreamFaults): void;
  stop(): Promise<void>;
}

const serverScript = fileURLToPath(new URL('./upstream-server.ts', import.meta.url));

export async function startBenchUpstream(options: {
  /** directory for its certificate file and log */
  readonly directory: string;
  readonly identity: NodeIdentity;
  readonly user: string;
  readonly password: string;
}): Promise<BenchUpstream> {
  const certificateFile = join(options.directory, 'upstream.pem');
  await writeFile(certificateFile, options.identity.certificatePem);
  const logFile = join(options.directory, 'upstream.log');
  const log = openSync(logFile, 'a');
  // inherits process.execArgv, i.e. the tsx loader the bench itself runs under
  const child: ChildProcess = fork(serverScript, [], { serialization: 'advanced', stdio: ['ignore', log, log, 'ipc'] });
  closeSync(log);
  const killAtExit = (): void => void child.kill('SIGKILL');
  process.once('exit', killAtExit);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));

  let nextId = 0;
  const pending = new Map<number, (message: UpstreamChildMessage) => void>();
  const watchers = new Map<number, Array<(at: number) => void>>();
  let onFirst: (at: number) => void = () => undefined;
  const first = new Promise<number>((resolve) => (onFirst = resolve));
  child.on('message', (message: UpstreamChildMessage) => {
    if (message.type === 'first') {
      onFirst(message.at);
    } else if (message.type === 'stats' || message.type === 'digests') {
      pending.get(message.id)?.(message);
      pending.delete(message.id);
    } else if (message.type === 'reached') {
      for (const wake of watchers.get(message.count) ?? []) wake(message.at);
      watchers.delete(message.count);
    }
  });
  const ask = (type: 'stats' | 'digests'): Promise<UpstreamChildMessage> =>
    new Promise((resolve, reject) => {
      const id = nextId++;
      pending.set(id, resolve);
      const message: UpstreamParentMessage = { type, id };
      child.send(message, (error) => {
        if (error !== null) {
          pending.delete(id);
          reject(error);
        }
      });
    });

  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`bench upstream did not listen within 10 s\n${logTail(logFile)}`)), 10_000);
    child.on('message', (message: UpstreamChildMessage) => {
      if (message.type !== 'listening') return;
      clearTimeout(timer);
      resolve(message.port);
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`bench upstream exited (${String(code)}) before listening\n${logTail(logFile)}`));
    });
    const start: UpstreamParentMessage = {
      type: 'start',
      key: options.identity.privateKeyPem,
      cert: options.identity.certificatePem,
      user: options.user,
      password: options.password,
    };
    child.send(start);
  });

  const stats = async (): Promise<UpstreamStats> => {
    const answer = await ask('stats');
    if (answer.type !== 'stats') throw new Error('bench upstream: unexpected answer');
    return answer.stats;
  };

  return {
    port,
    certificateFile,
    pid: child.pid ?? -1,
    stats,
    whenFirst: () => first,
    whenStored(count, timeoutMs) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          void stats().then(
            (stats) => reject(new Error(`bench upstream: ${stats.files} of ${count} files stored after ${timeoutMs} ms`)),
            reject,
          );
        }, timeoutMs);
        const list = watchers.get(count) ?? [];
        list.push((at) => {
          clearTimeout(timer);
          resolve(at);
        });
        watchers.set(count, list);
        const watch: UpstreamParentMessage = { type: 'watch', count };
        child.send(watch);
      });
    },
    setFaults(faults) {
      const message: UpstreamParentMessage = { type: 'faults', ...faults };
      child.send(message);
    },
    async digests() {
      const answer = await ask('digests');
      if (answer.type !== 'digests') throw new Error('bench upstream: unexpected answer');
      return new Map(answer.digests);
    },
    async stop() {
      process.off('exit', killAtExit);
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        await exited;
      }
    },
  };
}
