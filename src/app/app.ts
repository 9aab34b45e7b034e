// Part of the composition room: the order of things. The primary loads and checks everything, builds each
// module (compose.ts), starts them in dependency order, opens the HTTPS front door itself and forks the other
// front-door processes, which accept on its listening socket (cluster.ts), and stops everything in reverse
// within bounds (shutdown.ts); a worker runs the HTTPS front door only.

import cluster from 'node:cluster';
import { availableParallelism } from 'node:os';
import { ACTIVITY_STYLE, createActivityBatcher } from '../activity/index.js';
import { ownPoliciesStatus, resolveOwnSettings, settingsStatus } from '../agentless/index.js';
import type { CfengineServer } from '../cfengine/index.js';
import { ConfigError, loadConfig, type LoadedConfig, type LogLevel } from '../config/index.js';
import { RelayError, messageOf } from '../errors.js';
import { ensureIdentity, loadIdentity } from '../identity/index.js';
import { createLogger, pinoLevel } from '../log.js';
import { createFrontDoorMetrics, createPrimaryMetrics } from '../metrics/index.js';
import { ABORT_SETTLE_MS, type SpoolQueue } from '../spool/index.js';
import type { FrontDoor, FrontDoorSettings } from '../http/index.js';
import type { Logger } from 'pino';
import type { RemoteRun } from '../remote-run/index.js';
import type { SyncPuller } from '../sync/index.js';
import { createSystem } from '../system/index.js';
import type { OwnCompliance, OwnInventory } from '../agentless/index.js';
import { VERSION } from '../version.js';
import { DATABASE_REFUSED, checkInstallation } from './check.js';
import { connectToPrimary, createFrontDoorWorkers, createLocalAdmission, type FrontDoorWorkers } from './cluster.js';
import {
  activityOf,
  cfengineServerOf,
  frontDoorOf,
  frontDoorSettingsOf,
  frontDoorTls,
  localApiOf,
  nodesOf,
  ownComplianceOf,
  ownComplianceStatus,
  ownInventoryOf,
  ownPoliciesOf,
  ownSettingsInputs,
  peersOf,
  remoteRunOf,
  sharedFilesOf,
  spoolOf,
  syncPullerOf,
  syncStatus,
  uploadAuth,
} from './compose.js';
import { createForwarding, type Forwarding } from './forwarding.js';
import { identityPaths } from './paths.js';
import { runStopSteps, stopStep, type Stopper } from './shutdown.js';

export interface StartOptions {
  readonly configPath: string;
  readonly logLevel: LogLevel | undefined;
}

/**
 * How long a stop may take: uploads and forwards in flight get https.shutdown_timeout, then the
 * workers' SIGKILL margin and the other steps a few seconds (within systemd's TimeoutStopSec=30 at
 * the default 10 s)
 */
export function shutdownBoundMs(shutdownTimeoutMs: number): number {
  return shutdownTimeoutMs + 15_000;
}

/** exit code of a start failure, as relayd's (spec-relayd.md §1.3) */
export function exitCodeOf(error: unknown): number {
  if (error instanceof ConfigError) return error.exitCode;
  return 3;
}

// ---------------------------------------------------------------- primary

/** files waiting in the spool at start from which the CFEngine warm-up is skipped (forwarding comes first) */
const WARM_UP_MAX_BACKLOG = 100;

export async function runPrimary(options: StartOptions): Promise<void> {
  let loaded: LoadedConfig;
  try {
    loaded = await loadConfig(options.configPath);
  } catch (error) {
    const log = createLogger(options.logLevel ?? 'info');
    log.fatal({ event: 'start_failed', error: messageOf(error), code: (error as RelayError).code }, 'configuration error');
    process.exitCode = exitCodeOf(error);
    return;
  }
  const { config } = loaded;
  const log = createLogger(options.logLevel ?? config.logging.level, { role: 'primary' });
  if (config.processing.reporting.output === 'database') {
    log.fatal({ event: 'start_failed' }, DATABASE_REFUSED);
    process.exitCode = 3;
    return;
  }
  log.info({ event: 'starting', version: VERSION, config: loaded.source.mainFile }, `Starting onerelay ${VERSION}`);
  for (const warning of loaded.warnings) log.warn({ event: 'config_warning' }, warning);

  const stoppers: Stopper[] = [];
  // set at SIGTERM: forwards in flight may run until then, as uploads in flight do (https.shutdown_timeout)
  let forwardDeadline = 0;
  let workers: FrontDoorWorkers | undefined;
  let shuttingDown = false;

  try {
    const { identity, created } = await ensureIdentity(identityPaths(config), log);
    for (const path of created) log.info({ event: 'identity_created', path }, 'generated identity file');
    // what the workers will need, checked here first: a bad key or CA stops the start with its reason
    await frontDoorTls(config, identity);
    await uploadAuth(config);

    const nodes = nodesOf(config, identity.nodeId, log, 'primary');
    await nodes.reload();
    const spool = spoolOf(config, log);
    await spool.prepare({ cleanTmp: true });
    // created below; the activity module reads the queue depth only when it samples it
    let forwarding: Forwarding | undefined;
    const activity = activityOf(config, nodes, () => (forwarding?.queues() ?? []).reduce((total, q) => total + q.files, 0), log);
    await activity.start();
    stoppers.push(stopStep('activity database', () => activity.stop()));

    // the relay's own policies (issue 18): read before anything listens, so the first connection meets them
    const ownPolicies = ownPoliciesOf(config, log);
    if (ownPolicies) {
      await ownPolicies.start();
      stoppers.push(stopStep('own policies', () => ownPolicies.stop()));
    }
    let ownSettings = resolveOwnSettings(await ownSettingsInputs(config), ownPolicies?.current());

    let remoteRun: RemoteRun | undefined;
    let cfengine: CfengineServer | undefined;
    let puller: SyncPuller | undefined;
    let ownCompliance: OwnCompliance | undefined;
    // the relay's own inventory (issue 18), made below once the upstream client exists
    let ownInventory: OwnInventory | undefined;
    /** the spool's disk budget, lent to every front-door process as byte leases (http/admission.ts) */
    const admission = {
      reserve: (queue: SpoolQueue, bytes: number) => forwarding?.reserve(queue, bytes),
      release: async (queue: SpoolQueue, reservation: number) => forwarding?.release(queue, reservation),
      settle: async (queue: SpoolQueue, reservation: number, bytes: number, names: readonly string[]) => forwarding?.settle(queue, reservation, bytes, names),
      isFull: (queue: SpoolQueue) => forwarding?.isFull(queue) ?? false,
    };
    // the primary's own front door (created below): one front-door process per core, the primary among them
    let frontDoor: FrontDoor | undefined;
    const frontDoorWorkers = createFrontDoorWorkers(
      { configPath: options.configPath, logLevel: options.logLevel },
      {
        admission,
        listener: () => frontDoor?.server(),
        frontDoorSettings: () => frontDoorSettingsOf(ownSettings),
        onRemoteRunError: (message) => remoteRun?.recordError(message),
        onActivity: (events) => {
          for (const event of events) activity.record(event);
        },
        log,
      },
    );
    workers = frontDoorWorkers;
    // the own front door's counters, aggregated as a worker's are (the process metrics are the primary's own)
    const frontDoorMetrics = createFrontDoorMetrics({ processMetrics: false });
    const metrics = createPrimaryMetrics({
      spool,
      nodes,
      queues: { queues: () => forwarding?.queues() ?? [] },
      workers: async () => [await frontDoorMetrics.snapshot(), ...(await frontDoorWorkers.snapshots())],
      activity,
    });
    forwarding = createForwarding(config, {
      myId: identity.nodeId,
      ownCertificate: identity.certificate,
      nodes,
      spool,
      metrics,
      onFullChange: (queue, full) => frontDoorWorkers.broadcast({ type: 'spool-full', queue, full }),
      clientCertificate: { key: identity.privateKeyPem, cert: identity.certificatePem },
      inventoryCredentials: (queue, name) => ownInventory?.credentialsFor(queue, name),
      onInventoryOutcome: (queue, name, outcome) => ownInventory?.noteQueueOutcome(queue, name, outcome),
      credentials: () => ({ user: ownSettings.davUser.value, password: ownSettings.davPassword.value }),
      activity,
      log,
    });
    const activeForwarding = forwarding;
    // a new generation upstream applies at once, here and in every front-door worker (no restart)
    ownPolicies?.onChange(() => {
      void (async () => {
        ownSettings = resolveOwnSettings(await ownSettingsInputs(config), ownPolicies.current());
        cfengine?.setAllowedNetworks(ownSettings.allowedNetworks.value);
        if (frontDoor) applyFrontDoorSettings(frontDoor, frontDoorSettingsOf(ownSettings), log);
        frontDoorWorkers.broadcast({ type: 'own-settings', settings: frontDoorSettingsOf(ownSettings) });
        const shown = settingsStatus(ownSettings, ownPolicies.current());
        log.info({ event: 'own_policies_applied', node_config_id: ownPolicies.current()?.nodeConfigId, applied: shown['applied'] }, 'own policies applied');
      })().catch((error: unknown) => log.error({ event: 'own_policies_apply_failed', code: 'RELAY_ERR_INTERNAL', err: messageOf(error) }, 'own policies not applied'));
    });

    let currentLevel: LogLevel = options.logLevel ?? config.logging.level;
    const system = createSystem({
      identity,
      nodes,
      spool,
      log,
      checkConfiguration: async () => (await checkInstallation(options.configPath, { nodesData: false })).problems,
      reloadOthers: async () => {
        let level = options.logLevel;
        if (level === undefined) {
          level = (await loadConfig(options.configPath)).config.logging.level;
          log.level = pinoLevel(level);
        }
        currentLevel = level;
        frontDoorWorkers.broadcast({ type: 'reload', level });
        // a reload also pulls from upstream at once (issue 7), and re-reads the relay's own policies
        if (puller) void puller.trigger().catch(() => undefined);
        await ownPolicies?.refresh();
        peers.reload();
        await activeForwarding.reload();
      },
      extraSections: (query) => ({ html: activity.pageSections(query), style: ACTIVITY_STYLE }),
      extraStatus: () => ({
        ...activeForwarding.status(),
        activity: activity.status(),
        ...(puller ? { sync: syncStatus(puller) } : {}),
        ...(ownInventory ? { own_inventory: ownInventory.status() } : {}),
        ...(ownCompliance ? { own_compliance: ownComplianceStatus(ownCompliance) } : {}),
        ...(ownPolicies ? { own_policies: ownPoliciesStatus(ownPolicies, ownSettings) } : {}),
        ...(config.cfengine.enabled
          ? { cfengine: { status: cfengine ? 'success' : 'error', listen: `${config.cfengine.listen.host}:${cfengine?.port() ?? config.cfengine.listen.port}` } }
          : {}),
        remote_run: {
          status: 'success',
          enabled: config.remoteRun.enabled,
          mode: config.remoteRun.mode,
          runs_here: remoteRun?.status().runs ?? 0,
          last_errors: remoteRun?.status().lastErrors ?? [],
        },
      }),
      // https.workers counts front-door processes, the primary's own among them: so does the status
      frontDoor: () => {
        const forked = frontDoorWorkers.counts();
        const own = frontDoor?.server()?.listening === true ? 1 : 0;
        return { workers: forked.workers + (frontDoor ? 1 : 0), ready: forked.ready + own };
      },
    });
    // the primary runs the TTL cleanup; every process stores and answers
    const peers = peersOf(config, nodes, identity, activeForwarding.upstream);
    stoppers.push(stopStep('peer clients', () => peers.close()));
    const sharedFiles = sharedFilesOf(config, nodes, peers, metrics, log);
    ownInventory = ownInventoryOf(config, identity, { spool, ownPolicies, peers, log });
    remoteRun = remoteRunOf(config, identity, nodes, peers, metrics, log, undefined, activity);
    puller = syncPullerOf(config, identity, {
      peers,
      metrics,
      ownPolicies,
      onNodesChanged: async () => {
        await nodes.reload();
        frontDoorWorkers.broadcast({ type: 'reload', level: currentLevel });
      },
      log,
    });
    const api = localApiOf(config, { system, sharedFiles, remoteRun, puller, metrics, activity, log });
    try {
      await api.start();
    } catch (error) {
      throw new RelayError('RELAY_ERR_LISTEN', `local API on ${config.general.listen.host}:${config.general.listen.port} (general.listen): ${messageOf(error)}`);
    }
    stoppers.push(stopStep('local API', () => api.stop()));
    await nodes.start();
    stoppers.push(stopStep('nodes registry', () => nodes.stop()));
    if (puller) {
      const running = puller;
      await running.start();
      stoppers.push(stopStep('data sync', () => running.stop()));
    }
    await sharedFiles.start();
    stoppers.push(stopStep('shared files', () => sharedFiles.stop()));
    // front-door processes: https.workers, 0 = one per core; the primary is one of them
    const count = config.https.workers > 0 ? config.https.workers : availableParallelism();
    const localAdmission = createLocalAdmission(admission);
    const ownFrontDoor = await frontDoorOf(config, identity, {
      nodes,
      peers,
      metrics: frontDoorMetrics,
      isSpoolFull: (queue) => activeForwarding.isFull(queue),
      admit: (queue, bytes) => localAdmission.admit(queue, bytes),
      onRemoteRunError: (message) => remoteRun?.recordError(message),
      activity,
      log,
    });
    applyFrontDoorSettings(ownFrontDoor, frontDoorSettingsOf(ownSettings), log);
    frontDoor = ownFrontDoor;
    try {
      await ownFrontDoor.start();
    } catch (error) {
      throw new RelayError('RELAY_ERR_LISTEN', `HTTPS front door on ${config.https.listen.host}:${config.https.listen.port} (https.listen): ${messageOf(error)}`);
    }
    // the queues start while the workers boot: a backlog left by a restart starts draining at once instead of
    // waiting the second or so that loading the workers takes on a small machine (workers that are not ready
    // yet learn the spool-full state in their 'ready' handshake, cluster.ts)
    stoppers.push(
      stopStep(
        'forwarding queues',
        () => activeForwarding.stop({ graceMs: Math.max(0, forwardDeadline - Date.now()) }),
        // the grace, then the abort, the inspection threads and the upstream pool (bounded 2 s each)
        config.https.shutdownTimeoutMs + ABORT_SETTLE_MS + 5_000,
      ),
    );
    await Promise.all([activeForwarding.start(), frontDoorWorkers.start(count - 1)]);
    // after the queues and the workers: the CFEngine server warms its request path up before it listens
    // (~0.6-1 s of the primary's CPU, cfengine/warm-up.ts). A relay restarting onto a backlog skips it: that
    // CPU goes to forwarding first (bench/pipeline: 1,300 -> 1,535 reports/s from spawn without it)
    if (config.cfengine.enabled) {
      const backlog = activeForwarding.queues().reduce((files, queue) => files + queue.files, 0);
      const warmUp = backlog < WARM_UP_MAX_BACKLOG;
      if (!warmUp) log.info({ backlog }, 'cfengine warm-up skipped: the spool has a backlog to forward first');
      cfengine = await cfengineServerOf(config, identity, { allowedNetworks: ownSettings.allowedNetworks.value, nodes, puller, metrics, activity, log, warmUp });
      try {
        await cfengine.start();
      } catch (error) {
        throw new RelayError('RELAY_ERR_LISTEN', `CFEngine server on ${config.cfengine.listen.host}:${config.cfengine.listen.port} (cfengine.listen): ${messageOf(error)}`);
      }
      const running = cfengine;
      stoppers.push(stopStep('CFEngine server', () => running.stop()));
    }

    if (ownInventory) {
      const job = ownInventory;
      await job.start();
      stoppers.push(stopStep('own inventory', () => job.stop()));
    }
    // the relay's own run log (issue 18), into its own reports spool: forwarded upstream like any node's
    if (config.ownCompliance.enabled && config.processing.reporting.output === 'upstream') {
      const job = ownComplianceOf(config, identity, { ownPolicies, ownInventory, puller, spool, isFull: (queue) => activeForwarding.isFull(queue), log });
      ownCompliance = job;
      await job.start();
      stoppers.push(stopStep('own run log', () => job.stop()));
    }

    const shutdown = async (signal: string) => {
      if (shuttingDown) return;
      shuttingDown = true;
      const startedAt = Date.now();
      forwardDeadline = startedAt + config.https.shutdownTimeoutMs;
      const boundMs = shutdownBoundMs(config.https.shutdownTimeoutMs);
      log.info({ event: 'stopping', signal, bound_ms: boundMs }, `${signal} received: shutting down`);
      // the last resort, should a step ignore its own bound: the process ends within the bound
      setTimeout(() => {
        log.error({ event: 'stop_overrun', ms: Date.now() - startedAt }, 'shutdown overran its bound: exiting now (queued files stay in the spool)');
        process.exit(1);
      }, boundMs);
      // the workers and the primary's own front door finish their uploads in flight together
      const stopWorkers = stopStep(
        'front-door workers',
        async () => {
          await Promise.all([frontDoorWorkers.stop(config.https.shutdownTimeoutMs + 2_000), ownFrontDoor.stop()]);
          localAdmission.close();
        },
        config.https.shutdownTimeoutMs + 4_000,
      );
      await runStopSteps([stopWorkers, ...stoppers.reverse()], startedAt + boundMs - 500, log);
      log.info({ event: 'stopped', ms: Date.now() - startedAt }, 'onerelay stopped');
      process.exit(0);
    };
    process.on('SIGTERM', () => void shutdown('SIGTERM'));
    process.on('SIGINT', () => void shutdown('SIGINT'));
    process.on('SIGHUP', () => {
      system.reload().catch(() => undefined);
    });

    log.info(
      {
        event: 'ready',
        node_id: identity.nodeId,
        key_hash: identity.digests.sha256Pin,
        https: `${config.https.listen.host}:${config.https.listen.port}`,
        api: `${config.general.listen.host}:${config.general.listen.port}`,
        front_door_processes: count,
        certificate: config.https.certificateFile ?? config.identity.certificateFile,
        private_key: config.https.keyFile ?? config.identity.privateKeyFile,
        reports: config.processing.reporting.directory,
        inventories: config.processing.inventory.directory,
        nodes_list: config.general.nodesListFile,
        nodes_certs: config.general.nodesCertsFile,
      },
      `onerelay ready: HTTPS on ${config.https.listen.host}:${config.https.listen.port}, local API on ${config.general.listen.host}:${config.general.listen.port}`,
    );
  } catch (error) {
    log.fatal({ event: 'start_failed', error: messageOf(error), code: (error as RelayError).code }, 'could not start');
    shuttingDown = true;
    workers?.kill();
    await runStopSteps(stoppers.reverse(), Date.now() + shutdownBoundMs(config.https.shutdownTimeoutMs), log);
    process.exit(exitCodeOf(error));
  }
}

// ---------------------------------------------------------------- worker

/** the relay's own networks and credentials into a front door (the primary's and each worker's), logged */
function applyFrontDoorSettings(frontDoor: FrontDoor, settings: FrontDoorSettings, log: Logger): void {
  frontDoor.update(settings);
  log.info({ event: 'own_settings_applied', allowed_networks: settings.allowedNetworks, policy_server_networks: settings.policyServerNetworks, dav_user: settings.user }, 'front door: networks and credentials applied');
}

export async function runWorker(): Promise<void> {
  const primary = connectToPrimary();
  const levelOverride = primary.logLevel;
  let log = createLogger(levelOverride ?? 'info', { role: 'front-door', worker: cluster.worker?.id });
  try {
    const { config } = await loadConfig(primary.configPath);
    log = createLogger(levelOverride ?? config.logging.level, { role: 'front-door', worker: cluster.worker?.id });
    const identity = await loadIdentity(identityPaths(config));
    // a worker uses certificates only of sub-relays and the nodes behind them (peers, sync serving), checks no signature
    const nodes = nodesOf(config, identity.nodeId, log, 'front-door-worker');
    await nodes.reload();
    await nodes.start();
    const frontDoorMetrics = createFrontDoorMetrics();
    // node activity goes to the primary in batches; nothing is written on the upload path
    const activity = config.activity.enabled ? createActivityBatcher((events, done) => primary.sendActivity(events, done)) : undefined;
    const peers = peersOf(config, nodes, identity);
    const frontDoor = await frontDoorOf(config, identity, {
      nodes,
      peers,
      metrics: frontDoorMetrics,
      isSpoolFull: (queue) => primary.isSpoolFull(queue),
      admit: (queue, bytes) => primary.admit(queue, bytes),
      onRemoteRunError: (message) => primary.remoteRunError(message),
      activity,
      log,
    });
    // the primary's listening socket: every front-door process accepts on it
    await frontDoor.start(await primary.listeningSocket());
    let stopping = false;
    const stop = async () => {
      if (stopping) return;
      stopping = true;
      await frontDoor.stop();
      primary.closeLeases();
      await nodes.stop();
      await activity?.stop();
      process.exit(0);
    };
    primary.listen({
      shutdown: () => void stop(),
      reload: (level) => {
        log.level = pinoLevel(level);
        peers.reload();
        nodes.reload().catch(() => undefined);
      },
      metrics: () => frontDoorMetrics.snapshot(),
      ownSettings: (settings) => applyFrontDoorSettings(frontDoor, settings, log),
    });
    // systemd signals the whole control group; the primary also asks over IPC
    process.on('SIGTERM', () => void stop());
    process.on('SIGINT', () => void stop());
    process.on('SIGHUP', () => undefined);
    process.on('disconnect', () => void stop());
    primary.ready();
  } catch (error) {
    log.fatal({ event: 'worker_start_failed', error: messageOf(error) }, 'front-door worker could not start');
    primary.failed(messageOf(error), exitCodeOf(error));
    setTimeout(() => process.exit(exitCodeOf(error)), 100);
  }
}

export { ConfigError };
