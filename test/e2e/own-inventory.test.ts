// A new relay registers with its Rudder server as a node does (README "The relay as a Rudder node"):
// `onerelay init` prints the steps naming its id, `onerelay start` sends a signed inventory of itself that
// the root's checks accept, the status API shows it, and a restart with a renewed certificate sends another
// at once (other identity facts wait for the agent's resend delay: test/agentless/own-inventory.test.ts).

import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import { relayConfigToml, runCli, startRelay } from '../support/relay.js';
import { checkInventoryAsRoot } from '../support/root-inventory-check.js';
import { freePort, tempDir } from '../support/tmp.js';
import { UPSTREAM_DEFAULT_ID, startUpstream, type TestUpstream } from '../support/upstream.js';

const run = promisify(execFile);

async function until(what: string, predicate: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function latestPair(upstream: TestUpstream) {
  const files = upstream.files('inventories');
  const inventory = files.filter((f) => f.name.endsWith('.ocs.gz')).at(-1);
  const signature = inventory && files.find((f) => f.name === inventory.name.replace(/\.gz$/, '.sign'));
  return { inventory, signature };
}

t.test('a freshly initialised relay registers itself: init prints the steps, start uploads a signed inventory the root accepts', async (t) => {
  const upstream = await startUpstream(t);
  const dir = tempDir(t, 'onerelay-register-');
  const configFile = join(dir, 'onerelay.toml');
  const upstreamOption = { port: upstream.port, certificateFile: upstream.certificateFile };
  await writeFile(configFile, relayConfigToml(dir, { https: await freePort(), api: await freePort() }, { upstream: upstreamOption, ownInventory: true }));

  const init = await runCli(['init', '--config', configFile]);
  t.equal(init.code, 0, init.stderr);
  const nodeId = (await readFile(join(dir, 'uuid.hive'), 'utf8')).trim();
  t.match(nodeId, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/, 'init made a node id');
  t.match(init.stdout, `To register relay ${nodeId}`, 'init prints the registration steps');
  t.match(init.stdout, /1\. start it: onerelay start --config .*onerelay\.toml/);
  t.match(init.stdout, `https://127.0.0.1:${upstream.port}/inventories/`, 'where the first inventory goes');
  t.match(init.stdout, `nodes/pending/${nodeId}`, 'accept it on the root');
  t.match(init.stdout, `rudder server node-to-relay ${nodeId}`, 'promote it with its real id');
  t.match(init.stdout, /picks up its own policies at its next sync/);
  const lines = init.stdout.split('\n');
  const step = (n: number) => lines.findIndex((l) => l.trimStart().startsWith(`${n}. `));
  t.ok(step(1) < step(2) && step(2) < step(3) && step(3) < step(4), 'start, accept, node-to-relay, next sync: in that order');

  const relay = await startRelay(t, { dir, upstream: upstreamOption, ownInventory: true });
  await upstream.waitFor(2, 60_000);
  const { inventory, signature } = latestPair(upstream);
  t.ok(inventory && signature, 'an .ocs.gz and its .ocs.sign on /inventories/');
  if (!inventory || !signature) return;
  t.ok(inventory.name.startsWith(`${nodeId}_`), 'named after the new id');
  t.same([inventory.user, inventory.password], ['rudder', 'rudder'], 'with the default password');
  const result = await checkInventoryAsRoot({ inventory: inventory.body, inventoryName: inventory.name, signature: signature.body, signatureName: signature.name });
  t.same(result.problems, [], 'every check of the root passes, the signature verified by openssl with the AGENT_CERT key');
  t.equal(result.nodeId, nodeId);
  t.equal(result.policyServerId, UPSTREAM_DEFAULT_ID, 'its policy server is the upstream, as GET /uuid said');
  t.ok(relay.logs.some((l) => l.event === 'own_inventory_queued'), 'a log line says it was queued');

  type Status = { data?: { own_inventory?: { status: string; endpoint?: string; last_outcome?: { ok: boolean; message: string } } } };
  let status: Status = {};
  await until('the status shows the inventory as sent', async () => {
    status = (await (await fetch(`${relay.apiUrl}/rudder/relay-api/1/system/status`)).json()) as Status;
    return status.data?.own_inventory?.last_outcome?.ok === true;
  });
  t.equal(status.data?.own_inventory?.status, 'success');
  t.equal(status.data?.own_inventory?.endpoint, 'inventories');
  t.equal(status.data?.own_inventory?.last_outcome?.message, 'The inventory has been successfully sent');
  const page = await (await fetch(`${relay.apiUrl}/`)).text();
  t.match(page, 'The inventory has been successfully sent', 'the status page shows it too');

  // restarted with the same facts: nothing new; restarted with a renewed certificate: a new inventory at start
  t.equal(await relay.stop(), 0);
  const before = upstream.received.length;
  const unchanged = await startRelay(t, { dir, upstream: upstreamOption, ownInventory: true });
  const check = await unchanged.waitForLog((l) => l.event === 'own_inventory_checked');
  t.equal(check['due'], null, 'the first check after the restart finds nothing due');
  t.equal(await unchanged.stop(), 0);
  t.equal(upstream.received.length, before, 'a restart with unchanged facts sends no new inventory');
  t.notOk(unchanged.logs.some((l) => l.event === 'own_inventory_queued'));

  await run('openssl', ['req', '-new', '-x509', '-key', join(dir, 'ppkeys', 'localhost.priv'), '-subj', `/UID=${nodeId}`, '-days', '3650', '-out', join(dir, 'agent.cert')]);
  const renewed = await startRelay(t, { dir, upstream: upstreamOption, ownInventory: true });
  await upstream.waitFor(4, 60_000);
  const again = latestPair(upstream);
  t.not(again.inventory?.name, inventory.name, 'a second inventory');
  // the upload may beat the log line through the pipe: wait for the line
  // at once, not after the resend delay: the root checks the relay's signatures with the key it last received
  t.match((await renewed.waitForLog((l) => l.event === 'own_inventory_queued'))['reason'], 'certificate changed');
  const second = await checkInventoryAsRoot({ inventory: again.inventory!.body, inventoryName: again.inventory!.name, signature: again.signature?.body, signatureName: again.signature?.name });
  t.same(second.problems, []);
});
