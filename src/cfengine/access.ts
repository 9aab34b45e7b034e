// Who may connect and what each client may read (spec-https-front-cfserverd-sync.md §2.3): the relay's
// cf-serverd ACL rebuilt from our configuration instead of a rendered cf-serverd.cf.
//  - connect: only clients in allowed networks (allowconnects);
//  - <policies>/<uuid>/: only the node whose key is that node's (admit_keys MD5=…);
//  - commonRoots and the shared folder: every known node;
//  - publicRoots: any client that may connect, even with an unknown key (initial policies, ncf);
//  - everything else: denied.
// Paths are binary strings (latin1) and are checked after realpath, so a symlink cannot escape a root.

import { realpath } from 'node:fs/promises';
import { posix } from 'node:path';

export { createNetworkAcl } from '../config/index.js';
export type { NetworkAcl } from '../config/index.js';

/** a UTF-8 path from the configuration as the binary string the protocol code uses */
export function toBinaryPath(path: string): string {
  return Buffer.from(path, 'utf8').toString('latin1');
}

/** fs calls take the bytes of a binary path */
export function fsPath(binaryPath: string): Buffer {
  return Buffer.from(binaryPath, 'latin1');
}

/** for logs */
export function displayPath(binaryPath: string): string {
  return Buffer.from(binaryPath, 'latin1').toString('utf8');
}

export function isWithin(path: string, root: string): boolean {
  return path === root || path.startsWith(root.endsWith('/') ? root : `${root}/`);
}

/** A root directory, realpath'd once it exists (it may appear after start, e.g. the shared folder). */
class Root {
  private resolved: string | undefined;

  constructor(readonly configured: string) {}

  async path(): Promise<string> {
    if (this.resolved !== undefined) return this.resolved;
    try {
      this.resolved = await realpath(fsPath(this.configured), { encoding: 'latin1' });
      return this.resolved;
    } catch {
      return this.configured;
    }
  }
}

export interface Reader {
  /** undefined for a key that no node of nodeslist.json has */
  readonly nodeId: string | undefined;
}

export type AccessDecision = 'node' | 'common' | 'shared-folder' | 'public' | undefined;

export interface PathAcl {
  /** which rule admits `resolvedPath` for this reader, undefined when none does */
  check(resolvedPath: string, reader: Reader): Promise<AccessDecision>;
}

export interface PathAclOptions {
  readonly policiesDirectory: string;
  readonly sharedFolderPath: string;
  readonly commonRoots: readonly string[];
  readonly publicRoots: readonly string[];
}

/** a node id usable as one path segment (uuid or "root"): never '', '.', '..' or containing '/' */
function isSafeNodeId(id: string): boolean {
  return /^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(id);
}

function normalisedRoot(path: string): Root {
  return new Root(toBinaryPath(posix.resolve('/', path)));
}

export function createPathAcl(options: PathAclOptions): PathAcl {
  const policies = normalisedRoot(options.policiesDirectory);
  const shared = normalisedRoot(options.sharedFolderPath);
  const common = options.commonRoots.map(normalisedRoot);
  const publics = options.publicRoots.map(normalisedRoot);
  const within = async (path: string, roots: readonly Root[]): Promise<boolean> => {
    for (const root of roots) if (isWithin(path, await root.path())) return true;
    return false;
  };
  return {
    async check(path, reader) {
      if (!path.startsWith('/') || path.split('/').includes('..')) return undefined;
      if (reader.nodeId !== undefined && isSafeNodeId(reader.nodeId)) {
        const own = posix.join(await policies.path(), toBinaryPath(reader.nodeId));
        if (isWithin(path, own)) return 'node';
        if (await within(path, common)) return 'common';
        if (isWithin(path, await shared.path())) return 'shared-folder';
      }
      if (await within(path, publics)) return 'public';
      return undefined;
    },
  };
}
