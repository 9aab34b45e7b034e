// The machine facts the relay's own inventory reports (docs/agentless-node.md "Inventory and registration"):
// read locally only (os module, /etc/os-release, /etc/hosts, /proc/meminfo), never through DNS or the network.

import { readFile } from 'node:fs/promises';
import { arch, cpus, hostname, machine, networkInterfaces, release, totalmem } from 'node:os';

export interface NetworkFact {
  /** interface name (NETWORKS/DESCRIPTION) */
  readonly name: string;
  readonly family: 'IPv4' | 'IPv6';
  readonly address: string;
  readonly netmask: string;
  readonly mac: string;
  readonly isInternal: boolean;
}

export interface OsFacts {
  /** OPERATINGSYSTEM/NAME, in FusionInventory's words so that the root recognises the distribution */
  readonly name: string;
  /** OPERATINGSYSTEM/FULL_NAME (os-release PRETTY_NAME) */
  readonly fullName: string;
  readonly version: string;
  /** OPERATINGSYSTEM/KERNEL_NAME, "linux" on Linux */
  readonly kernelName: string;
  readonly kernelVersion: string;
  readonly arch: string;
}

export interface HostFacts {
  /** short host name */
  readonly hostname: string;
  readonly fqdn: string;
  readonly os: OsFacts;
  readonly networks: readonly NetworkFact[];
  readonly memoryMb: number;
  readonly swapMb: number | undefined;
  readonly cpu: { readonly model: string; readonly count: number; readonly speedMhz: number } | undefined;
  readonly timezone: { readonly name: string; readonly offset: string };
}

/** os-release ID → the NAME FusionInventory writes, which the root's LinuxType matches (NodeInventory.scala `LinuxType`) */
const FUSION_OS_NAMES: Readonly<Record<string, string>> = {
  debian: 'Debian',
  ubuntu: 'Ubuntu',
  rhel: 'RedHat',
  centos: 'CentOS',
  rocky: 'Rocky Linux',
  almalinux: 'AlmaLinux',
  ol: 'Oracle Linux Server',
  amzn: 'Amazon Linux',
  fedora: 'Fedora',
  sles: 'SUSE',
  'opensuse-leap': 'SUSE',
  'opensuse-tumbleweed': 'SUSE',
  raspbian: 'Raspbian',
  linuxmint: 'Mint',
  kali: 'Kali',
  slackware: 'Slackware',
};

export function parseOsRelease(text: string): Record<string, string> {
  const values: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const match = /^([A-Z0-9_]+)=(.*)$/.exec(line.trim());
    if (!match?.[1]) continue;
    let value = match[2] ?? '';
    if (/^".*"$|^'.*'$/.test(value)) value = value.slice(1, -1).replace(/\\(["'$`\\])/g, '$1');
    values[match[1]] = value;
  }
  return values;
}

async function readText(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch {
    return undefined;
  }
}

/** the fully qualified name from /etc/hosts (as `hostname -f` finds it there), without asking DNS */
export function fqdnFromHosts(shortName: string, hostsText: string | undefined): string | undefined {
  for (const raw of (hostsText ?? '').split('\n')) {
    const names = raw.replace(/#.*/, '').trim().split(/\s+/).slice(1);
    if (!names.some((n) => n === shortName || n.startsWith(`${shortName}.`))) continue;
    const dotted = names.find((n) => n.startsWith(`${shortName}.`));
    if (dotted !== undefined) return dotted;
  }
  return undefined;
}

function offsetOf(date: Date): string {
  const minutes = -date.getTimezoneOffset();
  const sign = minutes < 0 ? '-' : '+';
  const abs = Math.abs(minutes);
  return `${sign}${String(Math.floor(abs / 60)).padStart(2, '0')}${String(abs % 60).padStart(2, '0')}`;
}

export async function readHostFacts(now: Date = new Date()): Promise<HostFacts> {
  const host = hostname();
  const shortName = host.split('.')[0] ?? host;
  const fqdn = host.includes('.') ? host : (fqdnFromHosts(host, await readText('/etc/hosts')) ?? host);

  const osRelease = parseOsRelease((await readText('/etc/os-release')) ?? (await readText('/usr/lib/os-release')) ?? '');
  const id = (osRelease['ID'] ?? '').toLowerCase();
  let version = osRelease['VERSION_ID'] ?? '';
  if (id === 'debian') {
    // FusionInventory reports Debian's point release (12.5), which only /etc/debian_version has
    const debianVersion = (await readText('/etc/debian_version'))?.trim();
    if (debianVersion !== undefined && /^\d+(\.\d+)*$/.test(debianVersion)) version = debianVersion;
  }
  const kernelName = process.platform === 'linux' ? 'linux' : process.platform;
  const os: OsFacts = {
    name: FUSION_OS_NAMES[id] ?? osRelease['NAME'] ?? kernelName,
    fullName: osRelease['PRETTY_NAME'] ?? osRelease['NAME'] ?? kernelName,
    version,
    kernelName,
    kernelVersion: release(),
    arch: typeof machine === 'function' ? machine() : arch(),
  };

  const networks: NetworkFact[] = [];
  for (const [name, addresses] of Object.entries(networkInterfaces())) {
    for (const a of addresses ?? []) {
      networks.push({ name, family: a.family === 'IPv6' ? 'IPv6' : 'IPv4', address: a.address, netmask: a.netmask, mac: a.mac, isInternal: a.internal });
    }
  }

  const meminfo = await readText('/proc/meminfo');
  const swapKb = meminfo === undefined ? undefined : /^SwapTotal:\s+(\d+)\s+kB/m.exec(meminfo)?.[1];
  const cpuList = cpus();
  const first = cpuList[0];
  return {
    hostname: shortName,
    fqdn,
    os,
    networks,
    memoryMb: Math.round(totalmem() / (1024 * 1024)),
    swapMb: swapKb === undefined ? undefined : Math.round(Number(swapKb) / 1024),
    cpu: first === undefined ? undefined : { model: first.model.trim(), count: cpuList.length, speedMhz: first.speed },
    timezone: { name: Intl.DateTimeFormat().resolvedOptions().timeZone, offset: offsetOf(now) },
  };
}
