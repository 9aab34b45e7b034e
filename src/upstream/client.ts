// The upstream client: one undici Pool per trusted upstream identity, PUT of spool files streamed from
// disk, timeouts on every request (spec-relayd.md §9, §15.7), FIFO limit on requests in flight.

import { open, type FileHandle } from 'node:fs/promises';
import type { Dispatcher, Pool } from 'undici';
import { RelayError, messageOf, relayError, type ErrorCode } from '../errors.js';
import type { Logger } from '../log.js';
import { VERSION } from '../version.js';
import {
  ForwardInterruptedError,
  RequestTimeoutError,
  codeOfStatus,
  describeFailure,
  outcomeOfStatus,
  reasonOfResponse,
} from './classify.js';
import { createFifoLimit } from './fifo-limit.js';
import type { ForwardOptions, ForwardResult, Upstream, UpstreamEndpoint, UpstreamOptions, UpstreamStatus } from './index.js';
import {
  buildTrustingConnector,
  isSamePin,
  readCaPath,
  readPinnedCertificate,
  readPinnedCertificateSync,
  type PinnedCertificate,
} from './trust.js';
import type { PeerClient } from './peer.js';
import { loadUndici, type Undici } from './undici.js';

/** the dispatcher built for one pinned certificate (or the only one, outside cert_pinning) */
interface Generation {
  /** made on the first request (see undici.ts) */
  pool: Pool | undefined;
  readonly pinned: PinnedCertificate | undefined;
  /** why nothing can be sent (the pinned certificate is missing or unusable), undefined when it can */
  readonly blocked: string | undefined;
}

/** how long close() waits for requests still open before it destroys their connections */
const CLOSE_BOUND_MS = 2_000;
/** connections beyond max_concurrency for peer() requests (sync, shared files): forwards never wait behind a long sync */
const PEER_CONNECTIONS = 2;

/** bytes of an error body kept to build the reason (the rest is read and dropped) */
const KEPT_BODY_BYTES = 8 * 1024;

export function createUpstream(options: UpstreamOptions, parentLog: Logger): Upstream {
  const log = parentLog.child({ module: 'upstream' });
  const hostInUrl = options.host.includes(':') ? `[${options.host}]` : options.host;
  const origin = `https://${hostInUrl}:${options.port}`;
  const userAgent = `onerelay/${VERSION}`;
  const isPinning = options.peerAuthentication === 'cert_pinning';
  const extraCa =
    options.peerAuthentication === 'cert_validation' && options.caPath !== undefined ? readCaPath(options.caPath) : undefined;
  const timeouts = { connectMs: options.connectTimeoutMs, idleMs: options.idleTimeoutMs, requestMs: options.requestTimeoutMs };
  const limit = createFifoLimit(options.maxConcurrency);

  if (options.peerAuthentication === 'dangerous_none') {
    log.warn(
      { event: 'upstream-insecure', host: options.host, port: options.port },
      'peer_authentication = "dangerous_none": the upstream certificate is NOT verified; anyone on the path can read and alter forwarded reports and inventories',
    );
  }

  function buildGeneration(pinned: PinnedCertificate | undefined): Generation {
    return { pool: undefined, pinned, blocked: pinned?.problem };
  }

  function poolOf(generation: Generation, undici: Undici): Pool {
    const keepAlive = Math.max(1, options.keepAliveMs);
    generation.pool ??= new undici.Pool(origin, {
      // forwards are held to maxConcurrency by the FIFO limit; the rest is peer()'s
      connections: options.maxConcurrency + PEER_CONNECTIONS,
      pipelining: 1,
      allowH2: false,
      keepAliveTimeout: keepAlive,
      // an upstream `Keep-Alive: timeout=` hint may shorten our keep-alive, never lengthen it
      keepAliveMaxTimeout: keepAlive,
      headersTimeout: options.idleTimeoutMs,
      bodyTimeout: options.idleTimeoutMs,
      connect: buildTrustingConnector(undici, options, generation.pinned, extraCa),
    });
    return generation.pool;
  }
  let undici: Undici | undefined;

  let current = buildGeneration(isPinning ? readPinnedCertificateSync(options.serverCertificateFile) : undefined);
  if (current.blocked !== undefined) log.warn({ event: 'upstream-blocked', code: 'RELAY_ERR_UPSTREAM_CERTIFICATE' }, current.blocked);

  const draining = new Map<Promise<void>, Pool>();
  function retire(generation: Generation): void {
    if (generation.pool === undefined) return;
    const pool = generation.pool;
    // close() lets requests already dispatched finish on the old connections
    const closing = pool.close().catch((error: unknown) => {
      log.debug({ err: messageOf(error) }, 'closing a previous upstream pool failed');
    });
    draining.set(closing, pool);
    void closing.finally(() => draining.delete(closing));
  }

  let reachable: boolean | undefined;
  /** epoch ms of the last 2xx: formatted only when the status asks (a date string per forward cost more than the rest of this bookkeeping) */
  let lastSuccessMs: number | undefined;
  let lastRequestMs: number | undefined;
  let lastError: { at: string; reason: string } | undefined;
  let closing: Promise<void> | undefined;
  let reloading: Promise<void> = Promise.resolve();

  function fail(
    kind: 'transient' | 'permanent',
    code: ErrorCode,
    endpoint: UpstreamEndpoint,
    name: string,
    status: number | undefined,
    reason: string,
    startedAt: number,
    isUpstreamError = true,
  ): ForwardResult {
    const ms = Math.round(performance.now() - startedAt);
    if (isUpstreamError) lastError = { at: new Date().toISOString(), reason };
    const fields = { event: 'upstream-forward-failed', code, kind, endpoint, file: name, status, reason, ms };
    if (kind === 'permanent') log.error(fields, 'forward to upstream refused');
    else if (code === 'RELAY_ERR_UPSTREAM_REFUSED' || code === 'RELAY_ERR_CONFIG_VALUE') log.error(fields, 'forward to upstream refused, the file is kept and retried');
    else log.warn(fields, 'forward to upstream failed, will retry');
    return kind === 'transient'
      ? { kind, status, reason, ms }
      : // status 0: nothing was sent (local problem: no password configured, unreadable spool file)
        { kind, status: status ?? 0, reason, ms };
  }

  async function forward(
    endpoint: UpstreamEndpoint,
    name: string,
    file: { readonly path: string; readonly size: number; readonly content?: Buffer },
    forwardOptions: ForwardOptions = {},
  ): Promise<ForwardResult> {
    const queuedAt = performance.now();
    const { signal, credentials } = forwardOptions;
    // per file (the relay's own inventory updates), else those in force (TOML, else the relay's own policies)
    const inForce = options.credentials?.() ?? { user: options.user, password: options.password };
    const user = credentials?.user ?? inForce.user;
    const password = credentials?.password ?? (endpoint === 'inventories' ? options.defaultPassword : inForce.password);
    if (password === undefined) {
      // held, not failed: the password may come with a reload or with the relay's own policies
      const reason = `output.upstream.password is not set: cannot forward to /${endpoint}/`;
      return fail('transient', 'RELAY_ERR_CONFIG_VALUE', endpoint, name, undefined, reason, queuedAt, false);
    }
    const release = await limit.acquire();
    const startedAt = performance.now();
    let handle: FileHandle | undefined;
    try {
      undici ??= await loadUndici();
      if (closing !== undefined) {
        return fail('transient', 'RELAY_ERR_UPSTREAM_UNAVAILABLE', endpoint, name, undefined, 'upstream client is closed', startedAt, false);
      }
      if (signal?.aborted === true) {
        return fail('transient', 'RELAY_ERR_UPSTREAM_UNAVAILABLE', endpoint, name, undefined, new ForwardInterruptedError().message, startedAt, false);
      }
      if (current.blocked !== undefined) {
        return fail('transient', 'RELAY_ERR_UPSTREAM_CERTIFICATE', endpoint, name, undefined, current.blocked, startedAt);
      }
      const pool = poolOf(current, undici);
      if (file.content !== undefined) {
        // the caller already holds the (immutable) file's bytes: no second read from disk
        return await send(pool, endpoint, name, user, password, file.content, file.content.length, startedAt, signal);
      }
      let size: number;
      try {
        handle = await open(file.path, 'r');
        // the spool file is immutable: its size on disk is the truth if the caller's differs
        size = (await handle.stat()).size;
      } catch (error) {
        const reason = `cannot read spool file ${file.path}: ${messageOf(error)}`;
        return fail('permanent', 'RELAY_ERR_SPOOL_READ', endpoint, name, undefined, reason, startedAt, false);
      }
      return await send(pool, endpoint, name, user, password, handle, size, startedAt, signal);
    } finally {
      await handle?.close().catch(() => undefined);
      release();
    }
  }

  /**
   * One PUT through undici's dispatch API: no response stream, promise or AbortSignal per request (request()
   * builds all three), which was a measurable part of the primary's CPU per forwarded report (bench/pipeline).
   */
  /** the Basic header of the last credentials used: the same for every forward but the relay's own inventory updates */
  let lastAuthorization = { user: '', password: '', header: '' };
  const authorizationOf = (user: string, password: string): string => {
    if (lastAuthorization.user !== user || lastAuthorization.password !== password || lastAuthorization.header === '') {
      lastAuthorization = { user, password, header: `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}` };
    }
    return lastAuthorization.header;
  };

  /**
   * the requests in flight under each caller's signal, told by one listener per signal: the spool queue gives
   * every file it has in flight the same signal (aborted at the end of a stop's grace), and an EventTarget
   * listener added and removed per request was a measurable part of the primary's work per forwarded report
   */
  const interruptsBySignal = new WeakMap<AbortSignal, Set<() => void>>();
  const interruptsOf = (signal: AbortSignal): Set<() => void> => {
    let interrupts = interruptsBySignal.get(signal);
    if (interrupts === undefined) {
      const created = new Set<() => void>();
      interrupts = created;
      interruptsBySignal.set(signal, created);
      signal.addEventListener('abort', () => {
        for (const interrupt of [...created]) interrupt();
      }, { once: true });
    }
    return interrupts;
  };

  function send(
    pool: Pool,
    endpoint: UpstreamEndpoint,
    name: string,
    user: string,
    password: string,
    source: FileHandle | Buffer,
    size: number,
    startedAt: number,
    signal: AbortSignal | undefined,
  ): Promise<ForwardResult> {
    // `end` makes the stream finish with its last chunk: no EOF read still pending when the answer comes
    const body =
      Buffer.isBuffer(source) || size === 0
        ? Buffer.isBuffer(source)
          ? source
          : Buffer.alloc(0)
        : source.createReadStream({ autoClose: false, start: 0, end: size - 1 });
    return new Promise<ForwardResult>((resolve) => {
      let controller: Dispatcher.DispatchController | undefined;
      /** why we aborted (timeout, interruption), before undici may have handed us its controller */
      let abortReason: Error | undefined;
      let status = 0;
      let contentType: string | undefined;
      let keep = 0;
      const chunks: Buffer[] = [];
      let kept = 0;
      let settled = false;
      const abortWith = (reason: Error): void => {
        abortReason ??= reason;
        controller?.abort(reason);
      };
      const timer = setTimeout(() => abortWith(new RequestTimeoutError(options.requestTimeoutMs)), options.requestTimeoutMs);
      const interrupt = (): void => abortWith(new ForwardInterruptedError());
      const interrupts = signal === undefined ? undefined : interruptsOf(signal);
      interrupts?.add(interrupt);
      // aborted while the file was being opened: the listener above came too late to hear it
      if (signal?.aborted === true) interrupt();

      const answered = (): ForwardResult => {
        reachable = true;
        const outcome = outcomeOfStatus(status);
        if (outcome === 'ok') {
          lastSuccessMs = Date.now();
          const ms = Math.round(performance.now() - startedAt);
          lastRequestMs = ms;
          log.debug({ event: 'upstream-forward-ok', endpoint, file: name, status, ms, bytes: size }, 'forwarded to upstream');
          return { kind: 'ok', status, ms };
        }
        const text = Buffer.concat(chunks).subarray(0, KEPT_BODY_BYTES).toString('utf8');
        return fail(outcome, codeOfStatus(status), endpoint, name, status, reasonOfResponse(status, contentType, text), startedAt);
      };
      const failed = (error: Error): ForwardResult => {
        const reason = abortReason ?? error;
        if (reason instanceof ForwardInterruptedError) {
          // our own doing, not the upstream's: reachability and the last error stay as they were
          return fail('transient', 'RELAY_ERR_UPSTREAM_UNAVAILABLE', endpoint, name, undefined, reason.message, startedAt, false);
        }
        reachable = false;
        const { code, reason: text } = describeFailure(reason, timeouts);
        return fail('transient', code, endpoint, name, undefined, text, startedAt);
      };
      const settle = (result: () => ForwardResult): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        interrupts?.delete(interrupt);
        // destroying a stream undici is still reading would make it drop the (reusable) connection
        if (!Buffer.isBuffer(body) && !body.readableEnded) body.destroy();
        resolve(result());
      };

      pool.dispatch(
        {
          method: 'PUT',
          // single slash: relayd's `//` (spec-relayd.md §15.2) is dropped; Apache decodes %3A %40 %2B
          path: `/${endpoint}/${encodeURIComponent(name)}`,
          headers: {
            'user-agent': userAgent,
            accept: '*/*',
            authorization: authorizationOf(user, password),
            'content-length': String(size),
          },
          body,
          headersTimeout: options.idleTimeoutMs,
          bodyTimeout: options.idleTimeoutMs,
        },
        {
          onRequestStart(requestController) {
            controller = requestController;
            if (abortReason !== undefined) requestController.abort(abortReason);
          },
          onResponseStart(_controller, statusCode, headers) {
            status = statusCode;
            const type = headers['content-type'];
            contentType = Array.isArray(type) ? type[0] : type;
            keep = outcomeOfStatus(statusCode) === 'ok' ? 0 : KEPT_BODY_BYTES;
          },
          // always read to the end so the connection goes back to the pool; only an error's start is kept
          onResponseData(_controller, chunk) {
            if (kept >= keep) return;
            chunks.push(chunk);
            kept += chunk.length;
          },
          onResponseEnd() {
            settle(answered);
          },
          onResponseError(_controller, error) {
            if (status !== 0) {
              // the answer itself is what matters; a broken body only costs the connection
              log.debug({ endpoint, file: name, status, err: messageOf(error) }, 'upstream answer body not fully read');
              settle(answered);
            } else settle(() => failed(error));
          },
        },
      );
    });
  }

  async function reloadPin(): Promise<void> {
    if (!isPinning || closing !== undefined) return;
    const pinned = await readPinnedCertificate(options.serverCertificateFile);
    if (closing !== undefined || isSamePin(pinned, current.pinned)) return;
    const previous = current;
    current = buildGeneration(pinned);
    retire(previous);
    if (current.blocked !== undefined) {
      log.warn({ event: 'upstream-blocked', code: 'RELAY_ERR_UPSTREAM_CERTIFICATE' }, current.blocked);
    } else {
      log.info(
        { event: 'upstream-pin-changed', file: options.serverCertificateFile },
        'pinned upstream certificate changed: new connections trust the new certificate',
      );
    }
  }

  const peer: PeerClient = {
    async request(method, pathAndQuery, body, headers = {}) {
      undici ??= await loadUndici();
      // read after the await: a reload meanwhile may have retired the generation seen before it
      if (closing !== undefined) throw relayError('RELAY_ERR_UPSTREAM_CLOSED', `${options.host}:${options.port}`);
      if (current.blocked !== undefined) throw new RelayError('RELAY_ERR_UPSTREAM_CERTIFICATE', current.blocked);
      const response = await poolOf(current, undici).request({
        method,
        path: pathAndQuery,
        headers: { 'user-agent': userAgent, ...headers },
        ...(body === undefined ? {} : { body }),
      });
      return { status: response.statusCode, body: response.body, headers: response.headers };
    },
    close: () => Promise.resolve(),
  };

  return {
    forward,
    peer: () => (current.blocked === undefined ? peer : undefined),
    reload() {
      // serialized: two reloads never build two pools from the same change
      reloading = reloading.then(reloadPin, reloadPin);
      return reloading;
    },
    status(): UpstreamStatus {
      const lastSuccessAt = lastSuccessMs === undefined ? undefined : new Date(lastSuccessMs).toISOString();
      return { host: options.host, port: options.port, reachable, lastSuccessAt, lastRequestMs, lastError, blocked: current.blocked };
    },
    close() {
      closing ??= (async () => {
        await reloading.catch(() => undefined);
        retire(current);
        // bounded: a request the upstream never answers must not hold the relay's shutdown
        let timer: NodeJS.Timeout | undefined;
        const closed = await Promise.race([
          Promise.all([...draining.keys()]).then(() => true),
          new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), CLOSE_BOUND_MS))),
        ]);
        clearTimeout(timer);
        if (!closed) {
          log.warn({ event: 'upstream-close-forced', ms: CLOSE_BOUND_MS }, 'requests still open on close: connections destroyed');
          await Promise.all([...draining.values()].map((pool) => pool.destroy().catch(() => undefined)));
        }
      })();
      return closing;
    },
  };
}
