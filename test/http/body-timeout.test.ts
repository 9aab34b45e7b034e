// A request body that stalls is cut off (https.body_timeout): the upload is answered 408
// RELAY_ERR_REQUEST_TIMEOUT and closed, its disk-budget reservation is free again, nothing of it is stored.
// The client is a real TLS client that sends the headers and part of the body, then nothing.

import { existsSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { connect, type TLSSocket } from 'node:tls';
import t from 'tap';
import { putFile } from '../support/put.js';
import { DAV_PASSWORD, startRelay } from '../support/relay.js';

const AUTH = `Basic ${Buffer.from(`rudder:${DAV_PASSWORD}`).toString('base64')}`;
const BODY = 100_000;

/**
 * sends `head` and `part` over TLS, then nothing; resolves with what the server sent once it closed, and when.
 * A head with `Expect: 100-continue` gets `part` sent once the server answered 100 (the upload was admitted).
 */
function stalledRequest(port: number, head: string, part: Buffer): { socket: TLSSocket; sent: Promise<void>; closed: Promise<{ data: string; at: number }> } {
  let data = '';
  const waitsForContinue = /^expect: 100-continue\r$/im.test(head);
  let markSent: () => void = () => undefined;
  const sent = new Promise<void>((resolve) => (markSent = resolve));
  const socket = connect({ port, host: '127.0.0.1', rejectUnauthorized: false, minVersion: 'TLSv1.3' }, () => {
    socket.write(head);
    if (!waitsForContinue) {
      socket.write(part);
      markSent();
    }
  });
  socket.setEncoding('utf8');
  socket.on('data', (chunk: string) => {
    data += chunk;
    if (waitsForContinue && data.startsWith('HTTP/1.1 100 ') && data.includes('\r\n\r\n')) {
      data = data.slice(data.indexOf('\r\n\r\n') + 4);
      socket.write(part);
      markSent();
    }
  });
  socket.on('error', () => undefined);
  const closed = new Promise<{ data: string; at: number }>((resolve) => socket.on('close', () => resolve({ data, at: Date.now() })));
  return { socket, sent, closed };
}

t.test('a stalled upload is refused within body_timeout and frees its reservation', async (t) => {
  // the budget holds one body of BODY bytes, not two
  const relay = await startRelay(t, { workers: 1, maxUploadSize: BODY, maxSpoolSize: 150_000, httpsToml: 'body_timeout = "1s"' });
  const name = '2026-12-06T10:00:00+00:00@c0c0c0c0-0000-4000-8000-000000000001.log';
  const seen = relay.logs.length;
  const started = Date.now();
  const stalled = stalledRequest(
    relay.httpsPort,
    `PUT /reports/${encodeURIComponent(name)} HTTP/1.1\r\nHost: x\r\nAuthorization: ${AUTH}\r\nContent-Length: ${BODY}\r\nExpect: 100-continue\r\n\r\n`,
    Buffer.alloc(1, 0x61),
  );
  // the 100 Continue comes once the upload holds its reservation
  await stalled.sent;
  const refusedWhileHeld = await putFile({ port: relay.httpsPort, endpoint: 'reports', name: '2026-12-06T10:00:01+00:00@c0c0c0c0-0000-4000-8000-000000000001.log', body: Buffer.alloc(BODY), password: DAV_PASSWORD });
  t.equal(refusedWhileHeld, 507, 'while the stalled upload holds its reservation, another one that needs it is refused');

  const { data, at } = await stalled.closed;
  const elapsed = at - started;
  t.ok(elapsed >= 1_000 && elapsed < 4_000, `the stalled connection was answered and closed after ${elapsed} ms (body_timeout 1 s)`);
  t.match(data, /^HTTP\/1\.1 408 /, 'answered 408');
  t.match(data.slice(data.indexOf('\r\n\r\n') + 4), /^RELAY_ERR_REQUEST_TIMEOUT: /, 'the body has the code');
  const line = await relay.waitForLog((l) => relay.logs.indexOf(l) >= seen && l['event'] === 'access' && l['error'] === 'RELAY_ERR_REQUEST_TIMEOUT', 5_000);
  t.equal(line['status'], 408, 'the access line has the status and the code');

  const after = await putFile({ port: relay.httpsPort, endpoint: 'reports', name: '2026-12-06T10:00:02+00:00@c0c0c0c0-0000-4000-8000-000000000001.log', body: Buffer.alloc(BODY), password: DAV_PASSWORD });
  t.equal(after, 201, 'the budget is free again: an upload that needs it is stored');
  t.notOk(existsSync(join(relay.reportsIncoming, name)), 'the stalled body is not in the spool');
  t.notOk(existsSync(join(relay.dir, 'reports', 'failed', name)), 'nor among the refused files');
  t.same(await readdir(join(relay.dir, 'reports', '.tmp')).catch(() => []), [], 'and no temp file is left');
});

t.test('a stalled body on a fastify route (shared-files PUT) is refused within body_timeout', async (t) => {
  const relay = await startRelay(t, { workers: 1, httpsToml: 'body_timeout = "1s"' });
  const seen = relay.logs.length;
  const started = Date.now();
  const stalled = stalledRequest(
    relay.httpsPort,
    `PUT /rudder/relay-api/shared-files/c0c0c0c0-0000-4000-8000-000000000001/c0c0c0c0-0000-4000-8000-000000000002/file?ttl=1d HTTP/1.1\r\nHost: x\r\nContent-Length: ${BODY}\r\n\r\n`,
    Buffer.alloc(10, 0x61),
  );
  const { data, at } = await stalled.closed;
  t.ok(at - started < 4_000, `answered and closed after ${at - started} ms`);
  t.match(data, /^HTTP\/1\.1 408 /, 'answered 408');
  t.match(data.slice(data.indexOf('\r\n\r\n') + 4), /^RELAY_ERR_REQUEST_TIMEOUT: /, 'the body has the code');
  const line = await relay.waitForLog((l) => relay.logs.indexOf(l) >= seen && l['event'] === 'access' && l['error'] === 'RELAY_ERR_REQUEST_TIMEOUT' && l['status'] === 408, 5_000);
  t.match(line, { method: 'PUT', path: /^\/rudder\/relay-api\/shared-files\// }, 'with the request line');
});

t.test('a body that drips stays within request_timeout', async (t) => {
  const relay = await startRelay(t, { workers: 1, maxUploadSize: BODY, httpsToml: 'body_timeout = "5s"\nrequest_timeout = "2s"' });
  const name = '2026-12-06T10:00:03+00:00@c0c0c0c0-0000-4000-8000-000000000001.log';
  const seen = relay.logs.length;
  const started = Date.now();
  const stalled = stalledRequest(
    relay.httpsPort,
    `PUT /reports/${encodeURIComponent(name)} HTTP/1.1\r\nHost: x\r\nAuthorization: ${AUTH}\r\nContent-Length: ${BODY}\r\n\r\n`,
    Buffer.alloc(1, 0x61),
  );
  // a byte every 500 ms: never idle for body_timeout
  const drip = setInterval(() => stalled.socket.write('a'), 500);
  t.teardown(() => clearInterval(drip));
  const { data, at } = await stalled.closed;
  clearInterval(drip);
  t.ok(at - started < 5_000, `cut off after ${at - started} ms (request_timeout 2 s)`);
  t.match(data, /^HTTP\/1\.1 408 /, 'answered 408');
  const line = await relay.waitForLog((l) => relay.logs.indexOf(l) >= seen && l['event'] === 'access' && l['error'] === 'RELAY_ERR_REQUEST_TIMEOUT', 5_000);
  t.equal(line['path'], `/reports/${encodeURIComponent(name)}`, "the upload's own access line has the code");
  t.notOk(existsSync(join(relay.reportsIncoming, name)), 'nothing stored');
  // one line for one request: a request after it is logged, so any line of the timed-out one is in by now
  const probe = stalledRequest(relay.httpsPort, 'GET /uuid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', Buffer.alloc(0));
  t.match((await probe.closed).data, /^HTTP\/1\.1 200 /);
  await relay.waitForLog((l) => relay.logs.indexOf(l) >= seen && l['event'] === 'access' && l['path'] === '/uuid', 5_000);
  const lines = relay.logs.slice(seen).filter((l) => l['event'] === 'access' && l['status'] !== 200);
  t.equal(lines.length, 1, `one access line: ${JSON.stringify(lines.map((l) => [l['status'], l['error']]))}`);
});
