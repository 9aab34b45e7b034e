// What an upstream answer or failure means for the file, and a one-line reason a user can act on.
// relayd retries every HTTP error (spec-relayd.md §15.6); here a refusal about the file itself (400, 413,
// 415, 422, …) moves it to failed/, while a refusal about the relay (401/403: its password or address is
// not accepted yet, e.g. before the root regenerated its Apache rules or the relay's own policies brought the
// password; 404/409/423: the upstream's WebDAV location is missing or locked) holds it and retries: a
// condition that may pass never fails a file for good.

import { STATUS_CODES } from 'node:http';
import { RelayError, messageFor, messageOf, type ErrorCode } from '../errors.js';
import { PinRefusedError } from './trust.js';

export type Outcome = 'ok' | 'transient' | 'permanent';

/** 4xx answers that say nothing against the file: kept and retried (see above) */
const RETRIED_4XX: ReadonlySet<number> = new Set([401, 403, 404, 408, 409, 423, 425, 429]);

export function outcomeOfStatus(status: number): Outcome {
  if (status >= 200 && status < 300) return 'ok';
  if (status >= 500 || RETRIED_4XX.has(status)) return 'transient';
  // 1xx/3xx never end a request here (no redirects followed): the upstream will not take it as is
  return 'permanent';
}

export const REASON_BODY_CHARS = 200;

/** `HTTP 404 Not Found: <first 200 characters of the body, markup stripped>` */
export function reasonOfResponse(status: number, contentType: string | undefined, body: string): string {
  let text = body;
  if (contentType !== undefined && /html/i.test(contentType)) {
    // Apache error pages: keep what a human reads, not the DOCTYPE
    text = text.replace(/<head>[\s\S]*?<\/head>/i, ' ').replace(/<[^>]*>/g, ' ');
  }
  text = text.replace(/\s+/g, ' ').trim().slice(0, REASON_BODY_CHARS);
  const line = `HTTP ${status} ${STATUS_CODES[status] ?? ''}`.trimEnd();
  return text === '' ? line : `${line}: ${text}`;
}

export function codeOfStatus(status: number): ErrorCode {
  // a held refusal keeps the refusal's code: it needs a human (or a policy generation), not patience alone
  return status >= 500 || status === 408 || status === 429 ? 'RELAY_ERR_UPSTREAM_UNAVAILABLE' : 'RELAY_ERR_UPSTREAM_REFUSED';
}

/** The abort reason of the total-request timer. */
export class RequestTimeoutError extends RelayError {
  constructor(ms: number) {
    super('RELAY_ERR_UPSTREAM_TIMEOUT', messageFor('RELAY_ERR_UPSTREAM_TIMEOUT', ms));
    this.name = 'RequestTimeoutError';
  }
}

/** The abort reason when the caller gave up on the request (the relay is stopping). */
export class ForwardInterruptedError extends Error {
  constructor() {
    super('interrupted: the relay is stopping (the file stays in the spool)');
    this.name = 'ForwardInterruptedError';
  }
}

export interface FailureDescription {
  readonly code: ErrorCode;
  readonly reason: string;
}

const TLS_VERIFY_CODES = new Set([
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'INVALID_CA',
]);

function codeOf(error: unknown): string | undefined {
  if (typeof error !== 'object' || error === null) return undefined;
  const code = (error as { code?: unknown }).code;
  return typeof code === 'string' ? code : undefined;
}

/** Every thrown failure of a request is transient: network, timeouts, TLS, pin refusal. */
export function describeFailure(error: unknown, timeouts: { connectMs: number; idleMs: number; requestMs: number }): FailureDescription {
  if (error instanceof PinRefusedError) return { code: 'RELAY_ERR_UPSTREAM_CERTIFICATE', reason: error.message };
  const code = codeOf(error);
  if (error instanceof ForwardInterruptedError) return { code: 'RELAY_ERR_UPSTREAM_UNAVAILABLE', reason: error.message };
  if (error instanceof RequestTimeoutError) {
    return { code: 'RELAY_ERR_UPSTREAM_UNAVAILABLE', reason: `no complete answer within ${timeouts.requestMs} ms (request timeout)` };
  }
  switch (code) {
    case 'UND_ERR_CONNECT_TIMEOUT':
      return { code: 'RELAY_ERR_UPSTREAM_UNAVAILABLE', reason: `connection not established within ${timeouts.connectMs} ms (connect timeout)` };
    case 'UND_ERR_HEADERS_TIMEOUT':
      return { code: 'RELAY_ERR_UPSTREAM_UNAVAILABLE', reason: `no answer for ${timeouts.idleMs} ms (idle timeout, waiting for headers)` };
    case 'UND_ERR_BODY_TIMEOUT':
      return { code: 'RELAY_ERR_UPSTREAM_UNAVAILABLE', reason: `no byte received for ${timeouts.idleMs} ms (idle timeout, reading the body)` };
    default:
      break;
  }
  let message = messageOf(error);
  if (error instanceof AggregateError && error.errors.length > 0) {
    message = error.errors.map((inner) => messageOf(inner)).join('; ');
  }
  if (code !== undefined && !message.includes(code)) message = `${code}: ${message}`;
  if (code !== undefined && (TLS_VERIFY_CODES.has(code) || code.startsWith('ERR_SSL_') || code.startsWith('ERR_TLS_'))) {
    return { code: 'RELAY_ERR_UPSTREAM_CERTIFICATE', reason: `TLS: ${message}` };
  }
  return { code: 'RELAY_ERR_UPSTREAM_UNAVAILABLE', reason: message };
}
