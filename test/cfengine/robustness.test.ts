// Bounded resources: bad clients are disconnected (garbage, a huge header, half a command then silence, a
// silent TCP connection) while a stock cf-agent copies in parallel; the connection limits (total, per
// address); stop().

import { randomBytes } from 'node:crypto';
import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import t from 'tap';
import {
  CF_AGENT,
  compareTrees,
  connectCfengine,
  createCfWorkdir,
  errorLines,
  hasCfengine,
  makeTree,
  runCf,
  runCopy,
  sha256PinOf,
  startCfengineFixture,
  type CfWorkdir,
} from '../support/cfengine.js';
import { tempDir } from '../support/tmp.js';

const NODE = 'cccccccc-3333-4000-8000-000000000003';
const skip = hasCfengine() ? false : 'skipped: /usr/bin/cf-agent is not installed (Debian package cfengine3)';

function rawConnect(port: number, localAddress?: string): Promise<Socket & { closedAt?: number }> {
  return new Promise((resolve, reject) => {
    const socket: Socket & { closedAt?: number } = connect({ port, host: '127.0.0.1', ...(localAddress === undefined ? {} : { localAddress }) }, () => resolve(socket));
    socket.on('error', reject);
    socket.on('close', () => {
      socket.closedAt = Date.now();
    });
  });
}

function closedWithin(socket: Socket, ms: number): Promise<boolean> {
  if (socket.destroyed) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

t.test('bad clients are cut off without hurting a good copy', { skip }, async (t) => {
  const base = tempDir(t, 'onerelay-cfrobust-');
  const node = await createCfWorkdir(join(base, 'node'));
  const idleTimeoutMs = 4000;
  const fixture = await startCfengineFixture({ base, nodes: [{ id: NODE, work: node }], server: { idleTimeoutMs } });
  t.teardown(() => fixture.server.stop());
  const source = join(fixture.share, NODE, 'rules', 'cfengine-community');
  await mkdir(source, { recursive: true });
  await makeTree(source, 300);
  const port = fixture.port();

  // 1. garbage instead of a TLS ClientHello. Not random: random bytes can start like a TLS record
  // header announcing more bytes, and then the server rightly waits for them.
  const garbage = await rawConnect(port);
  garbage.on('error', () => undefined);
  garbage.write(Buffer.concat([Buffer.from('GET / HTTP/1.0\r\n', 'latin1'), randomBytes(64 * 1024)]));
  // 2. a silent TCP connection (never starts TLS)
  const silent = await rawConnect(port);
  silent.on('error', () => undefined);
  // 3. identified, then half a transaction and silence
  const half = await connectCfengine(port, node.privateKey);
  half.sendRaw(Buffer.from('t 60\0\0\0\0SYNCH 17955', 'latin1'));
  // 4. identified, then a header announcing far more than 4088 bytes
  const huge = await connectCfengine(port, node.privateKey);
  huge.sendRaw(Buffer.from('t 999999', 'latin1'));
  // 5. an identification "line" that never ends
  const endless = await connectCfengine(port, node.privateKey, { identify: false });
  endless.sendRaw(Buffer.alloc(4096, 0x41));

  // well under the 4 s handshake timeout, with room for a loaded machine
  t.ok(await closedWithin(garbage, 3000), 'garbage: disconnected at once (TLS handshake fails)');
  await huge.closed;
  t.pass('huge header: disconnected at once');
  await endless.closed;
  t.pass('endless identification line: disconnected at once');
  t.notOk(half.isClosed(), 'half a command: still connected, waiting');
  t.notOk(silent.destroyed, 'silent TCP client: still connected, waiting');

  const started = Date.now();
  const dest = join(base, 'inputs');
  const run = await runCopy(node, { port, copies: [{ source, dest, preserve: true }] });
  const copyMs = Date.now() - started;
  t.equal(run.code, 0);
  t.same(errorLines(run.stdout), [], 'the good copy has no error');
  t.same(await compareTrees(source, dest, { modes: true }), [], 'and is complete');
  t.ok(!half.isClosed() || copyMs > idleTimeoutMs, `the stalled clients were connected during the copy (${copyMs} ms)`);

  t.ok(await closedWithin(half.socket, idleTimeoutMs + 3000), 'half a command: closed by the idle timeout');
  t.ok(await closedWithin(silent, idleTimeoutMs + 3000), 'silent TCP client: closed by the idle timeout');
  const closedOnError = () => fixture.logs.filter((l) => l['msg'] === 'cfengine connection closed on error');
  // the server's own 'close' may run just after the client saw the connection end
  for (let i = 0; i < 50 && closedOnError().length < 5; i += 1) await new Promise((resolve) => setTimeout(resolve, 20));
  const reasons = closedOnError().map((l) => `${String(l['code'])} ${String(l['reason'])}`);
  t.ok(reasons.some((r) => r === 'RELAY_ERR_REQUEST_TIMEOUT idle timeout'), 'idle timeout logged, with its code');
  t.ok(reasons.some((r) => r === 'RELAY_ERR_REQUEST_TIMEOUT TLS handshake timeout'), 'handshake timeout logged, with its code');
  t.ok(reasons.some((r) => r.startsWith('RELAY_ERR_CFENGINE_CODEC ') && r.includes('transaction length')), 'bad header logged, with its code');
  t.ok(reasons.some((r) => r.startsWith('RELAY_ERR_CFENGINE_CODEC socket error')), 'garbage instead of TLS logged, with its code');
  t.ok((fixture.counters.connections['closed-error'] ?? 0) >= 5, 'counted as closed-error');
});

t.test('connection limit and stop()', async (t) => {
  const base = tempDir(t, 'onerelay-cflimit-');
  const { generateKeyPairSync } = await import('node:crypto');
  const key = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const fixture = await startCfengineFixture({ base, nodes: [{ id: NODE, sha256Pin: sha256PinOf(key) }], server: { maxConnections: 2 } });
  t.teardown(() => fixture.server.stop());
  const port = fixture.port();
  const first = await connectCfengine(port, key);
  const second = await rawConnect(port);
  second.on('error', () => undefined);
  const third = await rawConnect(port);
  third.on('error', () => undefined);
  t.ok(await closedWithin(third, 2000), 'a third connection is refused');
  t.equal(fixture.counters.connections['refused-limit'], 1);
  t.ok(fixture.logs.some((l) => l['msg'] === 'cfengine connection refused: too many connections' && l['code'] === 'RELAY_ERR_CFENGINE_LIMIT'));
  second.destroy();
  await new Promise((resolve) => setTimeout(resolve, 200));
  const fourth = await connectCfengine(port, key);
  fourth.send('VERSION');
  t.equal((await fourth.readFrame()).payload.toString(), 'OK: 3.21.0', 'a slot freed is usable again');

  await fixture.server.stop();
  await Promise.all([first.closed, fourth.closed]);
  t.pass('stop() closes the open connections');
  const refused = await rawConnect(port).then(
    () => false,
    () => true,
  );
  t.ok(refused, 'and the listener');
});

t.test('one address holding idle connections does not lock agents out (max_connections_per_address)', { skip }, async (t) => {
  const base = tempDir(t, 'onerelay-cfperaddr-');
  const agent = await createCfWorkdir(join(base, 'agent'));
  const fixture = await startCfengineFixture({
    base,
    nodes: [{ id: NODE, work: agent }],
    server: { maxConnections: 6, maxConnectionsPerAddress: 3 },
  });
  t.teardown(() => fixture.server.stop());
  const port = fixture.port();
  await mkdir(join(fixture.share, NODE), { recursive: true });
  await makeTree(join(fixture.share, NODE), 5);
  // the hog: another loopback address, idle connections until it is refused
  const hog: Socket[] = [];
  for (let i = 0; i < 3; i += 1) {
    const socket = await rawConnect(port, '127.0.0.2');
    socket.on('error', () => undefined);
    hog.push(socket);
  }
  t.teardown(() => hog.forEach((s) => s.destroy()));
  const fourth = await rawConnect(port, '127.0.0.2');
  fourth.on('error', () => undefined);
  t.ok(await closedWithin(fourth, 2000), 'its 4th connection is refused');
  t.equal(fixture.counters.connections['refused-address-limit'], 1, 'counted');
  const line = fixture.logs.find((l) => l['msg'] === 'cfengine connection refused: too many connections from this address');
  t.equal(line?.['peer'], '127.0.0.2', 'logged with the address');
  t.equal(line?.['event'], 'refused');
  t.equal(line?.['code'], 'RELAY_ERR_CFENGINE_LIMIT');
  t.equal(line?.['maxConnectionsPerAddress'], 3);
  for (const socket of hog) t.notOk(socket.destroyed, 'the connections it holds stay open (until the idle timeout)');

  // the stock agent, from another address, still copies
  const dest = join(base, 'copy');
  const run = await runCopy(agent, { port, copies: [{ source: join(fixture.share, NODE), dest }] });
  t.same(errorLines(run.stdout), [], 'the agent is served');
  t.same(await compareTrees(join(fixture.share, NODE), dest), [], 'and has its files');
  t.equal(fixture.counters.connections['refused-limit'], undefined, 'the total limit was never reached');

  // a slot freed by the hog is its own again
  const seen = fixture.logs.length;
  hog.pop()?.destroy();
  const freed = () => fixture.logs.slice(seen).some((l) => String(l['msg']).startsWith('cfengine connection closed') && l['peer'] === '127.0.0.2');
  const deadline = Date.now() + 5000;
  while (!freed() && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  t.ok(freed(), 'the server saw the close');
  const again = await rawConnect(port, '127.0.0.2');
  again.on('error', () => undefined);
  hog.push(again);
  t.notOk(await closedWithin(again, 300), 'after one of its connections closed, the address may open one more');
  t.equal(fixture.counters.connections['refused-address-limit'], 1, 'no new refusal');
});

t.test('STAT results remembered per connection stay bounded whatever spellings a client sends', async (t) => {
  const base = tempDir(t, 'onerelay-cfremember-');
  const { generateKeyPairSync } = await import('node:crypto');
  const key = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  // an unknown key would do as well on a public root; a node key reading its own folder is the same path
  const fixture = await startCfengineFixture({ base, nodes: [{ id: NODE, sha256Pin: sha256PinOf(key) }] });
  t.teardown(() => fixture.server.stop());
  const port = fixture.port();
  const dir = join(fixture.share, NODE);
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'promises.cf'), 'bundle agent main {}\n');
  // two links to their own folder: endless canonical spellings of one file (a loop in a served tree)
  const linkA = 'a'.repeat(200);
  const linkB = 'b'.repeat(200);
  await symlink('.', join(dir, linkA));
  await symlink('.', join(dir, linkB));
  const now = () => Math.floor(Date.now() / 1000);
  const closingLine = async (client: { close(): void; closed: Promise<void> }, seen: number): Promise<Record<string, unknown> | undefined> => {
    client.close();
    await client.closed;
    const find = () => fixture.logs.slice(seen).find((l) => l['msg'] === 'cfengine connection closed');
    for (let i = 0; i < 100 && find() === undefined; i += 1) await new Promise((resolve) => setTimeout(resolve, 20));
    return find();
  };
  const stat = async (client: Awaited<ReturnType<typeof connectCfengine>>, path: string): Promise<string> => {
    client.send(`SYNCH ${now()} STAT ${path}`);
    const fields = (await client.readFrame()).payload.toString('latin1');
    await client.readFrame();
    return fields;
  };

  // 1. the same file with its slashes spread 1,000 ways, each request ~4 KB
  let seen = fixture.logs.length;
  const spread = await connectCfengine(port, key);
  t.match(await stat(spread, `${dir}/promises.cf`), /^OK: 0 /, 'the canonical spelling');
  let answered = 0;
  for (let i = 0; i < 1000; i += 1) {
    // slashes only where the path has one (between share and the node's folder, before the file name)
    const first = '/'.repeat(1 + (i % 40));
    const second = '/'.repeat(3700 - dir.length + Math.floor(i / 40));
    const path = `${fixture.share}${first}${NODE}${second}promises.cf`;
    if ((await stat(spread, path)).startsWith('OK: 0 ')) answered += 1;
  }
  t.equal(answered, 1000, 'every spelling is answered (cf-serverd resolves them too)');
  // what a non-canonical spelling's MD5/GET does without a remembered STAT: resolved and checked again
  spread.send(`GET 2048 ${dir}//promises.cf`);
  t.equal((await spread.readBytes(21)).toString(), 'bundle agent main {}\n', 'GET of a spelling not remembered');
  const spreadLine = await closingLine(spread, seen);
  t.same(spreadLine?.['remembered'], { stats: 1, chars: 2 * `${dir}/promises.cf`.length }, 'only the canonical request is remembered');

  // 2. canonical but endless: through the links, 1,000 different ~3.8 KB paths
  seen = fixture.logs.length;
  const loop = await connectCfengine(port, key);
  answered = 0;
  for (let i = 0; i < 1000; i += 1) {
    const hops = Array.from({ length: 18 }, (_, bit) => ((i >> bit) & 1 ? linkB : linkA));
    if ((await stat(loop, `${dir}/${hops.join('/')}/promises.cf`)).startsWith('OK: 0 ')) answered += 1;
  }
  t.equal(answered, 1000, 'every path through the links is answered');
  const loopLine = await closingLine(loop, seen);
  const remembered = loopLine?.['remembered'] as { stats: number; chars: number } | undefined;
  t.ok(remembered !== undefined && remembered.chars <= 256 * 1024, `at most 256 Ki characters remembered (${remembered?.chars}), not the 3.8 M sent`);
  t.ok(remembered !== undefined && remembered.stats > 10, `the latest STATs are still remembered (${remembered?.stats})`);
});

/** copy_from A, a pause of `pauseS` in the same agent run, copy_from B: the agent reuses its one connection */
function pausedCopiesPolicy(port: number, sources: readonly [string, string], dests: readonly [string, string], pauseS: number): string {
  const copy = (name: string, source: string, dest: string) => `bundle agent ${name}
{
  files:
    "${dest}"
      copy_from => paused_copy("${source}"),
      depth_search => paused_recurse;
}
`;
  return `body common control
{
  bundlesequence => { "copy_a", "pause", "copy_b" };
  protocol_version => "2";
}
${copy('copy_a', sources[0], dests[0])}
bundle agent pause
{
  commands:
    "/bin/sleep ${pauseS}";
}
${copy('copy_b', sources[1], dests[1])}
body depth_search paused_recurse
{
  depth => "inf";
}
body copy_from paused_copy(p)
{
  servers => { "127.0.0.1" };
  source => "$(p)";
  compare => "digest";
  portnumber => "${port}";
  trustkey => "true";
  protocol_version => "2";
  purge => "true";
  copy_backup => "false";
  timeout => "10";
}
`;
}

t.test('idle timeout: cf-agent reuses its connection after a pause in its run (cf-serverd waits 600 s)', { skip }, async (t) => {
  const pauseS = 4;
  const run = async (name: string, server: { idleTimeoutMs?: number }): Promise<{ stdout: string; dests: [string, string]; sources: [string, string]; fixture: Awaited<ReturnType<typeof startCfengineFixture>> }> => {
    const base = tempDir(t, `onerelay-cfidle-${name}-`);
    const agent: CfWorkdir = await createCfWorkdir(join(base, 'agent'));
    const fixture = await startCfengineFixture({ base, nodes: [{ id: NODE, work: agent }], server });
    t.teardown(() => fixture.server.stop());
    const sources: [string, string] = [join(fixture.share, NODE, 'a'), join(fixture.share, NODE, 'b')];
    for (const source of sources) {
      await mkdir(source, { recursive: true });
      await makeTree(source, 5);
    }
    const dests: [string, string] = [join(base, 'copy-a'), join(base, 'copy-b')];
    const file = join(agent.dir, 'inputs', 'paused.cf');
    await writeFile(file, pausedCopiesPolicy(fixture.port(), sources, dests, pauseS), { mode: 0o600 });
    const result = await runCf(CF_AGENT, ['-K', '-f', file], agent.dir);
    return { stdout: result.stdout, dests, sources, fixture };
  };

  // what the 30 s of earlier versions did to a longer pause, made short: the server closed the idle connection
  const short = await run('short', { idleTimeoutMs: (pauseS - 2) * 1000 });
  t.same(await compareTrees(short.sources[0], short.dests[0]), [], 'short idle timeout: the copy before the pause is complete');
  t.ok(errorLines(short.stdout).length > 0, `short idle timeout: the copy after the pause fails (${errorLines(short.stdout)[0] ?? 'no error'})`);
  t.ok(short.fixture.logs.some((l) => l['reason'] === 'idle timeout'), 'the server closed it as idle');

  const dflt = await run('default', {});
  t.same(errorLines(dflt.stdout), [], 'default idle timeout: no error');
  t.same(await compareTrees(dflt.sources[0], dflt.dests[0]), [], 'the copy before the pause is complete');
  t.same(await compareTrees(dflt.sources[1], dflt.dests[1]), [], 'and the one after it');
  const opened = dflt.fixture.counters.connections['accepted'];
  t.equal(opened, 1, 'over the one connection the agent opened');
});

t.test('many connections from one address (agents behind a NAT) are all served by default', async (t) => {
  const base = tempDir(t, 'onerelay-cfnat-');
  const { generateKeyPairSync } = await import('node:crypto');
  const key = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const fixture = await startCfengineFixture({ base, nodes: [{ id: NODE, sha256Pin: sha256PinOf(key) }] });
  t.teardown(() => fixture.server.stop());
  // more than the 16 per address of earlier versions, all open at once, as at the start of a splay
  const clients = await Promise.all(Array.from({ length: 40 }, () => connectCfengine(fixture.port(), key)));
  t.teardown(() => clients.forEach((c) => c.close()));
  const answers = await Promise.all(
    clients.map(async (client) => {
      client.send('VERSION');
      return (await client.readFrame()).payload.toString();
    }),
  );
  t.same(new Set(answers), new Set(['OK: 3.21.0']), 'each of the 40 is served');
  t.equal(fixture.counters.connections['accepted'], 40);
  t.same(
    Object.keys(fixture.counters.connections).filter((k) => k.startsWith('refused')),
    [],
    'none refused',
  );
});

t.test('until identified a connection has a short timeout; afterwards the idle timeout', async (t) => {
  const base = tempDir(t, 'onerelay-cfhandshake-');
  const { generateKeyPairSync } = await import('node:crypto');
  const key = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const handshakeTimeoutMs = 1000;
  const fixture = await startCfengineFixture({ base, nodes: [{ id: NODE, sha256Pin: sha256PinOf(key) }], server: { handshakeTimeoutMs } });
  t.teardown(() => fixture.server.stop());
  const port = fixture.port();
  const agent = await connectCfengine(port, key);
  t.teardown(() => agent.close());
  const silent = await rawConnect(port);
  silent.on('error', () => undefined);
  const mute = await connectCfengine(port, key, { identify: false });
  t.ok(await closedWithin(silent, handshakeTimeoutMs + 3000), 'a TCP connection that never starts TLS: closed');
  await mute.closed;
  t.pass('a TLS connection that never sends its version line: closed');
  t.notOk(agent.isClosed(), 'an identified client, as idle, stays connected');
  agent.send('VERSION');
  t.equal((await agent.readFrame()).payload.toString(), 'OK: 3.21.0', 'and is served');
  const closedOnError = () => fixture.logs.filter((l) => l['msg'] === 'cfengine connection closed on error').map((l) => `${String(l['code'])} ${String(l['reason'])}`);
  for (let i = 0; i < 100 && closedOnError().length < 2; i += 1) await new Promise((resolve) => setTimeout(resolve, 20));
  t.same(closedOnError().sort(), ['RELAY_ERR_REQUEST_TIMEOUT TLS handshake timeout', 'RELAY_ERR_REQUEST_TIMEOUT identification timeout']);
});

t.test('the identification has a deadline: a client trickling its version line a byte at a time is closed all the same', async (t) => {
  const base = tempDir(t, 'onerelay-cftrickle-');
  const { generateKeyPairSync } = await import('node:crypto');
  const key = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const handshakeTimeoutMs = 1000;
  const fixture = await startCfengineFixture({ base, nodes: [{ id: NODE, sha256Pin: sha256PinOf(key) }], server: { handshakeTimeoutMs } });
  t.teardown(() => fixture.server.stop());
  const trickler = await connectCfengine(fixture.port(), key, { identify: false });
  t.teardown(() => trickler.close());
  const openedAt = Date.now();
  // a byte every 300 ms: the socket's inactivity timer (1 s) alone would never fire
  const version = Buffer.from('CFE_v2 cf-agent 3.21.0 and much more than anyone needs to say about itself');
  let sent = 0;
  const timer = setInterval(() => {
    if (!trickler.isClosed() && sent < version.length) trickler.sendRaw(version.subarray(sent, (sent += 1)));
  }, 300);
  t.teardown(() => clearInterval(timer));
  await trickler.closed;
  const ms = Date.now() - openedAt;
  t.ok(ms < handshakeTimeoutMs + 1500, `closed ${ms} ms after the connection, ${sent} bytes sent`);
  t.ok(sent >= 3, 'it had kept sending');
  // the server's line may come a moment after the client saw the close
  const closedLine = () => fixture.logs.find((l) => l['msg'] === 'cfengine connection closed on error');
  for (let i = 0; i < 100 && closedLine() === undefined; i += 1) await new Promise((resolve) => setTimeout(resolve, 20));
  t.equal(closedLine()?.['code'], 'RELAY_ERR_REQUEST_TIMEOUT');
  t.equal(closedLine()?.['reason'], 'identification timeout');
});
