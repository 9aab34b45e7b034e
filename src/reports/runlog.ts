// Run log parser: the combinator grammar of spec-relayd.md §7.6 (relayd's nom parser) ported literally,
// on string positions, plus the run-level checks of §7.7. Output shaped like relayd's serde dump (the
// fixtures' .json files).
//
// Combinator semantics kept: take_until(x) looks ahead across lines and fails when x is absent; `|` is
// ordered choice; repetitions stop at the first failing item, and an item that succeeds without consuming
// makes the repetition fail; failures never consume. Two guards that do not change results: searches
// remember their last answer (no rescans for an absent "##"), and a work budget turns a pathological input
// (quadratic backtracking) into an invalid run log instead of a stalled queue.

import { parseRelaxedRfc3339, parseRfc3339, parseStartDate } from './dates.js';
import type { RunInfo } from './index.js';
import { ReportError } from './report-error.js';

export interface Report {
  readonly start_datetime: string;
  readonly rule_id: string;
  readonly directive_id: string;
  readonly component: string;
  readonly key_value: string;
  readonly event_type: string;
  readonly msg: string;
  readonly policy: string;
  readonly node_id: string;
  readonly execution_datetime: string;
  readonly report_id: string;
}

export interface RunLog {
  readonly info: { readonly node_id: string; readonly timestamp: string };
  /** key_value of the first control start/end report, null when there is none */
  readonly config_id: string | null;
  readonly reports: readonly Report[];
}

/**
 * Parses a run log text (the verified content of an S/MIME signed run log) and checks it (§7.7).
 * `info` is the run info of the file name: every report must come from its node id, and it becomes
 * the RunLog's info. Without it, the node id and start date of the first report stand in for it.
 * Throws ReportError('invalid-runlog') when nothing can be parsed, no report is valid, or a node id differs.
 */
export function parseRunlog(text: string, info?: RunInfo): RunLog {
  const { reports } = parseReports(text);
  const first = reports[0];
  if (first === undefined) {
    throw new ReportError(
      'invalid-runlog',
      'inconsistent run log: no valid report line; expected lines like "<timestamp> R: @@<policy>@@<event type>@@…##<node id>@#<message>"',
    );
  }
  const nodeId = info?.nodeId ?? first.node_id;
  const timestamp = info === undefined ? first.start_datetime : (parseRelaxedRfc3339(info.timestamp) ?? info.timestamp);
  for (let i = 0; i < reports.length; i++) {
    const report = reports[i]!;
    if (report.node_id !== nodeId) {
      throw new ReportError(
        'invalid-runlog',
        `inconsistent run log: report ${i + 1} comes from node "${report.node_id}", expected "${nodeId}"${info === undefined ? ' (the node of the first report)' : ' (the node id in the file name)'}`,
      );
    }
  }
  const control = reports.find((r) => r.event_type === 'control' && (r.component === 'start' || r.component === 'end'));
  return { info: { node_id: nodeId, timestamp }, config_id: control?.key_value ?? null, reports };
}

export interface ParsedReports {
  readonly reports: Report[];
  /** pieces skipped as garbage or broken reports (relayd logs them as "Invalid report: …") */
  readonly skipped: string[];
}

/** The grammar alone: `runlog := maybe_report+`. Throws ReportError when not even one item matches. */
export function parseReports(text: string): ParsedReports {
  const parser = new RunlogParser(text);
  const result = parser.runlog();
  if (result === undefined) {
    throw new ReportError(
      'invalid-runlog',
      parser.exhausted
        ? 'run log too complex to parse (pathological nesting of broken reports)'
        : 'invalid run log: no report line, log line or text line could be parsed; expected the timestamped output of a Rudder agent run',
    );
  }
  return result;
}

/** What the reporting queue's inspection needs of a run log: how many reports, and whether all are of a skipped event type. */
export interface RunlogSummary {
  readonly reports: number;
  /** every report's event type is in the skipped set (false when the set is empty) */
  readonly allSkipped: boolean;
}

/**
 * The same outcome as parseRunlog(text, info) (acceptance, and the same ReportError when refused), reduced to what
 * an inspection uses. The usual run log (every line a report of the file's node, on one line) is checked in one
 * pass over the text without building a report: ~5× cheaper. Anything else (log lines, continuation lines, fields
 * across lines, another node id, lone CRs, a failing line) goes to parseRunlog, which stays the one reference.
 */
export function checkRunlog(text: string, info: RunInfo, skipEventTypes: ReadonlySet<string>): RunlogSummary {
  const lean = leanRunlogCheck(text, info.nodeId, skipEventTypes);
  if (lean !== undefined) return lean;
  const { reports } = parseRunlog(text, info);
  return { reports: reports.length, allSkipped: skipEventTypes.size > 0 && reports.every((r) => skipEventTypes.has(r.event_type)) };
}

/**
 * @internal (exported for its tests) The fast path of checkRunlog: a summary when every line is `TS R: @@f@@f@@f@@f@@f@@component@@key@@start##node@#msg`
 * ending in "\n" or "\r\n", with the parser's own tests on each piece, undefined otherwise. Why the result is
 * parseRunlog's on such a text: at a line start, log_entry fails (agent_log_level refuses "R: @@") and the report's
 * tail succeeds with the line's fields (every "@@"/"##"/"@#" search that the parser makes from there finds the
 * same position inside the line, and a timestamp that the metadata parser may skip holds no "@"); its message is
 * one simpleline that ends at the line end, and the next line, a report line, is not a simpleline, so it is not
 * taken as a continuation. Hence one report per line, each with the line's node id and event type, and a work
 * budget never reached (about 2× the text, against 16×).
 */
export function leanRunlogCheck(s: string, nodeId: string, skipEventTypes: ReadonlySet<string>): RunlogSummary | undefined {
  // indexOf, not a loop over characters: V8's string search is ~3× faster here
  // and no startsWith: V8's String.prototype.startsWith compares character by character, and calls into the
  // runtime when the searched string is a slice (lastStamp and lastStart are): a slice compared with === (a memory
  // compare once the lengths match) made this check ~35 % cheaper on the bench's run logs (~37 → ~22 µs per report)
  const length = s.length;
  let allSkipped = skipEventTypes.size > 0;
  let count = 0;
  let p = 0;
  let cr = s.indexOf('\r');
  // consecutive lines mostly carry the same timestamps: compare the text before parsing it again. The first
  // values match no text (a field never holds a line end): '' would take an empty start date for one already
  // checked, and a run log of such lines, which the parser refuses, would pass
  let lastStamp = '\n';
  let lastStart = '\n';
  while (p < length) {
    const lf = s.indexOf('\n', p);
    if (lf < 0) return undefined; // the last line needs a terminator
    if (cr >= 0 && cr < p) cr = s.indexOf('\r', p);
    let end = lf; // simpleline's EOL: "\r\n" or "\n" here (a lone "\r" is an EOL of its own: left to the parser)
    if (cr >= 0 && cr < lf) {
      if (cr !== lf - 1) return undefined;
      end = cr;
    }
    // line_timestamp: up to the first space, within the line (a CR or LF in it would fail the date anyway)
    const c = s.charCodeAt(p);
    if (c < 0x30 || c > 0x39) return undefined;
    const space = s.indexOf(' ', p);
    if (space < 0 || space >= end) return undefined;
    if (space - p !== lastStamp.length || s.slice(p, space) !== lastStamp) {
      if (parseRfc3339(s, p, space) === undefined) return undefined;
      lastStamp = s.slice(p, space);
    }
    let q = space + 1;
    if (!isReportTagAt(s, q)) return undefined;
    q += 5;
    // policy, event type, rule, directive, report id, component, key value: each up to the next "@@" (the
    // parser's take_until), here before the line's end
    let eventStart = 0;
    let eventEnd = 0;
    for (let field = 0; field < 7; field++) {
      const at = s.indexOf('@@', q);
      if (at < 0 || at >= end) return undefined;
      if (field === 1) {
        eventStart = q;
        eventEnd = at;
      }
      q = at + 2;
    }
    const hashes = s.indexOf('##', q);
    if (hashes < 0 || hashes >= end) return undefined;
    if (hashes - q !== lastStart.length || s.slice(q, hashes) !== lastStart) {
      if (parseStartDate(s, q, hashes) === undefined) return undefined;
      lastStart = s.slice(q, hashes);
    }
    q = hashes + 2;
    const nodeEnd = s.indexOf('@#', q);
    if (nodeEnd < 0 || nodeEnd >= end) return undefined;
    if (nodeEnd - q !== nodeId.length || s.slice(q, nodeEnd) !== nodeId) return undefined; // the parser words the error
    q = nodeEnd + 2;
    // the message: simpleline := [line_timestamp] !(agent_log_level | "R: @@") text EOL
    const m = s.charCodeAt(q);
    if (m >= 0x30 && m <= 0x39) {
      const stampEnd = s.indexOf(' ', q);
      if (stampEnd >= 0 && parseRfc3339(s, q, stampEnd) !== undefined) q = stampEnd + 1;
    }
    if (agentLogLevelEnd(s, q) !== FAIL || isReportTagAt(s, q)) return undefined;
    count++;
    if (allSkipped && !skipEventTypes.has(s.slice(eventStart, eventEnd))) allSkipped = false;
    p = lf + 1;
  }
  return count === 0 ? undefined : { reports: count, allSkipped };
}

/** s.startsWith('R: @@', q), by its five character codes (see leanRunlogCheck) */
function isReportTagAt(s: string, q: number): boolean {
  return s.charCodeAt(q) === 0x52 && s.charCodeAt(q + 1) === 0x3a && s.charCodeAt(q + 2) === 0x20 && s.charCodeAt(q + 3) === 0x40 && s.charCodeAt(q + 4) === 0x40;
}

// ---------------------------------------------------------------------------------------------------------

const FAIL = -1;

const LEVELS: ReadonlyArray<readonly [string, string]> = [
  ['CRITICAL', 'log_warn'],
  ['   error', 'log_warn'],
  [' warning', 'log_warn'],
  ['  notice', 'log_info'],
  ['    info', 'log_info'],
  [' verbose', 'log_debug'],
  ['   debug', 'log_debug'],
  ['rudder CRITICAL', 'log_warn'],
  ['rudder    error', 'log_warn'],
  ['rudder  warning', 'log_warn'],
  ['rudder   notice', 'log_info'],
  ['rudder     info', 'log_info'],
  ['R: [FATAL]', 'log_warn'],
  ['R: [ERROR]', 'log_warn'],
  ['R: [INFO]', 'log_info'],
  ['R: [DEBUG]', 'log_debug'],
  ['R: WARNING', 'log_warn'],
  ['R: DEBUG', 'log_warn'], // CFEngine stdlib debug output, classified log_warn by relayd (sic)
];

/** LEVELS grouped by first character, order kept: only literals that can match are tried */
const LEVELS_BY_FIRST = new Map<number, Array<readonly [string, string]>>();
for (const level of LEVELS) {
  const first = level[0].charCodeAt(0);
  const group = LEVELS_BY_FIRST.get(first) ?? [];
  group.push(level);
  LEVELS_BY_FIRST.set(first, group);
}

const CHAR_CR = 0x0d;
const CHAR_LF = 0x0a;
const CHAR_SPACE = 0x20;
const CHAR_COLON = 0x3a;

/** the event type of the last agentLogLevelEnd match */
let matchedLevelType = '';

/** agent_log_level := LEVEL [":"] " "*: where it ends, or FAIL; its event type in matchedLevelType */
function agentLogLevelEnd(s: string, p: number): number {
  const levels = LEVELS_BY_FIRST.get(s.charCodeAt(p)); // C, space, r, R
  if (levels === undefined) return FAIL;
  // a report line: no level starts with "R: @", and the untagged form below excludes it
  if (s.startsWith('R: @@', p)) return FAIL;
  let q = FAIL;
  for (const [literal, type] of levels) {
    if (s.startsWith(literal, p)) {
      q = p + literal.length;
      matchedLevelType = type;
      break;
    }
  }
  if (q === FAIL) {
    // "R:" not followed by " @@": an untagged non-Rudder report
    if (!s.startsWith('R:', p) || s.startsWith(' @@', p + 2)) return FAIL;
    q = p + 2;
    matchedLevelType = 'log_info';
  }
  if (s.charCodeAt(q) === CHAR_COLON) q++;
  while (s.charCodeAt(q) === CHAR_SPACE) q++;
  return q;
}

/** indexOf that remembers its last answer: valid for any later start up to that answer */
class Finder {
  private from = -1;
  private at = FAIL;

  constructor(
    private readonly text: string,
    private readonly needle: string,
  ) {}

  next(from: number): number {
    if (this.from >= 0 && from >= this.from && (this.at === FAIL || this.at >= from)) return this.at;
    this.from = from;
    this.at = this.text.indexOf(this.needle, from);
    return this.at;
  }
}

interface LogEntry {
  readonly end: number;
  readonly eventType: string;
  readonly msg: string;
  readonly datetime: string;
}

class RunlogParser {
  private readonly space: Finder;
  private readonly atat: Finder;
  private readonly hashhash: Finder;
  private readonly atHash: Finder;
  private readonly reportBegin: Finder;
  private readonly cr: Finder;
  private readonly lf: Finder;
  private budget: number;
  exhausted = false;

  // results of the last successful lineTimestamp / simpleline / agentLogLevel call
  private timestamp = '';
  private lineText = '';
  private levelType = '';

  private readonly chainEnds = new Map<number, number>();
  private readonly failedTails = new Set<number>();

  // the start date repeats on every report line: parse each distinct text once
  private readonly startDates = new Map<string, string | undefined>();

  // one-entry memo of lineTimestamp: the same position is tried by several alternatives in a row
  private memoPos = -1;
  private memoEnd = FAIL;
  private memoTimestamp = '';

  // the last line timestamp text parsed, and its result
  private lastLineStamp = '';
  private lastLineParsed: string | undefined;

  constructor(private readonly s: string) {
    this.space = new Finder(s, ' ');
    this.atat = new Finder(s, '@@');
    this.hashhash = new Finder(s, '##');
    this.atHash = new Finder(s, '@#');
    this.reportBegin = new Finder(s, 'R: @@');
    this.cr = new Finder(s, '\r');
    this.lf = new Finder(s, '\n');
    this.budget = 16 * s.length + 1_000_000; // real run logs use about 1× (fixtures: 0.5–0.9)
  }

  private spend(units: number): boolean {
    this.budget -= units;
    if (this.budget < 0) this.exhausted = true;
    return !this.exhausted;
  }

  /** runlog := maybe_report+ (the unparsed rest is ignored) */
  runlog(): ParsedReports | undefined {
    const reports: Report[] = [];
    const skipped: string[] = [];
    let pos = 0;
    let items = 0;
    while (!this.exhausted) {
      const end = this.maybeReport(pos, reports, skipped);
      if (end === FAIL) break;
      if (end === pos) return undefined; // many1: an item that consumes nothing is an error
      pos = end;
      items++;
    }
    if (this.exhausted || items === 0) return undefined;
    return { reports, skipped };
  }

  /** maybe_report := report | garbage | until_next */
  private maybeReport(p: number, reports: Report[], skipped: string[]): number {
    let end = this.report(p, reports);
    if (end !== FAIL) return end;
    end = this.garbage(p);
    if (end !== FAIL) {
      skipped.push(this.lineText);
      return end;
    }
    return this.untilNext(p, skipped);
  }

  /** garbage := !line_timestamp simpleline */
  private garbage(p: number): number {
    if (this.lineTimestamp(p) !== FAIL) return FAIL;
    return this.simpleline(p);
  }

  /** until_next := take_until("R: @@") "R: @@" multilines */
  private untilNext(p: number, skipped: string[]): number {
    const at = this.reportBegin.next(p);
    if (at === FAIL) return FAIL;
    const lines: string[] = [];
    const end = this.multilines(at + 5, lines);
    if (end === FAIL) return FAIL;
    skipped.push(this.s.slice(p, at + 5) + lines.join(''));
    return end;
  }

  /**
   * report := log_entry* TS " " "R: @@" policy "@@" event_type "@@" rule_id "@@" directive_id "@@"
   *           report_id "@@" component "@@" key_value "@@" start_date "##" node_id "@#" message
   */
  private report(p: number, out: Report[]): number {
    // a failed report is retried from each of its log lines (until_next moves one line at a time when
    // log texts contain "R: @@"): remember where their log chain ended and that the report after it failed
    const knownChainEnd = this.chainEnds.get(p);
    if (knownChainEnd !== undefined && this.failedTails.has(knownChainEnd)) return FAIL;
    const logs: LogEntry[] = [];
    let q = p;
    while (true) {
      const entry = this.logEntry(q);
      if (entry === undefined) break;
      if (entry.end === q) return FAIL;
      logs.push(entry);
      q = entry.end;
    }
    const end = this.reportTail(q, logs, out);
    if (end === FAIL) {
      this.failedTails.add(q);
      this.chainEnds.set(p, q);
      for (const log of logs) this.chainEnds.set(log.end, q);
    }
    return end;
  }

  /** the report line itself, after its log entries */
  private reportTail(start: number, logs: readonly LogEntry[], out: Report[]): number {
    let q = this.lineTimestamp(start);
    if (q === FAIL) return FAIL;
    const executionDatetime = this.timestamp;
    if (!this.s.startsWith('R: @@', q)) return FAIL;
    q += 5;

    const fields: string[] = [];
    for (let i = 0; i < 5; i++) {
      const at = this.atat.next(q);
      if (at === FAIL) return FAIL;
      fields.push(this.s.slice(q, at));
      q = at + 2;
    }
    const [policy, eventType, ruleId, directiveId, reportId] = fields as [string, string, string, string, string];

    const component: string[] = [];
    q = this.multilinesMetadata(q, component);
    if (q === FAIL || !this.s.startsWith('@@', q)) return FAIL;
    q += 2;
    const keyValue: string[] = [];
    q = this.multilinesMetadata(q, keyValue);
    if (q === FAIL || !this.s.startsWith('@@', q)) return FAIL;
    q += 2;

    const hashes = this.hashhash.next(q);
    if (hashes === FAIL) return FAIL;
    const startDatetime = this.cachedDate(q, hashes, parseStartDate, this.startDates);
    if (startDatetime === undefined) return FAIL;
    q = hashes + 2;
    const nodeEnd = this.atHash.next(q);
    if (nodeEnd === FAIL) return FAIL;
    const nodeId = this.s.slice(q, nodeEnd);
    q = nodeEnd + 2;
    const msg: string[] = [];
    q = this.multilines(q, msg);
    if (q === FAIL) return FAIL;

    const joinedKeyValue = keyValue.join('\n');
    const report: Report = {
      start_datetime: startDatetime,
      rule_id: ruleId,
      directive_id: directiveId,
      component: component.join('\n'),
      key_value: joinedKeyValue === '' ? 'None' : joinedKeyValue,
      event_type: eventType,
      msg: msg.join('\n'),
      policy,
      node_id: nodeId,
      execution_datetime: executionDatetime,
      report_id: reportId === '' ? '0' : reportId,
    };
    // log lines before a report become reports of their own, with the report's context
    for (const log of logs) {
      out.push({ ...report, event_type: log.eventType, msg: log.msg, execution_datetime: log.datetime });
    }
    out.push(report);
    return q;
  }

  /** log_entry := line_timestamp agent_log_level multilines */
  private logEntry(p: number): LogEntry | undefined {
    let q = this.lineTimestamp(p);
    if (q === FAIL) return undefined;
    const datetime = this.timestamp;
    q = this.agentLogLevel(q);
    if (q === FAIL) return undefined;
    const eventType = this.levelType;
    const lines: string[] = [];
    q = this.multilines(q, lines);
    if (q === FAIL) return undefined;
    return { end: q, eventType, msg: lines.join('\n'), datetime };
  }

  /** agent_log_level := LEVEL [":"] " "* */
  private agentLogLevel(p: number): number {
    const q = agentLogLevelEnd(this.s, p);
    if (q !== FAIL) this.levelType = matchedLevelType;
    return q;
  }

  /** line_timestamp := TS " " where TS = take_until(" ") parsed as RFC 3339 */
  private lineTimestamp(p: number): number {
    if (p === this.memoPos) {
      this.timestamp = this.memoTimestamp;
      return this.memoEnd;
    }
    this.memoPos = p;
    this.memoEnd = FAIL;
    const c = this.s.charCodeAt(p);
    if (c >= 0x30 && c <= 0x39) {
      const space = this.space.next(p);
      if (space !== FAIL) {
        // consecutive lines mostly carry the same second: compare the text before parsing it again
        let parsed: string | undefined;
        if (space - p === this.lastLineStamp.length && this.s.startsWith(this.lastLineStamp, p)) parsed = this.lastLineParsed;
        else {
          parsed = parseRfc3339(this.s, p, space);
          this.lastLineStamp = this.s.slice(p, space);
          this.lastLineParsed = parsed;
        }
        if (parsed !== undefined) {
          this.memoEnd = space + 1;
          this.memoTimestamp = parsed;
          this.timestamp = parsed;
        }
      }
    }
    return this.memoEnd;
  }

  private cachedDate(
    start: number,
    end: number,
    parse: (s: string, start: number, end: number) => string | undefined,
    cache: Map<string, string | undefined>,
  ): string | undefined {
    if (end - start > 48) return parse(this.s, start, end);
    const text = this.s.slice(start, end);
    if (cache.has(text)) return cache.get(text);
    const parsed = parse(this.s, start, end);
    if (cache.size < 4096) cache.set(text, parsed);
    return parsed;
  }

  /** simpleline := [line_timestamp] !(agent_log_level | "R: @@") text EOL; sets lineText */
  private simpleline(p: number): number {
    let q = this.lineTimestamp(p);
    if (q === FAIL) q = p;
    if (this.agentLogLevel(q) !== FAIL || this.s.startsWith('R: @@', q)) return FAIL;
    const eol = this.nextEol(q);
    if (eol === FAIL) return FAIL; // the last line needs a terminator
    if (!this.spend(eol - p + 16)) return FAIL;
    this.lineText = this.s.slice(q, eol);
    // EOL := "\r\n" | "\r" | "\n"
    return this.s.charCodeAt(eol) === CHAR_CR && this.s.charCodeAt(eol + 1) === CHAR_LF ? eol + 2 : eol + 1;
  }

  private nextEol(p: number): number {
    const cr = this.cr.next(p);
    const lf = this.lf.next(p);
    if (cr === FAIL) return lf;
    if (lf === FAIL) return cr;
    return Math.min(cr, lf);
  }

  /** multilines := simpleline+ */
  private multilines(p: number, lines: string[]): number {
    let q = this.simpleline(p);
    if (q === FAIL) return FAIL;
    lines.push(this.lineText);
    while (true) {
      const next = this.simpleline(q);
      if (next === FAIL) return q;
      lines.push(this.lineText);
      q = next;
    }
  }

  /** multilines_metadata := ( !"@@" [line_timestamp] (single_line_up_to_@@ | simpleline) )* */
  private multilinesMetadata(p: number, parts: string[]): number {
    let q = p;
    while (true) {
      if (this.s.startsWith('@@', q)) return q;
      let r = this.lineTimestamp(q);
      if (r === FAIL) r = q;
      let end: number;
      const atat = this.atat.next(r);
      const eol = atat === FAIL ? FAIL : this.nextEol(r);
      if (atat !== FAIL && (eol === FAIL || eol >= atat)) {
        parts.push(this.s.slice(r, atat));
        end = atat;
      } else {
        end = this.simpleline(r);
        if (end === FAIL) return q;
        parts.push(this.lineText);
      }
      if (end === q) return FAIL; // many0: an item that consumes nothing is an error
      if (!this.spend(end - q + 16)) return FAIL;
      q = end;
    }
  }
}
