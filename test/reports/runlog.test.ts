// Run log grammar (spec-relayd.md §7.6) and run-level checks (§7.7): relayd's golden files, then the
// grammar's corner cases one by one.

import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { isReportError, parseReports, parseRunInfo, parseRunlog, type Report, type RunLog } from '../../src/reports/index.js';
import { FIXTURES } from '../support/fixtures.js';

const RUNLOGS = `${FIXTURES}/files/runlogs`;
const E745 = 'e745a140-40bc-4b86-b6dc-084488fc906b';
const TS = '2018-08-24T15:55:01+00:00';
const START = '2018-08-24 15:55:01+00:00';

/** one report line as the agent writes it */
function line(fields: string, msg: string, opts: { ts?: string; node?: string; start?: string; eol?: string } = {}): string {
  return `${opts.ts ?? TS} R: @@${fields}@@${opts.start ?? START}##${opts.node ?? 'root'}@#${msg}${opts.eol ?? '\r\n'}`;
}
const CRON = 'Common@@result_repaired@@hasPolicyServer-root@@common-root@@0@@CRON Daemon@@None';

function expectInvalid(t: Test, f: () => unknown, pattern: RegExp, label: string): void {
  try {
    f();
    t.fail(`${label}: expected invalid-runlog`);
  } catch (error) {
    t.ok(isReportError(error) && error.reason === 'invalid-runlog', `${label}: invalid-runlog`);
    t.match((error as Error).message, pattern, `${label}: message`);
  }
}

t.test('golden files: every fixture .log parses to exactly its .json', async (t) => {
  const goldens = readdirSync(RUNLOGS).filter((f) => f.endsWith('.json'));
  t.equal(goldens.length, 4);
  for (const json of goldens) {
    const base = json.slice(0, -'.json'.length);
    const info = parseRunInfo(`${base}.log`);
    t.ok(info, `${base}: run info`);
    const text = readFileSync(join(RUNLOGS, `${base}.log`)).toString('utf8'); // invalid UTF-8 → U+FFFD
    const expected = JSON.parse(readFileSync(join(RUNLOGS, json), 'utf8')) as RunLog;
    const parsed = parseRunlog(text, info);
    t.same(JSON.parse(JSON.stringify(parsed)), expected, `${base}: same as relayd`);
    t.strictSame(Object.keys(parsed.reports[0]!), Object.keys(expected.reports[0]!), `${base}: same field order`);
    t.ok(parsed.reports.some((r) => r.event_type === 'control' && r.component === 'start'), `${base}: complete run`);
  }
});

t.test('golden details relayd documents', async (t) => {
  const parse = (base: string): RunLog => parseRunlog(readFileSync(join(RUNLOGS, `${base}.log`)).toString('utf8'), parseRunInfo(`${base}.log`));
  const run2018 = parse(`2018-08-24T15_55_01+00_00@${E745}`);
  t.equal(run2018.reports.length, 72);
  t.equal(run2018.config_id, '20180824-130007-3ad37587');
  const counts: Record<string, number> = {};
  for (const r of run2018.reports) counts[r.event_type] = (counts[r.event_type] ?? 0) + 1;
  t.same(counts, { control: 2, result_success: 35, result_na: 6, log_repaired: 3, result_repaired: 1, log_info: 19, log_warn: 4, audit_noncompliant: 2 });
  const run2020 = parse('2020-03-24T12_29_54+00_00@root');
  t.equal(run2020.info.timestamp, '2020-03-24T12:29:54+00:00', 'info from the file name');
  t.equal(run2020.reports[0]!.start_datetime, '2020-03-24T12:29:53+00:00', 'start date from the reports');
  const windows = parse(`2020-04-07T11_20_58+00_00@${E745}`);
  t.ok(windows.reports.some((r) => r.msg.includes('End \uFFFDxecution with non-utf8')), 'U+FFFD for the invalid byte');
  t.ok(windows.reports.some((r) => r.start_datetime.endsWith('+02:00')), 'offset kept');
});

t.test('…906c.log: node id in the name differs from the one in the reports', async (t) => {
  const base = `2018-08-24T15_55_01+00_00@${E745.slice(0, -1)}c`;
  const text = readFileSync(join(RUNLOGS, `${base}.log`), 'utf8');
  expectInvalid(t, () => parseRunlog(text, parseRunInfo(`${base}.log`)), new RegExp(`comes from node "${E745}", expected "${E745.slice(0, -1)}c"`), '906c');
  t.equal(parseRunlog(text).reports.length, 71, 'consistent on its own');
});

t.test('one report, CRLF', async (t) => {
  const { reports } = parseReports(line(CRON, 'Cron daemon status was repaired', { start: '2018-08-24 15:55:01 +00:00' }));
  t.strictSame(reports, [
    {
      start_datetime: TS,
      rule_id: 'hasPolicyServer-root',
      directive_id: 'common-root',
      component: 'CRON Daemon',
      key_value: 'None',
      event_type: 'result_repaired',
      msg: 'Cron daemon status was repaired',
      policy: 'Common',
      node_id: 'root',
      execution_datetime: TS,
      report_id: '0',
    } satisfies Report,
  ]);
});

t.test('multi-line component and key_value, with or without their own time stamp', async (t) => {
  const text =
    `${TS} R: @@Common@@result_repaired@@rule@@directive@@0@@CRON\nDaemon@@None@@${START}##root@#one\r\n` +
    `${TS} R: @@Common@@result_repaired@@rule@@directive@@0@@CRON\n${TS} Daemon@@multi\r\n${TS} line@@${START}##root@#two\r\n` +
    `${TS} R: @@Common@@result_repaired@@rule@@directive@@0@@CRON Daemon@@multi\r\nline@@${START}##root@#three\r\n`;
  const { reports } = parseReports(text);
  t.same(
    reports.map((r) => [r.component, r.key_value, r.msg]),
    [
      ['CRON\nDaemon', 'None', 'one'],
      ['CRON\nDaemon', 'multi\nline', 'two'],
      ['CRON Daemon', 'multi\nline', 'three'],
    ],
  );
});

t.test('empty fields: key_value → "None", report_id → "0", component stays empty, message may be empty', async (t) => {
  const { reports } = parseReports(line('Common@@result_success@@rule@@directive@@@@@@', ''));
  t.equal(reports.length, 1);
  t.equal(reports[0]!.key_value, 'None');
  t.equal(reports[0]!.report_id, '0');
  t.equal(reports[0]!.component, '');
  t.equal(reports[0]!.msg, '');
});

t.test('multi-line messages: continuation lines with or without time stamp, blank lines kept, lone CR splits', async (t) => {
  const text =
    line(CRON, 'first', { eol: '\n' }) +
    `${TS} second\n\nthird\n` +
    line(CRON, 'test\rlog', { eol: '\r\n' });
  const { reports } = parseReports(text);
  t.same(
    reports.map((r) => r.msg),
    ['first\nsecond\n\nthird', 'test\nlog'],
  );
});

t.test('log lines before a report become reports with its context, before it', async (t) => {
  const text =
    '2019-05-09T13:36:46+00:00 CRITICAL: toto\n2018-05-09T13:36:46+00:00 suite\nend\n' +
    '2017-05-09T13:36:46+00:00 CRITICAL:tutu\n' +
    '2017-05-09T13:36:47+00:00 rudder     info: Executing\n' +
    '2017-05-09T13:36:48+00:00 R: [INFO]: Class prefix is too long\r\n' +
    '2017-05-09T13:36:49+00:00 R: DEBUG stdlib\n' +
    '2017-05-09T13:36:50+00:00 R: message report\n' +
    line(CRON, 'the report');
  const { reports } = parseReports(text);
  t.same(
    reports.map((r) => [r.event_type, r.msg, r.execution_datetime, r.component]),
    [
      ['log_warn', 'toto\nsuite\nend', '2019-05-09T13:36:46+00:00', 'CRON Daemon'],
      ['log_warn', 'tutu', '2017-05-09T13:36:46+00:00', 'CRON Daemon'],
      ['log_info', 'Executing', '2017-05-09T13:36:47+00:00', 'CRON Daemon'],
      ['log_info', 'Class prefix is too long', '2017-05-09T13:36:48+00:00', 'CRON Daemon'],
      ['log_warn', 'stdlib', '2017-05-09T13:36:49+00:00', 'CRON Daemon'], // "R: DEBUG" is log_warn in relayd (sic)
      ['log_info', 'message report', '2017-05-09T13:36:50+00:00', 'CRON Daemon'],
      ['result_repaired', 'the report', TS, 'CRON Daemon'],
    ],
  );
  t.same(parseReports(line(CRON, 'kept') + `${TS}    error: lost log\n`).reports.map((r) => r.msg), ['kept'], 'log lines after the last report are dropped');
});

t.test('garbage, broken reports and the last line', async (t) => {
  const garbage = parseReports(`Rudder agent 6.0.5\nNode uuid: root\n${line(CRON, 'kept')}`);
  t.equal(garbage.reports.length, 1, 'untimestamped lines skipped');
  t.same(garbage.skipped, ['Rudder agent 6.0.5', 'Node uuid: root']);

  const broken = parseReports(`${TS} R: @@Common@@broken\r\n${line(CRON, 'kept')}`);
  t.same(broken.skipped, [`${TS} R: @@Common@@broken`], 'truncated report skipped up to the next report');
  t.same(broken.reports.map((r) => r.msg), ['kept']);

  expectInvalid(t, () => parseRunlog(line(CRON, 'no line end', { eol: '' })), /no report line/, 'a report needs a line terminator');
  t.same(parseReports(line(CRON, 'first') + line(CRON, 'last', { eol: '' })).reports.map((r) => r.msg), ['first']);
  t.equal(parseReports(line(CRON, 'CRITICAL: a log level') + line(CRON, 'kept')).reports.length, 1, 'message starting with a level is broken');
  t.equal(parseReports(line(CRON, 'R: [INFO] x')).reports.length, 0);
  t.equal(parseReports(line(CRON, 'bad start date', { start: '2018-08-24T15:55:01Z' })).reports.length, 0, 'start date needs %Y-%m-%d %H:%M:%S%z');
  t.equal(parseReports(line(CRON, 'bad time stamp', { ts: '2018-08-24T15:55:01' })).reports.length, 0);
});

t.test('dates are normalised the way relayd serialises them', async (t) => {
  const parse = (ts: string, start: string) => parseReports(line(CRON, 'm', { ts, start })).reports[0];
  t.match(parse('2019-05-14T08:58:13Z', '2018-08-24 15:55:01 +0200'), { execution_datetime: '2019-05-14T08:58:13+00:00', start_datetime: '2018-08-24T15:55:01+02:00' });
  t.match(parse('2019-05-14t08:58:13.5-01:30', '2018-8-4 5:5:1-00:00'), { execution_datetime: '2019-05-14T08:58:13.500-01:30', start_datetime: '2018-08-04T05:05:01+00:00' });
  t.match(parse('2019-05-14T08:58:13.000001+00:00', START), { execution_datetime: '2019-05-14T08:58:13.000001+00:00' });
  t.match(parse('2019-05-14T08:58:13.123456789123+00:00', START), { execution_datetime: '2019-05-14T08:58:13.123456789+00:00' });
  t.match(parse('2019-05-14T08:58:13.000+00:00', START), { execution_datetime: '2019-05-14T08:58:13+00:00' });
  t.match(parse('2019-05-14T08:58:13-00:00', START), { execution_datetime: '2019-05-14T08:58:13+00:00' });
  t.match(parse('2019-05-14T08:58:13\u221201:00', START), { execution_datetime: '2019-05-14T08:58:13-01:00' }, 'U+2212 minus');
  t.match(parse('2020-02-29T23:59:60+00:00', START), { execution_datetime: '2020-02-29T23:59:60+00:00' }, 'leap day, leap second');
  t.equal(parse('2019-02-29T08:58:13+00:00', START), undefined, 'not a leap year');
  t.equal(parse('2019-05-14T08:58:13+24:00', START), undefined, 'offset out of range');
});

t.test('run-level checks', async (t) => {
  expectInvalid(t, () => parseRunlog(''), /no report line/, 'empty');
  expectInvalid(t, () => parseRunlog('just some text without line end'), /no report line/, 'nothing parses');
  expectInvalid(t, () => parseRunlog('Rudder agent\nNode uuid: root\n'), /no valid report/, 'garbage only');
  expectInvalid(t, () => parseRunlog(line(CRON, 'a') + line(CRON, 'b', { node: 'other' })), /report 2 comes from node "other", expected "root"/, 'foreign node');
  const partial = parseRunlog(line(CRON, 'a'), { nodeId: 'root', timestamp: '2018-08-24T15_55_01+00_00'.replaceAll('_', ':') });
  t.equal(partial.config_id, null, 'no control report: no config id');
  t.same(partial.info, { node_id: 'root', timestamp: TS });
  const control = parseRunlog(line('Common@@control@@rudder@@run@@0@@end@@cfg-1', 'End execution'));
  t.equal(control.config_id, 'cfg-1', 'config id from the end report');
});

t.test('pathological input stays linear', async (t) => {
  // log lines whose text contains "R: @@": relayd retries the same chain from every line
  const logLine = `${TS}     info: text with R: @@ inside\n`;
  const lines = 50_000;
  let started = performance.now();
  const noReport = parseReports(logLine.repeat(lines));
  let elapsed = performance.now() - started;
  t.equal(noReport.reports.length, 0);
  t.ok(elapsed < 3000, `${lines} failing log lines parsed in ${elapsed.toFixed(0)} ms`);
  started = performance.now();
  const withReport = parseReports(logLine.repeat(lines) + line(CRON, 'end'));
  elapsed = performance.now() - started;
  t.equal(withReport.reports.length, lines + 1, 'all log lines attached to the final report');
  t.ok(elapsed < 3000, `parsed in ${elapsed.toFixed(0)} ms`);
});
