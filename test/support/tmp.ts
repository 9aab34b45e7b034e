// Temporary directories and free TCP ports for tests.
//
// tempDir() uses os.tmpdir() rather than tap's t.testdir(): t.testdir() creates
// `.tap/fixtures/...` inside the project tree (shared with other engineers), and
// short paths under /tmp keep us clear of the 108-byte UNIX socket path limit.

import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** The only part of a tap Test that tempDir() needs. */
export interface Teardownable {
  teardown(fn: () => unknown): void;
}

/**
 * Makes a fresh directory under os.tmpdir(), removed (recursively) at test
 * teardown. Set ONERELAY_KEEP_TMP=1 to keep it for debugging.
 */
export function tempDir(t: Teardownable, prefix = 'onerelay-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.teardown(() => {
    if (process.env['ONERELAY_KEEP_TMP'] !== '1') {
      rmSync(dir, { recursive: true, force: true });
    }
  });
  return dir;
}

/**
 * A TCP port that was free on 127.0.0.1 a moment ago (the kernel picks it).
 * Prefer listening on port 0 directly when the code under test allows it.
 */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  // the kernel may hand the same free port out again right after it was closed: a relay started with
  // two equal ports fails to bind, so this process never returns a port twice
  for (let attempt = 0; attempt < 50; attempt += 1) {
    const port = await unusedPort(host);
    if (!handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error('freePort: no port that was not handed out already');
}

const handedOut = new Set<number>();

function unusedPort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const addr = srv.address();
      if (addr === null || typeof addr === 'string') {
        srv.close();
        reject(new Error('freePort: unexpected server address'));
        return;
      }
      const { port } = addr;
      srv.close((err) => (err ? reject(err) : resolve(port)));
    });
  });
}
