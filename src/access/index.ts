// Face of the access module: which node may read which served path, for both servers that serve policy
// files, so that the rule "a node reads only its own policies" is written once (docs/access-rules.md):
//  - HTTPS `/policies/<uuid>/…` (Apache's RewriteCond UID=$1): `nodePoliciesFolder`;
//  - the CFEngine server on 5309 (spec-https-front-cfserverd-sync.md §2.3, the relay's cf-serverd ACL rebuilt
//    from our configuration instead of a rendered cf-serverd.cf, row by row against Rudder's cf-serverd.st):
//    `createPathAcl`, whose 'node' rule is the same folder.
// Who may connect at all is the network ACL (config's createNetworkAcl), re-exported here for both servers.
//  - connect: only clients in allowed networks (allowconnects);
//  - <policies>/<uuid>/ and <shared files>/<uuid>/: only the node whose key is that node's (admit_keys MD5=…);
//  - commonRoots: every known node;
//  - publicRoots and the shared folder: any client that may connect, even with an unknown key (admit_ips);
//  - <public root>/50_techniques: nobody (Rudder's deny_ips 0.0.0.0/0 on <ncf local>/50_techniques, the
//    most specific rule, so it wins over the root's admit);
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
  // the same as startsWith(`${root}/`) without making that string: several roots are checked per request
  return path.startsWith(root) && (path.length === root.length || root.endsWith('/') || path.charCodeAt(root.length) === SLASH);
}

const SLASH = 0x2f;

/** how often a root that does not exist yet is looked for again */
const ROOT_RETRY_MS = 1000;

/**
 * A root directory, realpath'd once it exists (it may appear after start, e.g. the shared folder). Its fields
 * keep one representation from the start ('' for "not resolved yet", a double for the retry time): a Smi
 * field later given a double, or undefined later a string, changes the objects' hidden class, and V8 then
 * throws away the request path's optimised code (measured: a relay whose public roots do not exist
 * deoptimised the ACL and the GET handler at the first agent's requests, after the CFEngine warm-up).
 */
class Root {
  private resolved = '';
  private retryAt = Number.NEGATIVE_INFINITY;

  constructor(readonly configured: string) {}

  path(): string {
    if (this.resolved !== '') return this.resolved;
    return this.resolve();
  }

  private resolve(): string {
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

export type AccessDecision = 'node' | 'node-shared-files' | 'common' | 'shared-folder' | 'public' | undefined;

export interface PathAcl {
  /** which rule admits `resolvedPath` for this reader, undefined when none does (synchronous: one call per request) */
  check(resolvedPath: string, reader: Reader): AccessDecision;
}

export interface PathAclOptions {
  readonly policiesDirectory: string;
  readonly sharedFolderPath: string;
  /** shared_files.path: `<path>/<uuid>/` is readable by that node (ncf's sharedfile_from_node copies from it) */
  readonly sharedFilesPath?: string;
  readonly commonRoots: readonly string[];
  readonly publicRoots: readonly string[];
}

/** Rudder denies `<ncf local>/50_techniques` to everyone; the other public roots have no such folder */
const DENIED_IN_PUBLIC_ROOTS = '50_techniques';

/** a node id usable as one path segment (uuid or "root"): never '', '.', '..' or containing '/' */
function isSafeNodeId(id: string): boolean {
  return /^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(id);
}

function normalisedRoot(path: string): Root {
  return new Root(toBinaryPath(posix.resolve('/', path)));
}

export function createPathAcl(options: PathAclOptions): PathAcl {
  return new PathRules(options);
}

/**
 * createPathAcl's rules. A class, not closures: every instance then runs the same functions, so code V8
 * optimised on one ACL (the CFEngine warm-up's, over its private tree) stays valid for another (the
 * server's); closures per instance made the first real request throw that code away (wrong call target).
 */
class PathRules implements PathAcl {
  private readonly policies: Root;
  private readonly shared: Root;
  private readonly common: readonly Root[];
  private readonly publics: readonly Root[];
  /** `<public root>/50_techniques` of each public root, joined again only when a root's resolved path changes
   * (a join per public root per request showed in the request path's profile) */
  private readonly denied: Array<{ root: string; path: string }>;
  private readonly own: OwnPolicies;
  private readonly ownShares: OwnFolder | undefined;

  constructor(options: PathAclOptions) {
    this.policies = normalisedRoot(options.policiesDirectory);
    this.shared = normalisedRoot(options.sharedFolderPath);
    this.common = options.commonRoots.map(normalisedRoot);
    this.publics = options.publicRoots.map(normalisedRoot);
    this.denied = this.publics.map(() => ({ root: '', path: '' }));
    this.own = new OwnPolicies(this.policies);
    this.ownShares = options.sharedFilesPath === undefined ? undefined : new OwnFolder(normalisedRoot(options.sharedFilesPath));
  }

  check(path: string, reader: Reader): AccessDecision {
    if (!path.startsWith('/') || hasDotDot(path)) return undefined;
    if (this.deniedIn(path)) return undefined;
    if (reader.nodeId !== undefined && isSafeNodeId(reader.nodeId)) {
      if (isWithin(path, this.own.path(reader))) return 'node';
      if (this.ownShares !== undefined && isWithin(path, this.ownShares.path(reader.nodeId))) return 'node-shared-files';
      if (within(path, this.common)) return 'common';
    }
    if (isWithin(path, this.shared.path())) return 'shared-folder';
    if (within(path, this.publics)) return 'public';
    return undefined;
  }

  private deniedIn(path: string): boolean {
    for (let i = 0; i < this.publics.length; i += 1) {
      const rootPath = (this.publics[i] as Root).path();
      const entry = this.denied[i] as { root: string; path: string };
      if (entry.root !== rootPath) {
        entry.root = rootPath;
        entry.path = posix.join(rootPath, DENIED_IN_PUBLIC_ROOTS);
      }
      if (isWithin(path, entry.path)) return true;
    }
    return false;
  }
}

function within(path: string, roots: readonly Root[]): boolean {
  for (const root of roots) if (isWithin(path, root.path())) return true;
  return false;
}

/**
 * The folder of node `uuid`'s policies below `policiesDirectory` when `reader` is that node (the key or
 * certificate it proved is the one nodeslist.json gives node `uuid`), else undefined: the one rule by which a
 * node reads its own policies and no other node's, over HTTPS and (through createPathAcl) over CFEngine.
 */
export function nodePoliciesFolder(policiesDirectory: string, reader: Reader, uuid: string): string | undefined {
  if (reader.nodeId === undefined || reader.nodeId !== uuid || !isSafeNodeId(uuid)) return undefined;
  return posix.join(policiesDirectory, uuid);
}

/** `<root>/<nodeId>`, remembered for the last node asked (one call per request, usually the same node) */
class OwnFolder {
  private last: { readonly root: string; readonly nodeId: string; readonly path: string } | undefined;

  constructor(private readonly root: Root) {}

  path(nodeId: string): string {
    const rootPath = this.root.path();
    let last = this.last;
    if (last?.root !== rootPath || last.nodeId !== nodeId) this.last = last = { root: rootPath, nodeId, path: posix.join(rootPath, toBinaryPath(nodeId)) };
    return last.path;
  }
}

/** the reader's policies folder (nodePoliciesFolder on the resolved root), remembered like OwnFolder */
class OwnPolicies {
  private last: { readonly root: string; readonly nodeId: string | undefined; readonly path: string } | undefined;

  constructor(private readonly root: Root) {}

  path(reader: Reader): string {
    const rootPath = this.root.path();
    let last = this.last;
    if (last?.root !== rootPath || last.nodeId !== reader.nodeId) {
      // a safe id is ASCII, so the same in a binary path; no folder: a path nothing is within
      const folder = reader.nodeId === undefined ? undefined : nodePoliciesFolder(rootPath, reader, reader.nodeId);
      this.last = last = { root: rootPath, nodeId: reader.nodeId, path: folder ?? '\0' };
    }
    return last.path;
  }
}

/** a '..' segment */
function hasDotDot(path: string): boolean {
  return path.includes('/../') || path.endsWith('/..');
}
