// Remote runs in the node activity: a stock cf-serverd node that runs, and a node that is down, asked
// through the relay's local API (native mode); each node's record says how its last run went.

import { readFile } from 'node:fs/promises';
import { createPrivateKey, createPublicKey } from 'node:crypto';
import { join } from 'node:path';
import t from 'tap';
import { keyDigests } from '../../src/identity/index.js';
import { createCfWorkdir, hasCfRunagent, startCfRunNode } from '../support/cfengine.js';
import { FIXTURE_KEYS, RELAY_ID, startRelay } from '../support/relay.js';
import { freePort, tempDir } from '../support/tmp.js';

const RUNS = 'e7000000-0000-4000-8000-00000000000a';
const DOWN = 'e7000000-0000-4000-8000-00000000000b';

interface Node {
  remote_run: { at: string | null; outcome: string | null; ok_at: string | null };
}

t.test('remote runs are recorded per node', { skip: hasCfRunagent() ? false : 'CFEngine (cf-serverd, cf-key) is not installed' }, async (t) => {
  const base = tempDir(t, 'onerelay-activity-rr-');
  const relayKey = createPrivateKey(await readFile(join(FIXTURE_KEYS, `${RELAY_ID}.nopass.priv`)));
  const port = await freePort();
  const work = await createCfWorkdir(join(base, 'node'));
  const node = await startCfRunNode(work, { address: '127.0.0.2', port, admitKeys: [keyDigests(createPublicKey(relayKey)).cfengineMd5], trust: [relayKey], lines: ['done'] });
  t.teardown(() => node.stop());
  const down = await createCfWorkdir(join(base, 'down'));
  const relay = await startRelay(t, {
    workers: 1,
    nodesList: {
      [RUNS]: { hostname: '127.0.0.2', 'key-hash': work.sha256Pin, 'policy-server': RELAY_ID },
      // nothing listens there
      [DOWN]: { hostname: '127.0.0.4', 'key-hash': down.sha256Pin, 'policy-server': RELAY_ID },
    },
    extraToml: `[remote_run]\nenabled = true\nmode = "native"\nport = ${port}\nconnect_timeout = "2s"\n`,
  });
  const run = async (id: string) => {
    const response = await fetch(`${relay.apiUrl}/rudder/relay-api/1/remote-run/nodes/${id}`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'keep_output=true&asynchronous=false' });
    return { status: response.status, body: await response.text() };
  };
  t.match((await run(RUNS)).body, /exit code: 0/, 'the node ran');
  await run(DOWN);
  const nodeOf = async (id: string) => ((await (await fetch(`${relay.apiUrl}/rudder/relay-api/1/nodes/${id}`)).json()) as { data: { node: Node } }).data.node;
  const ran = await nodeOf(RUNS);
  t.equal(ran.remote_run.outcome, 'ok');
  t.ok(ran.remote_run.ok_at, 'last successful run');
  const failed = await nodeOf(DOWN);
  t.equal(failed.remote_run.outcome, 'failed', 'the node that is down');
  t.equal(failed.remote_run.ok_at, null);
});
