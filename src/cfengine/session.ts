// What the command handlers (commands.ts, exec.ts) see of a connection: the server's shared context, who
// the client proved to be, and the connection's ordered writes. CfengineConnection is the one implementation.

import type { Logger } from 'pino';
import type { NodesRegistry } from '../nodes/index.js';
import type { PathAcl, Reader } from '../access/index.js';
import type { Admission } from './admission.js';
import type { DigestCache, DirectoryCache } from './files.js';
import type { CfengineCounters, ExecHandler } from './index.js';

/** what every connection of one server shares */
export interface ConnectionContext {
  readonly nodes: NodesRegistry;
  readonly counters: CfengineCounters;
  readonly log: Logger;
  readonly acl: PathAcl;
  readonly denyBadClocks: boolean;
  readonly maxInputBytes: number;
  readonly idleTimeoutMs: number;
  readonly digests: DigestCache;
  readonly directories: DirectoryCache;
  /** inbound remote run: admitted keys (sha256 pins), the command shown, what runs (absent: EXEC refused) */
  readonly exec: { readonly keys: ReadonlySet<string>; readonly command: string; readonly run?: ExecHandler };
}

/** after a request: serve the next one, or close (protocol error, or a stream out of step) */
export type Outcome = 'continue' | 'close';

export interface Session {
  readonly ctx: ConnectionContext;
  readonly peer: string;
  /** the connection's logger (node and key as fields) */
  readonly log: Logger;
  readonly reader: Reader;
  /** the user name of the IDENTITY line (only root may read files that are not world-readable) */
  readonly username: string;
  /** sha256//… of the client's SPKI: what execKeys pins */
  readonly keyPin: string;
  /** access checks and what STAT resolved, for this connection */
  readonly admission: Admission;
  /** one transaction (or GET block), after the write in flight (see CfengineConnection.write) */
  write(buffer: Buffer): Promise<void>;
  /** whole transactions packed into writes of at most one TLS record */
  writeTransactions(frames: readonly Buffer[]): Promise<void>;
  /** the next transaction, waiting for it; undefined when the connection ends first */
  nextFrame(): Promise<Buffer | undefined>;
  /** why the connection will close (its closing log line) */
  setCloseReason(reason: string): void;
  /** 0: no idle timeout (a command still running); undefined: back to the server's */
  setIdleTimeout(ms: number | undefined): void;
}
