// Plain-text views of the activity API for the command line: `onerelay nodes` and `onerelay trace`.
// They read the local API's JSON (the CLI runs beside the relay, not inside it).

import type { LedgerRow, NodeEventRow } from './store.js';
import type { ActionView, LedgerView, NodeView } from './index.js';

function when(iso: string | null | undefined, now: number): string {
  if (iso === null || iso === undefined) return 'never';
  const seconds = Math.max(0, (now - Date.parse(iso)) / 1000);
  if (seconds < 90) return `${Math.round(seconds)}s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)}min ago`;
  if (seconds < 172_800) return `${Math.round(seconds / 3600)}h ago`;
  return `${Math.round(seconds / 86_400)}d ago`;
}

function stamp(at: number | string): string {
  return new Date(at).toISOString().replace('T', ' ').slice(0, 19);
}

function pad(rows: readonly string[][]): string {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
  return rows.map((row) => row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i] ?? 0))).join('  ')).join('\n');
}

const action = (view: ActionView, now: number): string => (view.at === null ? 'never' : `${when(view.at, now)} ${view.outcome ?? ''}`.trim());

/** `onerelay nodes`: one line per node, silent and refused first (the API's order) */
export function nodesTable(nodes: readonly NodeView[], now = Date.now()): string {
  const rows = [['NODE', 'HOST', 'STATE', 'LAST REPORT', 'LAST POLICY', 'AGENT', 'LAST REFUSAL', 'SEEN FROM']];
  for (const node of nodes) {
    const policy = [node.policy, node.cfengine].filter((v) => v.at !== null).sort((a, b) => (b.at ?? '').localeCompare(a.at ?? ''))[0];
    rows.push([
      node.id,
      node.hostname ?? '-',
      node.silent ? 'SILENT' : node.refusal !== null && node.refusal.at > (node.report.ok_at ?? '') ? 'REFUSED' : 'ok',
      node.report.ok_at === null ? 'never' : when(node.report.ok_at, now),
      policy === undefined ? 'never' : `${when(policy.at, now)} ${policy === node.cfengine ? 'cfengine' : 'https'} ${policy.outcome ?? ''}`.trim(),
      node.agent_version ?? '-',
      node.refusal === null ? '-' : `${when(node.refusal.at, now)} ${node.refusal.code} from ${node.refusal.ip ?? '?'}`,
      node.last_ip ?? '-',
    ]);
  }
  const silent = nodes.filter((n) => n.silent).length;
  return `${pad(rows)}\n${nodes.length} nodes, ${silent} silent\n`;
}

interface TimelineEntry {
  readonly at: number;
  readonly text: string;
}

function fileEntries(row: LedgerRow): TimelineEntry[] {
  const entries: TimelineEntry[] = [
    { at: row.received_at, text: `${row.file}: received, ${row.size ?? '?'} bytes, sha256 ${row.sha256 ?? '?'}, from ${row.ip ?? '?'}${row.node ? `, node ${row.node}` : ''}` },
  ];
  if (row.verified_at !== null) entries.push({ at: row.verified_at, text: `${row.file}: verified, sent upstream` });
  if (row.done_at !== null) {
    const attempts = `${row.attempts} attempt${row.attempts === 1 ? '' : 's'}`;
    const upstream = row.upstream_status === null ? '' : `, upstream ${row.upstream_status} in ${row.upstream_ms ?? '?'} ms`;
    entries.push({ at: row.done_at, text: `${row.file}: ${row.state}${row.reason ? ` (${row.reason})` : ''} after ${attempts}${upstream}` });
  } else if (row.state === 'received') {
    entries.push({ at: Date.now(), text: `${row.file}: still queued${row.attempts > 0 ? `, ${row.attempts} attempts so far, last upstream ${row.upstream_status ?? 'no answer'}` : ''}` });
  }
  return entries;
}

/** `onerelay trace`: what happened to a node or a file, oldest first */
export function traceTimeline(subject: { node?: { node: NodeView; events: readonly NodeEventRow[]; files: LedgerView['files'] }; files?: LedgerView['files'] }, now = Date.now()): string {
  const entries: TimelineEntry[] = [];
  const lines: string[] = [];
  if (subject.node !== undefined) {
    const { node, events, files } = subject.node;
    lines.push(`node ${node.id}${node.hostname ? ` (${node.hostname})` : ''}: ${node.silent ? 'SILENT' : 'reporting'}`);
    lines.push(`  last report      ${node.report.ok_at === null ? 'never' : when(node.report.ok_at, now)}`);
    lines.push(`  last policy      https ${action(node.policy, now)}; cfengine ${action(node.cfengine, now)}`);
    lines.push(`  agent version    ${node.agent_version ?? 'unknown'}`);
    lines.push(`  last refusal     ${node.refusal === null ? 'none' : `${when(node.refusal.at, now)} ${node.refusal.code} from ${node.refusal.ip ?? '?'} (${node.refusal.action ?? ''})`}`);
    lines.push(`  last seen from   ${node.last_ip ?? 'nowhere'}`);
    for (const event of events) {
      if (event.action === 'report' || event.action === 'inventory') continue; // the files below say more
      entries.push({ at: event.at, text: `${event.action}: ${event.outcome}${event.code ? ` ${event.code}` : ''}${event.ip ? ` from ${event.ip}` : ''}` });
    }
    for (const event of events) {
      if ((event.action === 'report' || event.action === 'inventory') && !event.outcome.startsWith('2')) {
        entries.push({ at: event.at, text: `${event.action} upload: ${event.outcome}${event.ip ? ` from ${event.ip}` : ''}` });
      }
    }
    for (const row of files) entries.push(...fileEntries(row));
  }
  for (const row of subject.files ?? []) entries.push(...fileEntries(row));
  entries.sort((a, b) => a.at - b.at);
  if (entries.length === 0) lines.push('no recorded activity');
  for (const entry of entries) lines.push(`${stamp(entry.at)}  ${entry.text}`);
  return `${lines.join('\n')}\n`;
}
