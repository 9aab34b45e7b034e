import { copyFile, writeFile } from 'node:fs/promises';
import { createServer as createTcpServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { pino } from 'pino';
import t from 'tap';
import { createUpstream, type Upstream, type UpstreamOptions } from '../../src/upstream/index.js';
import { VERSION } from '../../src/version.js';
import { tempDir, type Teardownable } from '../support/tmp.js';
import {
  OTHER_CERT_FILE,
  OTHER_KEY_FILE,
  UPSTREAM_DEFAULT_CERT_FILE,
  UPSTREAM_DEFAULT_KEY_FILE,
  UPSTREAM_FIXTURE_KEYS,
  makeCertificate,
  startUpstream,
  type TestUpstream,
} from '../support/upstream.js';

type LogLine = Record<string, unknown> & { level: number; msg: string };
type Tap = Teardownable;

/** an upstream client on the test upstream, its log lines, closed at teardown */
function clientFor(t: Tap, up: TestUpstream, over: Partial<UpstreamOptions> = {}): { upstream: Upstream; logs: LogLine[] } {
  const logs: LogLine[] = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => void logs.push(JSON.parse(line) as LogLine) });
  const upstream = createUpstream(
    {
      host: up.host,
      port: up.port,
      peerAuthentication: 'cert_pinning',
      serverCertificateFile: up.certificateFile,
      caPath: undefined,
      user: up.credentials.user,
      password: up.credentials.password,
      defaultPassword: up.credentials.defaultPassword,
      maxConcurrency: 4,
      connectTimeoutMs: 2_000,
      idleTimeoutMs: 5_000,
      requestTimeoutMs: 10_000,
      keepAliveMs: 5_000,
      ...over,
    },
    log,
  );
  t.teardown(() => upstream.close());
  return { upstream, logs };
}

/** a spool-like file with this content */
async function spoolFile(t: Tap, content: string | Buffer, name = 'file'): Promise<{ path: string; size: number }> {
  const path = join(tempDir(t, 'onerelay-upstream-test-'), name);
  const bytes = typeof content === 'string' ? Buffer.from(content) : content;
  await writeFile(path, bytes);
  return { path, size: bytes.length };
}

const failures = (logs: LogLine[]) => logs.filter((line) => line['event'] === 'upstream-forward-failed');

t.test('forwards files with the right endpoint, credentials and bytes', async (t) => {
  const up = await startUpstream(t);
  const { upstream, logs } = clientFor(t, up);
  const report = await spoolFile(t, Buffer.from([0x1f, 0x8b, 0, 1, 2, 255, 13, 10]), 'report');
  const big = await spoolFile(t, Buffer.alloc(3 * 1024 * 1024 + 17, 'x'), 'inventory');

  t.equal(upstream.status().reachable, undefined, 'unknown before the first request');
  const r1 = await upstream.forward('reports', '2019-08-07T13:05:46+00:00@root.log.gz', report);
  t.match(r1, { kind: 'ok', status: 201 });
  const r2 = await upstream.forward('inventories', 'node_2024-01-01.ocs.gz', big);
  t.match(r2, { kind: 'ok', status: 201 });
  const r3 = await upstream.forward('inventory-updates', 'node_2024-01-01.ocs.sign', report);
  t.match(r3, { kind: 'ok', status: 201 });
  const again = await upstream.forward('reports', '2019-08-07T13:05:46+00:00@root.log.gz', report);
  t.match(again, { kind: 'ok', status: 204 }, 'overwrite is 2xx too');

  t.same(
    up.received.map((file) => [file.endpoint, file.name, file.user, file.password]),
    [
      ['reports', '2019-08-07T13:05:46+00:00@root.log.gz', 'rudder', 'dav-secret'],
      ['inventories', 'node_2024-01-01.ocs.gz', 'rudder', 'rudder'],
      ['inventory-updates', 'node_2024-01-01.ocs.sign', 'rudder', 'dav-secret'],
      ['reports', '2019-08-07T13:05:46+00:00@root.log.gz', 'rudder', 'dav-secret'],
    ],
  );
  t.ok(up.files('reports').find((f) => f.name === '2019-08-07T13:05:46+00:00@root.log.gz')?.body.equals(Buffer.from([0x1f, 0x8b, 0, 1, 2, 255, 13, 10])));
  t.equal(up.files('inventories')[0]?.body.length, big.size, 'large file arrives whole');
  const headers = up.received[0]?.headers;
  t.equal(headers?.['user-agent'], `onerelay/${VERSION}`);
  t.equal(headers?.['content-length'], '8');
  t.equal(headers?.['content-type'], undefined, 'no Content-Type');
  t.equal(headers?.['transfer-encoding'], undefined, 'not chunked');

  const status = upstream.status();
  t.equal(status.reachable, true);
  t.match(status.lastSuccessAt, /^\d{4}-\d\d-\d\dT/);
  t.equal(status.lastError, undefined);
  t.equal(status.blocked, undefined);
  t.same(failures(logs), []);
});

t.test('names with : @ + and other reserved characters travel percent-encoded on a single slash', async (t) => {
  const up = await startUpstream(t);
  const { upstream } = clientFor(t, up);
  const file = await spoolFile(t, 'runlog');
  const names = ['2024-05-01T10:00:00+02:00@e745a140.log.gz', 'a b#c?d%e&f=g.log', 'ünï€.log', "x'(y)*!~.log"];
  for (const name of names) t.match(await upstream.forward('reports', name, file), { kind: 'ok' }, name);
  t.same(up.received.map((received) => received.name), names);
  t.equal(up.requests[0]?.url, '/reports/2024-05-01T10%3A00%3A00%2B02%3A00%40e745a140.log.gz');
});

t.test('a 4xx about the file is permanent, one about the relay (401/403/404/409/423) or 408/429/5xx is retried, with the body in the reason', async (t) => {
  const up = await startUpstream(t);
  const { upstream, logs } = clientFor(t, up, { password: 'wrong-secret' });
  const file = await spoolFile(t, 'x');

  const unauthorized = await upstream.forward('reports', 'a.log', file);
  t.match(unauthorized, { kind: 'transient', status: 401, reason: /^HTTP 401 Unauthorized: Unauthorized This server could not verify/ }, 'a refused password holds the file');
  t.ok(unauthorized.kind !== 'ok' && unauthorized.reason.length <= 'HTTP 401 Unauthorized: '.length + 200);
  t.match(await upstream.forward('inventories', 'i.ocs', file), { kind: 'ok' }, 'inventories use default_password');

  for (const [status, kind] of [
    [404, 'transient'],
    [403, 'transient'],
    [409, 'transient'],
    [423, 'transient'],
    [400, 'permanent'],
    [413, 'permanent'],
    [415, 'permanent'],
    [408, 'transient'],
    [429, 'transient'],
    [500, 'transient'],
    [503, 'transient'],
  ] as const) {
    await up.setMode({ status });
    const result = await upstream.forward('inventories', `s${status}.ocs`, file);
    t.match(result, { kind, status, reason: new RegExp(`^HTTP ${status} [A-Z][\\w -]+: [A-Z][\\w -]+ ${status} forced by the test upstream$`) }, `${status} → ${kind}`);
  }
  const status = upstream.status();
  t.equal(status.reachable, true, 'an HTTP answer means reachable');
  t.match(status.lastError, { at: /^\d{4}-/, reason: /^HTTP 503 Service Unavailable/ });

  const lines = failures(logs);
  t.equal(lines.length, 12, 'one log line per failure');
  t.match(lines[0], { level: 50, code: 'RELAY_ERR_UPSTREAM_REFUSED', kind: 'transient', endpoint: 'reports', file: 'a.log', status: 401 }, 'a held refusal is an error line with the refusal code');
  t.match(lines[5], { level: 50, code: 'RELAY_ERR_UPSTREAM_REFUSED', kind: 'permanent', status: 400 });
  t.match(lines[8], { level: 40, code: 'RELAY_ERR_UPSTREAM_UNAVAILABLE', kind: 'transient', status: 408 });
  t.match(lines[11], { level: 40, code: 'RELAY_ERR_UPSTREAM_UNAVAILABLE', kind: 'transient', endpoint: 'inventories', file: 's503.ocs', status: 503 });
  t.notOk(JSON.stringify(logs).includes('wrong-secret'), 'password never logged');
  t.notOk(JSON.stringify(logs).includes(Buffer.from('rudder:wrong-secret').toString('base64')));
});

t.test('fail-503-every-other alternates transient and ok', async (t) => {
  const up = await startUpstream(t);
  const { upstream } = clientFor(t, up);
  const file = await spoolFile(t, 'x');
  await up.setMode('fail-503-every-other');
  const kinds = [];
  for (let i = 0; i < 4; i += 1) kinds.push((await upstream.forward('reports', `r${i}.log`, file)).kind);
  t.same(kinds, ['transient', 'ok', 'transient', 'ok']);
});

t.test('no password configured: reports and updates are held locally (the password may come later), inventories still go', async (t) => {
  const up = await startUpstream(t);
  const { upstream } = clientFor(t, up, { password: undefined });
  const file = await spoolFile(t, 'x');
  t.match(await upstream.forward('reports', 'r.log', file), { kind: 'transient', status: undefined, reason: /output\.upstream\.password is not set/ });
  t.match(await upstream.forward('inventory-updates', 'u.ocs', file), { kind: 'transient' });
  t.match(await upstream.forward('inventories', 'i.ocs', file), { kind: 'ok' });
  t.equal(up.requests.length, 1, 'nothing sent without a password');
});

t.test('credentials that change at run time (the relay\'s own policies) are the ones sent', async (t) => {
  const up = await startUpstream(t);
  let current: { user: string; password: string | undefined } = { user: 'rudder', password: 'old-secret' };
  const { upstream } = clientFor(t, up, { password: undefined, credentials: () => current });
  const file = await spoolFile(t, 'x');
  t.match(await upstream.forward('reports', 'r.log', file), { kind: 'transient', status: 401 }, 'the old password is refused upstream: the file is held');
  current = { user: up.credentials.user, password: up.credentials.password };
  t.match(await upstream.forward('reports', 'r.log', file), { kind: 'ok' }, 'the new one, without a new client');
  t.same(up.received.map((f) => f.password), [up.credentials.password]);
});

t.test('an unreadable spool file is a permanent local failure', async (t) => {
  const up = await startUpstream(t);
  const { upstream } = clientFor(t, up);
  const result = await upstream.forward('reports', 'r.log', { path: '/nonexistent/onerelay/r.log', size: 3 });
  t.match(result, { kind: 'permanent', status: 0, reason: /cannot read spool file .*ENOENT/ });
  t.equal(up.requests.length, 0);
});

t.test('upstream down: transient quickly, then back up on the same port', async (t) => {
  const up = await startUpstream(t);
  const { upstream } = clientFor(t, up, { connectTimeoutMs: 10_000, idleTimeoutMs: 10_000 });
  const file = await spoolFile(t, 'x');
  t.match(await upstream.forward('reports', 'before.log', file), { kind: 'ok' }, 'pooled connection exists');
  await up.setMode('down');
  const started = Date.now();
  const result = await upstream.forward('reports', 'during.log', file);
  t.match(result, { kind: 'transient', status: undefined, reason: /ECONNREFUSED/ });
  t.ok(Date.now() - started < 1_000, 'connection refused is immediate');
  t.equal(upstream.status().reachable, false);
  t.match(upstream.status().lastError?.reason, /ECONNREFUSED/);
  await up.setMode('ok');
  t.match(await upstream.forward('reports', 'after.log', file), { kind: 'ok' });
  t.equal(upstream.status().reachable, true);
  t.same(up.received.map((received) => received.name), ['before.log', 'after.log']);
});

t.test('timeouts: connect, idle, whole request', async (t) => {
  const file = await spoolFile(t, 'x');

  t.test('TCP accepted, no TLS handshake → connect timeout', async (t) => {
    const sockets = new Set<Socket>();
    const silent = createTcpServer((socket) => sockets.add(socket));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    t.teardown(() => {
      for (const socket of sockets) socket.destroy();
      silent.close();
    });
    const address = silent.address();
    if (address === null || typeof address === 'string') throw new Error('no address');
    const up = { ...(await startUpstream(t)), port: address.port } as TestUpstream;
    const { upstream } = clientFor(t, up, { connectTimeoutMs: 300 });
    const started = Date.now();
    t.match(await upstream.forward('reports', 'r.log', file), { kind: 'transient', reason: /connect timeout/ });
    const elapsed = Date.now() - started;
    t.ok(elapsed >= 250 && elapsed < 3_000, `after the connect timeout (${elapsed} ms)`);
  });

  t.test('request read, never answered → idle timeout', async (t) => {
    const up = await startUpstream(t);
    const { upstream } = clientFor(t, up, { idleTimeoutMs: 500 });
    await up.setMode('hang');
    const started = Date.now();
    t.match(await upstream.forward('reports', 'r.log', file), { kind: 'transient', status: undefined, reason: /idle timeout/ });
    const elapsed = Date.now() - started;
    t.ok(elapsed >= 450 && elapsed < 3_000, `after the idle timeout (${elapsed} ms)`);
    t.equal(up.received.length, 0);
    await up.setMode('ok');
    t.match(await upstream.forward('reports', 'r.log', file), { kind: 'ok' }, 'a fresh connection works');
  });

  t.test('slow answer → whole-request timeout', async (t) => {
    const up = await startUpstream(t);
    const { upstream } = clientFor(t, up, { requestTimeoutMs: 300 });
    await up.setMode({ delayMs: 2_000 });
    const started = Date.now();
    t.match(await upstream.forward('reports', 'r.log', file), { kind: 'transient', reason: /within 300 ms \(request timeout\)/ });
    t.ok(Date.now() - started < 1_500);
  });
});

t.test('cert_pinning', async (t) => {
  const file = await spoolFile(t, 'x');

  t.test('another certificate is refused, nothing is sent', async (t) => {
    const up = await startUpstream(t, { certificate: { key: OTHER_KEY_FILE, cert: OTHER_CERT_FILE } });
    const { upstream, logs } = clientFor(t, up, { serverCertificateFile: UPSTREAM_DEFAULT_CERT_FILE });
    const result = await upstream.forward('reports', 'r.log', file);
    const expected = `upstream certificate does not match the pinned certificate ${UPSTREAM_DEFAULT_CERT_FILE}`;
    t.match(result, { kind: 'transient', status: undefined });
    t.ok(result.kind === 'transient' && result.reason.startsWith(expected), result.kind === 'ok' ? '' : result.reason);
    t.equal(up.requests.length, 0, 'no HTTP request reached the upstream');
    t.equal(up.received.length, 0);
    t.ok(upstream.status().lastError?.reason.startsWith(expected));
    t.equal(upstream.status().blocked, undefined, 'not blocked: the pin is usable, the peer is wrong');
    t.match(failures(logs)[0], { code: 'RELAY_ERR_UPSTREAM_CERTIFICATE', endpoint: 'reports', file: 'r.log' });
  });

  t.test('same key, different certificate is refused too', async (t) => {
    const up = await startUpstream(t);
    const pinned = join(UPSTREAM_FIXTURE_KEYS, 'e745a140-40bc-4b86-b6dc-084488fc906b-other.cert');
    const { upstream } = clientFor(t, up, { serverCertificateFile: pinned });
    t.match(await upstream.forward('reports', 'r.log', file), { kind: 'transient', reason: /does not match the pinned certificate/ });
    t.equal(up.requests.length, 0);
  });

  t.test('no hostname check: the fixture certificate has no 127.0.0.1 SAN', async (t) => {
    const up = await startUpstream(t);
    const { upstream } = clientFor(t, up);
    t.match(await upstream.forward('reports', 'r.log', file), { kind: 'ok' });
  });

  t.test('an expired pinned certificate is refused', async (t) => {
    const expired = makeCertificate({ notBefore: new Date('2020-01-01T00:00:00Z'), notAfter: new Date('2021-01-01T00:00:00Z') });
    const up = await startUpstream(t, { certificate: expired });
    const { upstream } = clientFor(t, up);
    t.match(await upstream.forward('reports', 'r.log', file), { kind: 'transient', reason: /expired on Jan  1 00:00:00 2021 GMT/ });
    t.equal(up.requests.length, 0);
  });

  t.test('missing pinned file blocks everything until it appears and reload() runs', async (t) => {
    const up = await startUpstream(t);
    const pinned = join(tempDir(t), 'policy-server.pem');
    const { upstream, logs } = clientFor(t, up, { serverCertificateFile: pinned });
    t.match(upstream.status().blocked, new RegExp(`pinned upstream certificate ${pinned} cannot be read \\(ENOENT\\)`));
    t.ok(logs.some((line) => line['event'] === 'upstream-blocked'));
    const blocked = await upstream.forward('reports', 'r.log', file);
    t.match(blocked, { kind: 'transient', status: undefined, reason: /cannot be read/ });
    t.equal(up.requests.length, 0);
    t.match(upstream.status().lastError?.reason, /cannot be read/);

    await upstream.reload();
    t.ok(upstream.status().blocked, 'still blocked: nothing changed');

    await writeFile(pinned, 'garbage\n');
    await upstream.reload();
    t.match(upstream.status().blocked, /is not a PEM certificate/);
    t.match(await upstream.forward('reports', 'r.log', file), { kind: 'transient', reason: /is not a PEM certificate/ });

    await copyFile(up.certificateFile, pinned);
    await upstream.reload();
    t.equal(upstream.status().blocked, undefined);
    t.match(await upstream.forward('reports', 'r.log', file), { kind: 'ok' });
    t.same(up.received.map((received) => received.name), ['r.log']);
  });

  t.test('reload() with a changed pin: in-flight requests finish, new ones use the new pin', async (t) => {
    const up = await startUpstream(t);
    const pinned = join(tempDir(t), 'policy-server.pem');
    await copyFile(up.certificateFile, pinned);
    const { upstream, logs } = clientFor(t, up, { serverCertificateFile: pinned });
    t.match(await upstream.forward('reports', 'warm.log', file), { kind: 'ok' });
    await upstream.reload();
    t.notOk(logs.some((line) => line['event'] === 'upstream-pin-changed'), 'same bytes: no rebuild');

    await up.setMode({ delayMs: 400 });
    const inFlight = upstream.forward('reports', 'in-flight.log', file);
    await new Promise((resolve) => setTimeout(resolve, 100));
    await copyFile(OTHER_CERT_FILE, pinned);
    await upstream.reload();
    t.ok(logs.some((line) => line['event'] === 'upstream-pin-changed'));
    t.match(await inFlight, { kind: 'ok' }, 'the old pool finished its request');
    t.match(await upstream.forward('reports', 'after.log', file), { kind: 'transient', reason: /does not match the pinned certificate/ });
    t.same(up.received.map((received) => received.name), ['warm.log', 'in-flight.log']);

    await rmAndReload(pinned, upstream);
    t.match(upstream.status().blocked, /cannot be read/, 'a vanished pin blocks');
  });
});

async function rmAndReload(file: string, upstream: Upstream): Promise<void> {
  const { rm } = await import('node:fs/promises');
  await rm(file);
  await upstream.reload();
}

t.test('cert_validation verifies the chain and the hostname', async (t) => {
  const file = await spoolFile(t, 'x');
  const dir = tempDir(t);

  t.test('trusted through ca_path with an IP SAN → ok', async (t) => {
    const ca = makeCertificate({ ipAddresses: ['127.0.0.1'] });
    const up = await startUpstream(t, { certificate: ca });
    const { upstream } = clientFor(t, up, { peerAuthentication: 'cert_validation', caPath: up.certificateFile, serverCertificateFile: '/nonexistent' });
    t.match(await upstream.forward('reports', 'r.log', file), { kind: 'ok' });
  });

  t.test('hostname mismatch → transient TLS failure', async (t) => {
    const up = await startUpstream(t);
    const { upstream, logs } = clientFor(t, up, { peerAuthentication: 'cert_validation', caPath: UPSTREAM_DEFAULT_CERT_FILE });
    const result = await upstream.forward('reports', 'r.log', file);
    t.match(result, { kind: 'transient', reason: /^TLS: / });
    t.match(failures(logs)[0], { code: 'RELAY_ERR_UPSTREAM_CERTIFICATE' });
    t.equal(up.requests.length, 0);
  });

  t.test('unknown self-signed certificate → transient TLS failure', async (t) => {
    const up = await startUpstream(t, { certificate: makeCertificate({ ipAddresses: ['127.0.0.1'] }) });
    const { upstream } = clientFor(t, up, { peerAuthentication: 'cert_validation' });
    t.match(await upstream.forward('reports', 'r.log', file), { kind: 'transient', reason: /SELF_SIGNED|self.signed/i });
  });

  t.test('unreadable ca_path refuses to start', async (t) => {
    const up = await startUpstream(t);
    t.throws(
      () => clientFor(t, up, { peerAuthentication: 'cert_validation', caPath: join(dir, 'missing-ca.pem') }),
      { name: 'RelayError', code: 'RELAY_ERR_CONFIG_FILE', message: /general\.ca_path .*missing-ca\.pem cannot be read/ },
    );
  });
});

t.test('dangerous_none accepts any certificate and says so loudly once', async (t) => {
  const up = await startUpstream(t, { certificate: { key: OTHER_KEY_FILE, cert: OTHER_CERT_FILE } });
  const { upstream, logs } = clientFor(t, up, { peerAuthentication: 'dangerous_none', serverCertificateFile: '/nonexistent' });
  const file = await spoolFile(t, 'x');
  t.match(await upstream.forward('reports', 'a.log', file), { kind: 'ok' });
  t.match(await upstream.forward('reports', 'b.log', file), { kind: 'ok' });
  const warnings = logs.filter((line) => line['event'] === 'upstream-insecure');
  t.equal(warnings.length, 1);
  t.equal(warnings[0]?.level, 40);
  t.equal(upstream.status().blocked, undefined);
});

t.test('never more than maxConcurrency requests in flight, queued in order', async (t) => {
  const up = await startUpstream(t);
  const file = await spoolFile(t, 'x');

  t.test('maxConcurrency 3, 12 forwards at once', async (t) => {
    const { upstream } = clientFor(t, up, { maxConcurrency: 3 });
    await up.setMode({ delayMs: 150 });
    up.resetStats();
    const results = await Promise.all(Array.from({ length: 12 }, (_, i) => upstream.forward('reports', `c${i}.log`, file)));
    t.ok(results.every((result) => result.kind === 'ok'));
    t.equal(up.maxInFlight, 3, 'exactly the limit, never more');
    t.ok(up.handshakes <= 3, `${up.handshakes} TLS handshakes`);
  });

  t.test('maxConcurrency 1 is strictly FIFO', async (t) => {
    await up.setMode({ delayMs: 20 });
    const { upstream } = clientFor(t, up, { maxConcurrency: 1 });
    const names = Array.from({ length: 8 }, (_, i) => `fifo-${i}.log`);
    up.resetStats();
    await Promise.all(names.map((name) => upstream.forward('reports', name, file)));
    t.equal(up.maxInFlight, 1);
    t.same(
      up.received.filter((received) => received.name.startsWith('fifo-')).map((received) => received.name),
      names,
    );
  });
});

t.test('keep-alive: 20 sequential forwards reuse pooled connections', async (t) => {
  const up = await startUpstream(t);
  const { upstream } = clientFor(t, up, { maxConcurrency: 2 });
  const file = await spoolFile(t, 'x');
  // error answers too: their body is read so the connection goes back to the pool
  const modes = [{ status: 404 }, { status: 503 }, 'ok'] as const;
  for (let i = 0; i < 20; i += 1) {
    await up.setMode(modes[i % 3] ?? 'ok');
    await upstream.forward('reports', `k${i}.log`, file);
  }
  t.equal(up.requests.length, 20);
  t.ok(up.handshakes >= 1 && up.handshakes <= 2, `${up.handshakes} TLS handshakes for 20 requests`);
});

t.test('close() is idempotent; forwards after it are transient', async (t) => {
  const up = await startUpstream(t);
  const { upstream } = clientFor(t, up);
  const file = await spoolFile(t, 'x');
  t.match(await upstream.forward('reports', 'a.log', file), { kind: 'ok' });
  await Promise.all([upstream.close(), upstream.close()]);
  await upstream.close();
  t.match(await upstream.forward('reports', 'b.log', file), { kind: 'transient', reason: /closed/ });
  await upstream.reload();
  t.equal(up.requests.length, 1);
});

t.test('peer(): relay API requests share the forwarding dispatcher and its pinned trust', async (t) => {
  const up = await startUpstream(t);
  const pinned = join(tempDir(t), 'policy-server.pem');
  const { upstream } = clientFor(t, up, { serverCertificateFile: pinned, maxConcurrency: 1 });
  t.equal(upstream.peer(), undefined, 'no peer while the pinned certificate is missing');
  await copyFile(up.certificateFile, pinned);
  await upstream.reload();
  const peer = upstream.peer();
  if (peer === undefined) throw new Error('peer() after the pin appeared');
  const file = await spoolFile(t, 'x');
  t.match(await upstream.forward('reports', 'a.log', file), { kind: 'ok' });
  for (let i = 0; i < 5; i += 1) {
    const response = await peer.request('GET', '/rudder/relay-api/1/system/info');
    await response.body.dump();
    t.match(up.requests.at(-1), { method: 'GET', url: '/rudder/relay-api/1/system/info' });
    t.match(await upstream.forward('reports', `a${i}.log`, file), { kind: 'ok' });
  }
  // one pool of max_concurrency + 2 connections, reused by both kinds of request
  t.ok(up.handshakes <= 3, `${up.handshakes} TLS handshakes for 11 forwards and relay API requests`);
  await peer.close();
  t.match(await upstream.forward('reports', 'b.log', file), { kind: 'ok' }, "the peer's close() leaves the client open");
  await upstream.close();
  await t.rejects(peer.request('GET', '/'), { code: 'RELAY_ERR_UPSTREAM_CLOSED' });
});

t.test('test upstream refuses unauthenticated and non-PUT requests like Apache', async (t) => {
  const up = await startUpstream(t);
  const { request } = await import('undici');
  const { Agent } = await import('undici');
  const dispatcher = new Agent({ connect: { rejectUnauthorized: false } });
  t.teardown(() => dispatcher.close());
  const put = await request(`${up.url}/reports/x.log`, { method: 'PUT', body: 'x', dispatcher });
  await put.body.dump();
  t.equal(put.statusCode, 401);
  t.equal(put.headers['www-authenticate'], 'Basic realm="WebDAV Storage"');
  const get = await request(`${up.url}/reports/x.log`, { dispatcher });
  await get.body.dump();
  t.equal(get.statusCode, 403);
  t.equal(up.received.length, 0);
  t.equal(UPSTREAM_DEFAULT_KEY_FILE.endsWith('.nopass.priv'), true);
});
