// The relay's own compliance (issue 18 item 3): at start and then every run interval, a signed run log
// of the relay itself, one result per component its system directives expect, each from the real state
// of what onerelay does in place of that component. The run log goes into the relay's own reports spool,
// so it is forwarded to the parent like any node's and survives an upstream outage (report.sh keeps
// unsent files in ready/ the same way). Never kept locally once forwarded.

import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import type { Logger } from 'pino';
import { RelayError, messageOf } from '../errors.js';
import { expectedReports, type ComponentProbe, type ExpectedReports } from './compliance-expected.js';
import { buildRunlog, runlogFileName, type ComponentResult, type ResultStatus } from './runlog-build.js';
import { signRunlogText, type RunlogSigner } from './runlog-sign.js';
import type { ComponentOutcome, InventoryStatus, OwnPolicies, OwnPolicyState, ReportMode } from './types.js';

/** The real state of what onerelay does in place of each component (built by the composition root). */
export interface OwnComplianceProbes {
  /** the data sync's last pull; 'pending' before the first one ends; undefined when no sync is configured here */
  sync(): ComponentOutcome | 'pending' | undefined;
  /** the HTTPS endpoint answering */
  https(): Promise<ComponentOutcome>;
  /** the relay service (local API) answering */
  relayService(): Promise<ComponentOutcome>;
  /** the parent's certificate in place for pinning; undefined when nothing is pinned (peer_authentication) */
  upstreamCertificate(): Promise<ComponentOutcome | undefined>;
  /** key and certificate in place, private key not readable by others */
  security(): Promise<ComponentOutcome>;
}

export interface OwnComplianceOptions {
  readonly nodeId: string;
  readonly signer: RunlogSigner;
  /** overrides the policies' run interval (tests, operators); undefined: AGENT_RUN_INTERVAL */
  readonly runIntervalMs: number | undefined;
  /** the first run waits for the first sync outcome at most this long (default 50 s: "within a minute") */
  readonly firstRunMaxDelayMs?: number;
}

export interface OwnComplianceDeps {
  readonly policies: OwnPolicies & { refresh?(): Promise<void> };
  readonly inventory: InventoryStatus | undefined;
  readonly probes: OwnComplianceProbes;
  /** durable write into the reports spool (incoming/), from where it is forwarded upstream */
  readonly store: (name: string, body: Readable) => Promise<void>;
  readonly log: Logger;
}

export interface OwnRun {
  readonly at: string;
  readonly configId: string;
  readonly reportMode: ReportMode;
  /** undefined when the report mode sends nothing */
  readonly file: string | undefined;
  readonly rudderVersion: string;
  readonly success: number;
  readonly error: number;
  readonly na: number;
  /** components in error, "<component>/<key>" */
  readonly errors: readonly string[];
}

export interface OwnComplianceStatus {
  readonly lastRun: OwnRun | undefined;
  /** why the last attempt failed to produce a run log (spool write failure, …) */
  readonly lastProblem: string | undefined;
  /** no own policies generated for this relay (yet): nothing to report */
  readonly waitingForPolicies: boolean;
  readonly nextRunAt: string | undefined;
}

export interface OwnCompliance {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** one run now; resolves with it, or undefined when there were no policies */
  runNow(): Promise<OwnRun | undefined>;
  status(): OwnComplianceStatus;
}

const DEFAULT_INTERVAL_MS = 5 * 60_000;
const POLL_MS = 1_000;
const NO_POLICIES_RETRY_MS = 60_000;
// a spool file as big as this would be a bug, not a run log
const MAX_RUNLOG_BYTES = 16 * 1024 * 1024;

function fromOutcome(outcome: ComponentOutcome): { status: ResultStatus; message: string } {
  return { status: outcome.ok ? 'result_success' : 'result_error', message: outcome.message };
}

export function createOwnCompliance(options: OwnComplianceOptions, deps: OwnComplianceDeps): OwnCompliance {
  const log = deps.log.child({ module: 'agentless' });
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<OwnRun | undefined> | undefined;
  let stopped = true;
  let lastRun: OwnRun | undefined;
  let lastProblem: string | undefined;
  let waitingForPolicies = false;
  let nextRunAt: number | undefined;
  let expected: { key: string; value: ExpectedReports } | undefined;
  /** the last run's start (ms): a run log's name and run time have second precision */
  let lastRunStart: number | undefined;

  /**
   * A run in the same second as the last one (a policy change starts one at once) would get the same file name
   * and run time, and the root would read both as one run with every report twice: it starts 1 s after the
   * last one instead. Only within a minute: after the clock went back further, the real time is the better name.
   */
  function nextRunStart(): Date {
    let start = Math.floor(Date.now() / 1000) * 1000;
    if (lastRunStart !== undefined && start <= lastRunStart && lastRunStart - start < 60_000) start = lastRunStart + 1000;
    lastRunStart = start;
    return new Date(start);
  }

  async function expectedFor(state: OwnPolicyState): Promise<ExpectedReports> {
    const key = `${state.inputsDirectory}\n${state.nodeConfigId}`;
    if (expected?.key !== key) {
      const value = await expectedReports(state.inputsDirectory, state.variables, options.nodeId);
      log.info(
        { event: 'own_expected_reports', config_id: state.nodeConfigId, rudder_version: value.rudderVersion, version_from: value.versionSource, components: value.components.length, skipped_directives: value.skippedDirectives.slice(0, 20), skipped: value.skippedDirectives.length },
        'expected components of the relay\'s own policies',
      );
      expected = { key, value };
    }
    return expected.value;
  }

  async function resultOf(probe: ComponentProbe, cache: Map<string, Promise<{ status: ResultStatus; message: string }>>): Promise<{ status: ResultStatus; message: string }> {
    if (typeof probe === 'object') return { status: 'result_na', message: probe.na };
    let pending = cache.get(probe);
    if (pending === undefined) {
      pending = probeResult(probe);
      cache.set(probe, pending);
    }
    return pending;
  }

  async function probeResult(probe: Exclude<ComponentProbe, { na: string }>): Promise<{ status: ResultStatus; message: string }> {
    try {
      switch (probe) {
        case 'update':
        case 'sync': {
          const sync = deps.probes.sync();
          if (sync === undefined) return { status: 'result_na', message: 'No data sync configured in onerelay (sync.upstream): synchronised by an external system' };
          if (sync === 'pending') return { status: 'result_na', message: 'First synchronisation from upstream still running' };
          return fromOutcome(sync);
        }
        case 'inventory': {
          if (deps.inventory === undefined) return { status: 'result_na', message: 'The inventory of this relay is not sent by onerelay' };
          const outcome = deps.inventory.lastOutcome();
          return outcome === undefined ? { status: 'result_success', message: 'Next inventory scheduled (none sent since onerelay started)' } : fromOutcome(outcome);
        }
        case 'https':
          return fromOutcome(await deps.probes.https());
        case 'relay-service':
          return fromOutcome(await deps.probes.relayService());
        case 'upstream-certificate': {
          const outcome = await deps.probes.upstreamCertificate();
          return outcome === undefined ? { status: 'result_na', message: 'No parent certificate pinned (general.peer_authentication)' } : fromOutcome(outcome);
        }
        case 'security':
          return fromOutcome(await deps.probes.security());
      }
    } catch (error) {
      return { status: 'result_error', message: `onerelay could not check this: ${messageOf(error)}` };
    }
  }

  async function runOnce(): Promise<OwnRun | undefined> {
    await deps.policies.refresh?.();
    const state = deps.policies.current();
    if (state === undefined) {
      if (!waitingForPolicies) log.info({ event: 'own_runlog_skipped' }, 'no own policies generated for this relay yet: no run log of its own');
      waitingForPolicies = true;
      lastProblem = undefined;
      return undefined;
    }
    waitingForPolicies = false;
    const runStart = nextRunStart();
    const reports = await expectedFor(state);
    const cache = new Map<string, Promise<{ status: ResultStatus; message: string }>>();
    const results: ComponentResult[] = await Promise.all(
      reports.components.map(async (c) => ({ technique: c.technique, ruleId: c.ruleId, directiveId: c.directiveId, component: c.component, key: c.key, ...(await resultOf(c.probe, cache)) })),
    );
    const count = (status: ResultStatus) => results.filter((r) => r.status === status).length;
    const text = buildRunlog({ nodeId: options.nodeId, configId: state.nodeConfigId, runStart, reportMode: state.reportMode, results, lineTime: new Date() });
    let file: string | undefined;
    if (text !== undefined) {
      file = runlogFileName(options.nodeId, runStart);
      const body = gzipSync(signRunlogText(text, options.signer));
      if (body.length > MAX_RUNLOG_BYTES) throw new RelayError('RELAY_ERR_OWN_RUNLOG', `own run log of ${body.length} bytes is over ${MAX_RUNLOG_BYTES}`);
      await deps.store(file, Readable.from([body]));
    }
    const run: OwnRun = {
      at: runStart.toISOString(),
      configId: state.nodeConfigId,
      reportMode: state.reportMode,
      file,
      rudderVersion: reports.rudderVersion,
      success: count('result_success'),
      error: count('result_error'),
      na: count('result_na'),
      errors: results.filter((r) => r.status === 'result_error').map((r) => `${r.component}/${r.key}`),
    };
    lastRun = run;
    lastProblem = undefined;
    log.info(
      { event: 'own_runlog', file, config_id: run.configId, report_mode: run.reportMode, success: run.success, error: run.error, na: run.na, errors: run.errors },
      file === undefined ? 'own run computed, not sent (reports-disabled)' : 'own run log queued for upstream',
    );
    return run;
  }

  function runNow(): Promise<OwnRun | undefined> {
    running ??= runOnce()
      .catch((error: unknown) => {
        lastProblem = messageOf(error);
        const code = error instanceof RelayError ? error.code : 'RELAY_ERR_OWN_RUNLOG';
        // retried at the next interval: a full or unwritable spool may recover
        log.error({ event: 'own_runlog_failed', code, error: lastProblem }, 'could not write the relay\'s own run log; retrying at the next run');
        return undefined;
      })
      .finally(() => {
        running = undefined;
      });
    return running;
  }

  function schedule(delayMs: number, action: () => void): void {
    if (stopped) return;
    nextRunAt = Date.now() + delayMs;
    timer = setTimeout(action, delayMs);
    timer.unref();
  }

  // without policies yet, look again within a minute rather than a whole interval
  const intervalMs = () =>
    deps.policies.current() === undefined ? Math.min(NO_POLICIES_RETRY_MS, options.runIntervalMs ?? NO_POLICIES_RETRY_MS) : (options.runIntervalMs ?? deps.policies.current()?.runIntervalMs ?? DEFAULT_INTERVAL_MS);

  function loop(): void {
    if (timer) clearTimeout(timer);
    void runNow().then(() => {
      if (timer) clearTimeout(timer);
      schedule(intervalMs(), loop);
    });
  }
  let unsubscribe: (() => void) | undefined;

  return {
    async start() {
      if (!stopped) return;
      stopped = false;
      // the first run waits for the first sync outcome, so that it reports the state, not the start-up
      const deadline = Date.now() + (options.firstRunMaxDelayMs ?? 50_000);
      const first = () => {
        if (deps.probes.sync() === 'pending' && Date.now() < deadline) schedule(POLL_MS, first);
        else loop();
      };
      schedule(0, first);
      // new policies: a run at once reports their config id, as the agent's run after an update does
      unsubscribe = deps.policies.onChange(() => {
        if (!stopped && lastRun !== undefined) loop();
      });
    },
    async stop() {
      stopped = true;
      unsubscribe?.();
      if (timer) clearTimeout(timer);
      timer = undefined;
      nextRunAt = undefined;
      await running;
    },
    runNow,
    status: () => ({ lastRun, lastProblem, waitingForPolicies, nextRunAt: nextRunAt === undefined ? undefined : new Date(nextRunAt).toISOString() }),
  };
}
