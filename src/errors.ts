// One catalogue of coded errors (CONVENTIONS.md "Errors"): a stable code users can search for,
// the HTTP status where the error reaches a client, whether retrying can help and, in fastify's style
// (@fastify/error createError(code, message, statusCode)), a message template the factory fills in.

export type ErrorCode =
  | TemplatedErrorCode
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
  | 'RELAY_ERR_FILE_FORBIDDEN'
  | 'RELAY_ERR_BAD_REQUEST'
  | 'RELAY_ERR_INTERNAL'
  | 'RELAY_ERR_OWN_INVENTORY'
  | 'RELAY_ERR_POLICY_SERVER_UUID'
  | 'RELAY_ERR_OWN_RUNLOG'
  | 'RELAY_ERR_OWN_POLICIES'
  | 'RELAY_ERR_HEADERS_TOO_LARGE'
  | 'RELAY_ERR_REQUEST_TIMEOUT'
  | 'RELAY_ERR_ACTIVITY_DATABASE';

interface CatalogueEntry {
  readonly status: number;
  readonly transient: boolean;
  /** template: each %s takes the next argument of relayError() (codes without one: the message is written where thrown) */
  readonly message?: string;
}

/** codes declared with their message template: `relayError(code, ...args)` checks the argument count */
const templated = {
  // cfengine (src/cfengine): protocol codec, the client side (remote-run EXEC, sync pull), the server side
  RELAY_ERR_CFENGINE_CODEC: { status: 400, transient: false, message: '%s' },
  RELAY_ERR_CFENGINE_CLIENT: { status: 502, transient: true, message: '%s' },
  RELAY_ERR_CFENGINE_CLOSED: { status: 502, transient: true, message: 'connection closed' },
  RELAY_ERR_CFENGINE_ACCESS: { status: 403, transient: false, message: 'cfengine access denied' },
  // the server's connection limits (cfengine.max_connections, max_connections_per_address): a later try may pass
  RELAY_ERR_CFENGINE_LIMIT: { status: 503, transient: true, message: '%s' },
  // the copy client: the server refused one request (missing file, ACL); the connection stays usable
  RELAY_ERR_CFENGINE_REFUSED: { status: 502, transient: false, message: '%s' },
  // der (src/der): DER reader/writer, X.509 structure
  RELAY_ERR_DER: { status: 400, transient: false, message: '%s' },
  // reports (src/reports): run log decoding and checking, one code per group of reject reasons
  RELAY_ERR_REPORT_UNDECODABLE: { status: 400, transient: false, message: '%s' },
  RELAY_ERR_REPORT_TOO_LARGE: { status: 413, transient: false, message: '%s' },
  RELAY_ERR_REPORT_SIGNATURE: { status: 400, transient: false, message: '%s' },
  RELAY_ERR_REPORT_INVALID: { status: 400, transient: false, message: '%s' },
  RELAY_ERR_REPORT_REJECTED: { status: 400, transient: false, message: '%s' },
  RELAY_ERR_REPORT_INSPECTION: { status: 500, transient: true, message: '%s' },
  // sync (src/sync): malformed manifest, delta or blob batch from upstream; a file changed while served
  RELAY_ERR_SYNC_FORMAT: { status: 502, transient: true, message: '%s' },
  RELAY_ERR_SYNC_STOPPED: { status: 503, transient: true, message: 'sync stopped' },
  RELAY_ERR_FILE_CHANGED: { status: 500, transient: true, message: '%s' },
  // remote-run (src/remote-run): request parameters, local command, sub-relay forwarding
  RELAY_ERR_REMOTE_RUN_PARAMETER: { status: 400, transient: false, message: '%s' },
  RELAY_ERR_REMOTE_RUN_COMMAND: { status: 500, transient: false, message: 'cannot run %s: %s' },
  RELAY_ERR_REMOTE_RUN_FORWARD: { status: 502, transient: true, message: 'sub-relay answered %s' },
  RELAY_ERR_REMOTE_RUN_TIMEOUT: { status: 504, transient: true, message: 'remote run timed out' },
  // shared-files (src/shared-files): forwarding to the next hop
  RELAY_ERR_SHARED_FILES_NO_PEER: { status: 502, transient: true, message: 'no usable upstream (host or pinned certificate missing)' },
  // upstream (src/upstream): a request on a closed client, the request timer
  RELAY_ERR_UPSTREAM_CLOSED: { status: 503, transient: true, message: 'client to %s is closed' },
  RELAY_ERR_UPSTREAM_TIMEOUT: { status: 504, transient: true, message: 'request timeout (%s ms)' },
} as const satisfies Record<string, CatalogueEntry>;

type TemplatedErrorCode = keyof typeof templated;

const catalogue: Record<ErrorCode, CatalogueEntry> = {
  ...templated,
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
  // Apache's <LimitExcept PUT> Require all denied on the upload collections: 403, not mod_dav's 405
  RELAY_ERR_UPLOAD_METHOD: { status: 403, transient: false },
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
  // a served file (src/policies) that resolves outside its directory, or that the relay may not read
  RELAY_ERR_FILE_FORBIDDEN: { status: 403, transient: false },
  RELAY_ERR_BAD_REQUEST: { status: 400, transient: false },
  // the relay's own run log (src/agentless): a probe or the run itself failed; retried at the next run
  RELAY_ERR_OWN_RUNLOG: { status: 500, transient: true },
  // the relay's own rudder.json is missing a key or malformed: the last good policies stay, the next generation may fix it
  RELAY_ERR_OWN_POLICIES: { status: 500, transient: true },
  // refused by the HTTP parser (src/http/parser-refusal.ts); the CFEngine server's handshake and idle timeouts
  RELAY_ERR_HEADERS_TOO_LARGE: { status: 431, transient: false },
  RELAY_ERR_REQUEST_TIMEOUT: { status: 408, transient: true },
  // the activity database (src/activity): unloadable, unreadable or corrupt; the relay runs on without it
  RELAY_ERR_ACTIVITY_DATABASE: { status: 503, transient: true },
  RELAY_ERR_INTERNAL: { status: 500, transient: true },
  // the relay's own inventory (src/agentless): facts the root would refuse (e.g. hostname localhost), a file not written
  RELAY_ERR_OWN_INVENTORY: { status: 500, transient: true },
  // GET /uuid on the upstream failed or answered something that is not a node id (the agent's do-inventory check)
  RELAY_ERR_POLICY_SERVER_UUID: { status: 502, transient: true },
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

/** one argument per %s of the template */
type TemplateArgs<T extends string> = T extends `${string}%s${infer Rest}` ? [string | number, ...TemplateArgs<Rest>] : [];

/**
 * The factory of templated codes: `relayError('RELAY_ERR_REMOTE_RUN_FORWARD', response.status)`.
 * A trailing `{ cause }` object keeps the error that led to this one.
 */
export function relayError<C extends TemplatedErrorCode>(
  code: C,
  ...args: TemplateArgs<(typeof templated)[C]['message']> | [...TemplateArgs<(typeof templated)[C]['message']>, { cause: unknown }]
): RelayError {
  return new RelayError(code, fill(templated[code].message, args), causeOf(args));
}

/** the message of a templated code (for subclasses of RelayError that keep their own name) */
export function messageFor<C extends TemplatedErrorCode>(code: C, ...args: TemplateArgs<(typeof templated)[C]['message']>): string {
  return fill(templated[code].message, args);
}

function fill(template: string, args: readonly unknown[]): string {
  let next = 0;
  return template.replace(/%s/g, () => String(args[next++]));
}

function causeOf(args: readonly unknown[]): { cause: unknown } | undefined {
  const last = args.at(-1);
  return typeof last === 'object' && last !== null && 'cause' in last ? (last as { cause: unknown }) : undefined;
}

export function isRelayError(error: unknown): error is RelayError {
  return error instanceof RelayError;
}

/** Message of any thrown value, for logs. */
export function messageOf(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}
