// checkRunlog (the inspection's run log check) against parseRunlog, its reference: the same acceptance, count,
// skipped verdict and refusal (reason and message) on the fixtures and on many mutated variants of them.

import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { checkRunlog, isReportError, parseRunInfo, parseRunlog, type RunlogSummary } from '../../src/reports/index.js';
import type { RunInfo } from '../../src/reports/index.js';
import { leanRunlogCheck } from '../../src/reports/runlog.js';
import { FIXTURES } from '../support/fixtures.js';

const RUNLOGS = `${FIXTURES}/files/runlogs`;
const NODE = 'e745a140-40bc-4b86-b6dc-084488fc906b';

type Outcome = { readonly ok: RunlogSummary } | { readonly refused: string };

function reference(text: string, info: RunInfo, skip: ReadonlySet<string>): Outcome {
  try {
    const { reports } = parseRunlog(text, info);
    return { ok: { reports: reports.length, allSkipped: skip.size > 0 && reports.every((r) => skip.has(r.event_type)) } };
  } catch (error) {
    if (!isReportError(error)) throw error;
    return { refused: `${error.reason}: ${error.message}` };
  }
}

function checked(text: string, info: RunInfo, skip: ReadonlySet<string>): Outcome {
  try {
    return { ok: checkRunlog(text, info, skip) };
  } catch (error) {
    if (!isReportError(error)) throw error;
    return { refused: `${error.reason}: ${error.message}` };
  }
}

/** a deterministic generator (mulberry32): the same variants on every run */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

/** a run log as an agent writes it: every line one report of the node; `tricky`: some messages that start like a log level */
function agentRunlog(nodeId: string, lines: number, eol: string, rnd: () => number, tricky = false): string {
  const events = ['result_success', 'result_repaired', 'result_na', 'log_info', 'audit_compliant', 'control'];
  const plain = ['Start execution', 'The file was correct', '2019-05-11T12:58:13+00:00 stamped message', 'Configuration is ok', 'rudder is fine', 'Rudder', ''];
  const messages = tricky ? [...plain, 'CRITICAL-free', 'R: nothing', '  notice', 'R: @@x'] : plain;
  let text = '';
  for (let i = 0; i < lines; i++) {
    const second = String(10 + Math.floor(i / 7)).padStart(2, '0');
    const event = events[Math.floor(rnd() * events.length)]!;
    const message = messages[Math.floor(rnd() * messages.length)]!;
    const component = rnd() < 0.1 ? '' : rnd() < 0.1 ? '2019-05-11T12:58:13+00:00 Timestamped component' : `Component ${i}`;
    text += `2019-05-11T12:58:${second}+00:00 R: @@Common@@${event}@@rule-${i}@@directive@@${rnd() < 0.2 ? '' : '0'}@@${component}@@key.${i}@@2018-08-24 15:55:01+00:00##${nodeId}@#${message}${eol}`;
  }
  return text;
}

const TOKENS = ['@@', '##', '@#', '@', '#', 'R: @@', 'R: ', 'R:', '\r\n', '\r', '\n', ' ', '', 'rudder     info ', '  notice', 'R: [INFO] ', 'CRITICAL: ', '2020-01-01T00:00:00+00:00 ', '2020-13-01T00:00:00+00:00 ', '2018-08-24 15:55:01+00:00', '0', '9', 'Z', '\uFFFD', 'root', NODE];

function mutate(text: string, rnd: () => number): string {
  const at = (): number => Math.floor(rnd() * (text.length + 1));
  const lines = (): string[] => text.split(/(?<=\n)/);
  switch (Math.floor(rnd() * 12)) {
    case 0:
      return text.slice(0, at());
    case 1: {
      const i = at();
      return text.slice(0, i) + text.slice(i + 1 + Math.floor(rnd() * 3));
    }
    case 2:
    case 3: {
      const i = at();
      return text.slice(0, i) + TOKENS[Math.floor(rnd() * TOKENS.length)]! + text.slice(i);
    }
    case 4: {
      const i = at();
      return text.slice(0, i) + TOKENS[Math.floor(rnd() * TOKENS.length)]! + text.slice(i + 1);
    }
    case 5: {
      const all = lines();
      all.splice(Math.floor(rnd() * all.length), 1);
      return all.join('');
    }
    case 6: {
      const all = lines();
      const i = Math.floor(rnd() * all.length);
      all.splice(i, 0, all[Math.floor(rnd() * all.length)] ?? '');
      return all.join('');
    }
    case 7:
      return text.replace(NODE, rnd() < 0.5 ? 'root' : `${NODE}x`);
    case 8: {
      // a date of one line made invalid (or odd but valid)
      const dates = ['2019-02-30T12:58:13+00:00', '2019-05-11T25:58:13+00:00', '2019-05-11T12:58:13', '2019-05-11 12:58:13+00:00', '2019-05-11T12:58:13.123456+02:00'];
      const i = text.indexOf('2019-05-11T12:58:', at());
      return i < 0 ? text : text.slice(0, i) + dates[Math.floor(rnd() * dates.length)]! + text.slice(i + 25);
    }
    case 9: {
      const i = text.indexOf('##', at());
      const starts = ['2018-08-24 15:55:01', '2018-08-32 15:55:01+00:00', ' 2018-08-24 15:55:01 +02:00', '2018-08-24 15:55:01+00:00 '];
      return i < 0 ? text : text.slice(0, Math.max(0, i - 25)) + starts[Math.floor(rnd() * starts.length)]! + text.slice(i);
    }
    case 10:
      return rnd() < 0.5 ? text.replaceAll('\r\n', '\n') : text.replaceAll(/\r?\n/g, '\r\n');
    default: {
      // bytes that are not UTF-8, decoded as the inspection does
      const bytes = Buffer.from(text, 'utf8');
      const i = Math.floor(rnd() * (bytes.length + 1));
      return Buffer.concat([bytes.subarray(0, i), Buffer.from([0xff, 0xc3]), bytes.subarray(i)]).toString('utf8');
    }
  }
}

const fixtureTexts = readdirSync(RUNLOGS)
  .filter((f) => f.endsWith('.log'))
  .map((f) => ({ name: f, text: readFileSync(join(RUNLOGS, f)).toString('utf8'), info: parseRunInfo(f)! }));

t.test('the lean check is taken on the usual run log, LF or CRLF, and gives the reference result', async (t) => {
  const rnd = random(1);
  for (const eol of ['\n', '\r\n']) {
    const text = agentRunlog(NODE, 200, eol, rnd);
    const summary = leanRunlogCheck(text, NODE, new Set());
    t.same(summary, { reports: 200, allSkipped: false }, `lean path, EOL ${JSON.stringify(eol)}`);
    t.same(checked(text, { nodeId: NODE, timestamp: '2019-05-11T12:58:13+00:00' }, new Set()), reference(text, { nodeId: NODE, timestamp: '2019-05-11T12:58:13+00:00' }, new Set()));
  }
  const allLogInfo = agentRunlog(NODE, 10, '\n', random(2)).replaceAll(/@@Common@@[a-z_]+@@/g, '@@Common@@log_info@@');
  t.same(leanRunlogCheck(allLogInfo, NODE, new Set(['log_info'])), { reports: 10, allSkipped: true }, 'every report skipped');
  t.same(leanRunlogCheck(allLogInfo, NODE, new Set(['log_warn'])), { reports: 10, allSkipped: false }, 'none skipped');
  t.equal(leanRunlogCheck(allLogInfo, 'root', new Set()), undefined, 'another node: left to the parser (its message)');
});

t.test('fixtures and their mutations: the same outcome as parseRunlog', async (t) => {
  const rnd = random(20);
  const skips: ReadonlyArray<ReadonlySet<string>> = [new Set(), new Set(['log_info']), new Set(['result_success', 'result_repaired', 'result_na', 'log_info', 'audit_compliant', 'control', 'log_warn', 'log_repaired', 'audit_noncompliant', 'log_debug'])];
  const bases: Array<{ name: string; text: string; info: RunInfo }> = [...fixtureTexts];
  for (const [i, eol] of ['\n', '\r\n', '\n'].entries()) {
    bases.push({ name: `agent ${i}`, text: agentRunlog(NODE, 12, eol, rnd, i === 2), info: { nodeId: NODE, timestamp: '2019-05-11T12:58:13+00:00' } });
  }
  // the fixtures' report lines that alone take the lean path, as a run log of their own
  for (const fixture of fixtureTexts) {
    const clean = fixture.text
      .split(/(?<=\n)/)
      .filter((line) => leanRunlogCheck(line, fixture.info.nodeId, new Set()) !== undefined)
      .join('');
    if (clean !== '') bases.push({ name: `${fixture.name} (clean lines)`, text: clean, info: fixture.info });
  }
  let lean = 0;
  let variants = 0;
  let differences = 0;
  for (const base of bases) {
    for (let i = 0; i < 1500; i++) {
      let text = base.text;
      const rounds = 1 + Math.floor(rnd() * 3);
      for (let r = 0; r < rounds && i > 0; r++) text = mutate(text, rnd);
      const info = rnd() < 0.1 ? { ...base.info, nodeId: 'root' } : base.info;
      const skip = skips[Math.floor(rnd() * skips.length)]!;
      variants++;
      if (leanRunlogCheck(text, info.nodeId, skip) !== undefined) lean++;
      const expected = reference(text, info, skip);
      const actual = checked(text, info, skip);
      if (JSON.stringify(actual) !== JSON.stringify(expected)) {
        differences++;
        if (differences <= 5) t.fail(`${base.name}, variant ${i}: ${JSON.stringify(actual)} vs ${JSON.stringify(expected)}\n${JSON.stringify(text.slice(0, 2000))}`);
      }
    }
  }
  t.equal(differences, 0, `${variants} variants, ${lean} on the lean path`);
  t.ok(lean > variants / 10, `the lean path is exercised (${lean} of ${variants})`);
});

t.test('fields the first line leaves empty are checked, not taken for ones already seen (review finding)', async (t) => {
  const info = { nodeId: NODE, timestamp: '2019-05-11T12:58:13+00:00' };
  const emptyStart = `2019-05-11T12:58:13+00:00 R: @@p@@result_success@@r@@d@@0@@c@@k@@##${NODE}@#msg\n`;
  t.same(checked(emptyStart, info, new Set()), reference(emptyStart, info, new Set()), 'an empty start date: refused as the parser refuses it');
  t.ok('refused' in checked(emptyStart, info, new Set()), 'refused');
  const good = agentRunlog(NODE, 3, '\n', random(7));
  for (const text of [emptyStart + good, good + emptyStart, emptyStart + emptyStart]) {
    t.same(checked(text, info, new Set()), reference(text, info, new Set()), 'mixed with good lines: the reference outcome');
  }
});
