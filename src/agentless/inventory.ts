// The relay registers itself as a Rudder node: it writes a signed inventory of itself into its own inventory
// spool, where the forwarding queue sends it upstream like any node's (spec-agentless-node.md §A;
// docs/agentless-node.md "Inventory and registration"). It does what the agent's do-inventory and the
// inventory technique (fusionAgent.st) do: GET /uuid from the policy server, build, sign the uncompressed
// file, gzip, `<uuid>_<date>.ocs.gz` then `.ocs.sign`; to /inventories/ with the default password until the
// root generated the relay's own policies, then to /inventory-updates/ with DAVUSER/DAVPASSWORD.
// When: at start, once a day, and whenever an identity fact (address, host name, certificate) changes.

import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { setTimeout as delay } from 'node:timers/promises';
import { promisify } from 'node:util';
import { gzip } from 'node:zlib';
import type { Logger } from 'pino';
import { RelayError, isRelayError, messageOf, type ErrorCode } from '../errors.js';
import { loadIdentity, type IdentityPaths } from '../identity/index.js';
import { writeFileAtomically, type QueueOutcome, type Spool, type SpoolQueue } from '../spool/index.js';
import type { PeerClient } from '../upstream/index.js';
import { VERSION } from '../version.js';
import { readHostFacts, type HostFacts } from './inventory-facts.js';
import { inventorySignature } from './inventory-sign.js';
import { buildInventoryXml, validHostname } from './inventory-xml.js';
import type { ComponentOutcome, InventoryStatus, OwnPolicies, OwnPolicyState } from './types.js';

const gzipAsync = promisify(gzip);

const MINUTE = 60_000;
/** Rudder's default: one inventory a day (fusionAgent.st schedule) */
export const DEFAULT_INVENTORY_FREQUENCY_MS = 24 * 60 * MINUTE;
/** how often identity facts are compared with the last inventory's (the relay's agent run interval) */
export const DEFAULT_FACTS_CHECK_MS = 5 * MINUTE;
/** after /uuid or the build failed (the agent retries at its next run) */
export const DEFAULT_RETRY_MS = MINUTE;
const FAILURE_LOG_EVERY_MS = 60 * MINUTE;
/** after the upstream refused the files (fusionAgent.st min_resend_delay for a first inventory: 15 min) */
export const REFUSED_RETRY_MS = 15 * MINUTE;
/**
 * how long after the last inventory a changed identity fact may make another one: the agent's own resend
 * delays (fusionAgent.st min_resend_delay, spec-agentless-node.md §A.7): 15 min while the node is not known
 * (/inventories/), 480 min once it is (/inventory-updates/, "already sent less than 8 hours ago"). The agent
 * itself waits for its daily inventory; flapping addresses must not make one every check.
 */
export const CHANGE_RESEND_MS: Readonly<Record<InventoryEndpoint, number>> = { inventories: 15 * MINUTE, 'inventory-updates': 480 * MINUTE };
/** the answer of GET /uuid the agent accepts (do-inventory "Checking rudder-server-uuid.txt") */
const POLICY_SERVER_ID = /^[a-z0-9-]+$/;
/** what the agent reports once both files are upstream (fusionAgent.st sendInventory) */
export const SENT_MESSAGE = 'The inventory has been successfully sent';
/** AGENT_VERSION: the root only fails generation for versions starting 2. to 5. (SystemVariableService versionHasSyslogOnly) */
export const AGENT_VERSION = `onerelay-${VERSION}`;

export type InventoryEndpoint = Extract<SpoolQueue, 'inventories' | 'inventory-updates'>;

export interface OwnInventoryOptions {
  readonly nodeId: string;
  readonly identityPaths: IdentityPaths;
  /** output.upstream.host: POLICY_SERVER_HOSTNAME (informative) */
  readonly policyServerHostname: string;
  /** the job's memory across restarts (last inventory, its facts, the policy server id) */
  readonly stateFile: string;
  readonly frequencyMs?: number;
  readonly checkIntervalMs?: number;
  readonly retryMs?: number;
  /** default CHANGE_RESEND_MS */
  readonly changeResendMs?: Partial<Record<InventoryEndpoint, number>>;
  /** the biggest file the spool takes (https.max_upload_size) */
  readonly maxBytes: number;
}

export interface OwnInventoryDeps {
  readonly spool: Pick<Spool, 'receive'>;
  /** the relay's own policies; defined once the root generated them (then the root knows the relay) */
  readonly ownPolicies: OwnPolicies | (() => OwnPolicyState | undefined);
  /** pinned HTTPS client to the upstream, for GET /uuid */
  readonly upstream: () => PeerClient | undefined;
  /** the machine's facts; default: read them from the system */
  readonly readFacts?: () => Promise<HostFacts>;
  readonly log: Logger;
}

export interface OwnInventory extends InventoryStatus {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** make and queue an inventory now (as `rudder agent inventory`); resolves once it is in the spool or failed */
  trigger(reason: string): Promise<void>;
  /** Basic credentials for one of the relay's own inventory files, when they differ from output.upstream's */
  credentialsFor(endpoint: SpoolQueue, name: string): { user: string; password: string } | undefined;
  /** what the forwarding queue did with a file (the job follows its own two) */
  noteQueueOutcome(queue: SpoolQueue, name: string, outcome: QueueOutcome): void;
  status(): Record<string, unknown> & { status: 'success' | 'error'; details?: string };
}

interface PendingInventory {
  readonly endpoint: InventoryEndpoint;
  readonly names: readonly string[];
  readonly done: readonly string[];
}

interface JobState {
  readonly policyServerId?: string;
  /** digest of the identity facts of the last inventory queued */
  readonly fingerprint?: string;
  /** digest of the certificate of the last inventory queued (absent in state files written before it was kept) */
  readonly certificate?: string;
  readonly lastQueuedAt?: number;
  readonly lastSentAt?: number;
  readonly lastEndpoint?: InventoryEndpoint;
  readonly lastFile?: string;
  readonly pending?: PendingInventory;
  readonly retryAt?: number;
  readonly lastOutcome?: ComponentOutcome;
}

function codeOf(error: unknown, otherwise: ErrorCode): ErrorCode {
  return isRelayError(error) ? error.code : otherwise;
}

/** `date --utc --iso-8601=seconds`, as do-inventory names the file */
export function isoSeconds(date: Date): string {
  return `${date.toISOString().slice(0, 19)}+00:00`;
}

function certificateDigestOf(certificatePem: string): string {
  return createHash('sha256').update(certificatePem.trim()).digest('hex');
}

/** fe80::/10 and 169.254.0.0/16: made up per link (container veths, autoconfiguration), not how the root knows the node */
export function isLinkLocal(family: 'IPv4' | 'IPv6', address: string): boolean {
  if (family === 'IPv4') return address.startsWith('169.254.');
  return /^fe[89ab][0-9a-f]:/i.test(address);
}

/**
 * the facts whose change makes a new inventory (the root keys nodes on them). Link-local addresses are left out:
 * they come and go with container interfaces. (Temporary IPv6 addresses would belong here too, but Node does not
 * tell them apart; CHANGE_RESEND_MS bounds what their rotation costs.)
 */
export function fingerprintOf(facts: HostFacts, certificatePem: string): string {
  const addresses = facts.networks
    .filter((n) => !n.isInternal && !isLinkLocal(n.family, n.address))
    .map((n) => `${n.name}/${n.address}`)
    .sort();
  return createHash('sha256')
    .update(JSON.stringify({ hostname: facts.hostname, fqdn: facts.fqdn, addresses, certificate: certificatePem.trim() }))
    .digest('hex');
}

async function readState(file: string): Promise<JobState> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch {
    return {};
  }
  try {
    const parsed = JSON.parse(text) as Record<string, unknown>;
    const when = (key: string) => (typeof parsed[key] === 'number' ? (parsed[key] as number) : undefined);
    const text_ = (key: string) => (typeof parsed[key] === 'string' ? (parsed[key] as string) : undefined);
    const endpoint = (value: unknown) => (value === 'inventories' || value === 'inventory-updates' ? value : undefined);
    const pending = parsed['pending'] as Partial<PendingInventory> | undefined;
    const outcome = parsed['lastOutcome'] as Partial<ComponentOutcome> | undefined;
    return {
      policyServerId: text_('policyServerId'),
      fingerprint: text_('fingerprint'),
      certificate: text_('certificate'),
      lastQueuedAt: when('lastQueuedAt'),
      lastSentAt: when('lastSentAt'),
      lastEndpoint: endpoint(parsed['lastEndpoint']),
      lastFile: text_('lastFile'),
      retryAt: when('retryAt'),
      pending:
        endpoint(pending?.endpoint) !== undefined && Array.isArray(pending?.names) && Array.isArray(pending?.done)
          ? { endpoint: endpoint(pending?.endpoint)!, names: pending.names.map(String), done: pending.done.map(String) }
          : undefined,
      lastOutcome:
        typeof outcome?.ok === 'boolean' && typeof outcome.message === 'string' && typeof outcome.at === 'number'
          ? { ok: outcome.ok, message: outcome.message, at: outcome.at }
          : undefined,
    };
  } catch {
    // a state that cannot be read only costs one inventory more
    return {};
  }
}

export async function fetchPolicyServerId(client: PeerClient | undefined): Promise<string> {
  if (client === undefined) {
    throw new RelayError('RELAY_ERR_POLICY_SERVER_UUID', 'no usable upstream (output.upstream.host or its pinned certificate is missing)');
  }
  let response;
  try {
    response = await client.request('GET', '/uuid');
  } catch (error) {
    throw new RelayError('RELAY_ERR_POLICY_SERVER_UUID', `GET /uuid on the upstream failed: ${messageOf(error)}`, { cause: error });
  }
  const text = (await response.body.text()).trim();
  if (response.status !== 200) throw new RelayError('RELAY_ERR_POLICY_SERVER_UUID', `GET /uuid on the upstream answered ${response.status}`);
  if (!POLICY_SERVER_ID.test(text) || text.length > 50) {
    throw new RelayError('RELAY_ERR_POLICY_SERVER_UUID', `GET /uuid on the upstream answered ${JSON.stringify(text.slice(0, 60))}, not a node id`);
  }
  return text;
}

export function createOwnInventory(options: OwnInventoryOptions, deps: OwnInventoryDeps): OwnInventory {
  const log = deps.log.child({ module: 'agentless', job: 'inventory' });
  const frequencyMs = options.frequencyMs ?? DEFAULT_INVENTORY_FREQUENCY_MS;
  const checkIntervalMs = options.checkIntervalMs ?? DEFAULT_FACTS_CHECK_MS;
  const retryMs = options.retryMs ?? DEFAULT_RETRY_MS;
  const currentPolicies = typeof deps.ownPolicies === 'function' ? deps.ownPolicies : () => (deps.ownPolicies as OwnPolicies).current();
  const readFacts = deps.readFacts ?? (() => readHostFacts());
  const ownPrefix = `${options.nodeId}_`;

  let state: JobState = {};
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> = Promise.resolve();
  let stopped = true;
  let lastCheckError: string | undefined;
  let checks = 0;
  const changeResendMs = options.changeResendMs ?? {};
  /** a change seen but not yet inventoried (CHANGE_RESEND_MS), logged once per new set of facts */
  let deferredChange: { fingerprint: string; until: number } | undefined;

  async function save(next: JobState): Promise<void> {
    state = next;
    try {
      await writeFileAtomically(options.stateFile, `${JSON.stringify(state)}\n`, { mode: 0o640 });
    } catch (error) {
      // the inventory itself is in the spool; only the schedule's memory is lost
      log.error({ event: 'own_inventory_state_failed', code: 'RELAY_ERR_OWN_INVENTORY', file: options.stateFile, error: messageOf(error) }, 'could not save the own inventory state');
    }
  }

  // the same failure at every retry (a relay started without an upstream retries each minute) is logged
  // once an hour at error level, and in between at debug level: the status page keeps the last outcome
  let loggedFailure: { message: string; at: number; repeats: number } | undefined;

  function fail(message: string, code: string, retryAfterMs: number): Promise<void> {
    const at = Date.now();
    const fields = { event: 'own_inventory_failed', code, retry_in_s: Math.round(retryAfterMs / 1000) };
    if (loggedFailure !== undefined && loggedFailure.message === message && at - loggedFailure.at < FAILURE_LOG_EVERY_MS) {
      loggedFailure.repeats += 1;
      log.debug({ ...fields, repeats: loggedFailure.repeats }, message);
    } else {
      log.error(loggedFailure?.message === message ? { ...fields, repeats: loggedFailure.repeats } : fields, message);
      loggedFailure = { message, at, repeats: 0 };
    }
    return save({ ...state, retryAt: at + retryAfterMs, lastOutcome: { ok: false, message, at } });
  }

  async function makeInventory(reason: string): Promise<void> {
    // names have second precision: a second inventory in the same second would replace the first in the spool.
    // Only a last inventory in the past is waited for: after the clock went back, lastQueuedAt may be hours (or
    // days) ahead, and the job, which holds trigger(), noteQueueOutcome() and stop(), must not sleep that long.
    const last = state.lastQueuedAt;
    const nextSecond = last === undefined ? 0 : Math.floor(last / 1000) * 1000 + 1000;
    if (last !== undefined && last <= Date.now() && Date.now() < nextSecond) await delay(nextSecond - Date.now());
    const now = new Date();
    let identity;
    let facts: HostFacts;
    try {
      identity = await loadIdentity(options.identityPaths);
      facts = await readFacts();
    } catch (error) {
      return fail(`Could not read the relay's identity or facts: ${messageOf(error)}`, codeOf(error, 'RELAY_ERR_OWN_INVENTORY'), retryMs);
    }
    let policyServerId: string;
    try {
      policyServerId = await fetchPolicyServerId(deps.upstream());
    } catch (error) {
      if (state.policyServerId === undefined) {
        // the agent's message (fusionAgent.st download_server_uuid)
        return fail(`Could not retrieve the UUID of the policy server: ${messageOf(error)}`, 'RELAY_ERR_POLICY_SERVER_UUID', retryMs);
      }
      // the parent is known already: the inventory waits in the spool for the upstream, like any other
      log.warn({ event: 'policy_server_uuid_unavailable', code: 'RELAY_ERR_POLICY_SERVER_UUID', policy_server_id: state.policyServerId, error: messageOf(error) }, 'GET /uuid failed: using the policy server id learnt before');
      policyServerId = state.policyServerId;
    }
    const policies = currentPolicies();
    const endpoint: InventoryEndpoint = policies === undefined ? 'inventories' : 'inventory-updates';
    const base = `${options.nodeId}_${isoSeconds(now)}.ocs`;
    let signature: string;
    let compressed: Buffer;
    try {
      const xml = Buffer.from(
        buildInventoryXml({
          nodeId: options.nodeId,
          policyServerId,
          policyServerHostname: options.policyServerHostname,
          certificatePem: identity.certificatePem,
          publicKeyPem: identity.publicKey.export({ type: 'pkcs1', format: 'pem' }).toString(),
          agentVersion: AGENT_VERSION,
          generator: `onerelay_v${VERSION}`,
          facts,
          now,
        }),
      );
      signature = inventorySignature({
        inventory: xml,
        privateKey: identity.privateKey,
        publicKeyPem: identity.publicKey.export({ type: 'pkcs1', format: 'pem' }).toString(),
        hostname: validHostname(facts) ?? facts.hostname,
        keyDate: (await stat(options.identityPaths.privateKeyFile)).mtime,
      });
      compressed = await gzipAsync(xml);
    } catch (error) {
      return fail(`Could not make the inventory: ${messageOf(error)}`, codeOf(error, 'RELAY_ERR_OWN_INVENTORY'), retryMs);
    }
    const names = [`${base}.gz`, `${base}.sign`];
    try {
      // the signature first: when the queue sees the inventory its pair is complete and both go at once
      await deps.spool.receive(endpoint, `${base}.sign`, Readable.from([Buffer.from(signature)]), options.maxBytes);
      await deps.spool.receive(endpoint, `${base}.gz`, Readable.from([compressed]), options.maxBytes);
    } catch (error) {
      return fail(`Could not write the inventory into the spool: ${messageOf(error)}`, codeOf(error, 'RELAY_ERR_SPOOL_WRITE'), retryMs);
    }
    log.info(
      { event: 'own_inventory_queued', file: `${base}.gz`, queue: endpoint, reason, policy_server_id: policyServerId, bytes: compressed.length },
      `own inventory queued for /${endpoint}/`,
    );
    deferredChange = undefined;
    await save({
      ...state,
      policyServerId,
      fingerprint: fingerprintOf(facts, identity.certificatePem),
      certificate: certificateDigestOf(identity.certificatePem),
      lastQueuedAt: now.getTime(),
      lastEndpoint: endpoint,
      lastFile: `${base}.gz`,
      pending: { endpoint, names, done: [] },
      retryAt: undefined,
    });
  }

  /** why an inventory is due now, or undefined */
  async function dueReason(): Promise<string | undefined> {
    const now = Date.now();
    if (state.lastQueuedAt === undefined) return state.retryAt === undefined || now >= state.retryAt ? 'first inventory' : undefined;
    if (state.retryAt !== undefined && now >= state.retryAt) return 'retry after a failure';
    if (now - state.lastQueuedAt >= frequencyMs) return 'daily inventory';
    if (state.lastQueuedAt > now + MINUTE) return 'clock went back';
    try {
      const identity = await loadIdentity(options.identityPaths);
      const fingerprint = fingerprintOf(await readFacts(), identity.certificatePem);
      lastCheckError = undefined;
      if (fingerprint === state.fingerprint) {
        deferredChange = undefined;
        return undefined;
      }
      // a new certificate goes at once: the root verifies the relay's signed run logs and inventories with the
      // key its last inventory carried, so waiting for the resend delay would have them refused for hours
      const certificate = certificateDigestOf(identity.certificatePem);
      if (state.certificate !== undefined && certificate !== state.certificate) {
        deferredChange = undefined;
        return 'certificate changed';
      }
      const endpoint: InventoryEndpoint = currentPolicies() === undefined ? 'inventories' : 'inventory-updates';
      const until = Math.max(state.lastQueuedAt, state.lastSentAt ?? 0) + (changeResendMs[endpoint] ?? CHANGE_RESEND_MS[endpoint]);
      if (now >= until) {
        deferredChange = undefined;
        return 'identity facts changed';
      }
      if (deferredChange?.fingerprint !== fingerprint) {
        log.info(
          { event: 'own_inventory_change_deferred', queue: endpoint, until: new Date(until).toISOString() },
          'identity facts changed: the inventory waits for the resend delay since the last one',
        );
      }
      deferredChange = { fingerprint, until };
    } catch (error) {
      if (lastCheckError !== messageOf(error)) {
        log.error({ event: 'own_inventory_check_failed', code: codeOf(error, 'RELAY_ERR_OWN_INVENTORY'), error: messageOf(error) }, 'could not read the identity facts');
      }
      lastCheckError = messageOf(error);
    }
    return undefined;
  }

  function serialize(work: () => Promise<void>): Promise<void> {
    running = running.then(work, work).catch((error: unknown) => {
      log.error({ event: 'own_inventory_failed', code: 'RELAY_ERR_INTERNAL', error: messageOf(error) }, 'own inventory job failed');
    });
    return running;
  }

  function schedule(delayMs: number): void {
    if (stopped) return;
    clearTimeout(timer);
    timer = setTimeout(() => {
      void serialize(async () => {
        const reason = await dueReason();
        // the first check after start is worth a line: it says whether a restart sent an inventory
        log[checks === 0 ? 'info' : 'debug']({ event: 'own_inventory_checked', due: reason ?? null }, reason === undefined ? 'own inventory up to date' : `own inventory due: ${reason}`);
        checks += 1;
        if (reason !== undefined) await makeInventory(reason);
      }).then(() => schedule(nextDelay()));
    }, delayMs);
    timer.unref();
  }

  /** the next check: the facts interval, sooner when a retry is due */
  function nextDelay(): number {
    const untilRetry = state.retryAt === undefined ? Infinity : Math.max(0, state.retryAt - Date.now());
    return Math.min(checkIntervalMs, untilRetry);
  }

  return {
    async start() {
      if (!stopped) return;
      stopped = false;
      state = await readState(options.stateFile);
      log.info(
        { event: 'own_inventory_started', node_id: options.nodeId, last_queued: state.lastQueuedAt === undefined ? undefined : new Date(state.lastQueuedAt).toISOString() },
        'own inventory job started',
      );
      schedule(0);
    },
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await running;
    },
    trigger(reason) {
      return serialize(() => makeInventory(reason));
    },
    lastOutcome: () => state.lastOutcome,
    credentialsFor(endpoint, name) {
      if (endpoint !== 'inventory-updates' || !name.startsWith(ownPrefix)) return undefined;
      const policies = currentPolicies();
      if (policies?.davUser === undefined || policies.davPassword === undefined) return undefined;
      return { user: policies.davUser, password: policies.davPassword };
    },
    noteQueueOutcome(queue, name, outcome) {
      if (outcome.kind === 'retry' && state.pending?.names.includes(name)) {
        // still in the spool: it goes when the upstream answers again
        state = { ...state, lastOutcome: { ok: false, message: `The inventory waits in the relay's spool: ${outcome.reason}`, at: Date.now() } };
        return;
      }
      if (outcome.kind !== 'done' && outcome.kind !== 'failed') return;
      // read and written in turn with the job's other changes of the state
      void serialize(async () => {
        const pending = state.pending;
        if (pending === undefined || queue !== pending.endpoint || !pending.names.includes(name)) return;
        const at = Date.now();
        if (outcome.kind === 'failed') {
          const message = `Could not send the inventory: ${outcome.reason}`;
          log.error({ event: 'own_inventory_refused', code: 'RELAY_ERR_UPSTREAM_REFUSED', file: name, queue }, message);
          await save({ ...state, pending: undefined, retryAt: at + REFUSED_RETRY_MS, lastOutcome: { ok: false, message, at } });
          return;
        }
        const done = [...new Set([...pending.done, name, ...(outcome.also ?? [])])].filter((n) => pending.names.includes(n));
        if (done.length < pending.names.length) {
          await save({ ...state, pending: { ...pending, done } });
          return;
        }
        log.info({ event: 'own_inventory_sent', file: pending.names[0], queue }, SENT_MESSAGE);
        await save({ ...state, pending: undefined, lastSentAt: at, lastOutcome: { ok: true, message: SENT_MESSAGE, at } });
      });
    },
    status() {
      const outcome = state.lastOutcome;
      const iso = (ms: number | undefined) => (ms === undefined ? undefined : new Date(ms).toISOString());
      return {
        ...(outcome === undefined || outcome.ok ? { status: 'success' as const } : { status: 'error' as const, details: outcome.message }),
        node_id: options.nodeId,
        policy_server_id: state.policyServerId,
        endpoint: state.pending?.endpoint ?? state.lastEndpoint,
        last_file: state.lastFile,
        last_queued: iso(state.lastQueuedAt),
        last_sent: iso(state.lastSentAt),
        waiting_upstream: state.pending !== undefined,
        last_outcome: outcome === undefined ? undefined : { ok: outcome.ok, message: outcome.message, at: iso(outcome.at) },
        next_daily: iso(state.lastQueuedAt === undefined ? undefined : state.lastQueuedAt + frequencyMs),
        change_deferred_until: iso(deferredChange?.until),
      };
    },
  };
}
