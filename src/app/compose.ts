// Part of the composition room: each module built from its own slice of the configuration, and the small
// adapters that connect one module's needs to another's face. Nothing here starts; app.ts starts and stops.

import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { createActivity, recordingRunner, type Activity, type ActivityBatcher, type ActivitySink } from '../activity/index.js';
import {
  createOwnCompliance,
  createOwnComplianceProbes,
  createOwnInventory,
  createOwnPolicies,
  hostAddresses,
  loopbackOf,
  parentAddressOf,
  type OwnCompliance,
  type OwnInventory,
  type OwnPolicies,
  type OwnPoliciesService,
  type OwnSettings,
  type SettingsInputs,
} from '../agentless/index.js';
import { createCfengineServer, type CfengineServer } from '../cfengine/index.js';
import type { Config } from '../config/index.js';
import { pemToDer } from '../der/index.js';
import { RelayError, messageOf, relayError } from '../errors.js';
import { createFrontDoor, createLocalApi, type FrontDoor, type FrontDoorSettings, type LocalApi, type UploadAdmission, type UploadAuthOptions } from '../http/index.js';
import { keyDigests, type Identity } from '../identity/index.js';
import type { FrontDoorMetrics, PrimaryMetrics, ServiceMetrics } from '../metrics/index.js';
import { createNodesRegistry, type NodesRegistry } from '../nodes/index.js';
import { RELAY_PATH_HEADER, createCommandRunner, createNativeRunner, createRemoteRun, type NodeRunner, type RemoteRun, type SubRelayCaller } from '../remote-run/index.js';
import { createSharedFiles, type SharedFiles, type SharedFilesForwarder } from '../shared-files/index.js';
import { createSpool, type Spool, type SpoolQueue } from '../spool/index.js';
import { clientCertificateRequester, createCfenginePuller, createSyncPuller, createSyncServing, type SyncPaths, type SyncPuller } from '../sync/index.js';
import type { System } from '../system/index.js';
import { createPeers, readPinnedCertificate, type Peers, type Upstream } from '../upstream/index.js';
import { identityPaths } from './paths.js';

/** own_policies.enabled = false: the relay never has policies of its own (first-inventory path, no run log) */
export const NO_OWN_POLICIES: OwnPolicies = { current: () => undefined, onChange: () => () => undefined };

// ---------------------------------------------------------------- every process

export function spoolOf(config: Config, log: Logger): Spool {
  return createSpool(
    { reportsDirectory: config.processing.reporting.directory, inventoriesDirectory: config.processing.inventory.directory },
    log,
  );
}

/**
 * Whole certificates are used only for sub-relays and the nodes behind them (peers, sync serving), in every
 * process; the primary also keeps every node's signer parts (reports' signatures), a front-door worker none.
 */
export function nodesOf(config: Config, nodeId: string, log: Logger, role: 'primary' | 'front-door-worker'): NodesRegistry {
  return createNodesRegistry({
    myId: nodeId,
    nodesListFile: config.general.nodesListFile,
    nodesCertsFile: config.general.nodesCertsFile,
    keepCertificates: 'behind-sub-relays',
    keepSigners: role === 'primary',
    log,
  });
}

/** The key pair the HTTPS endpoint presents: the agent identity unless https.* says otherwise (spec §1.1). */
export async function frontDoorTls(config: Config, identity: Identity): Promise<{ key: string; cert: string }> {
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

export async function uploadAuth(config: Config): Promise<UploadAuthOptions> {
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

/**
 * The peer layer from output.upstream and general's outgoing HTTPS settings. `upstream`: the forwarding
 * client, when this process has one (the primary): the relay API calls to the upstream share its dispatcher.
 */
export function peersOf(config: Config, nodes: NodesRegistry, identity: Identity, upstream?: Upstream): Peers {
  return createPeers(
    {
      upstreamHost: config.output.upstream.host,
      serverCertificateFile: config.output.upstream.serverCertificateFile,
      port: config.general.httpsPort,
      peerAuthentication: config.general.peerAuthentication,
      caPath: config.general.caPath,
      connectTimeoutMs: config.output.upstream.connectTimeoutMs,
      idleTimeoutMs: config.output.upstream.idleTimeoutMs,
      keepAliveMs: config.general.httpsIdleTimeoutMs,
      clientCertificate: { key: identity.privateKeyPem, cert: identity.certificatePem },
    },
    { certificatesOf: (nodeId) => nodes.certificatesOf(nodeId), ...(upstream ? { upstream } : {}) },
  );
}

/** shared files passed on to the next hop (upstream or a sub-relay) through the peer layer */
export function sharedFilesForwarder(peers: Peers): SharedFilesForwarder {
  return {
    async forward(nextHop, method, pathAndQuery, body) {
      const client = nextHop.kind === 'upstream' ? peers.upstream() : peers.subRelay({ id: nextHop.nodeId, hostname: nextHop.hostname });
      if (client === undefined) throw relayError('RELAY_ERR_SHARED_FILES_NO_PEER');
      const response = await client.request(method, pathAndQuery, body, body === undefined ? {} : { 'content-type': 'application/octet-stream' });
      await response.body.dump();
      return response.status;
    },
  };
}

/** remote runs passed on to a sub-relay's relay API through the peer layer */
export function remoteRunCaller(peers: Peers): SubRelayCaller {
  return {
    async call(relay, target, form, path, signal) {
      const response = await peers.subRelay(relay).request(
        'POST',
        `/rudder/relay-api/remote-run/${target}`,
        new URLSearchParams(form).toString(),
        { 'content-type': 'application/x-www-form-urlencoded', [RELAY_PATH_HEADER]: path.join(',') },
      );
      if (response.status < 200 || response.status > 299) {
        await response.body.dump();
        throw relayError('RELAY_ERR_REMOTE_RUN_FORWARD', response.status);
      }
      signal.addEventListener('abort', () => response.body.destroy(relayError('RELAY_ERR_REMOTE_RUN_TIMEOUT')), { once: true });
      return response.body as AsyncIterable<Buffer>;
    },
  };
}

export function sharedFilesOf(config: Config, nodes: NodesRegistry, peers: Peers, metrics: ServiceMetrics, log: Logger): SharedFiles {
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

export function remoteRunOf(
  config: Config,
  identity: Identity,
  nodes: NodesRegistry,
  peers: Peers,
  metrics: ServiceMetrics,
  log: Logger,
  onError?: (message: string) => void,
  activity?: ActivitySink,
): RemoteRun {
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

// ---------------------------------------------------------------- front-door worker

/** http://host:port of the local API, as a front-door worker proxies to it */
function localApiUrlOf(config: Config): string {
  const host = config.general.listen.host;
  return `http://${host === '0.0.0.0' ? '127.0.0.1' : host.includes(':') ? `[${host}]` : host}:${config.general.listen.port}`;
}

export async function frontDoorOf(
  config: Config,
  identity: Identity,
  deps: {
    nodes: NodesRegistry;
    peers: Peers;
    metrics: FrontDoorMetrics;
    isSpoolFull: (queue: SpoolQueue) => boolean;
    admit: (queue: SpoolQueue, bytes: number) => Promise<UploadAdmission>;
    onRemoteRunError: (message: string) => void;
    activity: ActivitySink | undefined;
    log: Logger;
  },
): Promise<FrontDoor> {
  const { nodes, peers, metrics, activity, log } = deps;
  return createFrontDoor(
    {
      listen: config.https.listen,
      tls: await frontDoorTls(config, identity),
      nodeId: identity.nodeId,
      allowedNetworks: config.https.allowedNetworks,
      maxUploadSize: config.https.maxUploadSize,
      auth: await uploadAuth(config),
      proxy: config.https.proxy,
      shutdownTimeoutMs: config.https.shutdownTimeoutMs,
      bodyTimeoutMs: config.https.bodyTimeoutMs,
      requestTimeoutMs: config.https.requestTimeoutMs,
      policiesDirectory: config.policies.directory,
      sharedFolderPath: config.sharedFolder.path,
      policyServerNetworks: config.https.policyServerNetworks,
      localApiUrl: localApiUrlOf(config),
    },
    {
      nodes,
      spool: spoolOf(config, log),
      metrics,
      isSpoolFull: deps.isSpoolFull,
      admit: deps.admit,
      sharedFiles: sharedFilesOf(config, nodes, peers, metrics, log),
      remoteRun: remoteRunOf(config, identity, nodes, peers, metrics, log, deps.onRemoteRunError, activity),
      syncServing: config.sync.serve
        ? createSyncServing({ paths: syncPaths(config), manifestTtlMs: config.sync.manifestTtlMs }, { nodes, requesterOf: clientCertificateRequester(nodes), log })
        : undefined,
      ...(activity ? { activity } : {}),
      log,
    },
  );
}

// ---------------------------------------------------------------- primary

export function activityOf(config: Config, nodes: NodesRegistry, queueDepth: () => number, log: Logger): Activity {
  return createActivity(config.activity, {
    nodes: () => nodes.neighbors(),
    isKnownNode: (id) => nodes.get(id) !== undefined,
    queueDepth,
    log,
  });
}

export function ownPoliciesOf(config: Config, log: Logger): OwnPoliciesService | undefined {
  return config.ownPolicies.enabled ? createOwnPolicies({ inputsDirectory: config.ownPolicies.inputsDirectory }, { log }) : undefined;
}

/** what the relay's own policies could set, as the TOML sets it (agentless/settings.ts decides) */
export async function ownSettingsInputs(config: Config): Promise<SettingsInputs> {
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

export function frontDoorSettingsOf(settings: OwnSettings): FrontDoorSettings {
  return {
    allowedNetworks: settings.allowedNetworks.value,
    policyServerNetworks: settings.policyServerNetworks.value,
    user: settings.davUser.value,
    password: settings.davPassword.value,
  };
}

/** the relay's own inventory (issue 18); none on a root server (id root), or when nothing is forwarded upstream */
export function ownInventoryOf(
  config: Config,
  identity: Identity,
  deps: { spool: Spool; ownPolicies: OwnPolicies | undefined; peers: Peers; log: Logger },
): OwnInventory | undefined {
  if (!config.node.inventory || config.processing.inventory.output !== 'upstream' || identity.nodeId === 'root') return undefined;
  return createOwnInventory(
    {
      nodeId: identity.nodeId,
      identityPaths: identityPaths(config),
      policyServerHostname: config.output.upstream.host,
      stateFile: join(config.processing.inventory.directory, '.onerelay-own-inventory.json'),
      maxBytes: config.https.maxUploadSize,
    },
    { spool: deps.spool, ownPolicies: deps.ownPolicies ?? NO_OWN_POLICIES, upstream: () => deps.peers.upstream(), log: deps.log },
  );
}

/** the data sync puller (sync.upstream), over HTTPS or CFEngine (sync.protocol); undefined when not configured */
export function syncPullerOf(
  config: Config,
  identity: Identity,
  deps: {
    peers: Peers;
    metrics: PrimaryMetrics;
    ownPolicies: OwnPoliciesService | undefined;
    onNodesChanged: () => Promise<void>;
    log: Logger;
  },
): SyncPuller | undefined {
  if (!config.sync.upstream) return undefined;
  const { peers, metrics, ownPolicies, onNodesChanged, log } = deps;
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
  return config.sync.protocol === 'cfengine'
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
        {
          upstreamHttps: () => peers.upstream(),
          // the pin as the upstream module loads it, re-read at each pull as the puller always did
          upstreamPin: () => readPinnedCertificate(config.output.upstream.serverCertificateFile),
          onNodesChanged,
          ...(ownSink ? { ownPolicies: ownSink } : {}),
          counters,
          log,
        },
      )
    : createSyncPuller(
        { paths: pullPaths, myId: identity.nodeId, frequencyMs: config.sync.frequencyMs },
        { upstream: () => peers.upstream(), onNodesChanged, ...(ownSink ? { ownPolicies: ownSink } : {}), counters, log },
      );
}

export function localApiOf(
  config: Config,
  deps: { system: System; sharedFiles: SharedFiles; remoteRun: RemoteRun; puller: SyncPuller | undefined; metrics: PrimaryMetrics; activity: Activity; log: Logger },
): LocalApi {
  return createLocalApi(config.general.listen, {
    system: deps.system,
    sharedFiles: deps.sharedFiles,
    remoteRun: deps.remoteRun,
    puller: deps.puller,
    sharedFolderPath: config.sharedFolder.path,
    renderMetrics: () => deps.metrics.render(),
    activityRoutes: deps.activity.routes,
    log: deps.log,
  });
}

/** inbound remote run (spec §2.5): EXEC is taken only from the upstream's key, whose pins are read here */
async function execKeysOf(serverCertificateFile: string): Promise<string[]> {
  return readFile(serverCertificateFile, 'utf8').then(
    (pem) => pemToDer(pem).map((der) => keyDigests(new X509Certificate(der).publicKey).sha256Pin),
    () => [],
  );
}

/** what an EXEC from the upstream runs here: a data sync now, its outcome written back line by line */
function syncOnExec(puller: SyncPuller | undefined): (classes: readonly string[], writeLine: (line: string) => void) => Promise<number> {
  return async (classes, writeLine) => {
    if (puller === undefined) {
      writeLine('onerelay: no data sync from upstream is configured here (sync.upstream): nothing to run');
      return 0;
    }
    writeLine(`onerelay: data sync from upstream triggered${classes.length > 0 ? ` (classes: ${classes.join(',')})` : ''}`);
    const s = await puller.trigger();
    if (s.lastError !== undefined) {
      writeLine(`onerelay: data sync failed: ${s.lastError}`);
      return 1;
    }
    writeLine(`onerelay: data sync done: generation ${s.generation ?? 'none'}, ${s.lastFiles} files, ${s.lastBytes} bytes, ${s.lastChangedUnits} units changed, ${s.lastRequests ?? 0} requests, ${s.lastDurationMs ?? 0} ms`);
    return 0;
  };
}

export async function cfengineServerOf(
  config: Config,
  identity: Identity,
  deps: { allowedNetworks: readonly string[]; nodes: NodesRegistry; puller: SyncPuller | undefined; metrics: PrimaryMetrics; activity: ActivitySink; log: Logger; warmUp: boolean },
): Promise<CfengineServer> {
  const { metrics, activity } = deps;
  return createCfengineServer(
    {
      listen: config.cfengine.listen,
      privateKey: identity.privateKey,
      nodeId: identity.nodeId,
      policiesDirectory: config.policies.directory,
      sharedFolderPath: config.sharedFolder.path,
      sharedFilesPath: config.sharedFiles.path,
      allowedNetworks: deps.allowedNetworks,
      ...(deps.warmUp ? {} : { warmUpRequests: 0 }),
      publicRoots: config.cfengine.publicRoots,
      maxConnections: config.cfengine.maxConnections,
      maxConnectionsPerAddress: config.cfengine.maxConnectionsPerAddress,
      idleTimeoutMs: config.cfengine.idleTimeoutMs,
      denyBadClocks: config.cfengine.denyBadClocks,
      execKeys: await execKeysOf(config.output.upstream.serverCertificateFile),
      onExec: syncOnExec(deps.puller),
    },
    {
      nodes: deps.nodes,
      counters: {
        connection: (result) => metrics.cfengineConnections.inc({ result }),
        command: (command, result) => metrics.cfengineCommand(command, result),
        bytesSent: (bytes) => metrics.cfengineSent(bytes),
        session: (s) => activity.record({ t: 'cfengine', at: Date.now(), node: s.node, ip: s.peer, agent: s.agent, ok: s.ok, reason: s.reason }),
      },
      log: deps.log,
    },
  );
}

/** the relay's own run log (issue 18), stored into its own reports spool within the uploads' budget */
export function ownComplianceOf(
  config: Config,
  identity: Identity,
  deps: {
    ownPolicies: OwnPolicies | undefined;
    ownInventory: OwnInventory | undefined;
    puller: SyncPuller | undefined;
    spool: Spool;
    isFull: (queue: SpoolQueue) => boolean;
    log: Logger;
  },
): OwnCompliance {
  const { puller, spool } = deps;
  return createOwnCompliance(
    { nodeId: identity.nodeId, signer: { privateKey: identity.privateKey, certificate: identity.certificate }, runIntervalMs: config.ownCompliance.runIntervalMs },
    {
      policies: deps.ownPolicies ?? NO_OWN_POLICIES,
      inventory: deps.ownInventory,
      probes: createOwnComplianceProbes(
        {
          httpsUrl: `https://${loopbackOf(config.https.listen.host)}:${config.https.listen.port}`,
          apiUrl: `http://${loopbackOf(config.general.listen.host)}:${config.general.listen.port}`,
          privateKeyFile: config.identity.privateKeyFile,
          certificateFile: config.identity.certificateFile,
          pinnedCertificateFile: config.general.peerAuthentication === 'cert_pinning' ? config.output.upstream.serverCertificateFile : undefined,
        },
        puller ? () => puller.status() : undefined,
      ),
      store: async (name, body) => {
        // the same budget as uploads (max_spool_size): the next run tries again
        if (deps.isFull('reports')) throw new RelayError('RELAY_ERR_SPOOL_FULL', 'the reports spool is over max_spool_size');
        await spool.receive('reports', name, body, Number.MAX_SAFE_INTEGER);
      },
      log: deps.log,
    },
  );
}

// ---------------------------------------------------------------- status page sections

export function syncStatus(puller: SyncPuller) {
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

export function ownComplianceStatus(job: OwnCompliance) {
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
