// The text of the relay's own run log, in the agent's report grammar (spec-agentless-node.md §C.2, §C.5;
// log_rudder.cf `_rudder_common_report` and the start/end control reports; spec-relayd.md §7.6 for how
// relayd parses it). Pure: the job decides the results, this only writes them.

import type { ReportMode } from './types.js';

export type ResultStatus = 'result_success' | 'result_error' | 'result_na';

export interface ComponentResult {
  readonly technique: string;
  readonly ruleId: string;
  readonly directiveId: string;
  readonly component: string;
  readonly key: string;
  readonly status: ResultStatus;
  readonly message: string;
}

export interface RunlogInput {
  readonly nodeId: string;
  /** RUDDER_NODE_CONFIG_ID of the policies in force */
  readonly configId: string;
  /** the run's start: g.execRun, the same on every report */
  readonly runStart: Date;
  readonly reportMode: ReportMode;
  readonly results: readonly ComponentResult[];
  /** the time written before each line (the agent's `timestamp` filter); default: the run start */
  readonly lineTime?: Date;
}

const pad = (n: number): string => String(n).padStart(2, '0');

/** `date -u "+%Y-%m-%d %T+00:00"`: g.execRun (T SYS/common/1.0/site.cf) */
export function execRunDate(date: Date): string {
  return `${date.getUTCFullYear()}-${pad(date.getUTCMonth() + 1)}-${pad(date.getUTCDate())} ${pad(date.getUTCHours())}:${pad(date.getUTCMinutes())}:${pad(date.getUTCSeconds())}+00:00`;
}

/** `date -u "+%Y-%m-%dT%T+00:00"`: line prefix (A share/lib/timestamp) and file name (A agent-run) */
export function agentTimestamp(date: Date): string {
  return execRunDate(date).replace(' ', 'T');
}

/** `<timestamp>@<node id>.log.gz`, the name report.sh uploads (spec-relayd.md §7.3 v1) */
export function runlogFileName(nodeId: string, runStart: Date): string {
  return `${agentTimestamp(runStart)}@${nodeId}.log.gz`;
}

// relayd drops a report whose message starts like a log level or "R:" (spec-relayd.md §7.6)
const LEVEL_START = /^(CRITICAL|error|warning|notice|info|verbose|debug|rudder\b|R:)/;

/** one line, never read as a log level, never an empty field separator */
function clean(message: string): string {
  const line = message.replace(/[\r\n]+/g, ' ').trim();
  return LEVEL_START.test(line) ? `- ${line}` : line;
}

/** reports sent in changes-only mode besides the control lines (log_rudder.cf rudder_common_report_index) */
const CHANGES_ONLY = new Set<string>(['result_error']);

/** the run log text, or undefined when the report mode sends nothing (reports-disabled, agent-run DO_HTTP=false) */
export function buildRunlog(input: RunlogInput): string | undefined {
  if (input.reportMode === 'reports-disabled') return undefined;
  const suffix = `@@${execRunDate(input.runStart)}##${input.nodeId}`;
  const prefix = `${agentTimestamp(input.lineTime ?? input.runStart)} R: `;
  const lines = [`${prefix}@@Common@@control@@rudder@@run@@0@@start@@${input.configId}${suffix}@#Start execution`];
  for (const r of input.results) {
    if (input.reportMode === 'changes-only' && !CHANGES_ONLY.has(r.status)) continue;
    lines.push(`${prefix}@@${r.technique}@@${r.status}@@${r.ruleId}@@${r.directiveId}@@0@@${r.component}@@${r.key}${suffix}@#${clean(r.message)}`);
  }
  lines.push(`${prefix}@@Common@@control@@rudder@@run@@0@@end@@${input.configId}${suffix}@#End execution`);
  return `${lines.join('\n')}\n`;
}
