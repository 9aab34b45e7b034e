// /uuid: open to every client (Apache's `Require all granted`), but in cert_validation only to a client whose
// certificate is verified (Rudder's rudder-apache-relay-ssl.conf.j2: `Require expr "%{SSL_CLIENT_VERIFY} == 'SUCCESS'"`).
// curl as agents run it.

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { cachedAgentIdentity, curlDownload } from '../support/agent.js';
import { RELAY_ID, startRelay } from '../support/relay.js';
import { tempDir } from '../support/tmp.js';

const NODE = 'a1b2c3d4-0000-4000-8000-00000000e2e1';
const STRANGER = 'a1b2c3d4-0000-4000-8000-0000000dead1';

t.test('cert_validation: /uuid needs a verified client certificate', async (t) => {
  const agent = await cachedAgentIdentity(NODE);
  const stranger = await cachedAgentIdentity(STRANGER);
  const relay = await startRelay(t, {
    peerAuthentication: 'cert_validation',
    nodesList: { [NODE]: { hostname: 'agent1.example', 'key-hash': agent.sha256Pin, 'policy-server': RELAY_ID } },
    workers: 1,
  });
  const work = tempDir(t);
  const output = join(work, 'uuid');

  const seen = relay.logs.length;
  const anonymous = await curlDownload({ url: `${relay.httpsUrl}/uuid`, output, fail: false });
  t.equal(anonymous.status, 403, 'no client certificate: refused');
  t.match(await readFile(output, 'utf8'), /^RELAY_ERR_AUTH_CERTIFICATE: /, 'with the code in the body');
  const line = await relay.waitForLog((l) => relay.logs.indexOf(l) >= seen && l.event === 'access' && l['path'] === '/uuid' && l['status'] === 403, 5_000);
  t.equal(line['error'], 'RELAY_ERR_AUTH_CERTIFICATE', 'and in the access line');

  const unknown = await curlDownload({ url: `${relay.httpsUrl}/uuid`, output, identity: stranger, fail: false });
  t.equal(unknown.status, 403, 'the certificate of an unknown node: refused');

  const known = await curlDownload({ url: `${relay.httpsUrl}/uuid`, output, identity: agent });
  t.equal(known.status, 200, `a known node's certificate: served (${known.stderr})`);
  t.equal(await readFile(output, 'utf8'), `${RELAY_ID}\n`, 'the relay id');
});

t.test('cert_pinning: /uuid is open to every client', async (t) => {
  const relay = await startRelay(t, { workers: 1 });
  const output = join(tempDir(t), 'uuid');
  const anonymous = await curlDownload({ url: `${relay.httpsUrl}/uuid`, output });
  t.equal(anonymous.status, 200, 'no client certificate: served');
  t.equal(await readFile(output, 'utf8'), `${RELAY_ID}\n`);
});
