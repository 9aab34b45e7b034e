// One catalogue of coded errors (CONVENTIONS.md "Errors"): a stable code users can search for,
// the HTTP status where the error reaches a client, and whether retrying can help.

export type ErrorCode =
  | 'RELAY_ERR_CONFIG_SYNTAX'
  | 'RELAY_ERR_CONFIG_VALUE'
  | 'RELAY_ERR_CONFIG_FILE'
  | 'RELAY_ERR_IDENTITY'
  | 'RELAY_ERR_CERTIFICATE'
  | 'RELAY_ERR_NODES_LIST'
  | 'RELAY_ERR_NODES_CERTS'
  | 'RELAY_ERR_LISTEN'
  | 'RELAY_ERR_UPLOAD_NAME'
  | 'RELAY_ERR_UPLOAD_TOO_LARGE'
  | 'RELAY_ERR_UPLOAD_INCOMPLETE'
  | 'RELAY_ERR_UPLOAD_METHOD'
  | 'RELAY_ERR_AUTH_REQUIRED'
  | 'RELAY_ERR_AUTH_NETWORK'
  | 'RELAY_ERR_AUTH_CERTIFICATE'
  | 'RELAY_ERR_SPOOL_WRITE'
  | 'RELAY_ERR_SPOOL_READ'
  | 'RELAY_ERR_UPSTREAM_UNAVAILABLE'
  | 'RELAY_ERR_UPSTREAM_CERTIFICATE'
  | 'RELAY_ERR_UPSTREAM_REFUSED'
  | 'RELAY_ERR_SPOOL_FULL'
  | 'RELAY_ERR_STATE_FORMAT'
  | 'RELAY_ERR_NOT_FOUND'
  | 'RELAY_ERR_BAD_REQUEST'
  | 'RELAY_ERR_ACTIVITY_DATABASE'
  | 'RELAY_ERR_INTERNAL';

interface CatalogueEntry {
  readonly status: number;
  readonly transient: boolean;
}

const catalogue: Record<ErrorCode, CatalogueEntry> = {
  RELAY_ERR_CONFIG_SYNTAX: { status: 500, transient: false },
  RELAY_ERR_CONFIG_VALUE: { status: 500, transient: false },
  RELAY_ERR_CONFIG_FILE: { status: 500, transient: false },
  RELAY_ERR_IDENTITY: { status: 500, transient: false },
  RELAY_ERR_CERTIFICATE: { status: 500, transient: false },
  RELAY_ERR_NODES_LIST: { status: 500, transient: false },
  RELAY_ERR_NODES_CERTS: { status: 500, transient: false },
  RELAY_ERR_LISTEN: { status: 500, transient: false },
  RELAY_ERR_UPLOAD_NAME: { status: 400, transient: false },
  RELAY_ERR_UPLOAD_TOO_LARGE: { status: 413, transient: false },
  RELAY_ERR_UPLOAD_INCOMPLETE: { status: 400, transient: false },
  RELAY_ERR_UPLOAD_METHOD: { status: 405, transient: false },
  RELAY_ERR_AUTH_REQUIRED: { status: 401, transient: false },
  RELAY_ERR_AUTH_NETWORK: { status: 403, transient: false },
  RELAY_ERR_AUTH_CERTIFICATE: { status: 403, transient: false },
  RELAY_ERR_SPOOL_WRITE: { status: 500, transient: true },
  RELAY_ERR_SPOOL_READ: { status: 500, transient: false },
  // upstream forwarding (src/upstream): network/timeout/408/429/5xx, TLS trust refused, other 4xx
  RELAY_ERR_UPSTREAM_UNAVAILABLE: { status: 502, transient: true },
  RELAY_ERR_UPSTREAM_CERTIFICATE: { status: 502, transient: true },
  RELAY_ERR_UPSTREAM_REFUSED: { status: 502, transient: false },
  RELAY_ERR_SPOOL_FULL: { status: 507, transient: true },
  RELAY_ERR_STATE_FORMAT: { status: 500, transient: false },
  RELAY_ERR_NOT_FOUND: { status: 404, transient: false },
  RELAY_ERR_BAD_REQUEST: { status: 400, transient: false },
  // the activity database (src/activity): unloadable, unreadable or corrupt; the relay runs on without it
  RELAY_ERR_ACTIVITY_DATABASE: { status: 503, transient: true },
  RELAY_ERR_INTERNAL: { status: 500, transient: true },
};

export class RelayError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly transient: boolean;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'RelayError';
    this.code = code;
    this.status = catalogue[code].status;
    this.transient = catalogue[code].transient;
  }
}

export function isRelayError(error: unknown): error is RelayError {
  return error instanceof RelayError;
}

/** Message of any thrown value, for logs. */
export function messageOf(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}
