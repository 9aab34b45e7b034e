// Requests Node's HTTP parser refuses before any route sees them (a raw NUL in the target, Content-Length with
// Transfer-Encoding, a bad chunk, two Content-Lengths, headers too large, an unknown method): answered with the
// same coded text body and access line as every other refusal, instead of fastify's generic JSON.

import { STATUS_CODES, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { RelayError } from '../errors.js';
import { pathOf } from './access.js';

interface ClientError extends Error {
  readonly code?: string;
  readonly reason?: string;
}

function relayErrorOf(error: ClientError): RelayError {
  // already ours (a stalled body, front-door.ts)
  if (error instanceof RelayError) return error;
  const detail = `${error.reason ?? error.message}${error.code === undefined ? '' : ` (${error.code})`}`;
  if (error.code === 'HPE_HEADER_OVERFLOW') return new RelayError('RELAY_ERR_HEADERS_TOO_LARGE', `request headers are larger than the server accepts: ${detail}`);
  if (error.code === 'ERR_HTTP_REQUEST_TIMEOUT') return new RelayError('RELAY_ERR_REQUEST_TIMEOUT', 'the request did not arrive in time');
  return new RelayError('RELAY_ERR_BAD_REQUEST', `the HTTP request cannot be parsed: ${detail}`);
}

/**
 * fastify's clientErrorHandler: one access line, the coded answer when nothing was answered yet, then close.
 * `adopt`: a handler with a request in flight on that socket takes the refusal into its own access line
 * (uploads.ts), so that one request has one line.
 */
export function parserRefusalHandler(
  log: Logger,
  count: (status: number) => void,
  adopt?: (response: ServerResponse, refusal: RelayError, clientGone: boolean) => boolean,
): (error: ClientError, socket: Socket) => void {
  return (error, socket) => {
    // the client went away: nothing was refused, nothing to answer
    if (error.code === 'ECONNRESET' || error.code === 'EPIPE' || socket.destroyed) {
      socket.destroy();
      return;
    }
    const refusal = relayErrorOf(error);
    const inFlight = (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage;
    if (inFlight === undefined || inFlight === null || adopt?.(inFlight, refusal, error.code === 'HPE_INVALID_EOF_STATE') !== true) {
      count(refusal.status);
      log.warn(
        // the request line when the parser had it (a body broken or stalled after it)
        { event: 'access', method: inFlight?.req?.method, path: inFlight?.req?.url === undefined ? undefined : pathOf(inFlight.req.url), status: refusal.status, ip: socket.remoteAddress, error: refusal.code, reason: refusal.message },
        'request',
      );
    }
    // a response already under way (a body broken after its headers were answered) cannot take a second one
    if (socket.writable && inFlight?.headersSent !== true) {
      const body = `${refusal.code}: ${refusal.message}\n`;
      socket.end(
        `HTTP/1.1 ${refusal.status} ${STATUS_CODES[refusal.status] ?? 'Error'}\r\n` +
          `content-type: text/plain; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
      );
    }
    socket.destroySoon();
  };
}
