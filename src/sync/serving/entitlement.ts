// What a requesting relay is entitled to (serving side): its place in the tree of nodeslist.json, the
// nodes below it (recursively through sub-relays), and the filtered nodeslist.json / nodescerts.pem
// Rudder generates for each relay (spec-https-front-cfserverd-sync.md §3.2 g and the nodescerts row).

import { readFile, stat } from 'node:fs/promises';
import { RelayError, messageOf } from '../../errors.js';
import { isErrno } from '../lib/fs-util.js';
import { isSafeSegment } from '../lib/manifest.js';

/** nodeslist.json as written, plus the children of each policy server */
export interface NodesTree {
  /** node id → its object in nodeslist.json, unchanged */
  readonly entries: ReadonlyMap<string, Record<string, unknown>>;
  /** policy server id → ids of the nodes it serves, sorted */
  readonly children: ReadonlyMap<string, readonly string[]>;
  /** mtime of the file in ms (0 when absent): the mtime of the generated nodeslist.json */
  readonly mtimeMs: number;
  /** file identity the tree was read from, to re-read only on change */
  readonly key: string;
}

/** relayd's limit on a policy-server chain (spec-relayd.md §3.4) */
const MAX_DEPTH = 20;

const EMPTY: NodesTree = { entries: new Map(), children: new Map(), mtimeMs: 0, key: 'absent' };

/** re-reads the file only when its size, mtime or inode changed */
export async function loadNodesTree(file: string, previous: NodesTree | undefined): Promise<NodesTree> {
  let key: string;
  let mtimeMs: number;
  try {
    const s = await stat(file, { bigint: true });
    key = `${s.ino}:${s.size}:${s.mtimeNs}`;
    mtimeMs = Number((s.mtimeNs + 500_000n) / 1_000_000n);
  } catch (error) {
    if (isErrno(error, 'ENOENT')) return EMPTY;
    throw new RelayError('RELAY_ERR_NODES_LIST', `cannot read ${file}: ${messageOf(error)}`, { cause: error });
  }
  if (previous !== undefined && previous.key === key) return previous;
  let parsed: unknown;
  try {
    parsed = JSON.parse(await readFile(file, 'utf8'));
  } catch (error) {
    if (isErrno(error, 'ENOENT')) return EMPTY;
    throw new RelayError('RELAY_ERR_NODES_LIST', `invalid nodes list ${file}: ${messageOf(error)}`, { cause: error });
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new RelayError('RELAY_ERR_NODES_LIST', `invalid nodes list ${file}: expected a JSON object of node id → node`);
  }
  const entries = new Map<string, Record<string, unknown>>();
  const children = new Map<string, string[]>();
  for (const [id, value] of Object.entries(parsed as Record<string, unknown>)) {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) continue;
    const node = value as Record<string, unknown>;
    entries.set(id, node);
    const policyServer = node['policy-server'];
    if (typeof policyServer !== 'string') continue;
    const list = children.get(policyServer);
    if (list === undefined) children.set(policyServer, [id]);
    else list.push(id);
  }
  for (const list of children.values()) list.sort();
  return { entries, children, mtimeMs, key };
}

/**
 * Directory segments from this relay's trees down to `relayId`'s own share: `[R, 'share']` for a direct
 * sub-relay, `[A, 'share', R, 'share']` behind sub-relay A (PathComputer's nesting). undefined when
 * `relayId` is not below `myId` (or the chain loops, or an id would be an unsafe path segment).
 */
export function shareSegments(tree: NodesTree, myId: string, relayId: string): string[] | undefined {
  const chain: string[] = [];
  let current = relayId;
  for (let depth = 0; depth < MAX_DEPTH; depth += 1) {
    if (!isSafeSegment(current)) return undefined;
    chain.push(current);
    const policyServer = tree.entries.get(current)?.['policy-server'];
    if (typeof policyServer !== 'string' || policyServer === current) return undefined;
    if (policyServer === myId) return chain.reverse().flatMap((id) => [id, 'share']);
    current = policyServer;
  }
  return undefined;
}

/** every node below `relayId`, recursively, sorted; loops are cut */
export function descendantsOf(tree: NodesTree, relayId: string): string[] {
  const seen = new Set<string>([relayId]);
  const queue = [relayId];
  const found: string[] = [];
  for (let next = queue.shift(); next !== undefined; next = queue.shift()) {
    for (const child of tree.children.get(next) ?? []) {
      if (seen.has(child)) continue;
      seen.add(child);
      found.push(child);
      queue.push(child);
    }
  }
  return found.sort();
}

/** the nodeslist.json of a relay: the entries of the nodes below it, as upstream has them */
export function nodesListFor(tree: NodesTree, descendants: readonly string[]): Buffer {
  const list: Record<string, Record<string, unknown>> = {};
  for (const id of descendants) {
    const entry = tree.entries.get(id);
    if (entry !== undefined) list[id] = entry;
  }
  return Buffer.from(`${JSON.stringify(list, null, 2)}\n`, 'utf8');
}

/** mtime (ms) of a file, 0 when absent */
export async function mtimeMsOf(file: string): Promise<number> {
  try {
    return Number(((await stat(file, { bigint: true })).mtimeNs + 500_000n) / 1_000_000n);
  } catch {
    return 0;
  }
}
