// What every answered request leaves behind, whichever path answered it (fastify's routes, or the upload
// path in uploads.ts): the requests metric, the access log line (refusals at warn, failures at error) and
// the activity event.

import type { Logger } from 'pino';
import type { FrontDoorMetrics } from '../metrics/index.js';
import { requestEvent, type ActivitySink } from '../activity/index.js';
import type { RelayError } from '../errors.js';

export interface AccessFacts {
  readonly method: string;
  /** the request target as sent (query string and repeated slashes included) */
  readonly url: string;
  /** the route's pattern, the metric's label ('unmatched' when none) */
  readonly route: string;
  readonly status: number;
  readonly node: string | undefined;
  readonly ip: string | undefined;
  readonly contentLength: string | undefined;
  readonly elapsedMs: number;
  readonly error: RelayError | undefined;
  readonly upload: { bytes: number; sha256: string; created: boolean } | undefined;
}

export interface AccessDeps {
  readonly metrics: FrontDoorMetrics;
  readonly activity: ActivitySink | undefined;
  readonly log: Logger;
}

/** the path of a request target: no query string, slashes merged (Apache merges them; relayd sends //reports/...) */
export function pathOf(url: string): string {
  const q = url.indexOf('?');
  const path = q < 0 ? url : url.slice(0, q);
  return path.includes('//') ? path.replace(/\/{2,}/g, '/') : path;
}

export function recordAccess(deps: AccessDeps, facts: AccessFacts): void {
  deps.metrics.requests.inc({ route: facts.route, status: String(facts.status) });
  const path = pathOf(facts.url);
  const line = {
    event: 'access',
    method: facts.method,
    path,
    status: facts.status,
    node: facts.node,
    ip: facts.ip,
    bytes: Number(facts.contentLength ?? 0) || undefined,
    ms: Math.round(facts.elapsedMs),
    error: facts.error?.code,
    reason: facts.error?.message,
  };
  if (deps.activity) {
    const event = requestEvent({ method: facts.method, path, status: facts.status, node: facts.node, ip: facts.ip ?? 'unknown', code: line.error, ...(facts.upload ? { upload: facts.upload } : {}) });
    if (event) deps.activity.record(event);
  }
  if (facts.status >= 500) deps.log.error(line, 'request');
  else if (facts.status >= 400) deps.log.warn(line, 'request');
  else deps.log.info(line, 'request');
}
