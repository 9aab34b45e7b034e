// A stock agent (curl as rudder-client calls it) uploads to onerelay: status codes of Apache
// mod_dav, authentication as Rudder does it, bytes on disk before the 2xx, nothing written on refusal.

import { readdir, readFile, writeFile } from 'node:fs/promises';
import { request as httpsRequest } from 'node:https';
import { connect as tlsConnect } from 'node:tls';
import { join } from 'node:path';
import t from 'tap';
import { cachedAgentIdentity, curlUpload, sampleRunlog, signedGzippedReport } from '../support/agent.js';
import { DAV_PASSWORD, startRelay, type RunningRelay } from '../support/relay.js';
import { tempDir } from '../support/tmp.js';

const NODE = 'a1b2c3d4-0000-4000-8000-00000000e2e1';
const STRANGER = 'a1b2c3d4-0000-4000-8000-0000000dead1';

async function allFiles(relay: RunningRelay): Promise<string[]> {
  const found: string[] = [];
  for (const base of ['reports', 'inventories']) {
    const walk = async (dir: string): Promise<void> => {
      for (const entry of await readdir(dir, { withFileTypes: true })) {
        if (entry.isDirectory()) await walk(join(dir, entry.name));
        else found.push(join(dir, entry.name));
      }
    };
    await walk(join(relay.dir, base));
  }
  return found;
}

/** a TLS 1.3 connection (offering `session`), GET /uuid; whether it resumed, and the last session the relay sent */
function handshake(port: number, session: Buffer | undefined): Promise<{ reused: boolean; session: Buffer | undefined }> {
  return new Promise((resolve, reject) => {
    let received: Buffer | undefined;
    const socket = tlsConnect({ host: '127.0.0.1', port, rejectUnauthorized: false, minVersion: 'TLSv1.3', ...(session === undefined ? {} : { session }) }, () => {
      const reused = socket.isSessionReused();
      // tickets come after the handshake: reading the answer to a request reads them too
      socket.write('GET /uuid HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n');
      socket.on('end', () => resolve({ reused, session: received }));
    });
    socket.on('session', (ticket: Buffer) => {
      received = ticket;
    });
    socket.on('data', () => undefined);
    socket.on('error', reject);
  });
}

/** a PUT with the path exactly as given (no client-side normalisation) */
function rawPut(relay: RunningRelay, path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const request = httpsRequest(
      {
        host: '127.0.0.1',
        port: relay.httpsPort,
        path,
        method: 'PUT',
        rejectUnauthorized: false,
        headers: { authorization: `Basic ${Buffer.from(`rudder:${DAV_PASSWORD}`).toString('base64')}` },
      },
      (response) => {
        response.resume();
        resolve(response.statusCode ?? 0);
      },
    );
    request.on('error', reject);
    request.end('x');
  });
}

t.test('uploads through the HTTPS front door', async (t) => {
  const agent = await cachedAgentIdentity(NODE);
  const stranger = await cachedAgentIdentity(STRANGER);
  const relay = await startRelay(t, {
    nodesList: { [NODE]: { hostname: 'agent1.example', 'key-hash': agent.sha256Pin, 'policy-server': '37817c4d-fbf7-4850-a985-50021f4e8f41' } },
    nodesCerts: agent.certificatePem,
    maxUploadSize: 64 * 1024,
  });
  const work = tempDir(t);
  const report = await signedGzippedReport(agent, sampleRunlog(NODE));
  const reportFile = join(work, report.name);
  await writeFile(reportFile, report.body);

  await t.test('a signed gzipped report: 201, then byte-identical on disk; again: 204', async (t) => {
    const first = await curlUpload({ url: `${relay.httpsUrl}/reports/`, file: reportFile, user: 'rudder', password: DAV_PASSWORD, identity: agent });
    t.equal(first.status, 201, first.stderr);
    t.same(await readFile(join(relay.reportsIncoming, report.name)), report.body, 'bytes on disk are the bytes sent');
    const again = await curlUpload({ url: `${relay.httpsUrl}/reports/`, file: reportFile, user: 'rudder', password: DAV_PASSWORD, identity: agent });
    t.equal(again.status, 204, 'overwrite answers 204 like mod_dav');
    t.same(await readFile(join(relay.reportsIncoming, report.name)), report.body);
    // stdout is written in batches (at most 100 ms late)
    const access = await relay.waitForLog((l) => l.event === 'access' && l.status === 201, 5_000).catch(() => undefined);
    t.ok(access, 'an access log line per request');
    t.equal(access?.['node'], NODE, 'with the node proven by the certificate');
    t.equal(access?.['method'], 'PUT');
  });

  await t.test('inventories: new node with rudder:rudder, updates with the DAV password', async (t) => {
    const inventory = join(work, `${STRANGER}_2026-11-25T10:00:00+00:00.ocs.gz`);
    await writeFile(inventory, 'inventory bytes');
    const fresh = await curlUpload({ url: `${relay.httpsUrl}/inventories/`, file: inventory, user: 'rudder', password: 'rudder', identity: stranger });
    t.equal(fresh.status, 201, 'a new node is unknown: its certificate is not held against it on /inventories');
    t.same(await readdir(relay.inventoriesIncoming), [`${STRANGER}_2026-11-25T10:00:00+00:00.ocs.gz`]);
    const update = await curlUpload({ url: `${relay.httpsUrl}/inventory-updates/`, file: inventory, user: 'rudder', password: DAV_PASSWORD });
    t.equal(update.status, 201);
    t.same(await readdir(relay.inventoryUpdatesIncoming), [`${STRANGER}_2026-11-25T10:00:00+00:00.ocs.gz`]);
    const wrong = await curlUpload({ url: `${relay.httpsUrl}/inventory-updates/`, file: inventory, user: 'rudder', password: 'rudder' });
    t.equal(wrong.status, 401, 'the new-node password does not open /inventory-updates');
  });

  await t.test('refusals: 401, 403, and nothing written', async (t) => {
    const before = await allFiles(relay);
    const otherName = join(work, `2026-11-25T10:00:00+00:00@${NODE}.log.gz`);
    await writeFile(otherName, report.body);
    const noAuth = await curlUpload({ url: `${relay.httpsUrl}/reports/`, file: otherName, user: 'rudder', password: 'wrong' });
    t.equal(noAuth.status, 401, 'wrong password and no certificate');
    const anonymous = await curlUpload({ url: `${relay.httpsUrl}/reports/`, file: otherName });
    t.equal(anonymous.status, 401, 'no credentials at all');
    const unknown = await curlUpload({ url: `${relay.httpsUrl}/reports/`, file: otherName, user: 'rudder', password: DAV_PASSWORD, identity: stranger });
    t.equal(unknown.status, 403, 'certificate of an unknown node');
    t.match(unknown.stdout, /RELAY_ERR_AUTH_CERTIFICATE/);
    const strangerReport = join(work, `2026-11-25T10:00:00+00:00@${STRANGER}.log.gz`);
    await writeFile(strangerReport, report.body);
    const impersonation = await curlUpload({ url: `${relay.httpsUrl}/reports/`, file: strangerReport, user: 'rudder', password: DAV_PASSWORD, identity: agent });
    t.equal(impersonation.status, 403, "a node may not upload another node's report");
    t.match(impersonation.stdout, /RELAY_ERR_AUTH_CERTIFICATE/);
    // the other names the reports pipeline reads a node id from: v1 with anything after `.log`, and v2
    for (const otherForm of [`2026-11-25T10:00:00+00:00@${STRANGER}.log.gz.x`, `${STRANGER}_2026-11-25T10:00:00+00:00.log.gz`]) {
      const file = join(work, otherForm);
      await writeFile(file, report.body);
      const seen = relay.logs.length;
      const refused = await curlUpload({ url: `${relay.httpsUrl}/reports/`, file, user: 'rudder', password: DAV_PASSWORD, identity: agent });
      t.equal(refused.status, 403, `${otherForm}: refused as the other node's report`);
      t.match(refused.stdout, /RELAY_ERR_AUTH_CERTIFICATE/);
      // (stdout comes in batches: an earlier refusal's line may arrive after `seen`, hence the reason in the predicate)
      const line = await relay.waitForLog(
        (l) => relay.logs.indexOf(l) >= seen && l.event === 'access' && l['error'] === 'RELAY_ERR_AUTH_CERTIFICATE' && String(l['reason']).includes(`may not upload reports of node ${STRANGER}`),
        5_000,
      );
      t.equal(line['node'], NODE, 'logged with the uploader and the node id the pipeline reads');
    }
    const get = await curlUpload({ url: `${relay.httpsUrl}/reports/x.log`, file: otherName, user: 'rudder', password: DAV_PASSWORD, extraArgs: ['-X', 'GET'] });
    t.equal(get.status, 403, "methods other than PUT: 403 (Apache's <LimitExcept PUT> Require all denied)");
    t.match(get.stdout, /RELAY_ERR_UPLOAD_METHOD/);
    const propfind = await curlUpload({ url: `${relay.httpsUrl}/reports/`, file: otherName, user: 'rudder', password: DAV_PASSWORD, extraArgs: ['-X', 'PROPFIND'] });
    t.equal(propfind.status, 403, 'PROPFIND /reports/: 403');
    t.same(await allFiles(relay), before, 'nothing written');
  });

  await t.test('bad names: 400 and nothing written anywhere', async (t) => {
    const before = await allFiles(relay);
    const body = join(work, 'body');
    await writeFile(body, 'x');
    const names = ['..%2f..%2fescape.log', '..%2Fescape', '%2Fetc%2Fpasswd', '%2E%2E', '.hidden', 'nul%00byte.log', 'ctrl%0Aline.log', 'a'.repeat(300), 'sub%5Cdir', '%E0%A4%A'];
    for (const name of names) {
      const result = await curlUpload({ url: `${relay.httpsUrl}/reports/${name}`, file: body, user: 'rudder', password: DAV_PASSWORD, extraArgs: ['--path-as-is'] });
      t.equal(result.status, 400, `${name.slice(0, 40)} → 400`);
      t.match(result.stdout, /RELAY_ERR_(UPLOAD_NAME|BAD_REQUEST)/);
    }
    // curl --upload-file rewrites a path ending in "..": send the raw request line instead
    t.equal(await rawPut(relay, '/reports/..'), 400, 'PUT /reports/.. → 400');
    t.equal(await rawPut(relay, '/reports/.'), 400, 'PUT /reports/. → 400');
    const dotdot = await curlUpload({ url: `${relay.httpsUrl}/reports/../etc/passwd`, file: body, user: 'rudder', password: DAV_PASSWORD, extraArgs: ['--path-as-is'] });
    t.not(dotdot.status, 201, 'a raw ../ never lands');
    t.same(await allFiles(relay), before, 'nothing written');
    t.same(await readdir(join(relay.dir, 'reports', '.tmp')), [], 'no temp files left');
  });

  await t.test('oversize bodies: 413 and no file, declared or streamed', async (t) => {
    const big = join(work, `2026-11-25T11:00:00+00:00@${NODE}.log.gz`);
    await writeFile(big, Buffer.alloc(65 * 1024, 7));
    const declared = await curlUpload({ url: `${relay.httpsUrl}/reports/`, file: big, user: 'rudder', password: DAV_PASSWORD });
    t.equal(declared.status, 413);
    const chunked = await curlUpload({
      url: `${relay.httpsUrl}/reports/`,
      file: big,
      user: 'rudder',
      password: DAV_PASSWORD,
      extraArgs: ['-H', 'Transfer-Encoding: chunked'],
    });
    t.equal(chunked.status, 413, 'a chunked body is counted while it streams');
    t.notOk((await readdir(relay.reportsIncoming)).includes(`2026-11-25T11:00:00+00:00@${NODE}.log.gz`));
    t.same(await readdir(join(relay.dir, 'reports', '.tmp')), [], 'the partial temp file is removed');
  });

  await t.test('a client that goes away mid-body: no file, and an access line that says so', async (t) => {
    const name = `2026-11-25T11:30:00+00:00@${NODE}.log.gz`;
    await new Promise<void>((resolve, reject) => {
      const socket = tlsConnect({ host: '127.0.0.1', port: relay.httpsPort, rejectUnauthorized: false, minVersion: 'TLSv1.3' }, () => {
        const credentials = Buffer.from(`rudder:${DAV_PASSWORD}`).toString('base64');
        socket.write(`PUT /reports/${encodeURIComponent(name)} HTTP/1.1\r\nHost: relay\r\nAuthorization: Basic ${credentials}\r\nContent-Length: 10000\r\n\r\n`);
        socket.write(Buffer.alloc(1000, 7), () => {
          // the relay has the first bytes (its lease admitted the upload) before the client vanishes
          setTimeout(() => {
            socket.destroy();
            resolve();
          }, 100);
        });
      });
      socket.on('error', reject);
    });
    const line = await relay.waitForLog((l) => l.event === 'access' && l.error === 'RELAY_ERR_UPLOAD_INCOMPLETE', 5_000);
    t.equal(line.status, 400, 'logged with the status of the answer it could not receive');
    t.match(String(line.path), /^\/reports\//);
    t.notOk((await readdir(relay.reportsIncoming)).includes(name), 'nothing stored');
    t.same(await readdir(join(relay.dir, 'reports', '.tmp')), [], 'no temp file left');
    // one line per event: a later request's line is logged after anything the aborted one still had to say
    await new Promise<void>((resolve, reject) => {
      const socket = tlsConnect({ host: '127.0.0.1', port: relay.httpsPort, rejectUnauthorized: false, minVersion: 'TLSv1.3' }, () => {
        socket.end('GET /no-such-path-after-abort HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n');
      });
      socket.on('data', () => undefined);
      socket.on('close', () => resolve());
      socket.on('error', reject);
    });
    await relay.waitForLog((l) => l.event === 'access' && String(l.path).includes('no-such-path-after-abort'), 5_000);
    const lines = relay.logs.filter((l) => l.event === 'access' && String(l.path).includes(encodeURIComponent(name)));
    t.equal(lines.length, 1, `one access line for the aborted upload (${JSON.stringify(lines)})`);
  });

  await t.test('TLS 1.2 clients are refused', async (t) => {
    const result = await curlUpload({
      url: `${relay.httpsUrl}/reports/`,
      file: reportFile,
      user: 'rudder',
      password: DAV_PASSWORD,
      tls12: true,
      extraArgs: ['--tls-max', '1.2'],
    });
    t.equal(result.status, 0, 'no HTTP answer');
    t.not(result.exitCode, 0, `curl fails: ${result.stderr.trim()}`);
    const metrics = await (await fetch(`${relay.apiUrl}/metrics`)).text();
    t.match(metrics, /onerelay_https_tls_failures_total\{reason="[^"]+"\} [1-9]/, 'counted as a TLS failure');
  });

  await t.test('a TLS session is never resumed: every connection shows its certificate', async (t) => {
    const first = await handshake(relay.httpsPort, undefined);
    t.ok(first.session, 'the relay sends a session ticket');
    t.equal(first.reused, false);
    const second = await handshake(relay.httpsPort, first.session);
    t.equal(second.reused, false, 'the ticket does not resume the session (stateful ticket, never stored): a full handshake');
  });

  await t.test('/uuid and the metrics of uploads', async (t) => {
    const uuid = await curlUpload({ url: `${relay.httpsUrl}/uuid`, file: reportFile, extraArgs: ['-X', 'GET', '-T', '/dev/null'] });
    t.equal(uuid.stdout.trim(), '37817c4d-fbf7-4850-a985-50021f4e8f41');
    const metrics = await (await fetch(`${relay.apiUrl}/metrics`)).text();
    t.match(metrics, /onerelay_http_uploads_total\{endpoint="reports",status="201"\} 1/);
    t.match(metrics, /onerelay_http_uploads_total\{endpoint="reports",status="204"\} 1/);
    t.match(metrics, /onerelay_http_uploads_total\{endpoint="reports",status="401"\} 2/);
    t.match(metrics, /onerelay_http_upload_bytes_total\{endpoint="reports"\} \d+/);
    t.match(metrics, /rudder_relayd_managed_nodes_total 1/);
    t.match(metrics, /onerelay_spool_files\{directory="[^"]*reports\/incoming"\} 1/);
  });
});

t.test('clients outside allowed_networks get 403', async (t) => {
  const agent = await cachedAgentIdentity(NODE);
  const relay = await startRelay(t, {
    allowedNetworks: ['127.0.0.2/32'],
    nodesList: { [NODE]: { hostname: 'agent1.example', 'key-hash': agent.sha256Pin, 'policy-server': '37817c4d-fbf7-4850-a985-50021f4e8f41' } },
    workers: 1,
  });
  const work = tempDir(t);
  const file = join(work, `2026-11-25T12:00:00+00:00@${NODE}.log.gz`);
  await writeFile(file, 'report');
  const outside = await curlUpload({ url: `${relay.httpsUrl}/reports/`, file, user: 'rudder', password: DAV_PASSWORD });
  t.equal(outside.status, 403, 'from 127.0.0.1');
  t.match(outside.stdout, /RELAY_ERR_AUTH_NETWORK/);
  t.same(await readdir(relay.reportsIncoming), []);
  const inside = await curlUpload({ url: `${relay.httpsUrl}/reports/`, file, user: 'rudder', password: DAV_PASSWORD, extraArgs: ['--interface', '127.0.0.2'] });
  t.equal(inside.status, 201, 'from 127.0.0.2, which is allowed');
});

t.test('cert_validation: a pinned client certificate replaces Basic auth', async (t) => {
  const agent = await cachedAgentIdentity(NODE);
  const stranger = await cachedAgentIdentity(STRANGER);
  const relay = await startRelay(t, {
    peerAuthentication: 'cert_validation',
    nodesList: { [NODE]: { hostname: 'agent1.example', 'key-hash': agent.sha256Pin, 'policy-server': '37817c4d-fbf7-4850-a985-50021f4e8f41' } },
    workers: 1,
  });
  const work = tempDir(t);
  const file = join(work, `2026-11-25T12:00:00+00:00@${NODE}.log.gz`);
  await writeFile(file, 'report');
  t.equal((await curlUpload({ url: `${relay.httpsUrl}/reports/`, file, identity: agent })).status, 201, 'known node, no password');
  t.equal((await curlUpload({ url: `${relay.httpsUrl}/reports/`, file, user: 'rudder', password: DAV_PASSWORD })).status, 403, 'password without certificate');
  t.equal((await curlUpload({ url: `${relay.httpsUrl}/reports/`, file, identity: stranger })).status, 403, 'unknown node');
});
