// Request path resolution on the event loop (src/cfengine/files.ts): the directory realpath cache must give
// realpath's answer, and see any change that would make a remembered answer wrong.

import { lstatSync, realpathSync } from 'node:fs';
import { mkdir, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { DirectoryCache, resolveRequestPath } from '../../src/cfengine/files.js';
import { tempDir } from '../support/tmp.js';

const early = (path: string) => {
  try {
    return lstatSync(path, { bigint: true });
  } catch {
    return undefined;
  }
};

t.test('the directory cache answers what realpath answers, and sees a directory replaced', async (t) => {
  const base = realpathSync(tempDir(t, 'onerelay-dircache-'));
  await mkdir(join(base, 'a', 'rules'), { recursive: true });
  await mkdir(join(base, 'b', 'rules'), { recursive: true });
  await writeFile(join(base, 'a', 'rules', 'x.cf'), 'a\n');
  await writeFile(join(base, 'b', 'rules', 'x.cf'), 'b\n');
  await symlink(join(base, 'a'), join(base, 'via-link'));
  const cache = new DirectoryCache();

  t.equal(await cache.resolve(join(base, 'a', 'rules')), join(base, 'a', 'rules'));
  t.equal(await cache.resolve(join(base, 'via-link', 'rules')), join(base, 'a', 'rules'), 'through a linked ancestor');
  t.equal(cache.size, 2);
  t.equal(await cache.resolve(join(base, 'a', 'rules')), join(base, 'a', 'rules'), 'remembered');
  t.equal(await cache.resolve(join(base, 'a', 'rules', 'x.cf')), undefined, 'a file is not a directory');
  t.equal(await cache.resolve(join(base, 'missing')), undefined);

  // the named directory moved away and replaced by a link to another one
  await rename(join(base, 'a', 'rules'), join(base, 'a', 'rules-old'));
  await symlink(join(base, 'b', 'rules'), join(base, 'a', 'rules'));
  t.equal(await cache.resolve(join(base, 'a', 'rules')), join(base, 'b', 'rules'), 'a directory replaced by a link');
  // an ancestor link pointed elsewhere
  await rm(join(base, 'via-link'));
  await symlink(join(base, 'b'), join(base, 'via-link'));
  t.equal(await cache.resolve(join(base, 'via-link', 'rules')), join(base, 'b', 'rules'), 'an ancestor link changed');
  // the directory itself moved and a link put in its place: same directory, but its ctime changed
  await mkdir(join(base, 'c', 'rules'), { recursive: true });
  await mkdir(join(base, 'e'), { recursive: true });
  t.equal(await cache.resolve(join(base, 'c', 'rules')), join(base, 'c', 'rules'));
  await rename(join(base, 'c', 'rules'), join(base, 'e', 'rules'));
  await symlink(join(base, 'e', 'rules'), join(base, 'c', 'rules'));
  t.equal(await cache.resolve(join(base, 'c', 'rules')), join(base, 'e', 'rules'), 'a moved directory');
});

t.test('request paths resolve as realpath does', async (t) => {
  const base = realpathSync(tempDir(t, 'onerelay-resolve-'));
  await mkdir(join(base, 'node', 'rules'), { recursive: true });
  await mkdir(join(base, 'other'), { recursive: true });
  await writeFile(join(base, 'node', 'rules', 'x.cf'), 'x\n');
  await writeFile(join(base, 'other', 'secret'), 's\n');
  await symlink(join(base, 'other', 'secret'), join(base, 'node', 'rules', 'link'));
  await symlink(join(base, 'node', 'gone'), join(base, 'node', 'rules', 'dead'));
  const cache = new DirectoryCache();
  const resolve = (path: string) => resolveRequestPath(path, early(path), cache);

  t.same(await resolve(join(base, 'node', 'rules', 'x.cf')), { kind: 'ok', path: join(base, 'node', 'rules', 'x.cf') });
  t.same(await resolve(join(base, 'node', 'rules')), { kind: 'ok', path: join(base, 'node', 'rules') });
  t.same(await resolve(join(base, 'node', 'rules', 'link')), { kind: 'ok', path: join(base, 'other', 'secret') }, 'a link is followed');
  t.same(await resolve(join(base, 'node', 'rules', 'dead')), { kind: 'ok', path: join(base, 'node', 'rules', 'dead') }, 'a dead link is kept');
  for (const odd of [`${base}/node/./rules/x.cf`, `${base}/node//rules/x.cf`, `${base}/other/../node/rules/x.cf`]) {
    t.same(await resolve(odd), { kind: 'ok', path: join(base, 'node', 'rules', 'x.cf') }, odd);
  }
  t.same(await resolve(`${base}/node/rules/`), { kind: 'ok', path: join(base, 'node', 'rules') }, 'a trailing slash');
  t.same(await resolve('/'), { kind: 'ok', path: '/' });
  t.equal((await resolve(join(base, 'node', 'missing'))).kind, 'absent');
  t.equal((await resolve('node/rules/x.cf')).kind, 'absent', 'relative');

  // the file's directory replaced by a link after it was resolved: the new target is what counts
  await rename(join(base, 'node', 'rules'), join(base, 'node', 'rules-old'));
  await writeFile(join(base, 'other', 'x.cf'), 'other\n');
  await symlink(join(base, 'other'), join(base, 'node', 'rules'));
  t.same(await resolve(join(base, 'node', 'rules', 'x.cf')), { kind: 'ok', path: join(base, 'other', 'x.cf') });
});
