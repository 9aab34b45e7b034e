// Run info from report file names (spec-relayd.md §7.3), with relayd's own examples and fuzz artefacts.

import t from 'tap';
import { parseRunInfo } from '../../src/reports/index.js';

const E745 = 'e745a140-40bc-4b86-b6dc-084488fc906b';

t.test('v1 names: <timestamp>@<node id>.log[.gz]', async (t) => {
  t.same(parseRunInfo('2018-08-24T15:55:01+00:00@root.log'), { nodeId: 'root', timestamp: '2018-08-24T15:55:01+00:00' });
  t.same(parseRunInfo('2018-08-24T15:55:01+00:00@root.log.gz'), { nodeId: 'root', timestamp: '2018-08-24T15:55:01+00:00' });
  t.same(parseRunInfo(`2018-08-24T15:55:01+00:00@${E745}.log`), { nodeId: E745, timestamp: '2018-08-24T15:55:01+00:00' });
  // Windows agents write "_" for ":"
  t.same(parseRunInfo(`2018-08-24T15_55_01+00_00@${E745}.log`), { nodeId: E745, timestamp: '2018-08-24T15:55:01+00:00' });
  // RFC 3339 variants chrono accepts: Z, fraction, lower-case t
  t.same(parseRunInfo('2018-08-24T15:55:01Z@root.log.gz'), { nodeId: 'root', timestamp: '2018-08-24T15:55:01Z' });
  t.same(parseRunInfo('2018-08-24t15:55:01.123-02:00@root.log'), { nodeId: 'root', timestamp: '2018-08-24t15:55:01.123-02:00' });
  // anything after .log[.gz] is ignored by v1
  t.same(parseRunInfo('2018-08-24T15:55:01+00:00@root.log.zip'), { nodeId: 'root', timestamp: '2018-08-24T15:55:01+00:00' });
});

t.test('v2 names: <node id>_<timestamp>.log[.gz][.zip]', async (t) => {
  t.same(parseRunInfo(`${E745}_2018-08-24T15:55:01+00:00.log.gz`), { nodeId: E745, timestamp: '2018-08-24T15:55:01+00:00' });
  t.same(parseRunInfo(`${E745}_2018-08-24T15:55:01+00:00.log`), { nodeId: E745, timestamp: '2018-08-24T15:55:01+00:00' });
  t.same(parseRunInfo(`${E745}_2018-08-24T15_55_01+00_00.log.gz.zip`), { nodeId: E745, timestamp: '2018-08-24T15:55:01+00:00' });
  t.same(parseRunInfo('root_2018-08-24T15:55:01Z.log.zip'), { nodeId: 'root', timestamp: '2018-08-24T15:55:01Z' });
  // v2 must end right after the extensions
  t.equal(parseRunInfo(`${E745}_2018-08-24T15:55:01+00:00.log.gz.tmp`), undefined);
  t.equal(parseRunInfo('_2018-08-24T15:55:01+00:00.log'), undefined, 'empty node id');
});

t.test('invalid names', async (t) => {
  t.equal(parseRunInfo(`2018-08-24T15:55:01+00:00@${E745}.lg.gz`), undefined);
  t.equal(parseRunInfo('2018-08-24T15:55:01+00:00@.log.gz'), undefined);
  t.equal(parseRunInfo('bob.log'), undefined);
  t.equal(parseRunInfo(''), undefined);
  t.equal(parseRunInfo('2018-08-24T25:55:01+00:00@root.log'), undefined, 'hour 25');
  t.equal(parseRunInfo('2018-02-30T15:55:01+00:00@root.log'), undefined, 'February 30');
  t.equal(parseRunInfo('2018-08-24T15:55:01@root.log'), undefined, 'no offset');
  t.equal(parseRunInfo('2018-08-24T15:55:01+00:00@root'), undefined, 'no .log');
});

t.test('fuzz crash artefacts are rejected without throwing', async (t) => {
  for (const name of ['@{.log', '>@.log', '@', '_', '_.', '@.log', '\u0000@\u0000.log', '\uD800@x.log', '_\uFFFF.log']) {
    t.doesNotThrow(() => parseRunInfo(name));
    t.equal(parseRunInfo(name), undefined, JSON.stringify(name));
  }
});
