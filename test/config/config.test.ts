import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import t from 'tap';
import { ConfigError, loadConfig, parseDuration, readConfig } from '../../src/config/index.js';
import { tempDir } from '../support/tmp.js';
import { FIXTURES } from '../support/relay.js';

const fixtureConfigDir = join(FIXTURES, 'files', 'config');

t.test('durations use relayd syntax: integers are seconds, strings are humantime', async (t) => {
  t.equal(parseDuration(10), 10_000);
  t.equal(parseDuration('10s'), 10_000);
  t.equal(parseDuration('42s'), 42_000);
  t.equal(parseDuration('1hour'), 3_600_000);
  t.equal(parseDuration('30min 20s'), 1_820_000);
  t.equal(parseDuration('1h 7s'), 3_607_000);
  t.equal(parseDuration('1day'), 86_400_000);
  t.equal(parseDuration('10min'), 600_000);
  t.equal(parseDuration('1hour 2minutes'), 3_720_000);
  t.equal(parseDuration('1M'), 2_630_016_000);
  t.equal(parseDuration('10'), undefined, 'a unit-less string is refused');
  t.equal(parseDuration(''), undefined);
  t.equal(parseDuration('10 parsecs'), undefined);
  t.equal(parseDuration(-1), undefined);
  t.equal(parseDuration(1.5), undefined);
});

t.test("relayd's fixture main.conf and logging.conf load as-is (paths relative to the working directory)", async (t) => {
  const cwd = tempDir(t);
  // the fixture's paths are relative to relayd's source tree: tests/files/...
  await mkdir(join(cwd, 'tests'), { recursive: true });
  await symlink(join(FIXTURES, 'files'), join(cwd, 'tests', 'files'));
  const previous = process.cwd();
  process.chdir(cwd);
  t.teardown(() => process.chdir(previous));
  const { config, warnings } = await loadConfig(fixtureConfigDir);
  t.equal(config.general.nodesListFile, resolve(cwd, 'tests/files/nodeslist.json'));
  t.equal(config.general.listen.port, 3030);
  t.equal(config.general.blockingThreads, 512);
  t.equal(config.general.peerAuthentication, 'cert_pinning');
  t.equal(config.general.httpsPort, 4443);
  t.equal(config.general.httpsIdleTimeoutMs, 42_000);
  t.equal(config.processing.inventory.output, 'upstream');
  t.equal(config.processing.inventory.catchup.frequencyMs, 10_000, 'integer frequency = seconds');
  t.equal(config.processing.inventory.cleanup.retentionMs, 10_000);
  t.equal(config.processing.reporting.output, 'database');
  t.equal(config.processing.reporting.cleanup.retentionMs, 1_820_000, '"30min 20s"');
  t.same(config.processing.reporting.skipEventTypes, []);
  t.equal(config.output.database.maxPoolSize, 5);
  t.equal(config.output.upstream.host, 'rudder.example.com');
  t.equal(config.output.upstream.password, 'password');
  t.equal(config.remoteRun.useSudo, false);
  t.equal(config.sharedFiles.maxBodySize, 8192);
  t.equal(config.sharedFiles.cleanup.frequencyMs, 43_000);
  t.equal(config.logging.level, 'off', 'logging.conf read from the same directory');
  t.notOk(warnings.some((w) => w.startsWith('unknown')), 'no unknown keys in the fixture');
});

t.test('defaults are relayd defaults plus onerelay sections', async (t) => {
  const dir = tempDir(t);
  const file = join(dir, 'onerelay.toml');
  await writeFile(file, '[general]\nnode_id = "root"\n');
  const { config } = await loadConfig(file);
  t.equal(config.general.nodesListFile, '/var/rudder/lib/relay/nodeslist.json');
  t.equal(config.general.nodesCertsFile, '/var/rudder/lib/ssl/shared/allnodescerts.pem');
  t.equal(config.general.httpsIdleTimeoutMs, 2_000);
  t.equal(config.processing.reporting.cleanup.retentionMs, 7 * 86_400_000);
  t.equal(config.processing.inventory.output, 'disabled');
  t.equal(config.output.upstream.defaultPassword, 'rudder');
  t.equal(config.sharedFiles.maxBodySize, 52_428_800);
  t.same(config.https.listen, { host: '0.0.0.0', port: 443 });
  t.same(config.https.allowedNetworks, ['127.0.0.0/8', '::1/128']);
  t.equal(config.https.maxUploadSize, 50 * 1024 * 1024);
  t.equal(config.identity.privateKeyFile, '/var/rudder/cfengine-community/ppkeys/localhost.priv');
  t.equal(config.identity.publicKeyFile, '/var/rudder/cfengine-community/ppkeys/localhost.pub');
  t.equal(config.identity.certificateFile, '/opt/rudder/etc/ssl/agent.cert');
  t.equal(config.policies.directory, '/var/rudder/share');
  t.same(config.cfengine.listen, { host: '0.0.0.0', port: 5309 });
  t.equal(config.cfengine.idleTimeoutMs, 600_000, "cf-serverd's receive timeout");
  t.equal(config.cfengine.maxConnectionsPerAddress, undefined, 'no limit per address of its own (NAT)');
});

t.test('onerelay sections with the exact key names', async (t) => {
  const dir = tempDir(t);
  const file = join(dir, 'onerelay.toml');
  await writeFile(
    file,
    `[general]
node_id = "root"
[https]
listen = "[::1]:8443"
certificate_file = "/etc/x.cert"
key_file = "/etc/x.key"
allowed_networks = ["10.0.0.0/8", "192.168.1.7"]
policy_server_networks = ["127.0.0.1/32"]
[[https.proxy]]
prefix = "/rudder/"
target = "http://127.0.0.1:8080"
timeout = "30s"
[identity]
private_key_file = "/k/localhost.priv"
certificate_file = "/k/agent.cert"
[policies]
directory = "/srv/share"
[cfengine]
listen = "127.0.0.1:5310"
idle_timeout = "45s"
max_connections_per_address = 64
`,
  );
  const { config, warnings } = await loadConfig(file);
  t.same(config.https.listen, { host: '::1', port: 8443 });
  t.equal(config.https.certificateFile, '/etc/x.cert');
  t.same(config.https.allowedNetworks, ['10.0.0.0/8', '192.168.1.7']);
  t.same(config.https.proxy, [{ prefix: '/rudder/', target: 'http://127.0.0.1:8080', timeoutMs: 30_000 }]);
  t.equal(config.identity.publicKeyFile, '/k/localhost.pub');
  t.equal(config.policies.directory, '/srv/share');
  t.same(config.cfengine.listen, { host: '127.0.0.1', port: 5310 });
  t.equal(config.cfengine.idleTimeoutMs, 45_000);
  t.equal(config.cfengine.maxConnectionsPerAddress, 64);
  t.same(warnings, []);
});

t.test('unknown keys warn, bad values fail with one message naming key, value and expectation', async (t) => {
  const dir = tempDir(t);
  const file = join(dir, 'onerelay.toml');
  await writeFile(file, '[general]\nnode_id = "root"\nfavourite_colour = "blue"\n[mystery]\nx = 1\n');
  const { warnings } = await loadConfig(file);
  t.match(warnings.join('\n'), /general\.favourite_colour/);
  t.match(warnings.join('\n'), /mystery/);

  await writeFile(
    file,
    '[general]\nnode_id = "root"\nhttps_idle_timeout = "10 parsecs"\npeer_authentication = "trust_me"\n[https]\nallowed_networks = ["10.0.0.0/33"]\n',
  );
  const error = await loadConfig(file).catch((e: unknown) => e);
  t.type(error, ConfigError);
  const problems = (error as ConfigError).problems.map((p) => p.message);
  t.equal(problems.length, 3, 'every problem is named');
  t.match(problems[0], /general\.https_idle_timeout = "10 parsecs": expected a duration/);
  t.match(problems.join('\n'), /general\.peer_authentication = "trust_me": expected one of "cert_pinning"/);
  t.match(problems.join('\n'), /https\.allowed_networks = "10\.0\.0\.0\/33"/);
  t.equal((error as ConfigError).exitCode, 2, 'type errors exit 2 like relayd');
});

t.test('TOML syntax errors exit 2, validation errors exit 3', async (t) => {
  const dir = tempDir(t);
  const file = join(dir, 'onerelay.toml');
  await writeFile(file, '[general\nnode_id = "x"\n');
  const syntax = (await loadConfig(file).catch((e: unknown) => e)) as ConfigError;
  t.equal(syntax.exitCode, 2);
  t.match(syntax.message, /TOML syntax error .*line 1/);

  await writeFile(file, '[general]\nnode_id = "9a2c1b7e-0000-4000-8000-000000000001"\n[processing.reporting]\noutput = "upstream"\n');
  const invalid = (await loadConfig(file).catch((e: unknown) => e)) as ConfigError;
  t.equal(invalid.exitCode, 3);
  t.match(invalid.message, /missing upstream server configuration/);
  t.match(invalid.message, /missing upstream password configuration/);
});

t.test('a proxy prefix may not shadow a relay path', async (t) => {
  const dir = tempDir(t);
  const file = join(dir, 'onerelay.toml');
  await writeFile(file, '[general]\nnode_id = "root"\n[[https.proxy]]\nprefix = "/reports/"\ntarget = "http://127.0.0.1:1"\n');
  const { problems } = await readConfig(file);
  t.match(problems[0]?.message, /would shadow the relay's own path \/reports\//);
  await writeFile(file, '[general]\nnode_id = "root"\n[[https.proxy]]\nprefix = "/rudder/"\ntarget = "http://127.0.0.1:1"\n');
  t.same((await readConfig(file)).problems, [], 'a prefix above a relay path is fine: relay routes are more specific');
});

t.test('sync.protocol "cfengine": its keys, validated', async (t) => {
  const dir = tempDir(t);
  const file = join(dir, 'onerelay.toml');
  await writeFile(file, '[general]\nnode_id = "root"\n[sync]\nupstream = true\nprotocol = "cfengine"\ncfengine_port = 15309\ncfengine_connections = 4\ncfengine_path_prefix = "/srv/root/"\n[output.upstream]\nhost = "root.example"\n');
  const { config } = await loadConfig(file);
  t.equal(config.sync.protocol, 'cfengine');
  t.equal(config.sync.cfenginePort, 15309);
  t.equal(config.sync.cfengineConnections, 4);
  t.equal(config.sync.cfenginePathPrefix, '/srv/root');

  await writeFile(file, '[general]\nnode_id = "root"\n');
  const defaults = (await loadConfig(file)).config;
  t.equal(defaults.sync.protocol, 'https');
  t.equal(defaults.sync.cfenginePort, 5309);
  t.equal(defaults.sync.cfenginePathPrefix, '');

  await writeFile(file, '[general]\nnode_id = "root"\n[sync]\nprotocol = "rsync"\ncfengine_port = 70000\ncfengine_path_prefix = "relative/dir"\n');
  const error = (await loadConfig(file).catch((e: unknown) => e)) as ConfigError;
  t.type(error, ConfigError);
  const problems = error.problems.map((p) => p.message).join('\n');
  t.match(problems, /sync\.protocol = "rsync": expected one of "https", "cfengine"/);
  t.match(problems, /sync\.cfengine_port = 70000/);
  t.match(problems, /sync\.cfengine_path_prefix = "relative\/dir": expected "" or an absolute directory/);

  await writeFile(file, '[general]\nnode_id = "root"\n[sync]\nupstream = true\nprotocol = "cfengine"\n');
  const invalid = (await loadConfig(file).catch((e: unknown) => e)) as ConfigError;
  t.equal(invalid.exitCode, 3);
  t.match(invalid.message, /sync\.protocol = "cfengine": expected output\.upstream\.host/);
});

t.test('own_policies: the inputs folder may not overlap a tree served to nodes; TOML keys that win are listed', async (t) => {
  const dir = tempDir(t);
  const file = join(dir, 'onerelay.toml');
  await writeFile(file, `[general]\nnode_id = "root"\n[policies]\ndirectory = "${dir}/share"\n[own_policies]\ninputs_directory = "${dir}/share/inputs"\n`);
  const invalid = (await loadConfig(file).catch((e: unknown) => e)) as ConfigError;
  t.equal(invalid.exitCode, 3);
  t.match(invalid.message, /own_policies\.inputs_directory = .* overlaps .*share, which is served to nodes/);

  await writeFile(file, `[general]\nnode_id = "root"\n[https]\nallowed_networks = ["10.0.0.0/8"]\n[own_policies]\ninputs_directory = "${dir}/inputs"\nlocal_networks = ["127.0.0.1/32"]\n`);
  const { config, warnings } = await loadConfig(file);
  t.same(config.ownPolicies.tomlKeys, ['https.allowed_networks']);
  t.same(config.ownPolicies.localNetworks, ['127.0.0.1/32']);
  t.equal(config.ownPolicies.inputsDirectory, join(dir, 'inputs'));
  t.same(warnings, []);
});
