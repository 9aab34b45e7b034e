// What the relay applies from its own policies, and where each value comes from (issue 18, item 2): a value
// set explicitly in the TOML wins, then the policies, then onerelay's default. The ACLs are the ones Rudder's
// system techniques build from def.acl (T common/1.0/cf-serverd.st l.86-93, rudder-service-apache
// system_rudder_apache_networks_configuration.cf), so the relay admits what a stock relay admits.

import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import type { OwnPolicyState, ReportMode } from './types.js';

export type SettingSource = 'toml' | 'policies' | 'default';

export interface AppliedSetting<T> {
  readonly value: T;
  readonly source: SettingSource;
}

/** the settings applied live (front door, CFEngine server, upstream uploads, run log) */
export interface OwnSettings {
  /** HTTPS uploads, policy downloads, sync serving, CFEngine connections */
  readonly allowedNetworks: AppliedSetting<readonly string[]>;
  /** remote-run and the status page over HTTPS (Apache's rudder-networks-policy-server-24.conf) */
  readonly policyServerNetworks: AppliedSetting<readonly string[]>;
  /** WebDAV Basic credentials: checked on incoming /reports and /inventory-updates, sent upstream */
  readonly davUser: AppliedSetting<string>;
  readonly davPassword: AppliedSetting<string | undefined>;
  readonly runIntervalMs: AppliedSetting<number>;
  readonly nodeConfigId: AppliedSetting<string | undefined>;
  readonly reportMode: AppliedSetting<ReportMode>;
  readonly policyMode: AppliedSetting<'enforce' | 'audit'>;
}

export interface SettingsInputs {
  /** the TOML values (or the config defaults when not set) */
  readonly toml: {
    readonly allowedNetworks: readonly string[];
    readonly policyServerNetworks: readonly string[];
    readonly user: string;
    readonly password: string | undefined;
    /** output.upstream.default_password: Rudder's bootstrap credentials before any policy (spec §D.1 11) */
    readonly defaultPassword: string;
    /** config.ownPolicies.tomlKeys */
    readonly keys: readonly string[];
  };
  /** the host's own addresses (CFEngine's sys.ip_addresses) */
  readonly hostAddresses: readonly string[];
  /** own_policies.local_networks: replaces loopback and the host's addresses in the ACL when set */
  readonly localNetworks?: readonly string[] | undefined;
  /** the parent's address (host2ip of the policy server), undefined when it does not resolve */
  readonly parentAddress: string | undefined;
}

/** a relay's run interval is fixed at 5 minutes by SystemVariableService (spec §B.2 AGENT_RUN_INTERVAL) */
export const DEFAULT_RUN_INTERVAL_MS = 5 * 60_000;

/**
 * def.acl of a policy server: loopback and its own addresses (or `localNetworks`), then, when ALLOWED_NETWORKS is
 * not empty, the parent and those networks
 */
export function rudderAcl(allowedNetworks: readonly string[], hostAddresses: readonly string[], parentAddress: string | undefined, localNetworks?: readonly string[]): string[] {
  // cf-serverd.st puts host2ip(policy_server) inside &if(ALLOWED_NETWORKS)&: with an empty list, not even the parent
  const extra = allowedNetworks.length === 0 ? [] : [...(parentAddress === undefined ? [] : [parentAddress]), ...allowedNetworks];
  return dedupe([...(localNetworks ?? ['127.0.0.0/8', '::1', ...hostAddresses]), ...extra]);
}

/** Apache "Require local" plus "Require ip <parent>" when the parent's address is an IP */
export function rudderPolicyServerAcl(parentAddress: string | undefined, localNetworks?: readonly string[]): string[] {
  return dedupe([...(localNetworks ?? ['127.0.0.0/8', '::1']), ...(parentAddress !== undefined && isIP(parentAddress) !== 0 ? [parentAddress] : [])]);
}

function dedupe(list: readonly string[]): string[] {
  return [...new Set(list)];
}

export function resolveOwnSettings(inputs: SettingsInputs, state: OwnPolicyState | undefined): OwnSettings {
  const { toml } = inputs;
  const inToml = (key: string): boolean => toml.keys.includes(key);
  const pick = <T>(key: string, tomlValue: T, fromPolicies: T | undefined, fallback: T): AppliedSetting<T> => {
    if (inToml(key)) return { value: tomlValue, source: 'toml' };
    if (fromPolicies !== undefined) return { value: fromPolicies, source: 'policies' };
    return { value: fallback, source: 'default' };
  };
  return {
    allowedNetworks: pick(
      'https.allowed_networks',
      toml.allowedNetworks,
      state === undefined ? undefined : rudderAcl(state.allowedNetworks, inputs.hostAddresses, inputs.parentAddress, inputs.localNetworks),
      toml.allowedNetworks,
    ),
    policyServerNetworks: pick('https.policy_server_networks', toml.policyServerNetworks, state === undefined ? undefined : rudderPolicyServerAcl(inputs.parentAddress, inputs.localNetworks), toml.policyServerNetworks),
    davUser: pick('output.upstream.user', toml.user, state?.davUser, toml.user),
    // before any policy, Rudder's bootstrap password (an agent's first rudder.json says rudder:rudder)
    davPassword: pick<string | undefined>('output.upstream.password', toml.password, state?.davPassword, toml.password ?? toml.defaultPassword),
    runIntervalMs: pick('-', DEFAULT_RUN_INTERVAL_MS, state?.runIntervalMs, DEFAULT_RUN_INTERVAL_MS),
    nodeConfigId: pick<string | undefined>('-', undefined, state?.nodeConfigId, undefined),
    reportMode: pick<ReportMode>('-', 'full-compliance', state?.reportMode, 'full-compliance'),
    policyMode: pick<'enforce' | 'audit'>('-', 'enforce', state?.policyMode, 'enforce'),
  };
}

/** Settings the root generates that onerelay shows but does not apply live (README "Its own policies"). */
const SHOWN_ONLY = [
  'HTTPS_POLICY_DISTRIBUTION_PORT',
  'COMMUNITYPORT',
  'POLICY_SERVER_KEY',
  'POLICY_SERVER_KEY_HASH',
  'POLICY_SERVER_CERT_VALIDATION',
  'POLICY_SERVER_HTTPS_ONLY',
  'RELAY_SYNC_METHOD',
  'RELAY_SYNC_PROMISES',
  'RELAY_SYNC_SHAREDFILES',
  'DENYBADCLOCKS',
] as const;

/** the status's view: every applied setting with its value and source (the password never shown) */
export function settingsStatus(settings: OwnSettings, state: OwnPolicyState | undefined): Record<string, unknown> {
  const applied: Record<string, { value: unknown; source: SettingSource }> = {
    allowed_networks: settings.allowedNetworks,
    policy_server_networks: settings.policyServerNetworks,
    dav_user: settings.davUser,
    dav_password: { value: settings.davPassword.value === undefined ? undefined : '(set)', source: settings.davPassword.source },
    run_interval_s: { value: settings.runIntervalMs.value / 1000, source: settings.runIntervalMs.source },
    node_config_id: settings.nodeConfigId,
    report_mode: settings.reportMode,
    policy_mode: settings.policyMode,
  };
  const notApplied: Record<string, unknown> = {};
  for (const key of SHOWN_ONLY) {
    const value = state?.variables[key];
    if (value !== undefined) notApplied[key] = value;
  }
  return { applied, not_applied: notApplied };
}

/** the host's own addresses, as CFEngine's sys.ip_addresses (every interface, loopback included) */
export function hostAddresses(): string[] {
  return Object.values(networkInterfaces()).flatMap((list) => (list ?? []).map((i) => i.address.replace(/%.*$/, '')));
}

/** host2ip of the parent: the address itself, or its resolution; undefined when it does not resolve */
export async function parentAddressOf(host: string): Promise<string | undefined> {
  if (host === '') return undefined;
  if (isIP(host) !== 0) return host;
  try {
    return (await lookup(host)).address;
  } catch {
    return undefined;
  }
}
