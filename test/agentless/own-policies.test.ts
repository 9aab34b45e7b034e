// The relay's own policies read from a real inputs folder written in Rudder's format: the state the inventory
// and the run log use, a change noticed, a broken rudder.json refused while the last good one stays, and the
// precedence TOML > policies > default of what is applied.

import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import pino from 'pino';
import t from 'tap';
import { allowedNetworkOf, createOwnPolicies, resolveOwnSettings, settingsStatus, type OwnPolicyState, type SettingsInputs } from '../../src/agentless/index.js';
import { relayVariables, rudderJsonText, writeOwnPolicies } from '../support/rudder-json.js';
import { tempDir } from '../support/tmp.js';

const log = pino({ level: 'silent' });

t.test('reads rudder.json, notices a new generation, refuses a broken one and keeps the last good', async (t) => {
  const inputs = tempDir(t);
  const policies = createOwnPolicies({ inputsDirectory: inputs, pollMs: 50 }, { log });
  t.teardown(() => policies.stop());
  await policies.start();
  t.equal(policies.current(), undefined, 'nothing before the root generated anything');

  await writeOwnPolicies(inputs, relayVariables({ ALLOWED_NETWORKS: ['192.168.12.0/24'], AGENT_RUN_INTERVAL: '10' }), 1780492118337);
  const changes: OwnPolicyState[] = [];
  policies.onChange((state) => changes.push(state));
  await policies.refresh();
  const state = policies.current();
  t.ok(state);
  t.equal(state?.nodeConfigId, '20261206-070000-0a1b2c3d');
  t.equal(state?.reportMode, 'full-compliance');
  t.equal(state?.policyMode, 'enforce');
  t.equal(state?.runIntervalMs, 600_000);
  t.same(state?.allowedNetworks, ['192.168.12.0/24']);
  t.equal(state?.davUser, 'rudder');
  t.equal(state?.davPassword, 'rudder-dav-secret');
  t.equal(state?.generation, 1780492118337);
  t.equal(state?.inputsDirectory, inputs);
  t.equal(state?.variables['COMMUNITYPORT'], '5309');
  t.equal(changes.length, 1, 'listeners called once');

  // a change made behind the sync's back (a stock agent, an administrator) is noticed by the poll
  await writeOwnPolicies(inputs, relayVariables({ RUDDER_NODE_CONFIG_ID: 'second', RUDDER_REPORT_MODE: 'changes-only' }), 1780492118999);
  // the poll timer is unref'd (it never holds a relay up); this test holds the process until the change comes
  const hold = setInterval(() => undefined, 1_000);
  await new Promise<void>((resolve) => {
    const off = policies.onChange(() => {
      off();
      resolve();
    });
  });
  clearInterval(hold);
  t.equal(policies.current()?.nodeConfigId, 'second');
  t.equal(policies.current()?.reportMode, 'changes-only');

  // partial: a key the jobs need is missing → refused, shown, the last good stays
  const partial = relayVariables();
  delete partial['RUDDER_NODE_CONFIG_ID'];
  await writeFile(join(inputs, 'rudder.json'), rudderJsonText(partial));
  await policies.refresh();
  t.equal(policies.current()?.nodeConfigId, 'second', 'the last good policies stay in force');
  t.equal(policies.status().lastError?.code, 'RELAY_ERR_OWN_POLICIES');
  t.match(policies.status().lastError?.message, /RUDDER_NODE_CONFIG_ID is missing/);

  // ALLOWED_NETWORKS of the wrong type, then truncated JSON
  await writeFile(join(inputs, 'rudder.json'), rudderJsonText(relayVariables({ ALLOWED_NETWORKS: '10.0.0.0/8' })));
  await policies.refresh();
  t.match(policies.status().lastError?.message, /ALLOWED_NETWORKS is missing or not an array of strings/);
  await writeFile(join(inputs, 'rudder.json'), rudderJsonText(relayVariables()).slice(0, 200));
  await policies.refresh();
  t.match(policies.status().lastError?.message, /not JSON/);
  t.equal(policies.current()?.nodeConfigId, 'second');

  // check() is what the sync asks before switching a pulled folder in
  await t.rejects(policies.check(inputs), { code: 'RELAY_ERR_OWN_POLICIES' });
  const good = tempDir(t);
  await writeOwnPolicies(good, relayVariables(), 1);
  await policies.check(good);

  // repaired upstream: applied, the error cleared
  await writeOwnPolicies(inputs, relayVariables({ RUDDER_NODE_CONFIG_ID: 'third' }), 1780492119999);
  await policies.refresh();
  t.equal(policies.current()?.nodeConfigId, 'third');
  t.equal(policies.status().lastError, undefined);
});

t.test('precedence: TOML, then policies, then default; Rudder\'s ACL', async (t) => {
  const inputs = tempDir(t);
  await writeOwnPolicies(inputs, relayVariables({ ALLOWED_NETWORKS: ['192.168.12.0/24', '10.1.0.0/16'] }), 5);
  const policies = createOwnPolicies({ inputsDirectory: inputs }, { log });
  t.teardown(() => policies.stop());
  await policies.start();
  const base: SettingsInputs = {
    toml: { allowedNetworks: ['127.0.0.0/8', '::1/128'], policyServerNetworks: ['127.0.0.1/32'], user: 'rudder', password: undefined, defaultPassword: 'rudder', keys: [] },
    hostAddresses: ['127.0.0.1', '10.9.9.9'],
    parentAddress: '10.0.0.1',
  };
  const fromPolicies = resolveOwnSettings(base, policies.current());
  t.same(fromPolicies.allowedNetworks, { value: ['127.0.0.0/8', '::1', '127.0.0.1', '10.9.9.9', '10.0.0.1', '192.168.12.0/24', '10.1.0.0/16'], source: 'policies' });
  t.same(fromPolicies.policyServerNetworks, { value: ['127.0.0.0/8', '::1', '10.0.0.1'], source: 'policies' });
  t.same(fromPolicies.davPassword, { value: 'rudder-dav-secret', source: 'policies' });
  t.same(fromPolicies.runIntervalMs, { value: 300_000, source: 'policies' });

  const withToml = resolveOwnSettings({ ...base, toml: { ...base.toml, password: 'toml-secret', keys: ['https.allowed_networks', 'output.upstream.password'] } }, policies.current());
  t.same(withToml.allowedNetworks, { value: ['127.0.0.0/8', '::1/128'], source: 'toml' });
  t.same(withToml.davPassword, { value: 'toml-secret', source: 'toml' });
  t.same(withToml.davUser, { value: 'rudder', source: 'policies' });

  const none = resolveOwnSettings(base, undefined);
  t.same(none.allowedNetworks.source, 'default');
  t.same(none.davPassword, { value: 'rudder', source: 'default' }, 'Rudder\'s bootstrap credentials before any policy');
  t.same(none.runIntervalMs, { value: 300_000, source: 'default' });

  // an empty ALLOWED_NETWORKS: cf-serverd.st admits neither the parent nor any network, only the host itself
  await writeOwnPolicies(inputs, relayVariables({ ALLOWED_NETWORKS: [] }), 6);
  await policies.refresh();
  t.same(resolveOwnSettings(base, policies.current()).allowedNetworks.value, ['127.0.0.0/8', '::1', '127.0.0.1', '10.9.9.9']);

  const shown = settingsStatus(fromPolicies, policies.current());
  t.same((shown['applied'] as Record<string, unknown>)['dav_password'], { value: '(set)', source: 'policies' }, 'the password is never shown');
  t.notMatch(JSON.stringify(shown), /rudder-dav-secret/);
  t.equal((shown['not_applied'] as Record<string, unknown>)['RELAY_SYNC_METHOD'], 'classic');
});

t.test('ALLOWED_NETWORKS as Rudder accepts them: masks and wildcards converted, an unusable entry left out with one warning', async (t) => {
  // forms new IPAddressString(net).isValid accepts (Rudder's AllowedNetwork.isValid, the UI and the API)
  t.equal(allowedNetworkOf('192.168.1.0/255.255.255.0'), '192.168.1.0/24', 'a mask');
  t.equal(allowedNetworkOf('10.0.0.0/255.0.0.0'), '10.0.0.0/8');
  t.equal(allowedNetworkOf('2001:db8::/ffff:ffff::'), '2001:db8::/32', 'an IPv6 mask');
  t.equal(allowedNetworkOf('192.168.1.*'), '192.168.1.0/24', 'a trailing wildcard');
  t.equal(allowedNetworkOf('10.*.*.*'), '10.0.0.0/8');
  t.equal(allowedNetworkOf('192.168.1.0 / 24'), '192.168.1.0/24', 'spaces removed, as the UI does');
  t.equal(allowedNetworkOf('10.0.0.7'), '10.0.0.7', 'one address');
  t.equal(allowedNetworkOf('10.0.0.0/255.0.255.0'), undefined, 'a mask that is no prefix');
  t.equal(allowedNetworkOf('10.0.0.0-10.0.0.255'), undefined, 'a range');
  t.equal(allowedNetworkOf('10.0.0.0/99'), undefined);

  const lines: Array<{ level: number; event?: string; code?: string; entries?: string[] }> = [];
  const capture = pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line) as (typeof lines)[number]) });
  const inputs = tempDir(t);
  const policies = createOwnPolicies({ inputsDirectory: inputs, pollMs: 60_000 }, { log: capture });
  await writeOwnPolicies(inputs, relayVariables({ RUDDER_NODE_CONFIG_ID: 'first', ALLOWED_NETWORKS: ['192.168.12.0/24'] }), 1);
  await policies.refresh();
  await writeOwnPolicies(
    inputs,
    relayVariables({ RUDDER_NODE_CONFIG_ID: 'second', DAVPASSWORD: 'new-dav-secret', ALLOWED_NETWORKS: ['192.168.1.0/255.255.255.0', '10.0.0.0-10.0.0.255', '172.16.*', '10.0.0.0/99'] }),
    2,
  );
  await policies.refresh();
  t.equal(policies.status().lastError, undefined, 'not refused');
  t.equal(policies.current()?.nodeConfigId, 'second', 'the new config id is in force');
  t.equal(policies.current()?.davPassword, 'new-dav-secret', 'and the new DAV password');
  t.same(policies.current()?.allowedNetworks, ['192.168.1.0/24', '172.16.0.0/16'], 'the usable entries, as prefixes');
  const warnings = lines.filter((l) => l.event === 'own_policies_networks_dropped');
  t.equal(warnings.length, 1, 'one warning line');
  t.equal(warnings[0]?.level, 40);
  t.equal(warnings[0]?.code, 'RELAY_ERR_OWN_POLICIES');
  t.same(warnings[0]?.entries, ['10.0.0.0-10.0.0.255', '10.0.0.0/99'], 'naming the entries left out');
  await policies.refresh();
  t.equal(lines.filter((l) => l.event === 'own_policies_networks_dropped').length, 1, 'not repeated while the file is unchanged');

  // the key missing still refuses the file: the ACL cannot be known
  const partial = relayVariables({ RUDDER_NODE_CONFIG_ID: 'third' });
  delete partial['ALLOWED_NETWORKS'];
  await writeOwnPolicies(inputs, partial, 3);
  await policies.refresh();
  t.equal(policies.status().lastError?.code, 'RELAY_ERR_OWN_POLICIES');
  t.equal(policies.current()?.nodeConfigId, 'second', 'the last good policies stay');
});
