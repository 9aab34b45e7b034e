// Rudder's access rules across the whole process (docs/access-rules.md): what one node sends another
// through the shared-files API reaches it over port 5309 with the stock cf-agent, as ncf's
// sharedfile_from_node copies it; and the HTTPS rows that differ from a plain fastify answer.

import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { cachedAgentIdentity, curlDownload, run } from '../support/agent.js';
import { createCfWorkdir, errorLines, hasCfengine, runCopy } from '../support/cfengine.js';
import { FIXTURES, FIXTURE_KEYS, RELAY_ID, startRelay } from '../support/relay.js';
import { tempDir } from '../support/tmp.js';

const SOURCE = 'e745a140-40bc-4b86-b6dc-084488fc906b';
const SOURCE_PIN = 'sha256//I8utFWGj+OpqpbiAIZ/s8qRC4fQXxQ8IRVjFe0X1Lug=';
const TARGET = 'b0b0b0b0-0000-4000-8000-0000000000d1';
const OTHER = 'b0b0b0b0-0000-4000-8000-0000000000d2';
const SHARED = join(FIXTURES, 'api_shared_files', RELAY_ID, 'files', SOURCE);
const skip = hasCfengine() ? false : 'skipped: /usr/bin/cf-agent is not installed (Debian package cfengine3)';

t.test('a shared file PUT over HTTPS for node B is copied by node B with cf-agent, and by nobody else', { skip }, async (t) => {
  const base = tempDir(t, 'onerelay-e2e-access-');
  const [target, other] = await Promise.all([createCfWorkdir(join(base, 'target')), createCfWorkdir(join(base, 'other'))]);
  const relay = await startRelay(t, {
    workers: 1,
    nodesList: {
      [SOURCE]: { hostname: 'source.example', 'key-hash': SOURCE_PIN, 'policy-server': RELAY_ID },
      [TARGET]: { hostname: 'target.example', 'key-hash': target.sha256Pin, 'policy-server': RELAY_ID },
      [OTHER]: { hostname: 'other.example', 'key-hash': other.sha256Pin, 'policy-server': RELAY_ID },
    },
    nodesCerts: await readFile(join(FIXTURE_KEYS, `${SOURCE}.cert`), 'utf8'),
  });
  // what the source's agent sends (ncf sharedfile_to_node): the signature block, a blank line, the content
  const body = join(base, 'body');
  const content = await readFile(join(SHARED, 'file2.source'));
  await writeFile(body, Buffer.concat([await readFile(join(SHARED, 'file2.sign')), Buffer.from('\n'), content]));
  const put = await run('curl', [
    '-sk', '-X', 'PUT', '-o', '/dev/null', '-w', '%{http_code}', '--data-binary', `@${body}`,
    '-H', 'Content-Type: application/octet-stream',
    `${relay.httpsUrl}/rudder/relay-api/shared-files/${TARGET}/${SOURCE}/file2?ttl=1d`,
  ]);
  t.equal(put.stdout.toString(), '200', 'stored for the target');

  // ncf sharedfile_from_node: copy_from "/var/rudder/shared-files/${g.uuid}/files/<source>/<file_id>" on the policy server
  const remote = join(relay.dir, 'shared-files', TARGET, 'files', SOURCE, 'file2');
  const dest = join(base, 'file2-received');
  const copied = await runCopy(target, { port: relay.cfenginePort, copies: [{ source: remote, dest, recurse: false }] });
  t.same(errorLines(copied.stdout), [], 'no error from cf-agent');
  t.same(await readFile(dest), content, 'the target node has the file, byte for byte');

  const stolen = join(base, 'file2-stolen');
  const refused = await runCopy(other, { port: relay.cfenginePort, copies: [{ source: remote, dest: stolen, recurse: false }] });
  t.match(errorLines(refused.stdout).join('\n'), /Can't stat file/, "another node's key is refused");
  await t.rejects(readFile(stolen), 'nothing copied for the other node');
  const denied = await relay.waitForLog((l) => l.msg === 'cfengine access denied' && l['node'] === OTHER);
  t.match(String(denied['path']), /shared-files\/b0b0b0b0-0000-4000-8000-0000000000d1\/files/, 'the refusal is logged with the path');
});

t.test('HTTPS rows as Apache answers them: merged slashes, 403 for other methods on the upload collections', async (t) => {
  const node = 'b0b0b0b0-0000-4000-8000-0000000000d3';
  const identity = await cachedAgentIdentity(node);
  const relay = await startRelay(t, {
    workers: 1,
    nodesList: { [node]: { hostname: 'n.example', 'key-hash': identity.sha256Pin, 'policy-server': RELAY_ID } },
  });
  await mkdir(join(relay.dir, 'share', node, 'rules'), { recursive: true });
  await writeFile(join(relay.dir, 'share', node, 'rules', 'promises.cf'), 'own\n');
  await mkdir(join(relay.dir, 'share', 'common'), { recursive: true });
  await writeFile(join(relay.dir, 'share', 'common', 'x'), 'common\n');
  const work = tempDir(t);
  const get = (path: string) => curlDownload({ url: `${relay.httpsUrl}${path}`, output: join(work, 'out'), identity, fail: false, extraArgs: ['--path-as-is'] });

  // Apache's MergeSlashes On (its default): an empty segment is no segment
  t.equal((await get(`/policies//${node}/rules/promises.cf`)).status, 200, '/policies//<uuid>/… served as /policies/<uuid>/…');
  t.equal(await readFile(join(work, 'out'), 'utf8'), 'own\n');
  t.equal((await get(`/policies/${node}//rules//promises.cf`)).status, 200, 'empty segments inside the path too');
  t.equal((await get('/common//x')).status, 200, '/common//x served as /common/x');
  t.equal(await readFile(join(work, 'out'), 'utf8'), 'common\n');
  t.equal((await get(`/policies/${node}/rules/%2e%2e/rules/promises.cf`)).status, 400, 'an encoded .. segment is still refused');

  for (const method of ['GET', 'PROPFIND', 'DELETE']) {
    const answer = await run('curl', ['-sk', '-X', method, '-w', '\n%{http_code}', '--user', 'rudder:x', `${relay.httpsUrl}/reports/`]);
    const text = answer.stdout.toString();
    t.match(text, /\n403$/, `${method} /reports/: 403 as Apache (<LimitExcept PUT> Require all denied)`);
    t.match(text, /RELAY_ERR_UPLOAD_METHOD/);
  }
  const refused = await relay.waitForLog((l) => l['event'] === 'access' && l['method'] === 'PROPFIND' && l['status'] === 403);
  t.equal(refused['error'], 'RELAY_ERR_UPLOAD_METHOD', 'logged with its code');
});

t.test('refusals are never hidden by log rate-limiting: every refused request has its access line', async (t) => {
  const relay = await startRelay(t, { workers: 1 });
  const refused: string[] = [];
  // more than the 5 lines a minute a repeated warning gets, from the same client, with several codes
  for (let i = 0; i < 8; i += 1) refused.push(`/reports/x${i}.log`);
  for (let i = 0; i < 4; i += 1) refused.push(`/rudder/relay-api/nothing-${i}`);
  for (let i = 0; i < 4; i += 1) refused.push(`/nowhere-${i}`);
  for (const path of refused) await run('curl', ['-sk', '-o', '/dev/null', `${relay.httpsUrl}${path}`]);
  const last = refused[refused.length - 1];
  await relay.waitForLog((l) => l['event'] === 'access' && l['path'] === last);
  const lines = relay.logs.filter((l) => l['event'] === 'access' && Number(l['status']) >= 400);
  t.same(lines.map((l) => l['path']), refused, 'one access line per refused request, in order');
  t.same([...new Set(lines.map((l) => l['error']))].sort(), ['RELAY_ERR_AUTH_NETWORK', 'RELAY_ERR_NOT_FOUND', 'RELAY_ERR_UPLOAD_METHOD'], 'each with its code');
  t.notOk(relay.logs.some((l) => l['event'] === 'log_rate_limited' || l['event'] === 'log_suppressed'), 'nothing counted instead of written');
});
