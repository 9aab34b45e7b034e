// The container image without a Docker engine: docker/install.sh (what the Dockerfile runs) lays
// the runtime files out in a temporary root, the tree is made read-only, and the relay runs from it
// as an unprivileged user with `onerelay container`, writing only to its two volumes.

import { spawn } from 'node:child_process';
import { chmod, chown, mkdir, readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { run } from '../support/agent.js';
import { ROOT } from '../support/relay.js';
import { freePort, tempDir } from '../support/tmp.js';

const RELAY = 'd0d0d0d0-0000-4000-8000-00000000c0de';

t.test('the image layout runs read-only from its volumes', async (t) => {
  const root = tempDir(t, 'onerelay-image-');
  const app = join(root, 'opt', 'onerelay');
  const install = await run('sh', [join(ROOT, 'docker', 'install.sh'), app, ROOT], { timeoutMs: 240_000 });
  t.equal(install.code, 0, `install.sh: ${install.stderr}`);
  t.ok((await readdir(join(app, 'node_modules'))).includes('fastify'), 'runtime dependencies installed');
  t.notOk((await readdir(join(app, 'node_modules'))).includes('typescript'), 'no development dependencies');
  const data = join(root, 'var', 'rudder');
  const identity = join(root, 'var', 'lib', 'onerelay', 'identity');
  await mkdir(data, { recursive: true });
  await mkdir(identity, { recursive: true });
  // read-only "root filesystem": the application tree cannot be written by the relay's user
  await run('chmod', ['-R', 'a-w', app]);
  t.teardown(() => run('chmod', ['-R', 'u+w', root]));
  const asRoot = process.getuid?.() === 0;
  if (asRoot) {
    // root ignores file modes: run as nobody, who owns only the volumes
    for (const dir of [root, join(root, 'var'), join(root, 'var', 'lib'), join(root, 'var', 'lib', 'onerelay')]) await chmod(dir, 0o755);
    await chown(data, 65534, 65534);
    await chown(identity, 65534, 65534);
  }
  const httpsPort = await freePort();
  const apiPort = await freePort();
  const env = {
    PATH: process.env['PATH'] ?? '/usr/bin:/bin',
    ONERELAY_DATA_DIR: data,
    ONERELAY_IDENTITY_DIR: identity,
    ONERELAY_CONFIG: join(root, 'etc', 'onerelay', 'onerelay.toml'),
    ONERELAY_HTTPS_PORT: String(httpsPort),
    ONERELAY_API_PORT: String(apiPort),
    ONERELAY_CFENGINE_PORT: String(await freePort()),
    RUDDER_RELAY_ID: RELAY,
    RUDDER_RELAY_SERVER: '127.0.0.1',
    RUDDER_RELAY_DAV_PASSWORD: 'secret',
    RUDDER_RELAY_ALLOWED_NETWORKS: '127.0.0.0/8',
  };
  const command = asRoot ? 'setpriv' : process.execPath;
  const args = [...(asRoot ? ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath] : []), join(app, 'dist', 'cli.js'), 'container'];
  const child = spawn(command, args, { env, cwd: '/', stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
  t.teardown(async () => {
    try {
      process.kill(-(child.pid ?? 0), 'SIGKILL');
    } catch {
      // already gone
    }
    await exited;
  });
  const deadline = Date.now() + 60_000;
  while (!output.includes('"event":"ready"')) {
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`relay did not start:\n${output}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  const uuid = await run('curl', ['-sk', `https://127.0.0.1:${httpsPort}/uuid`]);
  t.equal(uuid.stdout.toString().trim(), RELAY, 'serves its id from the environment');
  const health = spawn(command, [...args.slice(0, -1), 'health'], { env, stdio: 'ignore' });
  t.equal(await new Promise((resolve) => health.on('exit', resolve)), 0, 'the HEALTHCHECK command passes');
  const key = await stat(join(identity, 'ppkeys', 'localhost.priv'));
  t.equal(key.mode & 0o777, 0o600, 'identity generated in the identity volume');
  t.match(await readFile(join(data, 'onerelay', 'onerelay.toml'), 'utf8'), /host = "127.0.0.1"/, 'configuration generated in the data volume');
  t.ok((await readdir(join(data, 'reports'))).includes('incoming'), 'spools in the data volume');
  t.notMatch(output, /EACCES|EROFS/, 'nothing tried to write outside the volumes');
  process.kill(-(child.pid ?? 0), 'SIGTERM');
  t.equal(await exited, 0, 'SIGTERM: exit 0');
});
