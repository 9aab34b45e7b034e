// The relay's own policies (spec-agentless-node.md §B): what the root generated for this relay, read from its
// inputs folder (Rudder's /var/rudder/cfengine-community/inputs/), where the sync switches in a whole copy of
// /var/rudder/share/<relay>/rules/cfengine-community/. Only a complete, valid rudder.json replaces the policies
// in force: a broken or partial one is logged, shown in the status, and the last good one stays.

import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { isCidr } from '../config/index.js';
import { RelayError, isRelayError, messageOf } from '../errors.js';
import { settingsStatus, type OwnSettings } from './settings.js';
import type { OwnPolicies, OwnPolicyState, ReportMode } from './types.js';

/** PolicyWriterService SYSTEM_VARIABLE_JSON; the generation flag of T common/1.0/update.st */
export const RUDDER_JSON = 'rudder.json';
export const PROMISES_GENERATED = 'rudder-promises-generated';
const DEFAULT_POLL_MS = 5_000;
const REPORT_MODES: readonly ReportMode[] = ['full-compliance', 'changes-only', 'reports-disabled'];
const POLICY_MODES = ['enforce', 'audit'] as const;

export interface OwnPoliciesOptions {
  /** own_policies.inputs_directory */
  readonly inputsDirectory: string;
  /** how often the folder is looked at for a change made by something else than our sync (default 5 s) */
  readonly pollMs?: number;
}

export interface OwnPoliciesStatus {
  readonly inputsDirectory: string;
  /** when the policies in force were read (ISO) */
  readonly loadedAt: string | undefined;
  /** the last refused rudder.json, while no better one came */
  readonly lastError: { readonly code: string; readonly message: string; readonly at: string } | undefined;
}

/** The face's service: OwnPolicies plus what the composition root and the sync need. */
export interface OwnPoliciesService extends OwnPolicies {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** reads the inputs folder again (after a sync switched it in); resolves once listeners ran */
  refresh(): Promise<void>;
  /** throws RELAY_ERR_OWN_POLICIES when `directory` does not hold usable policies (the sync checks before switching) */
  check(directory: string): Promise<void>;
  /** records a refusal found elsewhere (the sync's check) for the status */
  rejected(error: unknown): void;
  status(): OwnPoliciesStatus;
}

function refuse(file: string, message: string): never {
  throw new RelayError('RELAY_ERR_OWN_POLICIES', `${file}: ${message}`);
}

/** rudder.json's values are strings, "5" or "true" (spec-agentless-node.md §B.2, D.1 7) */
function stringOf(variables: Record<string, unknown>, key: string, file: string): string {
  const value = variables[key];
  if (typeof value !== 'string') refuse(file, `${key} is ${value === undefined ? 'missing' : 'not a string'}; expected the string Rudder generates`);
  return value;
}

/** the bits of an address, most significant first, or undefined */
function addressBits(address: string): string | undefined {
  const family = isIP(address);
  if (family === 4) return address.split('.').map((o) => Number(o).toString(2).padStart(8, '0')).join('');
  if (family !== 6 || address.includes('.') || address.includes('%')) return undefined;
  const [head = '', tail] = address.split('::');
  const left = head === '' ? [] : head.split(':');
  const right = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = tail === undefined ? left : [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right];
  return groups.map((g) => parseInt(g, 16).toString(2).padStart(16, '0')).join('');
}

/**
 * An ALLOWED_NETWORKS entry as "address[/prefix]", or undefined when onerelay cannot use it. Rudder checks entries
 * with `new IPAddressString(net).isValid` (PolicyServerData.scala AllowedNetwork.isValid, used by the UI and the
 * API, spaces removed first), which also takes a mask ("192.168.1.0/255.255.255.0") and wildcards ("192.168.1.*");
 * those with a contiguous mask or trailing wildcards are converted. Other forms that library knows (ranges,
 * non-contiguous masks, "*", inet_aton shorthands…) are left to the caller to drop.
 */
export function allowedNetworkOf(entry: string): string | undefined {
  const net = entry.replace(/\s/g, '');
  if (isCidr(net)) return net;
  const slash = net.indexOf('/');
  if (slash > 0) {
    const address = net.slice(0, slash);
    const family = isIP(address);
    const mask = net.slice(slash + 1);
    if (family === 0 || isIP(mask) !== family) return undefined;
    const bits = addressBits(mask);
    // a mask the library takes but that is not a prefix (255.0.255.0) selects no single network
    if (bits === undefined || !/^1*0*$/.test(bits)) return undefined;
    return `${address}/${bits.indexOf('0') === -1 ? bits.length : bits.indexOf('0')}`;
  }
  const wildcard = /^(\d{1,3}(?:\.\d{1,3}){0,2})((?:\.\*){1,3})$/.exec(net);
  if (wildcard?.[1] !== undefined && wildcard[2] !== undefined) {
    const octets = wildcard[1].split('.');
    if (octets.length + wildcard[2].length / 2 > 4 || octets.some((o) => Number(o) > 255)) return undefined;
    return `${[...octets.map(Number), 0, 0, 0].slice(0, 4).join('.')}/${octets.length * 8}`;
  }
  return undefined;
}

/**
 * parses a rudder.json text into the policy state; throws RELAY_ERR_OWN_POLICIES on anything partial or malformed.
 * An ALLOWED_NETWORKS entry onerelay cannot use is left out (given to `onDropped`) rather than refusing the whole
 * file: the root accepted it, and refusing would keep the old config id, DAV credentials and ACL in force.
 */
export function parseOwnPolicies(
  text: string,
  generationText: string | undefined,
  inputsDirectory: string,
  onDropped?: (entries: readonly string[]) => void,
): OwnPolicyState {
  const file = join(inputsDirectory, RUDDER_JSON);
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    refuse(file, `not JSON (${messageOf(error)}); expected the flat object PolicyWriterService writes`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) refuse(file, 'expected a JSON object of system variables');
  const variables = parsed as Record<string, unknown>;
  const nodeConfigId = stringOf(variables, 'RUDDER_NODE_CONFIG_ID', file);
  if (nodeConfigId.trim() === '') refuse(file, 'RUDDER_NODE_CONFIG_ID is empty');
  const reportMode = stringOf(variables, 'RUDDER_REPORT_MODE', file);
  if (!(REPORT_MODES as readonly string[]).includes(reportMode)) refuse(file, `RUDDER_REPORT_MODE "${reportMode}": expected one of ${REPORT_MODES.join(', ')}`);
  const policyMode = stringOf(variables, 'RUDDER_COMPLIANCE_MODE', file);
  if (!(POLICY_MODES as readonly string[]).includes(policyMode)) refuse(file, `RUDDER_COMPLIANCE_MODE "${policyMode}": expected enforce or audit`);
  const interval = stringOf(variables, 'AGENT_RUN_INTERVAL', file);
  if (!/^[1-9][0-9]{0,5}$/.test(interval.trim())) refuse(file, `AGENT_RUN_INTERVAL "${interval}": expected a number of minutes`);
  const networks = variables['ALLOWED_NETWORKS'];
  if (!Array.isArray(networks) || !networks.every((n): n is string => typeof n === 'string')) {
    refuse(file, 'ALLOWED_NETWORKS is missing or not an array of strings');
  }
  const allowedNetworks: string[] = [];
  const dropped: string[] = [];
  for (const entry of networks) {
    if (entry.trim() === '') continue;
    const usable = allowedNetworkOf(entry);
    if (usable === undefined) dropped.push(entry);
    else allowedNetworks.push(usable);
  }
  if (dropped.length > 0) onDropped?.(dropped);
  const davUser = variables['DAVUSER'];
  const davPassword = variables['DAVPASSWORD'];
  // update.st: a flag that is not a number counts as "no generation known"
  const generation = generationText !== undefined && /^\s*[0-9]{1,16}\s*$/.test(generationText) ? Number(generationText.trim()) : undefined;
  return {
    nodeConfigId,
    reportMode: reportMode as ReportMode,
    policyMode: policyMode as OwnPolicyState['policyMode'],
    runIntervalMs: Number(interval.trim()) * 60_000,
    allowedNetworks,
    davUser: typeof davUser === 'string' && davUser !== '' ? davUser : undefined,
    davPassword: typeof davPassword === 'string' && davPassword !== '' ? davPassword : undefined,
    generation,
    inputsDirectory,
    variables: Object.freeze({ ...variables }),
  };
}

function isMissing(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

async function readOptional(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (error) {
    if (isMissing(error)) return undefined;
    throw error;
  }
}

export function createOwnPolicies(options: OwnPoliciesOptions, deps: { readonly log: Logger }): OwnPoliciesService {
  const log = deps.log.child({ module: 'agentless' });
  const { inputsDirectory } = options;
  const listeners = new Set<(state: OwnPolicyState) => void>();
  let current: OwnPolicyState | undefined;
  /** hash of the texts of the state in force, or of the last refused ones (not read twice) */
  let seen: string | undefined;
  let loadedAt: string | undefined;
  let lastError: OwnPoliciesStatus['lastError'];
  let timer: NodeJS.Timeout | undefined;
  let statSignature: string | undefined;
  let running: Promise<void> | undefined;

  function record(error: unknown): void {
    const code = isRelayError(error) ? error.code : 'RELAY_ERR_OWN_POLICIES';
    const message = messageOf(error);
    if (lastError?.message !== message) {
      log.error({ event: 'own_policies_refused', code, err: message, inputs: inputsDirectory, in_force: current?.nodeConfigId }, 'own policies refused; the last good ones stay in force');
    }
    lastError = { code, message, at: new Date().toISOString() };
  }

  async function load(): Promise<void> {
    let text: string | undefined;
    let flag: string | undefined;
    try {
      [text, flag] = await Promise.all([readOptional(join(inputsDirectory, RUDDER_JSON)), readOptional(join(inputsDirectory, PROMISES_GENERATED))]);
    } catch (error) {
      record(new RelayError('RELAY_ERR_OWN_POLICIES', `cannot read ${inputsDirectory}: ${messageOf(error)}`, { cause: error }));
      return;
    }
    // absent: none generated yet, or the instant of a directory switch; what is in force stays
    if (text === undefined) return;
    const hash = createHash('sha256').update(text).update('\0').update(flag ?? '').digest('hex');
    if (hash === seen) return;
    seen = hash;
    let next: OwnPolicyState;
    try {
      next = parseOwnPolicies(text, flag, inputsDirectory, (entries) =>
        log.warn(
          { event: 'own_policies_networks_dropped', code: 'RELAY_ERR_OWN_POLICIES', entries, inputs: inputsDirectory },
          'ALLOWED_NETWORKS entries onerelay cannot use (expected "address", "address/prefix", "address/mask" or "a.b.c.*") are left out; the rest of the policies apply',
        ),
      );
    } catch (error) {
      record(error);
      return;
    }
    lastError = undefined;
    current = next;
    loadedAt = new Date().toISOString();
    log.info({ event: 'own_policies_loaded', node_config_id: next.nodeConfigId, generation: next.generation, report_mode: next.reportMode, allowed_networks: next.allowedNetworks }, 'own policies in force');
    for (const listener of [...listeners]) {
      try {
        listener(next);
      } catch (error) {
        log.error({ event: 'own_policies_listener_failed', code: 'RELAY_ERR_INTERNAL', err: messageOf(error) }, 'a listener of the own policies failed');
      }
    }
  }

  /** one load at a time; a refresh asked during a load runs after it */
  function refresh(): Promise<void> {
    const previous = running ?? Promise.resolve();
    const next = previous.then(load, load).finally(() => {
      if (running === next) running = undefined;
    });
    running = next;
    return next;
  }

  async function signatureNow(): Promise<string> {
    const parts = await Promise.all(
      [RUDDER_JSON, PROMISES_GENERATED].map(async (name) => {
        try {
          const s = await stat(join(inputsDirectory, name), { bigint: true });
          return `${s.ino}:${s.size}:${s.mtimeNs}`;
        } catch {
          return '-';
        }
      }),
    );
    return parts.join(',');
  }

  return {
    current: () => current,
    onChange(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    async start() {
      if (timer !== undefined) return;
      statSignature = await signatureNow();
      await refresh();
      // a stock agent or an administrator may also write the folder: looked at, cheaply, now and then
      timer = setInterval(() => {
        void signatureNow().then((signature) => {
          if (signature === statSignature) return undefined;
          statSignature = signature;
          return refresh();
        });
      }, options.pollMs ?? DEFAULT_POLL_MS);
      timer.unref();
    },
    async stop() {
      if (timer !== undefined) clearInterval(timer);
      timer = undefined;
      await running;
    },
    async refresh() {
      statSignature = await signatureNow();
      await refresh();
    },
    async check(directory) {
      const text = await readOptional(join(directory, RUDDER_JSON)).catch((error: unknown) => {
        throw new RelayError('RELAY_ERR_OWN_POLICIES', `cannot read ${join(directory, RUDDER_JSON)}: ${messageOf(error)}`, { cause: error });
      });
      if (text === undefined) throw new RelayError('RELAY_ERR_OWN_POLICIES', `${RUDDER_JSON} is missing from the relay's own policies upstream`);
      parseOwnPolicies(text, await readOptional(join(directory, PROMISES_GENERATED)).catch(() => undefined), inputsDirectory);
    },
    rejected: (error) => record(error),
    status: () => ({ inputsDirectory, loadedAt, lastError }),
  };
}

/** the status's `own_policies` part: the policies in force, the last refusal, each applied setting and its source */
export function ownPoliciesStatus(service: OwnPoliciesService, settings: OwnSettings) {
  const state = service.current();
  const s = service.status();
  return {
    ...(s.lastError === undefined ? { status: 'success' as const } : { status: 'error' as const, details: `${s.lastError.code}: ${s.lastError.message}` }),
    inputs: s.inputsDirectory,
    loaded_at: s.loadedAt,
    generation: state?.generation,
    node_config_id: state?.nodeConfigId,
    ...settingsStatus(settings, state),
  };
}
