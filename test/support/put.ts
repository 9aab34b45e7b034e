// PUT bytes to the relay's front door the way an agent does (fresh TLS 1.3 connection, Basic auth,
// optional client certificate), without spawning curl: for tests that upload hundreds of files.

import { readFileSync } from 'node:fs';
import { request } from 'node:https';
import type { AgentIdentity } from './agent.js';

export interface PutOptions {
  readonly port: number;
  readonly endpoint: 'reports' | 'inventories' | 'inventory-updates';
  readonly name: string;
  readonly body: Buffer;
  readonly user?: string;
  readonly password?: string;
  readonly identity?: AgentIdentity;
}

export function putFile(options: PutOptions): Promise<number> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { 'content-length': String(options.body.length) };
    if (options.password !== undefined) {
      headers['authorization'] = `Basic ${Buffer.from(`${options.user ?? 'rudder'}:${options.password}`).toString('base64')}`;
    }
    const req = request(
      {
        host: '127.0.0.1',
        port: options.port,
        method: 'PUT',
        path: `/${options.endpoint}/${encodeURIComponent(options.name)}`,
        agent: false,
        minVersion: 'TLSv1.3',
        rejectUnauthorized: false,
        headers,
        ...(options.identity
          ? { cert: readFileSync(options.identity.certificateFile), key: readFileSync(options.identity.privateKeyFile) }
          : {}),
      },
      (response) => {
        response.resume();
        response.on('end', () => resolve(response.statusCode ?? 0));
      },
    );
    req.on('error', reject);
    req.end(options.body);
  });
}

/** runs tasks with at most `limit` in flight */
export async function inParallel<T>(items: readonly T[], limit: number, task: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const item = items[next++] as T;
      await task(item);
    }
  });
  await Promise.all(workers);
}
