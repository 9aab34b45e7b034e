// The CFEngine file server: a TCP listener that admits clients by network and connection count, turns
// on TCP_NODELAY (spec-cfengine-protocol.md §13 pitfall 1), then speaks TLS with a certificate made
// from the relay's key and hands each connection to CfengineConnection.

import { createServer, type Server, type Socket } from 'node:net';
import { createSecureContext, type SecureContext } from 'node:tls';
import { constants } from 'node:crypto';
import type { Logger } from 'pino';
import { RelayError, type ErrorCode } from '../errors.js';
import { collectGarbage } from '../gc.js';
import { createNetworkAcl, createPathAcl } from '../access/index.js';
import { makeServerCertificate } from './certificate.js';
import { HEADER_SIZE, MAX_PAYLOAD } from './codec.js';
import { openConnection, type CfengineConnection } from './connection.js';
import { connectionContext } from './session.js';
import { DigestCache, DirectoryCache, inThreadPoolMode, onSlowFileSystem, resetFileSystemMode } from './files.js';
import type { CfengineServer, CfengineServerDeps, CfengineServerOptions } from './index.js';
import { warmUp } from './warm-up.js';

const DEFAULT_MAX_CONNECTIONS = 500;
/**
 * cf-serverd's receive timeout, 20 × CONNTIMEOUT (spec-cfengine-protocol.md §3.1): cf-agent keeps one
 * connection per server for its whole run and reuses it without noticing a close (its idle check reads only
 * SO_ERROR), so a shorter one fails the next copy_from after any longer pause in the run
 */
const DEFAULT_IDLE_TIMEOUT_MS = 600_000;
/**
 * until a client is identified: with no limit per address and cf-serverd's idle timeout, silent connections
 * from one address would otherwise hold every slot for 10 minutes; an agent is identified in milliseconds
 */
const DEFAULT_HANDSHAKE_TIMEOUT_MS = 30_000;
/** requests answered by the warm-up before listening (warm-up.ts): about what V8 needs to optimise the path */
const DEFAULT_WARM_UP_REQUESTS = 3000;
/** the warm-up stops after this long whatever it reached: a start is never delayed by more */
const WARM_UP_BUDGET_MS = 3000;
/** a client is at most one request ahead; a few whole transactions of slack, then it is cut off */
const MAX_INPUT_BYTES = 4 * (HEADER_SIZE + MAX_PAYLOAD);
/** cf-serverd's default allowciphers: TLS 1.3 TLS_AES_256_GCM_SHA384; TLS 1.2 AES256-GCM-SHA384, AES256-SHA */
const CIPHERS = 'TLS_AES_256_GCM_SHA384:AES256-GCM-SHA384:AES256-SHA';

/** one refusal line per peer and reason per window; the others are counted into the next line */
const REFUSAL_LOG_WINDOW_MS = 10_000;

function refusalLogger(log: Logger): (peer: string, code: ErrorCode, message: string, fields?: Record<string, unknown>) => void {
  const seen = new Map<string, { at: number; suppressed: number }>();
  return (peer, code, message, fields = {}) => {
    const key = `${peer} ${message}`;
    const now = Date.now();
    const last = seen.get(key);
    if (last !== undefined && now - last.at < REFUSAL_LOG_WINDOW_MS) {
      last.suppressed += 1;
      return;
    }
    if (seen.size > 1000) seen.clear();
    seen.set(key, { at: now, suppressed: 0 });
    log.warn({ event: 'refused', code, peer, ...fields, ...(last?.suppressed ? { suppressed: last.suppressed } : {}) }, message);
  };
}

export function createCfengineServer(options: CfengineServerOptions, deps: CfengineServerDeps): CfengineServer {
  const log = deps.log.child({ module: 'cfengine' });
  const maxConnections = options.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
  // none of its own unless configured: hundreds of agents behind one NAT address start together at a splay
  const maxPerAddress = options.maxConnectionsPerAddress ?? maxConnections;
  const idleTimeoutMs = options.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
  let networks = createNetworkAcl(options.allowedNetworks);
  const logRefusal = refusalLogger(log);
  const context = connectionContext({
    nodes: deps.nodes,
    counters: deps.counters,
    log,
    acl: createPathAcl({
      policiesDirectory: options.policiesDirectory,
      sharedFolderPath: options.sharedFolderPath,
      ...(options.sharedFilesPath === undefined ? {} : { sharedFilesPath: options.sharedFilesPath }),
      commonRoots: options.commonRoots ?? [],
      publicRoots: options.publicRoots ?? [],
    }),
    denyBadClocks: options.denyBadClocks ?? true,
    maxInputBytes: MAX_INPUT_BYTES,
    idleTimeoutMs,
    // never longer than the idle timeout; an idle timeout of 0 (none) leaves the identification's own
    handshakeTimeoutMs:
      idleTimeoutMs > 0
        ? Math.min(options.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS, idleTimeoutMs)
        : (options.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS),
    digests: new DigestCache(),
    directories: new DirectoryCache(),
    exec: {
      keys: new Set(options.execKeys ?? []),
      command: options.execCommand ?? 'onerelay sync',
      ...(options.onExec ? { run: options.onExec } : {}),
    },
  });
  /** admitted connections, for maxConnections and stop() */
  const connections = new Set<CfengineConnection>();
  /** admitted connections by client address, for maxConnectionsPerAddress */
  const perAddress = new Map<string, number>();
  let server: Server | undefined;
  let unsubscribeSlow: (() => void) | undefined;
  let secureContext: SecureContext | undefined;
  let boundPort = 0;
  /** a few of the warm-up's objects, held for the server's life: V8 discards optimised code whose maps die (warm-up.ts) */
  let warmUpObjects: readonly unknown[] = [];

  const onConnection = (socket: Socket): void => {
    socket.on('error', () => undefined); // reported by the TLS socket wrapping it (or nothing to report)
    const peer = socket.remoteAddress ?? 'unknown';
    if (!networks.allows(socket.remoteAddress)) {
      deps.counters.connection('refused-network');
      logRefusal(peer, 'RELAY_ERR_AUTH_NETWORK', 'cfengine connection refused: address not in allowed networks');
      socket.destroy();
      return;
    }
    if (connections.size >= maxConnections || secureContext === undefined) {
      deps.counters.connection('refused-limit');
      logRefusal(peer, 'RELAY_ERR_CFENGINE_LIMIT', 'cfengine connection refused: too many connections', { maxConnections });
      socket.destroy();
      return;
    }
    const held = perAddress.get(peer) ?? 0;
    if (held >= maxPerAddress) {
      deps.counters.connection('refused-address-limit');
      logRefusal(peer, 'RELAY_ERR_CFENGINE_LIMIT', 'cfengine connection refused: too many connections from this address', { maxConnectionsPerAddress: maxPerAddress });
      socket.destroy();
      return;
    }
    perAddress.set(peer, held + 1);
    deps.counters.connection('accepted');
    const connection = openConnection(socket, secureContext, peer, context, (closed) => {
      if (!connections.delete(closed)) return;
      const left = (perAddress.get(peer) ?? 1) - 1;
      if (left > 0) perAddress.set(peer, left);
      else perAddress.delete(peer);
    });
    connections.add(connection);
  };

  return {
    async start() {
      if (server !== undefined) return;
      const certificate = makeServerCertificate(options.privateKey);
      secureContext = createSecureContext({
        key: options.privateKey.export({ type: 'pkcs1', format: 'pem' }),
        cert: certificate,
        ciphers: CIPHERS,
        minVersion: 'TLSv1.2',
        // cf-agent never resumes a session: stateful tickets (never stored) spare OpenSSL 3.0 encoding the
        // session, the client's certificate included, twice per connection (as the HTTPS front door)
        secureOptions: constants.SSL_OP_NO_TICKET,
      });
      // The warm-up runs while the relay starts (its workers, TLS on both ends of its own connections), often
      // on a busy CPU: a direct file-system call preempted there for more than src/fs-direct's 10 ms sent
      // every call of this process to the thread pool for a minute, silently (nothing listened yet), and the
      // rest of the warm-up then warmed the pool's path, not the direct one agents take (measured: 4 more
      // threads and +60–100 ms of CPU per agent run in the first minute after such starts). A slow call of
      // the warm-up's private tree says nothing of the served disk: its switch is undone, and a slow served
      // disk switches again at its next slow call.
      const pooledBefore = inThreadPoolMode();
      let slowestInWarmUp = 0;
      const unwatch = onSlowFileSystem((ms) => (slowestInWarmUp = Math.max(slowestInWarmUp, ms)));
      const warmed = await warmUp({
        requests: options.warmUpRequests ?? DEFAULT_WARM_UP_REQUESTS,
        budgetMs: WARM_UP_BUDGET_MS,
        secureContext,
        privateKey: options.privateKey,
        certificate,
        context,
        log,
      });
      unwatch();
      if (slowestInWarmUp > 0 && !pooledBefore) {
        resetFileSystemMode();
        log.info({ ms: Math.round(slowestInWarmUp) }, 'cfengine: a slow file system call during the warm-up (a busy start) did not switch file access to the thread pool');
      }
      warmUpObjects = warmed.keepAlive;
      if (warmed.requests > 0) {
        // its sockets, buffers and tree leave ~13 MB of array buffers and ~9 MB of heap that an idle relay
        // would otherwise keep until V8's next full collection (bench/footprint)
        collectGarbage();
        log.info({ requests: warmed.requests, ms: Math.round(warmed.ms) }, 'cfengine request path warmed up');
      }
      unsubscribeSlow = onSlowFileSystem((ms) =>
        log.warn({ ms: Math.round(ms) }, 'cfengine: slow file system call, file access goes through the thread pool for a while'),
      );
      const listener = createServer({ noDelay: true }, onConnection);
      await new Promise<void>((resolve, reject) => {
        listener.once('error', (error) =>
          reject(
            new RelayError('RELAY_ERR_LISTEN', `cfengine: cannot listen on ${options.listen.host}:${options.listen.port}: ${error.message}`, {
              cause: error,
            }),
          ),
        );
        listener.listen(options.listen.port, options.listen.host, () => resolve());
      });
      listener.on('error', (error) => log.error({ err: error }, 'cfengine listener error'));
      const address = listener.address();
      boundPort = address !== null && typeof address === 'object' ? address.port : options.listen.port;
      server = listener;
      log.info({ host: options.listen.host, port: boundPort, node: options.nodeId }, 'cfengine server listening');
    },

    async stop() {
      const listener = server;
      server = undefined;
      if (listener === undefined) return;
      const closed = new Promise<void>((resolve) => listener.close(() => resolve()));
      for (const connection of connections) connection.destroy('server stopping');
      await closed;
      unsubscribeSlow?.();
      unsubscribeSlow = undefined;
      log.info('cfengine server stopped');
    },

    port() {
      return boundPort;
    },

    setAllowedNetworks(cidrs) {
      networks = createNetworkAcl(cidrs);
    },
  };
}
