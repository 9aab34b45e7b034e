// Composition root. The primary process loads and checks everything, owns the local API, the
// nodes registry used by status, the spool's crash recovery and (later) the processors; it forks
// one front-door worker per core, because TLS 1.3 handshakes with Rudder's RSA-4096 key are the
// cost that dominates uploads and one event loop cannot use both cores (DEVELOPERS.md "Stack").

import cluster, { type Worker } from 'node:cluster';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import type { Logger } from 'pino';
import { ConfigError, loadConfig, type Config, type LoadedConfig, type LogLevel } from './config/index.js';
import { pemToDer } from './der/index.js';
import { RelayError, messageOf } from './errors.js';
import { createFrontDoor, createLocalApi, type UploadAdmission, type UploadAuthOptions } from './http/index.js';
import { ensureIdentity, keyDigests, loadIdentity, type Identity } from './identity/index.js';
import { identityPaths } from './paths.js';
import { createLogger, pinoLevel } from './log.js';
import { createFrontDoorMetrics, createPrimaryMetrics, type MetricsSnapshot } from './metrics/index.js';
import { createNodesRegistry, type NodesRegistry } from './nodes/index.js';
import { createSpool, type Spool, type SpoolQueue } from './spool/index.js';
import { createPipelines } from './pipelines.js';
import { createPeers, sharedFilesForwarder, type Peers } from './forwarders.js';
import { createSharedFiles, type SharedFiles } from './shared-files/index.js';
import type { ServiceMetrics } from './metrics/index.js';
import { createCommandRunner, createNativeRunner, createRemoteRun, type NodeRunner, type RemoteRun } from './remote-run/index.js';
import { remoteRunCaller } from './forwarders.js';
import { createCfengineServer, type CfengineServer } from './cfengine/index.js';
import { readPinnedCertificate } from './upstream/index.js';
import { clientCertificateRequester, createCfenginePuller, createSyncPuller, createSyncServing, type SyncPaths, type SyncPuller, type SyncServing } from './sync/index.js';
import { createSystem } from './system/index.js';
import {
  createOwnPolicies,
  hostAddresses,
  ownPoliciesStatus,
  parentAddressOf,
  resolveOwnSettings,
  settingsStatus,
  type OwnSettings,
  type SettingsInputs,
} from './agentless/index.js';
import type { FrontDoorSettings } from './http/index.js';
import { VERSION } from './version.js';
import { DATABASE_REFUSED, checkInstallation } from './check.js';
import { runStopSteps, stopStep, type Stopper } from './shutdown.js';
import { ABORT_SETTLE_MS } from './spool/index.js';
import { createOwnInventory, type OwnInventory } from './agentless/index.js';
import type { OwnPolicies } from './agentless/types.js';
import { join } from 'node:path';
import { createOwnCompliance, createOwnComplianceProbes, loopbackOf, type OwnCompliance } from './agentless/index.js';
import { ACTIVITY_STYLE, createActivity, createActivityBatcher, recordingRunner, type ActivityEvent, type ActivitySink } from './activity/index.js';

export interface StartOptions {
  readonly configPath: string;
  readonly logLevel: LogLevel | undefined;
}

type WorkerMessage =
  | { type: 'ready' }
  | { type: 'remote-run-error'; message: string }
  | { type: 'failed'; message: string; exitCode: number }
  | { type: 'metrics'; id: number; snapshot: MetricsSnapshot }
  | { type: 'admit'; id: number; queue: SpoolQueue; bytes: number }
  | { type: 'admit-end'; queue: SpoolQueue; reservation: number; name?: string }
  | { type: 'activity'; events: ActivityEvent[] };
type PrimaryMessage =
  | { type: 'reload'; level: LogLevel }
  | { type: 'shutdown' }
  | { type: 'spool-full'; queue: SpoolQueue; full: boolean }
  | { type: 'metrics-request'; id: number }
  | { type: 'admitted'; id: number; queue: SpoolQueue; reservation: number | null }
  | { type: 'own-settings'; settings: FrontDoorSettings };

const ENV_CONFIG = 'ONERELAY_CONFIG';
/** how long a worker waits for the primary's admission of an upload */
const ADMIT_TIMEOUT_MS = 2_000;
/** own_policies.enabled = false: the relay never has policies of its own (first-inventory path, no run log) */
const NO_OWN_POLICIES: OwnPolicies = { current: () => undefined, onChange: () => () => undefined };
const ENV_LOG_LEVEL = 'ONERELAY_LOG_LEVEL';

export function spoolOf(config: Config, log: Logger): Spool {
  return createSpool(
    { reportsDirectory: config.processing.reporting.directory, inventoriesDirectory: config.processing.inventory.directory },
    log,
  );
}

export function nodesOf(config: Config, nodeId: string, log: Logger): NodesRegistry {
  return createNodesRegistry({
    myId: nodeId,
    nodesListFile: config.general.nodesListFile,
    nodesCertsFile: config.general.nodesCertsFile,
    log,
  });
}

/** The key pair the HTTPS endpoint presents: the agent identity unless https.* says otherwise (spec §1.1). */
async function frontDoorTls(config: Config, identity: Identity): Promise<{ key: string; cert: string }> {
  const keyFile = config.https.keyFile ?? config.identity.privateKeyFile;
  const certFile = config.https.certificateFile ?? config.identity.certificateFile;
  let key: string;
  let cert: string;
  try {
    key = config.https.keyFile ? await readFile(keyFile, 'utf8') : identity.privateKeyPem;
    cert = config.https.certificateFile ? await readFile(certFile, 'utf8') : identity.certificatePem;
  } catch (error) {
    throw new RelayError('RELAY_ERR_CERTIFICATE', `could not read the HTTPS key or certificate: ${messageOf(error)}`);
  }
  try {
    if (!new X509Certificate(cert).checkPrivateKey(createPrivateKey(key))) {
      throw new RelayError('RELAY_ERR_CERTIFICATE', `HTTPS certificate ${certFile} does not match key ${keyFile}`);
    }
  } catch (error) {
    if (error instanceof RelayError) throw error;
    throw new RelayError('RELAY_ERR_CERTIFICATE', `HTTPS certificate ${certFile} or key ${keyFile} is not valid PEM: ${messageOf(error)}`);
  }
  return { key, cert };
}

async function uploadAuth(config: Config): Promise<UploadAuthOptions> {
  let caCertificate: X509Certificate | undefined;
  if (config.general.peerAuthentication === 'cert_validation' && config.general.caPath !== undefined) {
    try {
      caCertificate = new X509Certificate(await readFile(config.general.caPath));
    } catch (error) {
      throw new RelayError('RELAY_ERR_CERTIFICATE', `general.ca_path ${config.general.caPath}: ${messageOf(error)}`);
    }
  }
  return {
    mode: config.general.peerAuthentication === 'cert_validation' ? 'certificate' : 'basic',
    user: config.output.upstream.user,
    password: config.output.upstream.password,
    defaultPassword: config.output.upstream.defaultPassword,
    caCertificate,
  };
}

function sharedFilesOf(config: Config, nodes: NodesRegistry, peers: Peers, metrics: ServiceMetrics, log: Logger): SharedFiles {
  return createSharedFiles(
    {
      path: config.sharedFiles.path,
      maxBodySize: config.sharedFiles.maxBodySize,
      cleanupFrequencyMs: config.sharedFiles.cleanup.frequencyMs,
    },
    {
      nodes,
      forwarder: sharedFilesForwarder(peers),
      counters: {
        stored: () => metrics.sharedFiles.inc({ event: 'stored' }),
        forwarded: () => metrics.sharedFiles.inc({ event: 'forwarded' }),
        expired: () => metrics.sharedFiles.inc({ event: 'expired' }),
      },
      log,
    },
  );
}

/** what the relay's own policies could set, as the TOML sets it (agentless/settings.ts decides) */
async function ownSettingsInputs(config: Config): Promise<SettingsInputs> {
  return {
    toml: {
      allowedNetworks: config.https.allowedNetworks,
      policyServerNetworks: config.https.policyServerNetworks,
      user: config.output.upstream.user,
      password: config.output.upstream.password,
      defaultPassword: config.output.upstream.defaultPassword,
      keys: config.ownPolicies.tomlKeys,
    },
    hostAddresses: hostAddresses(),
    localNetworks: config.ownPolicies.localNetworks,
    parentAddress: await parentAddressOf(config.output.upstream.host),
  };
}

function frontDoorSettingsOf(settings: OwnSettings): FrontDoorSettings {
  return {
    allowedNetworks: settings.allowedNetworks.value,
    policyServerNetworks: settings.policyServerNetworks.value,
    user: settings.davUser.value,
    password: settings.davPassword.value,
  };
}

function syncPaths(config: Config): SyncPaths {
  return {
    policiesDirectory: config.policies.directory,
    sharedFolderPath: config.sharedFolder.path,
    sharedFilesPath: config.sharedFiles.path,
    nodesListFile: config.general.nodesListFile,
    nodesCertsFile: config.general.nodesCertsFile,
    stateDirectory: config.sync.stateDirectory,
  };
}

function nodeRunnerOf(config: Config, identity: Identity, log: Logger): NodeRunner {
  if (config.remoteRun.mode !== 'native') return createCommandRunner({ command: config.remoteRun.command, useSudo: config.remoteRun.useSudo, log });
  // CFEngine EXEC to the node's cf-serverd with the relay's own key (spec §2.5 "Outbound")
  return createNativeRunner({
    privateKey: identity.privateKey,
    port: config.remoteRun.port,
    connectTimeoutMs: config.remoteRun.connectTimeoutMs,
    maxParallel: config.remoteRun.maxParallel,
    log,
  });
}

function remoteRunOf(config: Config, identity: Identity, nodes: NodesRegistry, peers: Peers, metrics: ServiceMetrics, log: Logger, onError?: (message: string) => void, activity?: ActivitySink): RemoteRun {
  return createRemoteRun(
    { enabled: config.remoteRun.enabled, maxParallel: config.remoteRun.maxParallel, timeoutMs: config.remoteRun.timeoutMs },
    {
      nodes,
      runner: recordingRunner(nodeRunnerOf(config, identity, log), activity),
      subRelays: remoteRunCaller(peers),
      counters: { run: (result, seconds) => metrics.remoteRuns.observe({ result }, seconds) },
      ...(onError ? { onError } : {}),
      log,
    },
  );
}

function syncStatus(puller: SyncPuller) {
  const s = puller.status();
  return {
    ...(s.lastError === undefined ? { status: 'success' as const } : { status: 'error' as const, details: s.lastError }),
    running: s.running,
    last_success: s.lastSuccessAt,
    last_attempt: s.lastAttemptAt,
    lag_s: s.lastSuccessAt === undefined ? undefined : Math.round((Date.now() - Date.parse(s.lastSuccessAt)) / 1000),
    generation: s.generation,
    last_duration_ms: s.lastDurationMs,
    last_files: s.lastFiles,
    last_bytes: s.lastBytes,
  };
}

/**
 * How long a stop may take: uploads and forwards in flight get https.shutdown_timeout, then the
 * workers' SIGKILL margin and the other steps a few seconds (within systemd's TimeoutStopSec=30 at
 * the default 10 s)
 */
export function shutdownBoundMs(shutdownTimeoutMs: number): number {
  return shutdownTimeoutMs + 15_000;
}

function ownComplianceStatus(job: OwnCompliance) {
  const s = job.status();
  return {
    ...(s.lastProblem === undefined ? { status: 'success' as const } : { status: 'error' as const, details: s.lastProblem }),
    waiting_for_policies: s.waitingForPolicies,
    last_run: s.lastRun?.at,
    config_id: s.lastRun?.configId,
    report_mode: s.lastRun?.reportMode,
    file: s.lastRun?.file,
    success: s.lastRun?.success,
    error: s.lastRun?.error,
    na: s.lastRun?.na,
    errors: s.lastRun?.errors,
    next_run: s.nextRunAt,
  };
}

/** exit code of a start failure, as relayd's (spec-relayd.md §1.3) */
export function exitCodeOf(error: unknown): number {
  if (error instanceof ConfigError) return error.exitCode;
  return 3;
}

// ---------------------------------------------------------------- primary

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
  const workers = new Set<Worker>();
  let shuttingDown = false;
  let readyWorkers = 0;

  try {
    const { identity, created } = await ensureIdentity(identityPaths(config), log);
    for (const path of created) log.info({ event: 'identity_created', path }, 'generated identity file');
    await frontDoorTls(config, identity);
    await uploadAuth(config);

    const nodes = nodesOf(config, identity.nodeId, log);
    await nodes.reload();
    const spool = spoolOf(config, log);
    await spool.prepare({ cleanTmp: true });
    // created below; the activity module reads the queue depth only when it samples it
    let pipelines: ReturnType<typeof createPipelines> | undefined;
    const activity = createActivity(config.activity, {
      nodes: () => nodes.neighbors(),
      isKnownNode: (id) => nodes.get(id) !== undefined,
      queueDepth: () => (pipelines?.queues() ?? []).reduce((total, q) => total + q.files, 0),
      log,
    });
    await activity.start();
    stoppers.push(stopStep('activity database', () => activity.stop()));

    // the relay's own policies (issue 18): read before anything listens, so the first connection meets them
    const ownPolicies = config.ownPolicies.enabled ? createOwnPolicies({ inputsDirectory: config.ownPolicies.inputsDirectory }, { log }) : undefined;
    if (ownPolicies) {
      await ownPolicies.start();
      stoppers.push(stopStep('own policies', () => ownPolicies.stop()));
    }
    let ownSettings = resolveOwnSettings(await ownSettingsInputs(config), ownPolicies?.current());

    const broadcast = (message: PrimaryMessage) => {
      for (const worker of workers) if (worker.isConnected()) worker.send(message);
    };
    let metricsRequest = 0;
    const metricsWaiters = new Map<number, (snapshot: MetricsSnapshot) => void>();
    /** every worker's metrics over IPC; a worker that does not answer within 2 s is left out */
    const workerSnapshots = async (): Promise<MetricsSnapshot[]> => {
      const answers = [...workers]
        .filter((worker) => worker.isConnected())
        .map(
          (worker) =>
            new Promise<MetricsSnapshot | undefined>((resolve) => {
              const id = (metricsRequest += 1);
              const timer = setTimeout(() => {
                metricsWaiters.delete(id);
                resolve(undefined);
              }, 2_000);
              metricsWaiters.set(id, (snapshot) => {
                clearTimeout(timer);
                metricsWaiters.delete(id);
                resolve(snapshot);
              });
              worker.send({ type: 'metrics-request', id } satisfies PrimaryMessage);
            }),
        );
      return (await Promise.all(answers)).filter((s): s is MetricsSnapshot => s !== undefined);
    };
    const metrics = createPrimaryMetrics({ spool, nodes, queues: { queues: () => pipelines?.queues() ?? [] }, workers: workerSnapshots, activity });
    // the relay's own inventory (issue 18), made below once the upstream client exists
    let ownInventory: OwnInventory | undefined;
    pipelines = createPipelines(config, {
      myId: identity.nodeId,
      ownCertificate: identity.certificate,
      nodes,
      spool,
      metrics,
      onFullChange: (queue, full) => broadcast({ type: 'spool-full', queue, full }),
      clientCertificate: { key: identity.privateKeyPem, cert: identity.certificatePem },
      inventoryCredentials: (queue, name) => ownInventory?.credentialsFor(queue, name),
      onInventoryOutcome: (queue, name, outcome) => ownInventory?.noteQueueOutcome(queue, name, outcome),
      credentials: () => ({ user: ownSettings.davUser.value, password: ownSettings.davPassword.value }),
      activity,
      log,
    });
    const activePipelines = pipelines;
    let remoteRun: RemoteRun | undefined;
    let cfengine: CfengineServer | undefined;
    let puller: SyncPuller | undefined;
    let ownCompliance: OwnCompliance | undefined;
    // a new generation upstream applies at once, here and in every front-door worker (no restart)
    ownPolicies?.onChange(() => {
      void (async () => {
        ownSettings = resolveOwnSettings(await ownSettingsInputs(config), ownPolicies.current());
        cfengine?.setAllowedNetworks(ownSettings.allowedNetworks.value);
        broadcast({ type: 'own-settings', settings: frontDoorSettingsOf(ownSettings) });
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
      checkConfiguration: async () => (await checkInstallation(options.configPath)).problems,
      reloadOthers: async () => {
        let level = options.logLevel;
        if (level === undefined) {
          level = (await loadConfig(options.configPath)).config.logging.level;
          log.level = pinoLevel(level);
        }
        currentLevel = level;
        broadcast({ type: 'reload', level });
        // a reload also pulls from upstream at once (issue 7), and re-reads the relay's own policies
        if (puller) void puller.trigger().catch(() => undefined);
        await ownPolicies?.refresh();
        peers.reload();
        await activePipelines.reload();
      },
      extraSections: (query) => ({ html: activity.pageSections(query), style: ACTIVITY_STYLE }),
      extraStatus: () => ({
        ...activePipelines.status(),
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
      frontDoor: () => ({ workers: workers.size, ready: readyWorkers }),
    });
    // the primary runs the TTL cleanup; every process stores and answers
    const peers = createPeers(config, nodes, { key: identity.privateKeyPem, cert: identity.certificatePem }, activePipelines.upstream);
    stoppers.push(stopStep('peer clients', () => peers.close()));
    const sharedFiles = sharedFilesOf(config, nodes, peers, metrics, log);
    // the root registers the relay from its inventory; a root server (id root) has none to send upstream
    if (config.node.inventory && config.processing.inventory.output === 'upstream' && identity.nodeId !== 'root') {
      ownInventory = createOwnInventory(
        {
          nodeId: identity.nodeId,
          identityPaths: identityPaths(config),
          policyServerHostname: config.output.upstream.host,
          stateFile: join(config.processing.inventory.directory, '.onerelay-own-inventory.json'),
          maxBytes: config.https.maxUploadSize,
        },
        { spool, ownPolicies: ownPolicies ?? NO_OWN_POLICIES, upstream: () => peers.upstream(), log },
      );
    }
    remoteRun = remoteRunOf(config, identity, nodes, peers, metrics, log, undefined, activity);
    if (config.sync.upstream) {
      const onNodesChanged = async (): Promise<void> => {
        await nodes.reload();
        broadcast({ type: 'reload', level: currentLevel });
      };
      const counters = {
        synced: (result: 'ok' | 'unchanged' | 'error', durationMs: number, bytes: number, files: number) => {
          metrics.syncs.observe({ result }, durationMs / 1000);
          metrics.syncBytes.inc(bytes);
          metrics.syncFiles.inc(files);
          if (result !== 'error') metrics.syncLastSuccess.set(Date.now() / 1000);
          metrics.syncOutcome(result !== 'error', Date.now() - durationMs);
        },
      };
      // the relay's own policies come with the sync, into their own inputs folder (never served to nodes)
      const ownSink = ownPolicies && {
        check: (directory: string) => ownPolicies.check(directory),
        installed: () => ownPolicies.refresh(),
        rejected: (error: unknown) => ownPolicies.rejected(error),
      };
      const pullPaths: SyncPaths = ownPolicies ? { ...syncPaths(config), ownInputsDirectory: config.ownPolicies.inputsDirectory } : syncPaths(config);
      puller =
        config.sync.protocol === 'cfengine'
          ? createCfenginePuller(
              {
                paths: pullPaths,
                myId: identity.nodeId,
                frequencyMs: config.sync.frequencyMs,
                host: config.output.upstream.host,
                port: config.sync.cfenginePort,
                privateKey: identity.privateKey,
                upstreamPrefix: config.sync.cfenginePathPrefix,
                libraryRoots: config.cfengine.publicRoots,
                connections: config.sync.cfengineConnections,
              },
              // the pin as the upstream module loads it, re-read at each pull as the puller always did
              { upstreamHttps: () => peers.upstream(), upstreamPin: () => readPinnedCertificate(config.output.upstream.serverCertificateFile), onNodesChanged, ...(ownSink ? { ownPolicies: ownSink } : {}), counters, log },
            )
          : createSyncPuller(
              { paths: pullPaths, myId: identity.nodeId, frequencyMs: config.sync.frequencyMs },
              { upstream: () => peers.upstream(), onNodesChanged, ...(ownSink ? { ownPolicies: ownSink } : {}), counters, log },
            );
    }
    const api = createLocalApi(config.general.listen, {
      system,
      sharedFiles,
      remoteRun,
      puller,
      sharedFolderPath: config.sharedFolder.path,
      renderMetrics: () => metrics.render(),
      activityRoutes: activity.routes,
      log,
    });
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
    if (config.cfengine.enabled) {
      cfengine = createCfengineServer(
        {
          listen: config.cfengine.listen,
          privateKey: identity.privateKey,
          nodeId: identity.nodeId,
          policiesDirectory: config.policies.directory,
          sharedFolderPath: config.sharedFolder.path,
          sharedFilesPath: config.sharedFiles.path,
          allowedNetworks: ownSettings.allowedNetworks.value,
          publicRoots: config.cfengine.publicRoots,
          maxConnections: config.cfengine.maxConnections,
          maxConnectionsPerAddress: config.cfengine.maxConnectionsPerAddress,
          idleTimeoutMs: config.cfengine.idleTimeoutMs,
          denyBadClocks: config.cfengine.denyBadClocks,
          // inbound remote run (spec §2.5): EXEC only from the upstream's key, mapped to "sync now"
          execKeys: await readFile(config.output.upstream.serverCertificateFile, 'utf8').then(
            (pem) => {
              return pemToDer(pem).map((der) => keyDigests(new X509Certificate(der).publicKey).sha256Pin);
            },
            () => [],
          ),
          onExec: async (classes, writeLine) => {
            const running = puller;
            if (running === undefined) {
              writeLine('onerelay: no data sync from upstream is configured here (sync.upstream): nothing to run');
              return 0;
            }
            writeLine(`onerelay: data sync from upstream triggered${classes.length > 0 ? ` (classes: ${classes.join(',')})` : ''}`);
            const s = await running.trigger();
            if (s.lastError !== undefined) {
              writeLine(`onerelay: data sync failed: ${s.lastError}`);
              return 1;
            }
            writeLine(`onerelay: data sync done: generation ${s.generation ?? 'none'}, ${s.lastFiles} files, ${s.lastBytes} bytes, ${s.lastChangedUnits} units changed, ${s.lastRequests ?? 0} requests, ${s.lastDurationMs ?? 0} ms`);
            return 0;
          },
        },
        {
          nodes,
          counters: {
            connection: (result) => metrics.cfengineConnections.inc({ result }),
            command: (command, result) => metrics.cfengineCommand(command, result),
            bytesSent: (bytes) => metrics.cfengineSent(bytes),
            session: (s) => activity.record({ t: 'cfengine', at: Date.now(), node: s.node, ip: s.peer, agent: s.agent, ok: s.ok, reason: s.reason }),
          },
          log,
        },
      );
      try {
        await cfengine.start();
      } catch (error) {
        throw new RelayError('RELAY_ERR_LISTEN', `CFEngine server on ${config.cfengine.listen.host}:${config.cfengine.listen.port} (cfengine.listen): ${messageOf(error)}`);
      }
      const running = cfengine;
      stoppers.push(stopStep('CFEngine server', () => running.stop()));
    }

    const count = config.https.workers > 0 ? config.https.workers : availableParallelism();
    cluster.setupPrimary({ silent: false });
    const fork = (): Promise<void> =>
      new Promise((resolve, reject) => {
        const worker = cluster.fork({
          [ENV_CONFIG]: options.configPath,
          ...(options.logLevel ? { [ENV_LOG_LEVEL]: options.logLevel } : {}),
        });
        workers.add(worker);
        let ready = false;
        // uploads this worker is receiving, counted against the disk budget (released if it dies)
        const admitted = new Map<number, SpoolQueue>();
        worker.on('message', (message: WorkerMessage) => {
          if (message.type === 'admit') {
            const reservation = activePipelines.reserve(message.queue, message.bytes);
            if (reservation !== undefined) admitted.set(reservation, message.queue);
            if (worker.isConnected()) worker.send({ type: 'admitted', id: message.id, queue: message.queue, reservation: reservation ?? null } satisfies PrimaryMessage);
            else if (reservation !== undefined) void activePipelines.release(message.queue, reservation);
          } else if (message.type === 'admit-end') {
            admitted.delete(message.reservation);
            void activePipelines.release(message.queue, message.reservation, message.name);
          } else if (message.type === 'ready') {
            ready = true;
            readyWorkers += 1;
            worker.send({ type: 'own-settings', settings: frontDoorSettingsOf(ownSettings) } satisfies PrimaryMessage);
            for (const queue of ['reports', 'inventories', 'inventory-updates'] as const) {
              if (activePipelines.isFull(queue)) worker.send({ type: 'spool-full', queue, full: true } satisfies PrimaryMessage);
            }
            resolve();
          } else if (message.type === 'remote-run-error') {
            remoteRun?.recordError(message.message);
          } else if (message.type === 'activity') {
            for (const event of message.events) activity.record(event);
          } else if (message.type === 'metrics') {
            metricsWaiters.get(message.id)?.(message.snapshot);
          } else if (message.type === 'failed') {
            reject(new RelayError('RELAY_ERR_LISTEN', message.message));
          }
        });
        worker.on('exit', (code, signal) => {
          workers.delete(worker);
          for (const [reservation, queue] of admitted) void activePipelines.release(queue, reservation);
          admitted.clear();
          if (ready) readyWorkers -= 1;
          if (!ready) {
            reject(new RelayError('RELAY_ERR_LISTEN', `front-door worker exited during start (code ${code}, signal ${signal})`));
            return;
          }
          if (shuttingDown) return;
          log.error({ event: 'worker_died', worker: worker.id, code, signal }, 'front-door worker died; starting another');
          setTimeout(() => {
            if (!shuttingDown) fork().catch((error: unknown) => log.error({ event: 'worker_restart_failed', error: messageOf(error) }, 'could not restart a front-door worker'));
          }, 1_000).unref();
        });
      });
    // the queues start while the workers boot: a backlog left by a restart starts draining at once instead of
    // waiting the second or so that loading the workers takes on a small machine (workers that are not ready
    // yet learn the spool-full state in their 'ready' handshake above)
    stoppers.push(
      stopStep(
        'forwarding queues',
        () => activePipelines.stop({ graceMs: Math.max(0, forwardDeadline - Date.now()) }),
        // the grace, then the abort, the inspection threads and the upstream pool (bounded 2 s each)
        config.https.shutdownTimeoutMs + ABORT_SETTLE_MS + 5_000,
      ),
    );
    await Promise.all([activePipelines.start(), ...Array.from({ length: count }, fork)]);
    if (ownInventory) {
      const job = ownInventory;
      await job.start();
      stoppers.push(stopStep('own inventory', () => job.stop()));
    }
    // the relay's own run log (issue 18), into its own reports spool: forwarded upstream like any node's
    if (config.ownCompliance.enabled && config.processing.reporting.output === 'upstream') {
      const syncing = puller;
      const job = createOwnCompliance(
        { nodeId: identity.nodeId, signer: { privateKey: identity.privateKey, certificate: identity.certificate }, runIntervalMs: config.ownCompliance.runIntervalMs },
        {
          policies: ownPolicies ?? NO_OWN_POLICIES,
          inventory: ownInventory,
          probes: createOwnComplianceProbes(
            {
              httpsUrl: `https://${loopbackOf(config.https.listen.host)}:${config.https.listen.port}`,
              apiUrl: `http://${loopbackOf(config.general.listen.host)}:${config.general.listen.port}`,
              privateKeyFile: config.identity.privateKeyFile,
              certificateFile: config.identity.certificateFile,
              pinnedCertificateFile: config.general.peerAuthentication === 'cert_pinning' ? config.output.upstream.serverCertificateFile : undefined,
            },
            syncing ? () => syncing.status() : undefined,
          ),
          store: async (name, body) => {
            // the same budget as uploads (max_spool_size): the next run tries again
            if (activePipelines.isFull('reports')) throw new RelayError('RELAY_ERR_SPOOL_FULL', 'the reports spool is over max_spool_size');
            await spool.receive('reports', name, body, Number.MAX_SAFE_INTEGER);
          },
          log,
        },
      );
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
      const stopWorkers = stopStep(
        'front-door workers',
        async () => {
          const exits = [...workers].map((worker) => new Promise<void>((resolve) => worker.once('exit', () => resolve())));
          broadcast({ type: 'shutdown' });
          const kill = setTimeout(() => {
            for (const worker of workers) worker.process.kill('SIGKILL');
          }, config.https.shutdownTimeoutMs + 2_000);
          await Promise.all(exits);
          clearTimeout(kill);
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
        workers: count,
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
    for (const worker of workers) worker.process.kill('SIGKILL');
    await runStopSteps(stoppers.reverse(), Date.now() + shutdownBoundMs(config.https.shutdownTimeoutMs), log);
    process.exit(exitCodeOf(error));
  }
}

// ---------------------------------------------------------------- worker

export async function runWorker(): Promise<void> {
  const configPath = process.env[ENV_CONFIG] ?? '';
  const levelOverride = process.env[ENV_LOG_LEVEL] as LogLevel | undefined;
  const send = (message: WorkerMessage) => process.send?.(message);
  let log = createLogger(levelOverride ?? 'info', { role: 'front-door', worker: cluster.worker?.id });
  try {
    const { config } = await loadConfig(configPath);
    log = createLogger(levelOverride ?? config.logging.level, { role: 'front-door', worker: cluster.worker?.id });
    const identity = await loadIdentity(identityPaths(config));
    const fullQueues = new Set<SpoolQueue>();
    let admitRequest = 0;
    const admitWaiters = new Map<number, (reservation: number | null) => void>();
    // every upload asks the primary, which holds the budget: uploads in other workers count at once
    const admit = (queue: SpoolQueue, bytes: number): Promise<UploadAdmission> =>
      new Promise((resolve) => {
        if (!process.connected) {
          // the primary is gone (this worker is stopping): the last word it sent decides
          resolve({ admitted: !fullQueues.has(queue), release: () => undefined });
          return;
        }
        const id = (admitRequest += 1);
        const timer = setTimeout(() => {
          // a primary too busy to answer must not refuse uploads: its last full/not-full word decides
          admitWaiters.delete(id);
          resolve({ admitted: !fullQueues.has(queue), release: () => undefined });
        }, ADMIT_TIMEOUT_MS);
        admitWaiters.set(id, (reservation) => {
          clearTimeout(timer);
          admitWaiters.delete(id);
          resolve({
            admitted: reservation !== null,
            release: (name) => {
              if (reservation !== null) send({ type: 'admit-end', queue, reservation, ...(name === undefined ? {} : { name }) });
            },
          });
        });
        send({ type: 'admit', id, queue, bytes });
      });
    const nodes = nodesOf(config, identity.nodeId, log);
    await nodes.reload();
    await nodes.start();
    const frontDoorMetrics = createFrontDoorMetrics();
    // node activity goes to the primary in batches; nothing is written on the upload path
    const activity = config.activity.enabled
      ? createActivityBatcher((events, done) => {
          if (process.send === undefined) return done();
          process.send({ type: 'activity', events } satisfies WorkerMessage, undefined, {}, () => done());
        })
      : undefined;
    const peers = createPeers(config, nodes, { key: identity.privateKeyPem, cert: identity.certificatePem });
    const frontDoor = createFrontDoor(
      {
        listen: config.https.listen,
        tls: await frontDoorTls(config, identity),
        nodeId: identity.nodeId,
        allowedNetworks: config.https.allowedNetworks,
        maxUploadSize: config.https.maxUploadSize,
        auth: await uploadAuth(config),
        proxy: config.https.proxy,
        shutdownTimeoutMs: config.https.shutdownTimeoutMs,
        policiesDirectory: config.policies.directory,
        sharedFolderPath: config.sharedFolder.path,
        policyServerNetworks: config.https.policyServerNetworks,
        localApiUrl: `http://${config.general.listen.host === '0.0.0.0' ? '127.0.0.1' : config.general.listen.host.includes(':') ? `[${config.general.listen.host}]` : config.general.listen.host}:${config.general.listen.port}`,
      },
      {
        nodes,
        spool: spoolOf(config, log),
        metrics: frontDoorMetrics,
        isSpoolFull: (queue) => fullQueues.has(queue),
        admit,
        sharedFiles: sharedFilesOf(config, nodes, peers, frontDoorMetrics, log),
        remoteRun: remoteRunOf(config, identity, nodes, peers, frontDoorMetrics, log, (message) => send({ type: 'remote-run-error', message }), activity),
        syncServing: config.sync.serve
          ? createSyncServing({ paths: syncPaths(config), manifestTtlMs: config.sync.manifestTtlMs }, { nodes, requesterOf: clientCertificateRequester(nodes), log })
          : undefined,
        ...(activity ? { activity } : {}),
        log,
      },
    );
    try {
      await frontDoor.start();
    } catch (error) {
      throw new RelayError('RELAY_ERR_LISTEN', `HTTPS front door on ${config.https.listen.host}:${config.https.listen.port} (https.listen): ${messageOf(error)}`);
    }
    let stopping = false;
    const stop = async () => {
      if (stopping) return;
      stopping = true;
      await frontDoor.stop();
      await nodes.stop();
      await activity?.stop();
      process.exit(0);
    };
    process.on('message', (message: PrimaryMessage) => {
      if (message.type === 'shutdown') void stop();
      else if (message.type === 'reload') {
        log.level = pinoLevel(message.level);
        peers.reload();
        nodes.reload().catch(() => undefined);
      } else if (message.type === 'admitted') {
        const waiter = admitWaiters.get(message.id);
        if (waiter) waiter(message.reservation);
        // answered after the timeout: the upload went on without it, give the reservation back
        else if (message.reservation !== null) send({ type: 'admit-end', queue: message.queue, reservation: message.reservation });
      } else if (message.type === 'metrics-request') {
        void frontDoorMetrics.snapshot().then((snapshot) => send({ type: 'metrics', id: message.id, snapshot }));
      } else if (message.type === 'spool-full') {
        if (message.full) fullQueues.add(message.queue);
        else fullQueues.delete(message.queue);
      } else if (message.type === 'own-settings') {
        frontDoor.update(message.settings);
        log.info({ event: 'own_settings_applied', allowed_networks: message.settings.allowedNetworks, policy_server_networks: message.settings.policyServerNetworks, dav_user: message.settings.user }, 'front door: networks and credentials applied');
      }
    });
    // systemd signals the whole control group; the primary also asks over IPC
    process.on('SIGTERM', () => void stop());
    process.on('SIGINT', () => void stop());
    process.on('SIGHUP', () => undefined);
    process.on('disconnect', () => void stop());
    send({ type: 'ready' });
  } catch (error) {
    log.fatal({ event: 'worker_start_failed', error: messageOf(error) }, 'front-door worker could not start');
    send({ type: 'failed', message: messageOf(error), exitCode: exitCodeOf(error) });
    setTimeout(() => process.exit(exitCodeOf(error)), 100);
  }
}

export { ConfigError };
