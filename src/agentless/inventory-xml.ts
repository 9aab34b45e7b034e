// The relay's own inventory: a FusionInventory/OCS XML document with Rudder's <RUDDER> extension, holding
// every element the root's checks require (spec-agentless-node.md §A.2–A.3, verified against
// PreInventoryParserCheckConsistency.scala, PreInventoryParserCheckInventoryAge.scala and FusionInventoryParser.scala).

import { RelayError } from '../errors.js';
import type { HostFacts } from './inventory-facts.js';

export interface InventoryDocument {
  readonly nodeId: string;
  /** the parent's node id, as GET /uuid on it answered */
  readonly policyServerId: string;
  /** informative only at the root (not read by the parser), as the agent sends it */
  readonly policyServerHostname: string;
  /** PEM of agent.cert: AGENT_CERT */
  readonly certificatePem: string;
  /** PKCS#1 PEM of localhost.pub: CFENGINE_KEY, as the agent sends it (not read by the root at 8.x+) */
  readonly publicKeyPem: string;
  /** RUDDER/AGENT_VERSION (8.3.2+) and the VERSION of the `rudder-agent` software (every earlier root) */
  readonly agentVersion: string;
  /** VERSIONCLIENT: the program that wrote the inventory */
  readonly generator: string;
  readonly facts: HostFacts;
  readonly now: Date;
}

/** what the root's NodeIdRegex accepts (StandardFieldsValidation.scala) */
const NODE_ID = /^[a-zA-Z0-9][a-zA-Z0-9-]{0,49}$/;
/** what the root's HostnameRegex accepts, minus the names getHostname refuses */
const HOSTNAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;
const REFUSED_HOSTNAMES = new Set(['localhost', '127.0.0.1', '::1']);

export function escapeXml(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f]/g, '').replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

type Tree = ReadonlyArray<readonly [string, string | number | Tree | undefined]>;

function render(tree: Tree, indent: string): string {
  let out = '';
  for (const [name, value] of tree) {
    if (value === undefined) continue;
    if (typeof value === 'object') out += `${indent}<${name}>\n${render(value, `${indent}  `)}${indent}</${name}>\n`;
    else out += `${indent}<${name}>${escapeXml(String(value))}</${name}>\n`;
  }
  return out;
}

/** `2026-05-04 10:12:00` in the machine's local time: LOGDATE is local time, OFFSET says which (CheckInventoryAge) */
export function localLogDate(date: Date): string {
  const p = (n: number) => String(n).padStart(2, '0');
  return `${date.getFullYear()}-${p(date.getMonth() + 1)}-${p(date.getDate())} ${p(date.getHours())}:${p(date.getMinutes())}:${p(date.getSeconds())}`;
}

/** the name the root's hostname check will keep: RUDDER/HOSTNAME, else OPERATINGSYSTEM/FQDN (getHostname) */
export function validHostname(facts: HostFacts): string | undefined {
  return [facts.fqdn, facts.hostname].find((h) => HOSTNAME.test(h) && !REFUSED_HOSTNAMES.has(h.toLowerCase()));
}

export function buildInventoryXml(doc: InventoryDocument): string {
  const { facts } = doc;
  if (!NODE_ID.test(doc.nodeId)) throw new RelayError('RELAY_ERR_OWN_INVENTORY', `node id ${JSON.stringify(doc.nodeId)} is not one the root accepts`);
  if (!NODE_ID.test(doc.policyServerId)) {
    throw new RelayError('RELAY_ERR_OWN_INVENTORY', `policy server id ${JSON.stringify(doc.policyServerId)} is not one the root accepts`);
  }
  const hostName = validHostname(facts);
  if (hostName === undefined) {
    throw new RelayError(
      'RELAY_ERR_OWN_INVENTORY',
      `the root refuses the host name ${JSON.stringify(facts.fqdn)}: set a host name other than localhost (and its fully qualified name in /etc/hosts)`,
    );
  }
  if (facts.os.kernelVersion === '') throw new RelayError('RELAY_ERR_OWN_INVENTORY', 'the kernel version is unknown; the root requires OPERATINGSYSTEM/KERNEL_VERSION');

  // one NETWORKS entry per address, as FusionInventory writes them
  const networks: Tree = facts.networks.map((n) => [
    'NETWORKS',
    [
      ['DESCRIPTION', n.name],
      ...(n.family === 'IPv4'
        ? ([
            ['IPADDRESS', n.address],
            ['IPMASK', n.netmask],
          ] as const)
        : ([
            ['IPADDRESS6', n.address],
            ['IPMASK6', n.netmask],
          ] as const)),
      ['MACADDR', n.mac === '00:00:00:00:00:00' ? undefined : n.mac],
      ['STATUS', 'Up'],
      ['VIRTUALDEV', n.isInternal ? 1 : 0],
    ],
  ]);
  const content: Tree = [
    ['ACCESSLOG', [['LOGDATE', localLogDate(doc.now)]]],
    ...(facts.cpu === undefined
      ? []
      : ([
          [
            'CPUS',
            [
              ['NAME', facts.cpu.model],
              ['ARCH', facts.os.arch],
              ['CORE', facts.cpu.count],
              ['THREAD', 1],
              ['SPEED', facts.cpu.speedMhz > 0 ? facts.cpu.speedMhz : undefined],
            ],
          ],
        ] as const)),
    [
      'HARDWARE',
      [
        ['NAME', facts.hostname],
        ['ARCHNAME', facts.os.arch],
        ['MEMORY', facts.memoryMb],
        ['SWAP', facts.swapMb],
        ['OSNAME', facts.os.fullName],
        ['OSVERSION', facts.os.version || undefined],
      ],
    ],
    ...networks,
    [
      'OPERATINGSYSTEM',
      [
        ['ARCH', facts.os.arch],
        ['FQDN', facts.fqdn],
        ['FULL_NAME', facts.os.fullName],
        ['HOSTNAME', facts.hostname],
        ['KERNEL_NAME', facts.os.kernelName],
        ['KERNEL_VERSION', facts.os.kernelVersion],
        ['NAME', facts.os.name],
        ['VERSION', facts.os.version || undefined],
        [
          'TIMEZONE',
          [
            ['NAME', facts.timezone.name],
            ['OFFSET', facts.timezone.offset],
          ],
        ],
      ],
    ],
    [
      'SOFTWARES',
      [
        ['NAME', 'onerelay'],
        ['VERSION', doc.agentVersion],
        ['PUBLISHER', 'onerelay'],
      ],
    ],
    // Roots before 8.3.2 read the agent version only from a software whose NAME contains `rudder-agent`
    // (FusionInventoryParser findAgent / findAgentVersion; AgentTypes inventorySoftwareName) and refuse the
    // whole inventory without one; RUDDER/AGENT_VERSION is read from 8.3.2 on (rudder 35c9f52035). This must be
    // the only such entry: 8.1 takes the first match whatever its VERSION, and the parser's order is not ours.
    [
      'SOFTWARES',
      [
        ['NAME', 'rudder-agent'],
        ['VERSION', doc.agentVersion],
        ['PUBLISHER', 'onerelay'],
        ['COMMENTS', 'onerelay, agentless Rudder relay (no Rudder agent installed)'],
      ],
    ],
    [
      'RUDDER',
      [
        [
          'AGENT',
          [
            ['AGENT_NAME', 'cfengine-community'],
            ['AGENT_CERT', doc.certificatePem.trim()],
            ['CFENGINE_KEY', doc.publicKeyPem.trim()],
            ['OWNER', 'root'],
            ['POLICY_SERVER_HOSTNAME', doc.policyServerHostname],
            ['POLICY_SERVER_UUID', doc.policyServerId],
          ],
        ],
        ['AGENT_VERSION', doc.agentVersion],
        ['HOSTNAME', hostName],
        ['UUID', doc.nodeId],
      ],
    ],
    ['VERSIONCLIENT', doc.generator],
  ];
  const request: Tree = [
    ['CONTENT', content],
    ['DEVICEID', `${facts.hostname}-onerelay-${doc.nodeId}`],
    ['QUERY', 'INVENTORY'],
  ];
  return `<?xml version="1.0" encoding="UTF-8" ?>\n<REQUEST>\n${render(request, '  ')}</REQUEST>\n`;
}
