// `onerelay migrate --from-rudder` on a tree shaped like a real relay's /opt/rudder + /var/rudder
// (relayd's production template, Apache's ACL files and vhost, the agent identity), then `check`.

import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parse } from 'smol-toml';
import t from 'tap';
import { FIXTURE_KEYS, runCli } from '../support/relay.js';
import { tempDir } from '../support/tmp.js';

const RELAY = 'e745a140-40bc-4b86-b6dc-084488fc906b';

async function put(root: string, path: string, content: string): Promise<void> {
  await mkdir(join(root, path, '..'), { recursive: true });
  await writeFile(join(root, path), content);
}

t.test('migrating a Rudder relay: same data in place, check passes', async (t) => {
  const root = tempDir(t, 'onerelay-migrate-');
  // relayd.conf.tpl as the relay's policy renders it (spec-relayd.md §2.4)
  await put(root, '/opt/rudder/etc/relayd/main.conf', `[general]
nodes_list_file = "/var/rudder/lib/relay/nodeslist.json"
nodes_certs_file = "/var/rudder/lib/ssl/nodescerts.pem"
node_id = "${RELAY}"
listen = "127.0.0.1:3030"
peer_authentication = "cert_pinning"
https_port = 443

[processing.inventory]
directory = "/var/rudder/inventories"
output = "upstream"

[processing.inventory.catchup]
frequency = 10
limit = 50

[processing.inventory.cleanup]
frequency = "10min"
retention = "1day"

[processing.reporting]
directory = "/var/rudder/reports"
output = "upstream"
skip_event_types = []

[processing.reporting.catchup]
frequency = 10
limit = 0

[processing.reporting.cleanup]
frequency = "10min"
retention = "1day"

[output.upstream]
host = "rudder.example.com"
user = "rudder"
password = "dav-password"
server_certificate_file = "/var/rudder/lib/ssl/policy_server.pem"

[remote_run]
command = "/opt/rudder/bin/rudder"
use_sudo = true

[shared_files]
path = "/var/rudder/shared-files/"

[shared_folder]
path = "/var/rudder/configuration-repository/shared-files/"
`);
  await put(root, '/opt/rudder/etc/relayd/logging.conf', '[general]\nlevel = "warn"\n');
  await put(root, '/opt/rudder/etc/uuid.hive', `${RELAY}\n`);
  await put(root, '/opt/rudder/etc/rudder-networks-24.conf', 'Require ip 127.0.0.0/8\nRequire ip ::1\nRequire ip 192.168.10.0/24\nRequire ip 10.1.2.3\n');
  await put(root, '/opt/rudder/etc/rudder-networks-policy-server-24.conf', 'Require local\nRequire ip 10.0.0.1\n');
  await put(root, '/etc/apache2/sites-available/rudder.conf', '<VirtualHost *:80>\n  Redirect / https://x/\n</VirtualHost>\n<VirtualHost *:8443>\n  Include /opt/rudder/etc/rudder-apache-relay-ssl.conf\n</VirtualHost>\n');
  await put(root, '/var/rudder/cfengine-community/inputs/rudder.json', JSON.stringify({ COMMUNITYPORT: '5310', DAVUSER: 'rudder' }));
  await put(root, '/var/rudder/lib/relay/nodeslist.json', JSON.stringify({ 'f1f1f1f1-0000-4000-8000-000000000001': { hostname: 'n1', 'policy-server': RELAY } }));
  await put(root, '/var/rudder/lib/ssl/nodescerts.pem', '');
  await mkdir(join(root, '/var/rudder/cfengine-community/ppkeys'), { recursive: true });
  await mkdir(join(root, '/opt/rudder/etc/ssl'), { recursive: true });
  await copyFile(join(FIXTURE_KEYS, `${RELAY}.nopass.priv`), join(root, '/var/rudder/cfengine-community/ppkeys/localhost.priv'));
  await copyFile(join(FIXTURE_KEYS, `${RELAY}.pub`), join(root, '/var/rudder/cfengine-community/ppkeys/localhost.pub'));
  await copyFile(join(FIXTURE_KEYS, `${RELAY}.cert`), join(root, '/opt/rudder/etc/ssl/agent.cert'));
  await copyFile(join(FIXTURE_KEYS, '37817c4d-fbf7-4850-a985-50021f4e8f41.cert'), join(root, '/var/rudder/lib/ssl/policy_server.pem'));
  for (const dir of ['/var/rudder/reports/incoming', '/var/rudder/inventories/incoming', '/var/rudder/inventories/accepted-nodes-updates']) await mkdir(join(root, dir), { recursive: true });
  await writeFile(join(root, '/var/rudder/reports/incoming/2026-11-25T10:00:00+00:00@x.log.gz'), 'waiting report');

  const output = join(root, '/opt/rudder/etc/onerelay.toml');
  const migrate = await runCli(['migrate', '--from-rudder', '--root', root, '--output', output]);
  t.equal(migrate.code, 0, migrate.stderr);
  t.match(migrate.stdout, /allowed networks from rudder-networks-24\.conf/);
  const config = parse(await readFile(output, 'utf8')) as Record<string, Record<string, unknown>>;
  t.same(config['https']?.['allowed_networks'], ['127.0.0.0/8', '::1/128', '192.168.10.0/24', '10.1.2.3/32']);
  t.same(config['https']?.['policy_server_networks'], ['127.0.0.0/8', '::1/128', '10.0.0.1/32']);
  t.equal(config['https']?.['listen'], '0.0.0.0:8443', "Apache's port");
  t.equal(config['cfengine']?.['listen'], '0.0.0.0:5310', "cf-serverd's port from rudder.json");
  t.equal(config['identity']?.['private_key_file'], join(root, '/var/rudder/cfengine-community/ppkeys/localhost.priv'), 'the same key, in place');
  t.equal((config['processing'] as Record<string, Record<string, unknown>>)['reporting']?.['directory'], join(root, '/var/rudder/reports'), 'the same spool, in place');
  t.equal((config['output'] as Record<string, Record<string, unknown>>)['upstream']?.['password'], 'dav-password');
  t.equal(config['logging']?.['level'], 'warn');

  const check = await runCli(['check', '--config', output]);
  t.equal(check.code, 0, check.stdout);
  t.match(check.stdout, /Syntax: OK/);
  const init = await runCli(['init', '--config', output]);
  t.match(init.stdout, /MD5=367b7bc5ec746517f2a89af2500f3b89/, 'the relay keeps the key nodes already trust');
  t.notMatch(init.stdout, /created .*localhost\.priv/, 'nothing regenerated');
  t.equal(await readFile(join(root, '/var/rudder/reports/incoming/2026-11-25T10:00:00+00:00@x.log.gz'), 'utf8'), 'waiting report', 'queued data untouched');
});
