// The inventory document alone: what the root would refuse is refused here with a clear error, and the
// distribution name is one the root recognises.

import t from 'tap';
import { buildInventoryXml, type HostFacts } from '../../src/agentless/index.js';
import { fqdnFromHosts, parseOsRelease } from '../../src/agentless/inventory-facts.js';
import { RelayError } from '../../src/errors.js';
import { agentVersionFromSoftware, parseXml, textAt } from '../support/root-inventory-check.js';

const facts: HostFacts = {
  hostname: 'relay1',
  fqdn: 'relay1.example.net',
  os: { name: 'Debian', fullName: 'Debian GNU/Linux 12 (bookworm)', version: '12.5', kernelName: 'linux', kernelVersion: '6.1.0-18-amd64', arch: 'x86_64' },
  networks: [{ name: 'eth0', family: 'IPv4', address: '192.0.2.10', netmask: '255.255.255.0', mac: '02:00:00:00:00:01', isInternal: false }],
  memoryMb: 2048,
  swapMb: 0,
  cpu: { model: 'Some <CPU> & co', count: 2, speedMhz: 2000 },
  timezone: { name: 'Europe/Paris', offset: '+0100' },
};
const base = {
  nodeId: '1b7a9c52-0d3e-4f6a-9b1e-6c2d8e4f7a10',
  policyServerId: 'root',
  policyServerHostname: 'rudder.example.net',
  certificatePem: '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n',
  publicKeyPem: '-----BEGIN RSA PUBLIC KEY-----\nBBBB\n-----END RSA PUBLIC KEY-----\n',
  agentVersion: 'onerelay-0.1.0',
  generator: 'onerelay_v0.1.0',
  facts,
  now: new Date(2026, 4, 4, 10, 12, 0),
};

t.test('the document carries the RUDDER extension and the facts, escaped', async (t) => {
  const doc = parseXml(buildInventoryXml(base));
  t.equal(textAt(doc, ['REQUEST', 'CONTENT', 'RUDDER', 'UUID']), base.nodeId);
  t.equal(textAt(doc, ['REQUEST', 'CONTENT', 'RUDDER', 'HOSTNAME']), 'relay1.example.net');
  t.equal(textAt(doc, ['REQUEST', 'CONTENT', 'RUDDER', 'AGENT', 'POLICY_SERVER_UUID']), 'root');
  t.equal(textAt(doc, ['REQUEST', 'CONTENT', 'RUDDER', 'AGENT_VERSION']), 'onerelay-0.1.0');
  t.equal(textAt(doc, ['REQUEST', 'CONTENT', 'ACCESSLOG', 'LOGDATE']), '2026-05-04 10:12:00', 'local time');
  t.equal(textAt(doc, ['REQUEST', 'CONTENT', 'OPERATINGSYSTEM', 'TIMEZONE', 'OFFSET']), '+0100', 'with its offset');
  t.equal(textAt(doc, ['REQUEST', 'CONTENT', 'CPUS', 'NAME']), 'Some <CPU> & co');
  t.equal(textAt(doc, ['REQUEST', 'CONTENT', 'NETWORKS', 'IPADDRESS']), '192.0.2.10');
  t.ok(textAt(doc, ['REQUEST', 'DEVICEID']));
});

t.test('roots before 8.3.2 find the agent version in a rudder-agent package, the one AGENT_VERSION announces', async (t) => {
  const doc = parseXml(buildInventoryXml(base));
  const softwares = doc.children[0]!.children.find((c) => c.name === 'CONTENT')!.children.filter((c) => c.name === 'SOFTWARES');
  const names = softwares.map((s) => s.children.find((c) => c.name === 'NAME')?.text ?? '');
  t.equal(names.filter((n) => n.toLowerCase().includes('rudder-agent')).length, 1, 'exactly one package matches (8.1 takes the first match, in no order of ours)');
  t.equal(agentVersionFromSoftware([doc], '8.1'), 'onerelay-0.1.0', '8.1 rule (findAgent): the first match and its VERSION');
  t.equal(agentVersionFromSoftware([doc], '8.2'), 'onerelay-0.1.0', '8.2 to 8.3.1 rule (findAgentVersion)');
  t.equal(agentVersionFromSoftware([doc], '8.2'), textAt(doc, ['REQUEST', 'CONTENT', 'RUDDER', 'AGENT_VERSION']), 'the same version as AGENT_VERSION (8.3.2+)');
  // the rule itself refuses what those roots refuse: no package, or a blank VERSION
  const withoutPackage = parseXml(buildInventoryXml(base).replace('<NAME>rudder-agent</NAME>', '<NAME>rudder-agnet</NAME>'));
  t.equal(agentVersionFromSoftware([withoutPackage], '8.1'), undefined);
  const blank = parseXml(buildInventoryXml({ ...base, agentVersion: ' \t ' }));
  t.equal(agentVersionFromSoftware([blank], '8.2'), undefined);
});

t.test('what the root refuses is refused with RELAY_ERR_OWN_INVENTORY', async (t) => {
  const localhost = { ...facts, hostname: 'localhost', fqdn: 'localhost' };
  let refused: unknown;
  try {
    buildInventoryXml({ ...base, facts: localhost });
  } catch (error) {
    refused = error;
  }
  t.ok(refused instanceof RelayError && refused.code === 'RELAY_ERR_OWN_INVENTORY', 'a coded error');
  t.match((refused as Error).message, /host name "localhost"/, 'naming the host name');
  t.throws(() => buildInventoryXml({ ...base, policyServerId: '-bad' }), { code: 'RELAY_ERR_OWN_INVENTORY' });
  t.throws(() => buildInventoryXml({ ...base, facts: { ...facts, os: { ...facts.os, kernelVersion: '' } } }), { code: 'RELAY_ERR_OWN_INVENTORY' });
  // an FQDN that is localhost still leaves the short name
  const doc = parseXml(buildInventoryXml({ ...base, facts: { ...facts, fqdn: 'localhost' } }));
  t.equal(textAt(doc, ['REQUEST', 'CONTENT', 'RUDDER', 'HOSTNAME']), 'relay1');
});

t.test('os-release and /etc/hosts are read as the agent would see them', async (t) => {
  const rhel = parseOsRelease('NAME="Red Hat Enterprise Linux"\nID="rhel"\nVERSION_ID="9.4"\nPRETTY_NAME="Red Hat Enterprise Linux 9.4 (Plow)"\n');
  t.same([rhel['ID'], rhel['VERSION_ID'], rhel['PRETTY_NAME']], ['rhel', '9.4', 'Red Hat Enterprise Linux 9.4 (Plow)']);
  t.equal(fqdnFromHosts('relay1', '127.0.0.1 localhost\n192.0.2.10 relay1.example.net relay1 # the relay\n'), 'relay1.example.net');
  t.equal(fqdnFromHosts('relay1', '127.0.0.1 localhost\n'), undefined);
});
