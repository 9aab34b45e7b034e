// Unit tests of the path and network rules (spec-https-front-cfserverd-sync.md §2.3).

import { mkdir, realpath, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { createNetworkAcl, createPathAcl, isWithin } from '../../src/access/index.js';
import { tempDir } from '../support/tmp.js';

t.test('containment is by whole path segments', async (t) => {
  t.ok(isWithin('/share/node-a', '/share/node-a'));
  t.ok(isWithin('/share/node-a/rules/x', '/share/node-a'));
  t.notOk(isWithin('/share/node-ab/rules', '/share/node-a'), 'a sibling with a longer name is not inside');
  t.notOk(isWithin('/share', '/share/node-a'));
  t.ok(isWithin('/anything', '/'));
  t.ok(isWithin('/share/node-a/x', '/share/node-a/'), 'a root written with a trailing slash');
  t.ok(isWithin('/share/node-a/', '/share/node-a/'));
  t.notOk(isWithin('/share/node-ab', '/share/node-a/'));
  t.notOk(isWithin('/share/node-a', '/share/node-a/'), 'the root without its slash is not inside the root with it (as before)');
  t.notOk(isWithin('', '/share'));
});

t.test('path rules', async (t) => {
  const base = await realpath(tempDir(t, 'onerelay-cfacl-'));
  const acl = createPathAcl({
    policiesDirectory: join(base, 'share'),
    sharedFolderPath: join(base, 'shared-folder'),
    commonRoots: [join(base, 'ncf')],
    publicRoots: [join(base, 'masterfiles')],
  });
  await mkdir(join(base, 'share', 'A'), { recursive: true });
  const known = { nodeId: 'A' };
  const unknown = { nodeId: undefined };
  t.equal(await acl.check(join(base, 'share', 'A', 'rules'), known), 'node');
  t.equal(await acl.check(join(base, 'share', 'B', 'rules'), known), undefined, 'another node');
  t.equal(await acl.check(join(base, 'share'), known), undefined, 'the parent of node folders');
  t.equal(await acl.check(join(base, 'ncf', 'tree'), known), 'common');
  t.equal(await acl.check(join(base, 'shared-folder', 'f'), known), 'shared-folder');
  t.equal(await acl.check(join(base, 'masterfiles', 'promises.cf'), known), 'public');
  t.equal(await acl.check(join(base, 'ncf', 'tree'), unknown), undefined, 'unknown keys: not the common roots');
  t.equal(await acl.check(join(base, 'shared-folder'), unknown), 'shared-folder', 'the shared folder is admitted by network, as cf-serverd.st (admit_ips)');
  t.equal(await acl.check(join(base, 'masterfiles'), unknown), 'public');
  t.equal(await acl.check('/etc/passwd', known), undefined);
  t.equal(await acl.check(`${base}/share/A/../B`, known), undefined, 'an unresolved .. is never accepted');
  t.equal(await acl.check(join(base, 'share'), { nodeId: '..' }), undefined, 'a node id is one path segment');
  t.equal(await acl.check(join(base, 'x'), { nodeId: '..' }), undefined);
});

t.test('roots are compared after realpath, even when they appear after start', async (t) => {
  const base = await realpath(tempDir(t, 'onerelay-cfacl-'));
  const acl = createPathAcl({
    policiesDirectory: join(base, 'share-link'),
    sharedFolderPath: join(base, 'shared'),
    commonRoots: [],
    publicRoots: [],
  });
  await mkdir(join(base, 'real-share', 'A'), { recursive: true });
  await symlink(join(base, 'real-share'), join(base, 'share-link'));
  t.equal(await acl.check(join(base, 'real-share', 'A', 'x'), { nodeId: 'A' }), 'node', 'a symlinked policies directory');
});

t.test('allowed networks', async (t) => {
  const acl = createNetworkAcl(['127.0.0.0/8', '192.168.1.0/24', '2001:db8::/32', '10.1.2.3']);
  t.ok(acl.allows('127.0.0.1'));
  t.ok(acl.allows('::ffff:127.0.0.1'), 'IPv4-mapped on a dual-stack listener');
  t.ok(acl.allows('192.168.1.200'));
  t.notOk(acl.allows('192.168.2.1'));
  t.ok(acl.allows('2001:db8::1'));
  t.ok(acl.allows('10.1.2.3'));
  t.notOk(acl.allows('10.1.2.4'));
  t.notOk(acl.allows(undefined));
  t.ok(createNetworkAcl(['0.0.0.0/0']).allows('8.8.8.8'));
  t.notOk(createNetworkAcl([]).allows('127.0.0.1'));
});

t.test('allowed networks: decisions asked again, and past the bound of the ones kept, are the same', async (t) => {
  const acl = createNetworkAcl(['10.0.0.0/16']);
  const expected = (i: number) => i % 2 === 0;
  // 10.0.x.y when i is even, 10.1.x.y (refused) when odd; 10,000 addresses: over the bound, the cache starts again
  const address = (i: number) => `10.${i % 2}.${Math.floor(i / 256) % 256}.${i % 256}`;
  let wrong = 0;
  for (let round = 0; round < 2; round += 1) {
    for (let i = 0; i < 10_000; i += 1) if (acl.allows(address(i)) !== expected(i)) wrong += 1;
  }
  t.equal(wrong, 0);
  t.ok(acl.allows('10.0.0.1'));
  t.notOk(acl.allows('10.1.0.1'));
  t.ok(acl.allows('::ffff:10.0.0.1'));
  t.notOk(acl.allows('::ffff:10.1.0.1'));
});
