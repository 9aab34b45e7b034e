// Rudder's allowed networks (Apache `Require ip`, cf-serverd allowconnects; spec-https-front-cfserverd-sync.md §1.4, §2.2)
// as a BlockList, shared by the HTTPS front door and the CFEngine server.

import { BlockList, isIP } from 'node:net';

export interface NetworkAcl {
  allows(address: string | undefined): boolean;
}

export function createNetworkAcl(cidrs: readonly string[]): NetworkAcl {
  const list = new BlockList();
  let everything = false;
  for (const cidr of cidrs) {
    const [address = '', prefix] = cidr.split('/');
    const family = isIP(address) === 6 ? 'ipv6' : 'ipv4';
    const bits = prefix === undefined ? (family === 'ipv4' ? 32 : 128) : Number(prefix);
    if (bits === 0) everything = true;
    else list.addSubnet(address, bits, family);
  }
  const check = (address: string): boolean => {
    // a dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
    if (mapped?.[1] !== undefined) return list.check(mapped[1], 'ipv4');
    return list.check(address, isIP(address) === 6 ? 'ipv6' : 'ipv4');
  };
  // Decisions by address: BlockList.check builds a SocketAddress (a native object) per call, and the same
  // agents connect again and again (every upload and download asks). The ACL is immutable (a change of
  // networks makes a new one), so a decision never goes stale; the cache is bounded, as clients are many.
  const decisions = new Map<string, boolean>();
  return {
    allows(address) {
      if (address === undefined) return false;
      if (everything) return true;
      let allowed = decisions.get(address);
      if (allowed === undefined) {
        allowed = check(address);
        if (decisions.size >= ACL_DECISIONS_KEPT) decisions.clear();
        decisions.set(address, allowed);
      }
      return allowed;
    },
  };
}

/** addresses whose decision is kept (each entry a short string and a boolean: well under 1 MB) */
const ACL_DECISIONS_KEPT = 4096;
