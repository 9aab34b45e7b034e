// [activity] keys: defaults as documented (README "Node activity and delivery ledger"), relayd's duration
// syntax, and a bad value named with its key.

import { join } from 'node:path';
import { writeFile } from 'node:fs/promises';
import t from 'tap';
import { ConfigError, loadConfig } from '../../src/config/index.js';
import { tempDir } from '../support/tmp.js';

t.test('activity defaults and values', async (t) => {
  const dir = tempDir(t);
  const file = join(dir, 'onerelay.toml');
  await writeFile(file, '[general]\nnode_id = "root"\n');
  const defaults = (await loadConfig(file)).config.activity;
  t.same(defaults, { enabled: true, stateDirectory: '/var/rudder/onerelay', ledgerRetentionMs: 7 * 86_400_000, detailWindowMs: 6 * 3_600_000, runIntervalMs: 300_000 });

  await writeFile(file, '[general]\nnode_id = "root"\n[activity]\nenabled = false\nstate_directory = "state"\nledger_retention = "2days"\ndetail_window = "30min"\nrun_interval = 60\n');
  const { config, warnings } = await loadConfig(file);
  t.same(warnings, [], 'every key known');
  t.same(config.activity, { enabled: false, stateDirectory: join(process.cwd(), 'state'), ledgerRetentionMs: 2 * 86_400_000, detailWindowMs: 1_800_000, runIntervalMs: 60_000 });

  await writeFile(file, '[general]\nnode_id = "root"\n[activity]\nrun_interval = "often"\n');
  const error = await loadConfig(file).catch((e: unknown) => e);
  t.type(error, ConfigError);
  t.match((error as ConfigError).problems.map((p) => p.message).join('\n'), /activity\.run_interval = "often": expected a duration/);
});
