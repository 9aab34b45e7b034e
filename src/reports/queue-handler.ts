// The reporting queue's handler: inspect a run log (name → node, decode, S/MIME at the first hop,
// parse), then forward the original bytes upstream. Outcomes map to the spool's (issue 3 "Outcomes").

import type { Logger } from 'pino';
import type { QueueHandler } from '../spool/index.js';
import type { Upstream } from '../upstream/index.js';
import type { Inspection } from './index.js';
import type { FileInspector } from './inspect-pool.js';

export interface ReportCounters {
  /** rudder_relayd_reports_total{status} */
  count(status: 'invalid' | 'ok' | 'error' | 'forward_ok' | 'forward_error' | 'skipped'): void;
  observeInspection(seconds: number, bytes: number): void;
}

const REPORT_EXTENSIONS = /\.(log|gz|zip)$/;

export function createReportHandler(
  deps: { inspector: FileInspector; upstream: Upstream | undefined; counters: ReportCounters; maxFileBytes: number },
  parentLog: Logger,
): QueueHandler {
  const log = parentLog.child({ module: 'reports' });
  // a file that failed to forward transiently is not inspected again on retry
  const inspected = new Map<string, Inspection & { kind: 'forward' }>();

  return async (file, context) => {
    if (deps.upstream === undefined) return { kind: 'ignore' };
    if (!REPORT_EXTENSIONS.test(file.name)) {
      log.debug({ file: file.name }, 'not a run log name, left for the cleaner');
      return { kind: 'ignore' };
    }
    // the key only when some file waits for a retry: most forwards succeed the first time
    const key = inspected.size === 0 ? undefined : `${file.name}:${file.size}:${file.mtimeMs}`;
    let inspection = key === undefined ? undefined : inspected.get(key);
    let content: Buffer | undefined;
    if (inspection === undefined) {
      if (file.size > deps.maxFileBytes) {
        deps.counters.count('error');
        return { kind: 'failed', code: 'too-large', reason: `${file.size} bytes is over the limit of ${deps.maxFileBytes}` };
      }
      const read = await deps.inspector.inspectFile(file.name, file.path, file.size);
      if (read.kind === 'gone') return { kind: 'gone' };
      const { inspection: result, bytes } = read;
      deps.counters.observeInspection(read.seconds, file.size);
      if (result.kind === 'reject') {
        if (result.reason === 'skipped') {
          deps.counters.count('skipped');
          log.info({ event: 'skipped', file: file.name, node: result.nodeId }, result.message);
          return { kind: 'done' };
        }
        if (result.reason === 'unknown-node') {
          // the list may lag the root (a node accepted a minute ago, a sync in progress): never failed on the
          // first look; looked at again whenever the nodes list changes, given up at cleanup.retention
          log.warn({ event: 'held', file: file.name, node: result.nodeId }, 'report from a node absent from the nodes list: held until the list names it');
          return { kind: 'hold', code: result.reason, reason: result.message };
        }
        deps.counters.count(result.reason === 'bad-name' ? 'invalid' : 'error');
        return { kind: 'failed', code: result.reason, reason: result.message };
      }
      deps.counters.count('ok');
      inspection = result;
      content = bytes;
    }
    const forwarded = await deps.upstream.forward('reports', file.name, content === undefined ? file : { ...file, content }, { signal: context.signal });
    if (forwarded.kind === 'transient') {
      // every failed forward, as dashboards watching relayd's counter expect (relayd counted only the
      // permanent ones: its 5xx and network errors were invisible there)
      deps.counters.count('forward_error');
      inspected.set(key ?? `${file.name}:${file.size}:${file.mtimeMs}`, inspection);
      return { kind: 'retry', reason: forwarded.reason };
    }
    if (key !== undefined) inspected.delete(key);
    if (forwarded.kind === 'permanent') {
      deps.counters.count('forward_error');
      return { kind: 'failed', code: 'upstream-refused', reason: `upstream answered ${forwarded.status}: ${forwarded.reason}` };
    }
    deps.counters.count('forward_ok');
    log.debug({ event: 'forwarded', file: file.name, node: inspection.nodeId, verified: inspection.verified, ms: forwarded.ms }, 'report forwarded');
    return { kind: 'done' };
  };
}
