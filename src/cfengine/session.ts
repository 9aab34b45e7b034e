// What the command handlers (commands.ts, exec.ts) see of a connection: the server's shared context, who
// the client proved to be, and the connection's ordered writes. CfengineConnection is the one implementation.

import type { Logger } from 'pino';
import type { ErrorCode } from '../errors.js';
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
  /** until the client is identified (TLS, version line, IDENTITY): cf-agent takes milliseconds */
  readonly handshakeTimeoutMs: number;
  readonly digests: DigestCache;
  readonly directories: DirectoryCache;
  /** inbound remote run: admitted keys (sha256 pins), the command shown, what runs (absent: EXEC refused) */
  readonly exec: { readonly keys: ReadonlySet<string>; readonly command: string; readonly run?: ExecHandler };
}

/**
 * The one way a context is made (the server's and the warm-up's): one object literal, so both have the same
 * hidden class and the request path optimised on the warm-up's stays valid for the agents'.
 */
export function connectionContext(fields: ConnectionContext): ConnectionContext {
  return {
    nodes: fields.nodes,
    counters: fields.counters,
    log: fields.log,
    acl: fields.acl,
    denyBadClocks: fields.denyBadClocks,
    maxInputBytes: fields.maxInputBytes,
    idleTimeoutMs: fields.idleTimeoutMs,
    handshakeTimeoutMs: fields.handshakeTimeoutMs,
    digests: fields.digests,
    directories: fields.directories,
    exec: fields.exec,
  };
}

/**
 * One connection's counts (answered requests by command and result, bytes sent), handed to the server's
 * counters whenever the connection has no request left to answer (CfengineConnection.serve) and when it
 * closes. The request path only adds to this object: the counters' functions are the relay's metrics
 * (app/compose.ts) for agents and no-ops for the warm-up, and called from the request path they made V8 throw
 * away the optimised handlers at the first agent's request (wrong call target).
 */
export class Tally {
  /** command, result, command, result, ... */
  private readonly commands: string[] = [];
  private bytes = 0;

  command(command: string, result: CommandResult): void {
    this.commands.push(command, result);
  }

  sent(bytes: number): void {
    this.bytes += bytes;
  }

  flush(counters: CfengineCounters): void {
    const { commands } = this;
    for (let i = 0; i + 1 < commands.length; i += 2) counters.command(commands[i] as string, commands[i + 1] as CommandResult);
    commands.length = 0;
    if (this.bytes > 0) counters.bytesSent(this.bytes);
    this.bytes = 0;
  }
}

export type CommandResult = Parameters<CfengineCounters['command']>[1];

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
  /** counts of this connection's requests (use this, not ctx.counters, in the request path) */
  readonly tally: Tally;
  /** access checks and what STAT resolved, for this connection */
  readonly admission: Admission;
  /** one transaction (or GET block), after the write in flight (see CfengineConnection.write) */
  write(buffer: Buffer): Promise<void>;
  /** true while a write waits for its callback: write() would wait, writeNow() must not be called */
  readonly writeInFlight: boolean;
  /** write() when no write is in flight (the synchronous request path); throws when the connection is gone */
  writeNow(buffer: Buffer): void;
  /** whole transactions packed into writes of at most one TLS record; at once (no promise) when they fit one and no write is in flight */
  writeTransactions(frames: readonly Buffer[]): void | Promise<void>;
  /** the next transaction, waiting for it; undefined when the connection ends first */
  nextFrame(): Promise<Buffer | undefined>;
  /** why the connection will close, and the kind of failure (its closing log line) */
  setCloseReason(reason: string, code: ErrorCode): void;
  /** 0: no idle timeout (a command still running); undefined: back to the server's */
  setIdleTimeout(ms: number | undefined): void;
}
