// Requests Node's HTTP parser refuses before any route sees them (a raw NUL in the target, Content-Length
// with Transfer-Encoding, a bad chunk, two Content-Lengths, headers too large, an unknown method) get the
// same coded answer and access line as every other refusal, not fastify's generic JSON.

import { readdir } from 'node:fs/promises';
import { connect as plainConnect } from 'node:net';
import { connect } from 'node:tls';
import t from 'tap';
import { DAV_PASSWORD, startRelay } from '../support/relay.js';

const AUTH = `Basic ${Buffer.from(`rudder:${DAV_PASSWORD}`).toString('base64')}`;

/** writes `request` as is over TLS and reads until the server closes (or 10 s) */
function rawRequest(port: number, request: string, plain = false): Promise<string> {
  return new Promise((resolve) => {
    let data = '';
    const socket = plain
      ? plainConnect({ port, host: '127.0.0.1' }, () => socket.write(request))
      : connect({ port, host: '127.0.0.1', rejectUnauthorized: false }, () => socket.write(request));
    const timer = setTimeout(() => socket.destroy(), 10_000);
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => (data += chunk));
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(data);
    });
  });
}

const CASES: ReadonlyArray<{ name: string; request: string; status: number; code: string }> = [
  { name: 'a raw NUL in the target', request: 'GET /uu\x00id HTTP/1.1\r\nHost: x\r\n\r\n', status: 400, code: 'RELAY_ERR_BAD_REQUEST' },
  {
    name: 'Content-Length and Transfer-Encoding',
    request: `PUT /reports/a.log HTTP/1.1\r\nHost: x\r\nAuthorization: ${AUTH}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n`,
    status: 400,
    code: 'RELAY_ERR_BAD_REQUEST',
  },
  {
    name: 'a bad chunk',
    // an upload under way: the route has the request, the parser breaks in its body
    request: `PUT /reports/2026-11-25T10:00:00+00:00@c0c0c0c0-0000-4000-8000-000000000001.log HTTP/1.1\r\nHost: x\r\nAuthorization: ${AUTH}\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nhello\r\n0\r\n\r\n`,
    status: 400,
    code: 'RELAY_ERR_BAD_REQUEST',
  },
  { name: 'two different Content-Lengths', request: 'PUT /reports/a.log HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!', status: 400, code: 'RELAY_ERR_BAD_REQUEST' },
  { name: 'headers too large', request: `GET /uuid HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`, status: 431, code: 'RELAY_ERR_HEADERS_TOO_LARGE' },
  { name: 'an unknown method', request: 'FROBNICATE /uuid HTTP/1.1\r\nHost: x\r\n\r\n', status: 400, code: 'RELAY_ERR_BAD_REQUEST' },
];

t.test('parser-level refusals: coded body and access line', async (t) => {
  const relay = await startRelay(t, { workers: 1 });
  const incoming = relay.reportsIncoming;
  for (const c of CASES) {
    await t.test(c.name, async (t) => {
      const seen = relay.logs.length;
      const answer = await rawRequest(relay.httpsPort, c.request);
      t.match(answer, new RegExp(`^HTTP/1\\.1 ${c.status} `), `status ${c.status}`);
      t.match(answer, /\r\ncontent-type: text\/plain; charset=utf-8\r\n/i, 'plain text, as every refusal');
      const body = answer.slice(answer.indexOf('\r\n\r\n') + 4);
      t.match(body, new RegExp(`^${c.code}: `), 'the body starts with the code');
      t.notMatch(body, /"statusCode"/, "not fastify's JSON");
      const line = await relay.waitForLog((l) => relay.logs.indexOf(l) >= seen && l['event'] === 'access' && l['status'] === c.status && l['error'] === c.code, 5_000);
      t.equal(line['ip'], '127.0.0.1', 'the access line has the client');
      t.equal(line.level, 40, 'at warn level, as other refusals');
    });
  }
  t.same(await readdir(incoming), [], 'nothing stored');
  const metrics = await (await fetch(`${relay.apiUrl}/metrics`)).text();
  t.match(metrics, /route="unparsed",status="400"/, 'counted with the other requests');
});

t.test('the local API answers parser refusals the same way', async (t) => {
  const relay = await startRelay(t, { workers: 1 });
  const port = Number(new URL(relay.apiUrl).port);
  const seen = relay.logs.length;
  const answer = await rawRequest(port, 'GET /rudder/relay-api/1/system/info\x00 HTTP/1.1\r\nHost: x\r\n\r\n', true);
  t.match(answer, /^HTTP\/1\.1 400 /);
  t.match(answer.slice(answer.indexOf('\r\n\r\n') + 4), /^RELAY_ERR_BAD_REQUEST: /);
  const line = await relay.waitForLog((l) => relay.logs.indexOf(l) >= seen && l['event'] === 'access' && l['error'] === 'RELAY_ERR_BAD_REQUEST', 5_000);
  t.equal(line['module'], 'local-api');
});
