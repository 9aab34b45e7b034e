// The report inspection of spool files, inline and on worker threads, against a real nodes registry
// (relayd's fixtures, my id: root) and real files: both give the same verdicts; threads return the bytes read.

import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { generateKeyPairSync } from 'node:crypto';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { pino } from 'pino';
import t from 'tap';
import { certificatePem, nameOf, writeSelfSignedCertificate } from '../../src/der/index.js';
import { createNodesRegistry, type NodesRegistry } from '../../src/nodes/index.js';
import { createReportHandler } from '../../src/reports/queue-handler.js';
import type { Upstream } from '../../src/upstream/index.js';
import { createInlineFileInspector, createThreadedFileInspector, type FileInspection, type ReportInspectorOptions } from '../../src/reports/index.js';
import { tempDir } from '../support/tmp.js';
import { until } from '../support/relay.js';
import { FIXTURES } from '../support/fixtures.js';

const FILES = `${FIXTURES}/files`;
const E745 = 'e745a140-40bc-4b86-b6dc-084488fc906b';
const A745 = 'a745a140-40bc-4b86-b6dc-084488fc906b';
const UNKNOWN = 'f745a140-40bc-4b86-b6dc-084488fc906b';
const RUN_2018 = `2018-08-24T15_55_01+00_00@${E745}`;
const log = pino({ level: 'silent' });

const dir = tempDir(t, 'onerelay-inspect-pool-');
copyFileSync(join(FILES, 'nodeslist.json'), join(dir, 'nodeslist.json'));
copyFileSync(join(FILES, 'keys', 'nodescerts.pem'), join(dir, 'nodescerts.pem'));
const registry: NodesRegistry = createNodesRegistry({
  myId: 'root',
  nodesListFile: join(dir, 'nodeslist.json'),
  nodesCertsFile: join(dir, 'nodescerts.pem'),
  log,
});
await registry.reload();
const options: ReportInspectorOptions = { myId: 'root', verifyMode: 'direct', skipEventTypes: [], maxDecodedBytes: 10 * 1024 * 1024 };

const signed = readFileSync(join(FILES, 'runlogs', `${RUN_2018}.signed`));
const damaged = Buffer.from(signed);
const inSignature = damaged.lastIndexOf('\n------') - 100; // a base64 character of the RSA signature value
damaged[inSignature] = damaged[inSignature] === 0x41 ? 0x42 : 0x41;
const cases: Array<[string, Buffer]> = [
  [`${RUN_2018}.log.gz`, gzipSync(signed)],
  [`${RUN_2018}.log`, damaged],
  [`2018-08-24T15:55:01+00:00@${E745}.log`, readFileSync(join(FILES, 'smime', 'normal-diff.signed'))],
  [`2018-08-24T15:55:01+00:00@${UNKNOWN}.log`, signed],
  ['bob.log', signed],
  [`2018-08-24T15:55:01+00:00@${A745}.log.gz`, gzipSync(signed).subarray(0, 100)],
];
for (const [name, bytes] of cases) writeFileSync(join(dir, name), bytes);

const verdict = (result: FileInspection): string =>
  result.kind === 'gone' ? 'gone' : result.inspection.kind === 'forward' ? `forward verified=${result.inspection.verified} reports=${result.inspection.reports}` : `${result.inspection.reason}: ${result.inspection.message}`;

t.test('threads and inline give the same verdicts; threads hand back the bytes they read', async (t) => {
  const inline = createInlineFileInspector(options, registry);
  const threaded = createThreadedFileInspector(options, registry, 2, log);
  await threaded.start();
  t.teardown(() => threaded.stop());
  const expected = await Promise.all(cases.map(([name]) => inline.inspectFile(name, join(dir, name))));
  t.same(expected.map(verdict).slice(0, 3), [
    'forward verified=true reports=72',
    `bad-signature: S/MIME signature of node "${E745}" refused: signature does not match the node certificate`,
    `bad-signature: S/MIME signature of node "${E745}" refused: message digest mismatch: the run log was modified after it was signed`,
  ]);
  // several rounds at once: spread over both threads, the certificates cached there
  const rounds = await Promise.all(
    Array.from({ length: 5 }, () => Promise.all(cases.map(([name]) => threaded.inspectFile(name, join(dir, name))))),
  );
  for (const round of rounds) t.same(round.map(verdict), expected.map(verdict));
  const first = rounds[0]![0]!;
  t.ok(first.kind === 'inspected' && first.bytes.equals(cases[0]![1]), 'the bytes read are the file, unchanged');
  t.same(await threaded.inspectFile(`${RUN_2018}.log`, join(dir, 'absent.log')), { kind: 'gone' }, 'a vanished file is gone');
  await t.rejects(threaded.inspectFile(`${RUN_2018}.log`, dir), /EISDIR|illegal operation/, 'other read errors reach the caller (the queue retries)');
});

t.test('a batch read into one buffer: each file gets exactly its own bytes, whatever size the queue saw', async (t) => {
  const threaded = createThreadedFileInspector(options, registry, 1, log);
  await threaded.start();
  t.teardown(() => threaded.stop());
  // one tick: one batch; sizes right, one too small and one too large (the file changed since the queue's stat)
  const sizes = cases.map(([, bytes], index) => (index === 1 ? bytes.length - 7 : index === 2 ? bytes.length + 9 : bytes.length));
  const results = await Promise.all(cases.map(([name], index) => threaded.inspectFile(name, join(dir, name), sizes[index])));
  cases.forEach(([name, bytes], index) => {
    const result = results[index]!;
    if (result.kind !== 'inspected' || result.inspection.kind === 'reject' && ['bad-name', 'unknown-node'].includes(result.inspection.reason)) return;
    t.ok(result.bytes.equals(bytes), `${name}: the bytes read are the file's`);
  });
});

t.test('removal of a handled file: on the thread while one runs, only if the name still holds that file', async (t) => {
  const threaded = createThreadedFileInspector(options, registry, 1, log);
  await threaded.start();
  t.teardown(() => threaded.stop());
  // in a queue directory of the spool's shape: the remover takes files into the taken folder beside it
  const incoming = join(dir, 'incoming');
  mkdirSync(incoming, { recursive: true });
  const path = join(incoming, 'to-remove.log');
  const identity = (): { ino: number; size: number; mtimeMs: number } => {
    const info = statSync(path);
    return { ino: info.ino, size: info.size, mtimeMs: info.mtimeMs };
  };
  // no thread yet: the default remover (thread pool)
  writeFileSync(path, 'one');
  t.equal(threaded.threadsRunning(), 0);
  t.equal(await threaded.removeFile(path, identity()), 'removed');
  t.notOk(existsSync(path));
  // a thread runs: removed there
  await threaded.inspectFile(cases[0]![0], join(dir, cases[0]![0]), cases[0]![1].length);
  t.equal(threaded.threadsRunning(), 1);
  writeFileSync(path, 'two');
  const seen = identity();
  t.equal(await threaded.removeFile(path, seen), 'removed');
  t.notOk(existsSync(path), 'removed by the thread');
  t.equal(await threaded.removeFile(path, seen), 'gone', 'nothing there');
  // another file put under the name since: kept
  writeFileSync(path, 'three, longer');
  t.equal(await threaded.removeFile(path, seen), 'replaced');
  t.ok(existsSync(path), 'the new file is kept');
  t.equal(await threaded.removeFile(path, undefined), 'removed', 'an untracked file: whatever the name holds');
  t.notOk(existsSync(path));
});

t.test('removals and inspections asked in one tick: one batch, each answered, the unlinks beside the inspections', async (t) => {
  const threaded = createThreadedFileInspector(options, registry, 1, log);
  await threaded.start();
  t.teardown(() => threaded.stop());
  await threaded.inspectFile(cases[0]![0], join(dir, cases[0]![0]), cases[0]![1].length);
  const incoming = join(dir, 'incoming');
  mkdirSync(incoming, { recursive: true });
  const paths = Array.from({ length: 4 }, (_, index) => join(incoming, `batch-${index}.log`));
  for (const path of paths) writeFileSync(path, path);
  const identities = paths.map((path) => {
    const info = statSync(path);
    return { ino: info.ino, size: info.size, mtimeMs: info.mtimeMs };
  });
  // a directory under a tracked name: its unlink fails, the error comes back (the queue looks again later)
  const directory = join(incoming, 'batch-dir.log');
  mkdirSync(directory);
  const directoryInfo = statSync(directory);
  const [removals, inspections, failure] = await Promise.all([
    Promise.all(paths.map((path, index) => threaded.removeFile(path, identities[index]))),
    Promise.all(cases.map(([name, bytes]) => threaded.inspectFile(name, join(dir, name), bytes.length))),
    threaded.removeFile(directory, { ino: directoryInfo.ino, size: directoryInfo.size, mtimeMs: directoryInfo.mtimeMs }).then(
      () => 'resolved',
      (error: Error) => error.message,
    ),
  ]);
  t.same(removals, ['removed', 'removed', 'removed', 'removed']);
  for (const path of paths) t.notOk(existsSync(path), `${path} removed`);
  t.equal(verdict(inspections[0]!), 'forward verified=true reports=72', 'the batch\'s files inspected meanwhile');
  t.match(failure, /EISDIR|EPERM|illegal operation|operation not permitted/, 'an unlink that fails is an error, not a removal');
  // a directory cannot be linked back: it waits in the taken folder, where the next start looks
  t.ok(existsSync(directory) || readdirSync(join(dir, '.taken', 'incoming')).some((entry) => entry.endsWith('.batch-dir.log')), 'the entry is kept');
});

t.test('stopped threads refuse work instead of hanging', async (t) => {
  const threaded = createThreadedFileInspector(options, registry, 1, log);
  await threaded.start();
  await threaded.stop();
  await t.rejects(threaded.inspectFile(cases[0]![0], join(dir, cases[0]![0])), /stopped/);
});

t.test('threads start with the first report and end after a quiet spell (an idle relay holds none)', async (t) => {
  const threaded = createThreadedFileInspector(options, registry, 1, log, 300);
  await threaded.start();
  t.teardown(() => threaded.stop());
  t.equal(threaded.threadsRunning(), 0, 'none at start');
  const name = cases[0]![0];
  const first = await threaded.inspectFile(name, join(dir, name));
  t.equal(verdict(first), 'forward verified=true reports=72');
  t.equal(threaded.threadsRunning(), 1, 'one for the report');
  await until(() => threaded.threadsRunning() === 0, 10_000, 'the idle thread to end');
  const again = await threaded.inspectFile(name, join(dir, name));
  t.equal(verdict(again), 'forward verified=true reports=72', 'a new thread after the idle end, certificates sent again');
});

/** a registry of its own over copies of the fixtures, with `extra` more nodes of root, each with a certificate made here */
async function registryWith(name: string, extra: number): Promise<{ registry: NodesRegistry; certs: string; extraIds: string[] }> {
  const own = join(dir, name);
  mkdirSync(own);
  const list = JSON.parse(readFileSync(join(FILES, 'nodeslist.json'), 'utf8')) as Record<string, unknown>;
  const key = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const extraIds = Array.from({ length: extra }, (_, i) => `20000000-0000-4000-8000-${String(i).padStart(12, '0')}`);
  for (const id of extraIds) list[id] = { hostname: id.slice(-4), 'policy-server': 'root' };
  writeFileSync(join(own, 'nodeslist.json'), JSON.stringify(list));
  const pems = extraIds.map((uid, i) =>
    certificatePem(
      writeSelfSignedCertificate({
        version: 1,
        serial: Buffer.from([1, (i >> 8) & 0xff, i & 0xff]),
        hash: 'sha256',
        name: nameOf('0.9.2342.19200300.100.1.1', uid, 0x0c),
        notBefore: new Date(Date.now() - 86_400_000),
        notAfter: new Date(Date.now() + 86_400_000),
        key,
      }),
    ),
  );
  const certs = join(own, 'nodescerts.pem');
  writeFileSync(certs, readFileSync(join(FILES, 'keys', 'nodescerts.pem'), 'latin1') + pems.join(''));
  const registry = createNodesRegistry({ myId: 'root', nodesListFile: join(own, 'nodeslist.json'), nodesCertsFile: certs, log });
  await registry.reload();
  return { registry, certs, extraIds };
}

t.test('signatures verified for more nodes than the registry keeps: certificates read again after eviction, in threads and inline', async (t) => {
  const { registry: many, extraIds } = await registryWith('many', 1100);
  t.teardown(() => many.stop());
  const inline = createInlineFileInspector(options, many);
  const threaded = createThreadedFileInspector(options, many, 1, log);
  await threaded.start();
  t.teardown(() => threaded.stop());
  const [good, bad] = [cases[0]![0], cases[1]![0]];
  for (let round = 1; round <= 3; round += 1) {
    for (const inspector of [threaded, inline]) {
      t.equal(verdict(await inspector.inspectFile(good, join(dir, good))), 'forward verified=true reports=72', `round ${round}: verified`);
      t.match(verdict(await inspector.inspectFile(bad, join(dir, bad))), /^bad-signature: .*signature does not match/, `round ${round}: a damaged signature refused`);
    }
    // 1,100 other nodes asked for: E745's signer objects evicted, made again from the file for the next round
    const before = many.signerCertificatesOf(E745);
    t.equal(extraIds.filter((id) => many.signerCertificatesOf(id).length === 1).length, extraIds.length, 'each other node: its certificate');
    t.not(many.signerCertificatesOf(E745), before, 'new objects after eviction');
  }
});

t.test('a certificates file changed in place before its reload: the inspection fails (the queue retries), never forwards unverified', async (t) => {
  const { registry: changed, certs } = await registryWith('changed', 0);
  t.teardown(() => changed.stop());
  const inline = createInlineFileInspector(options, changed);
  const threaded = createThreadedFileInspector(options, changed, 1, log);
  await threaded.start();
  t.teardown(() => threaded.stop());
  const original = readFileSync(certs);
  const good = cases[0]![0];
  // nothing asked before: the certificates are to be read from the file
  writeFileSync(certs, original.subarray(0, 300));
  for (const inspector of [threaded, inline]) {
    await t.rejects(inspector.inspectFile(good, join(dir, good)), { code: 'RELAY_ERR_NODES_CERTS' }, 'cut short: an error');
  }
  writeFileSync(certs, Buffer.concat([original.subarray(0, 200), Buffer.from('tampered'), original.subarray(208)]));
  for (const inspector of [threaded, inline]) {
    await t.rejects(inspector.inspectFile(good, join(dir, good)), { code: 'RELAY_ERR_NODES_CERTS' }, 'other bytes: an error');
  }
  // the handler the queue runs throws too: the queue's answer to a throw is a retry, the file stays
  const handler = createReportHandler({ inspector: threaded, upstream: { forward: () => t.fail('nothing forwarded') } as unknown as Upstream, counters: { count: () => undefined, observeInspection: () => undefined }, maxFileBytes: 1 << 20 }, log);
  const stat = statSync(join(dir, good));
  await t.rejects(handler({ name: good, path: join(dir, good), size: stat.size, mtimeMs: stat.mtimeMs, attempts: 0 }, { signal: new AbortController().signal } as never), { code: 'RELAY_ERR_NODES_CERTS' });
  writeFileSync(certs, original);
  await changed.reload();
  t.equal(verdict(await threaded.inspectFile(good, join(dir, good))), 'forward verified=true reports=72', 'verified again after the reload');
});
