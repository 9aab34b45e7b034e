// relayd's remote-run API (spec-relayd.md §4.6), done without its weaknesses (§15.8): sub-relays are
// called concurrently with the local runs, output streams as it arrives, every request is bounded
// by a timeout, and a request never goes back to a relay it came through.

import { PassThrough } from 'node:stream';
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import { RelayError, isRelayError, messageOf } from '../errors.js';
import type { NodeEntry } from '../nodes/index.js';
import type { RemoteRunDeps, RemoteRunOptions, RemoteRunStatus, RunRequest } from './index.js';

const CONDITION = /^[a-zA-Z0-9][a-zA-Z0-9_]*$/;
const MAX_BODY = 1024 * 1024;
/** relays a request went through, so that it never comes back to one of them */
export const RELAY_PATH_HEADER = 'x-onerelay-relay-path';

export interface RemoteRun {
  readonly routes: FastifyPluginAsync;
  status(): RemoteRunStatus;
  /** an error reported by another process (front-door workers) */
  recordError(message: string): void;
}

class ParameterError extends RelayError {
  constructor(message: string) {
    super('RELAY_ERR_REMOTE_RUN_PARAMETER', message);
  }
}

/** relayd's condition rules and messages, exactly */
export function validateConditions(value: string | undefined): string[] {
  if (value === undefined || value === '') return [];
  return value.split(',').map((condition) => {
    if (!CONDITION.test(condition)) throw new ParameterError(`invalid condition: ${condition}, should match ^[a-zA-Z0-9][a-zA-Z0-9_]*$`);
    if (Buffer.byteLength(condition) > 1024) throw new ParameterError(`invalid condition: ${condition}, should have less then 1024 chars`);
    return condition;
  });
}

function parseBoolean(value: string | undefined): boolean {
  if (value === undefined) return false;
  if (value === 'true') return true;
  if (value === 'false') return false;
  throw new ParameterError('provided string was not `true` or `false`');
}

function parseForm(body: string): Map<string, string> {
  // duplicate keys: the last wins (relayd)
  return new Map(new URLSearchParams(body).entries());
}

function text(reply: FastifyReply, status: number, body: string): FastifyReply {
  return reply.code(status).header('content-type', 'text/plain; charset=utf-8').send(body);
}

/** splits a byte stream into whole lines so that outputs of several nodes never interleave mid-line */
function lineSplitter(write: (line: Buffer) => void): { push(chunk: Buffer): void; end(): void } {
  let pending: Buffer = Buffer.alloc(0);
  return {
    push(chunk) {
      pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
      const last = pending.lastIndexOf(0x0a);
      if (last < 0) return;
      write(pending.subarray(0, last + 1));
      pending = pending.subarray(last + 1);
    },
    end() {
      if (pending.length > 0) write(Buffer.concat([pending, Buffer.from('\n')]));
      pending = Buffer.alloc(0);
    },
  };
}

export function createRemoteRun(options: RemoteRunOptions, deps: RemoteRunDeps): RemoteRun {
  const log = deps.log.child({ module: 'remote-run' });
  const lastErrors: Array<{ at: string; message: string }> = [];
  let runs = 0;
  const remember = (message: string) => {
    lastErrors.unshift({ at: new Date().toISOString(), message });
    lastErrors.length = Math.min(lastErrors.length, 10);
    deps.onError?.(message);
  };

  /** which nodes run here, and which sub-relays get which part of the request */
  function plan(target: { all: true } | { ids: readonly string[] }, cameThrough: ReadonlySet<string>) {
    const { nodes } = deps;
    const local: NodeEntry[] = [];
    const forwards = new Map<string, { relay: NodeEntry; ids: string[] }>();
    if ('all' in target) {
      local.push(...nodes.neighbors());
      for (const relay of nodes.subRelays()) if (!cameThrough.has(relay.id)) forwards.set(relay.id, { relay, ids: [] });
    } else {
      // each node once, however often the request names it (20,000 copies of one id made 20,000 runs)
      for (const id of new Set(target.ids)) {
        const entry = nodes.get(id);
        if (entry === undefined) {
          log.warn({ event: 'unknown_node', node: id }, `remote run: unknown node ${JSON.stringify(id)}`);
          continue;
        }
        if (entry.policyServer === nodes.myId) {
          local.push(entry);
          continue;
        }
        let hop: NodeEntry | undefined;
        try {
          hop = nodes.nextHop(id);
        } catch (error) {
          log.warn({ event: 'no_next_hop', node: id, error: messageOf(error) }, 'remote run: node is not below this relay');
          continue;
        }
        if (hop === undefined || cameThrough.has(hop.id) || hop.id === nodes.myId) continue;
        const group = forwards.get(hop.id) ?? { relay: hop, ids: [] };
        group.ids.push(id);
        forwards.set(hop.id, group);
      }
    }
    return { local, forwards: [...forwards.values()] };
  }

  async function execute(
    request: RunRequest,
    target: { all: true } | { ids: readonly string[] },
    cameThrough: readonly string[],
    write: (chunk: Buffer) => void,
  ): Promise<void> {
    const started = process.hrtime.bigint();
    const signal = AbortSignal.timeout(options.timeoutMs);
    const { local, forwards } = plan(target, new Set(cameThrough));
    const path = [...cameThrough, deps.nodes.myId];
    let failed = 0;
    const tasks: Array<Promise<void>> = forwards.map(async ({ relay, ids }) => {
      const form: Record<string, string> = {
        keep_output: String(request.keepOutput),
        asynchronous: 'false',
        classes: request.conditions.join(','),
      };
      if (!('all' in target)) form['nodes'] = ids.join(',');
      const lines = lineSplitter(write);
      try {
        const body = await deps.subRelays.call(relay, 'all' in target ? 'all' : 'nodes', form, path, signal);
        for await (const chunk of body) lines.push(chunk);
      } catch (error) {
        failed += 1;
        const message = `forward error to sub-relay ${relay.id} (${relay.hostname}): ${messageOf(error)}`;
        log.error({ event: 'forward_error', code: isRelayError(error) ? error.code : 'RELAY_ERR_UPSTREAM_UNAVAILABLE', relay: relay.id, error: messageOf(error) }, message);
        remember(message);
        if (request.keepOutput) lines.push(Buffer.from(`${relay.hostname}> !! ${message}\n`));
      } finally {
        lines.end();
      }
    });
    if (local.length > 0) {
      tasks.push(
        (async () => {
          const lines = lineSplitter(write);
          try {
            const result = await deps.runner.run(local, request.conditions, (chunk) => lines.push(chunk), signal);
            failed += result.failed;
          } catch (error) {
            failed += 1;
            const message = `remote run error: ${messageOf(error)}`;
            log.error({ event: 'run_error', error: messageOf(error) }, message);
            remember(message);
            lines.push(Buffer.from(`!! ${message}\n`));
          } finally {
            lines.end();
          }
        })(),
      );
    }
    await Promise.all(tasks);
    runs += 1;
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    deps.counters.run(failed === 0 ? 'ok' : 'error', seconds);
    log.info({ event: 'remote_run', local: local.length, sub_relays: forwards.length, failed, ms: Math.round(seconds * 1000) }, 'remote run done');
  }

  async function handle(request: FastifyRequest, reply: FastifyReply, target: { all: true } | { ids: readonly string[] } | 'from-form') {
    if (!options.enabled) {
      // relayd's answer (remote_run.rs: warp::reject::not_found()): the API is not there at all
      log.warn({ event: 'refused', code: 'RELAY_ERR_NOT_FOUND', reason: 'remote_run.enabled = false' }, 'received remote-run request but remote-run API is disabled');
      return text(reply, 404, 'NOT FOUND');
    }
    const form = parseForm(typeof request.body === 'string' ? request.body : '');
    let runRequest: RunRequest;
    let resolved: { all: true } | { ids: readonly string[] };
    try {
      const conditions = validateConditions(form.has('conditions') ? form.get('conditions') : form.get('classes'));
      runRequest = { conditions, asynchronous: parseBoolean(form.get('asynchronous')), keepOutput: parseBoolean(form.get('keep_output')) };
      if (target === 'from-form') {
        const nodes = form.get('nodes');
        if (nodes === undefined) throw new ParameterError('Missing nodes');
        resolved = { ids: [...new Set(nodes.split(','))] };
      } else resolved = target;
    } catch (error) {
      if (error instanceof ParameterError) return text(reply, 400, error.message);
      throw error;
    }
    const header = request.headers[RELAY_PATH_HEADER];
    const cameThrough = typeof header === 'string' && header !== '' ? header.split(',') : [];
    if (cameThrough.includes(deps.nodes.myId)) {
      log.error({ event: 'loop', path: cameThrough }, 'remote run came back to this relay: refused');
      return text(reply, 508, `remote-run loop: this relay is already in ${cameThrough.join(' → ')}\n`);
    }
    if (runRequest.asynchronous) {
      void execute(runRequest, resolved, cameThrough, () => undefined).catch((error: unknown) => log.error({ err: error }, 'remote run failed'));
      return reply.code(200).send('');
    }
    const body = new PassThrough();
    reply.code(200).send(body);
    const write = runRequest.keepOutput ? (chunk: Buffer) => body.write(chunk) : () => true;
    void execute(runRequest, resolved, cameThrough, write).finally(() => body.end());
    return reply;
  }

  const routes: FastifyPluginAsync = async (app) => {
    app.removeAllContentTypeParsers();
    app.addContentTypeParser('*', { parseAs: 'string', bodyLimit: MAX_BODY }, (request, body, done) => {
      const type = request.headers['content-type'];
      if (type === undefined || type.split(';')[0]?.trim().toLowerCase() === 'application/x-www-form-urlencoded') done(null, body);
      else done(Object.assign(new RelayError('RELAY_ERR_NOT_FOUND', 'NOT FOUND'), { statusCode: 404 }), undefined);
    });
    app.addHook('onRequest', async (request, reply) => {
      if (request.headers['content-length'] === undefined && request.headers['transfer-encoding'] !== undefined) {
        return text(reply, 411, 'LENGTH REQUIRED');
      }
      if (Number(request.headers['content-length'] ?? 0) > MAX_BODY) return text(reply, 413, 'PAYLOAD TOO LARGE');
      return undefined;
    });
    app.setErrorHandler(async (error: Error & { statusCode?: number }, _request, reply) => {
      if (error.statusCode === 413) return text(reply, 413, 'PAYLOAD TOO LARGE');
      if (error.statusCode !== undefined && error.statusCode < 500) return text(reply, 404, 'NOT FOUND');
      log.error({ err: error }, 'remote run request failed');
      return text(reply, 500, 'INTERNAL SERVER ERROR');
    });
    app.post('/all', (request, reply) => handle(request, reply, { all: true }));
    app.post('/nodes', (request, reply) => handle(request, reply, 'from-form'));
    app.post('/nodes/:nodeId', (request, reply) => handle(request, reply, { ids: [(request.params as { nodeId: string }).nodeId] }));
  };

  return {
    routes,
    status: () => ({ runs, lastErrors: [...lastErrors] }),
    recordError: (message: string) => {
      lastErrors.unshift({ at: new Date().toISOString(), message });
      lastErrors.length = Math.min(lastErrors.length, 10);
    },
  };
}
