// Who may connect and what each client may read (spec-https-front-cfserverd-sync.md §2.3): the relay's
// cf-serverd ACL rebuilt from our configuration instead of a rendered cf-serverd.cf.
//  - connect: only clients in allowed networks (allowconnects);
//  - <policies>/<uuid>/: only the node whose key is that node's (admit_keys MD5=…);
//  - commonRoots and the shared folder: every known node;
//  - publicRoots: any client that may connect, even with an unknown key (initial policies, ncf);
//  - everything else: denied.
// Paths are binary strings (latin1) and are checked after realpath, so a symlink cannot escape a root.

import { realpathSync } from 'node:fs';
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

/** how often a root that does not exist yet is looked for again */
const ROOT_RETRY_MS = 1000;

/** A root directory, realpath'd once it exists (it may appear after start, e.g. the shared folder). */
class Root {
  private resolved: string | undefined;
  private retryAt = 0;

  constructor(readonly configured: string) {}

  path(): string {
    if (this.resolved !== undefined) return this.resolved;
    const now = performance.now();
    if (now < this.retryAt) return this.configured;
    try {
      this.resolved = realpathSync.native(fsPath(this.configured), { encoding: 'latin1' });
      return this.resolved;
    } catch {
      this.retryAt = now + ROOT_RETRY_MS;
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
  /** which rule admits `resolvedPath` for this reader, undefined when none does (synchronous: one call per request) */
  check(resolvedPath: string, reader: Reader): AccessDecision;
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
  const within = (path: string, roots: readonly Root[]): boolean => {
    for (const root of roots) if (isWithin(path, root.path())) return true;
    return false;
  };
  let ownFor: { readonly root: string; readonly nodeId: string; readonly path: string } | undefined;
  const own = (nodeId: string): string => {
    const root = policies.path();
    if (ownFor?.root !== root || ownFor.nodeId !== nodeId) ownFor = { root, nodeId, path: posix.join(root, toBinaryPath(nodeId)) };
    return ownFor.path;
  };
  return {
    check(path, reader) {
      if (!path.startsWith('/') || hasDotDot(path)) return undefined;
      if (reader.nodeId !== undefined && isSafeNodeId(reader.nodeId)) {
        if (isWithin(path, own(reader.nodeId))) return 'node';
        if (within(path, common)) return 'common';
        if (isWithin(path, shared.path())) return 'shared-folder';
      }
      if (within(path, publics)) return 'public';
      return undefined;
    },
  };
}

/** a '..' segment */
function hasDotDot(path: string): boolean {
  return path.includes('/../') || path.endsWith('/..');
}
