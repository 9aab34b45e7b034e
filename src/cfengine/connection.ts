// One client connection after TCP admission: TLS, the identification lines, then strictly sequential
// requests (spec-cfengine-protocol.md §3–7), answered by commands.ts. Every transaction is one Buffer
// written with one socket.write, and the next write waits for the previous one's callback, so Node never
// merges frames into a write that OpenSSL would cut across TLS records (§13 pitfall 2).

import type { KeyObject } from 'node:crypto';
import type { Socket } from 'node:net';
import { TLSSocket, type SecureContext } from 'node:tls';
import type { Logger } from 'pino';
import { isRelayError, messageOf, relayError, type ErrorCode } from '../errors.js';
import { keyDigests } from '../identity/index.js';
import type { Reader } from '../access/index.js';
import { Admission } from './admission.js';
import {
  CodecError,
  FrameDecoder,
  SERVER_PROTOCOL_VERSION,
  parseIdentityLine,
  parseRequest,
  parseVersionLine,
  serverHello,
  welcomeLine,
  WELCOME_START,
} from './codec.js';
import { dispatch } from './commands.js';
import { Tally, type ConnectionContext, type Outcome, type Session } from './session.js';

export type { ConnectionContext } from './session.js';

/** cf-serverd reads the identification lines into a 1024-byte buffer */
const MAX_IDENTIFICATION_BYTES = 1024;
/** after a protocol error: how long the peer has to close before we drop the socket */
const CLOSE_GRACE_MS = 2000;
/** the plaintext of one TLS record: whole transactions up to this total may share one write (§6.2) */
const TLS_RECORD_BYTES = 16384;

export class CfengineConnection implements Session {
  private phase: 'handshake' | 'identification' | 'requests' | 'closing' | 'closed' = 'handshake';
  private identification = '';
  /** WELCOME_START sent before IDENTITY arrived */
  private welcomeStarted = false;
  private readonly decoder: FrameDecoder;
  private busy = false;
  private key = '';
  /** sha256//… of the client's SPKI: what execKeys pins */
  keyPin = '';
  username = '';
  readonly admission: Admission;
  readonly tally = new Tally();
  /** wakes a handler waiting for the next transaction (EXEC's class frames) */
  private frameWaiter: (() => void) | undefined;
  private readonly startedAt = Date.now();
  private requests = 0;
  private sent = 0;
  private closeReason = 'client closed';
  /** what kind of failure closeReason is (the closing line of a connection closed on error) */
  private closeCode: ErrorCode = 'RELAY_ERR_CFENGINE_CLOSED';
  /** what follows CFE_vN on the version line, e.g. "cf-agent 3.21.4" (node activity's agent version) */
  private agent: string | undefined;
  private failed = false;
  log: Logger;
  private writing = false;
  /**
   * the deadline of the TLS handshake, version line and IDENTITY: one timer from the connection's start, as the
   * socket's inactivity timer alone is pushed back by every byte (a client sending one byte every 29 s could hold
   * a slot for hours, and nothing limits connections per address by default)
   */
  private identifyDeadline: NodeJS.Timeout | undefined;
  /** write() calls waiting for the write in flight */
  private writeWaiters: Array<{ resolve: () => void; reject: (error: Error) => void }> = [];

  constructor(
    private readonly socket: TLSSocket,
    readonly peer: string,
    readonly ctx: ConnectionContext,
    private readonly onClosed: (connection: CfengineConnection) => void,
  ) {
    this.log = ctx.log.child({ peer });
    this.decoder = new FrameDecoder(ctx.maxInputBytes);
    this.admission = new Admission(ctx, this.log, (buffer) => this.write(buffer), (buffer) => this.writeNow(buffer), this.tally);
    socket.on('secure', () => this.onSecure());
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (error) =>
      // before 'secure', an error is the TLS handshake refused (not TLS, no shared cipher...)
      this.fail(`socket error: ${error.message}`, this.phase === 'handshake' ? 'RELAY_ERR_CFENGINE_CODEC' : 'RELAY_ERR_CFENGINE_CLOSED'),
    );
    socket.on('timeout', () => this.fail(this.phase === 'handshake' ? 'TLS handshake timeout' : this.phase === 'identification' ? 'identification timeout' : 'idle timeout', 'RELAY_ERR_REQUEST_TIMEOUT'));
    socket.on('close', () => this.onClose());
    if (ctx.handshakeTimeoutMs > 0) this.identifyDeadline = setTimeout(() => {
      if (this.phase === 'handshake' || this.phase === 'identification') {
        // the same words as the socket's idle timer, which may fire first when it is as short
        this.fail(this.phase === 'handshake' ? 'TLS handshake timeout' : 'identification timeout', 'RELAY_ERR_REQUEST_TIMEOUT');
      }
    }, ctx.handshakeTimeoutMs);
    this.identifyDeadline?.unref();
  }

  get reader(): Reader {
    return this.admission.reader;
  }

  /** stop(): close at once */
  destroy(reason: string): void {
    this.closeReason = reason;
    this.socket.destroy();
  }

  private fail(reason: string, code: ErrorCode): void {
    if (this.phase === 'closed') return;
    if (this.phase === 'closing') {
      this.socket.destroy();
      return;
    }
    this.failed = true;
    this.closeReason = reason;
    this.closeCode = code;
    this.socket.destroy();
  }

  private onClose(): void {
    if (this.phase === 'closed') return;
    this.phase = 'closed';
    clearTimeout(this.identifyDeadline);
    this.frameWaiter?.();
    this.afterWrite(relayError('RELAY_ERR_CFENGINE_CLOSED')); // a write() still waiting gives up
    this.tally.flush(this.ctx.counters);
    if (this.failed) this.ctx.counters.connection('closed-error');
    const fields = {
      known: this.reader.nodeId !== undefined,
      requests: this.requests,
      denials: this.admission.denials,
      bytes: this.sent,
      durationMs: Date.now() - this.startedAt,
      reason: this.closeReason,
      // what STAT results it still held: bounded whatever the client sent (admission.ts)
      remembered: this.admission.remembered,
    };
    this.ctx.counters.session?.({ node: this.reader.nodeId, peer: this.peer, agent: this.agent, ok: !this.failed && this.admission.denials === 0, reason: this.failed ? this.closeReason : this.admission.denials > 0 ? `${this.admission.denials} denied` : 'ok' });
    if (this.failed) this.log.info({ ...fields, code: this.closeCode }, 'cfengine connection closed on error');
    else this.log.info(fields, 'cfengine connection closed');
    this.onClosed(this);
  }

  // ---- TLS and identification (§5.3, §6.1) ----

  private onSecure(): void {
    const certificate = this.socket.getPeerX509Certificate();
    if (certificate === undefined) return this.fail('no client certificate', 'RELAY_ERR_AUTH_CERTIFICATE');
    const publicKey: KeyObject = certificate.publicKey;
    if (publicKey.asymmetricKeyType !== 'rsa') return this.fail(`client key is ${publicKey.asymmetricKeyType ?? 'unknown'}, not RSA`, 'RELAY_ERR_AUTH_CERTIFICATE');
    try {
      const digests = keyDigests(publicKey);
      this.key = digests.cfengineMd5;
      this.keyPin = digests.sha256Pin;
    } catch (error) {
      return this.fail(`client key unusable: ${messageOf(error)}`, 'RELAY_ERR_AUTH_CERTIFICATE');
    }
    const node = this.ctx.nodes.findByPublicKey(publicKey.export({ type: 'spki', format: 'der' }));
    this.log = this.log.child({ node: node?.id, key: this.key });
    this.admission.identified({ nodeId: node?.id }, this.log);
    this.phase = 'identification';
    this.writeLine(serverHello());
  }

  private onData(chunk: Buffer): void {
    if (this.phase === 'identification') {
      this.identification += chunk.toString('latin1');
      if (this.identification.length > MAX_IDENTIFICATION_BYTES) return this.fail('identification lines too long', 'RELAY_ERR_CFENGINE_CODEC');
      this.identify();
      return;
    }
    if (this.phase !== 'requests') return;
    try {
      this.decoder.push(chunk);
    } catch (error) {
      return this.fail(messageOf(error), 'RELAY_ERR_CFENGINE_CODEC');
    }
    if (this.frameWaiter !== undefined) {
      const wake = this.frameWaiter;
      this.frameWaiter = undefined;
      wake();
    }
    this.pump();
  }

  private identify(): void {
    const lines = this.identification.split('\n');
    if (lines.length < 2) return; // the version line is not complete yet
    const [versionLine = '', identityLine = ''] = lines;
    const version = parseVersionLine(versionLine);
    this.agent = versionLine.replace(/^CFE_v\s*\d+\s*/, '').trim().slice(0, 64) || undefined;
    if (version === undefined || version < 2 || version > SERVER_PROTOCOL_VERSION) {
      return this.fail(`protocol version refused: ${JSON.stringify(versionLine.slice(0, 64))}`, 'RELAY_ERR_CFENGINE_CODEC');
    }
    if (lines.length < 3) {
      // cf-agent writes IDENTITY right after its version line, without TCP_NODELAY: Nagle holds it until
      // the version line is acknowledged, and with nothing to send our kernel would delay that ACK by ~40 ms,
      // a fifth of a no-change agent run. Starting the welcome line now carries the ACK. The agent reads the
      // welcome until its newline (TLSRecvLines), so the line is ended once IDENTITY has been checked.
      if (!this.welcomeStarted) {
        this.welcomeStarted = true;
        this.writeLine(WELCOME_START);
      }
      return;
    }
    const rest = lines.slice(2).join('\n');
    const identity = parseIdentityLine(identityLine);
    if (identity === undefined) return this.fail(`invalid IDENTITY: ${JSON.stringify(identityLine.slice(0, 64))}`, 'RELAY_ERR_CFENGINE_CODEC');
    this.username = identity.username;
    this.phase = 'requests';
    clearTimeout(this.identifyDeadline);
    this.identification = '';
    const welcome = welcomeLine(identity.username);
    this.writeLine(this.welcomeStarted ? welcome.slice(WELCOME_START.length) : welcome);
    if (rest !== '') this.onData(Buffer.from(rest, 'latin1')); // a request sent right after IDENTITY
  }

  /** identification lines are not framed; a failed write shows as the socket's error */
  private writeLine(line: string): void {
    this.write(Buffer.from(line, 'latin1')).catch(() => undefined);
  }

  // ---- requests ----

  /**
   * Requests in order, one at a time (an agent waits for each reply before it sends the next request);
   * the ones that arrive while one is answered wait in the decoder. File-system calls made directly (see
   * src/fs-direct) settle as microtasks, so a request is normally answered within the 'data' event that
   * brought it.
   */
  private pump(): void {
    if (this.busy || this.phase !== 'requests') return;
    this.busy = true;
    // the common case, synchronous to the end: each request answered with direct file-system calls and one
    // write (commands.ts), no promise made; the first answer that has to wait continues in serve()
    try {
      for (;;) {
        if (this.phase !== 'requests') break;
        const frame = this.decoder.next();
        if (frame === undefined) break;
        this.requests += 1;
        const outcome = dispatch(this, parseRequest(frame.payload));
        if (typeof outcome !== 'string') {
          void this.serve(outcome);
          return;
        }
        if (outcome === 'close') {
          this.closeOnError();
          break;
        }
      }
    } catch (error) {
      this.failOn(error);
    }
    this.busy = false;
    this.tally.flush(this.ctx.counters);
  }

  /** pump() from an answer that waits (`pending`): the requests that follow it are served in order after it */
  private async serve(pending: Promise<Outcome>): Promise<void> {
    try {
      if ((await pending) === 'close') return this.closeOnError();
      for (;;) {
        if (this.phase !== 'requests') return;
        const frame = this.decoder.next();
        if (frame === undefined) return;
        this.requests += 1;
        if ((await dispatch(this, parseRequest(frame.payload))) === 'close') return this.closeOnError();
      }
    } catch (error) {
      this.failOn(error);
    } finally {
      this.busy = false;
      this.tally.flush(this.ctx.counters);
    }
  }

  /** protocol error or a stream out of step: what was written goes out, then the connection ends */
  private closeOnError(): void {
    this.failed = true;
    this.phase = 'closing';
    this.socket.end();
    this.socket.setTimeout(CLOSE_GRACE_MS);
  }

  private failOn(error: unknown): void {
    // a bug, or a file-system error nobody expected: worth a line (a client gone mid-reply is not)
    const clientGone = isRelayError(error) && error.code === 'RELAY_ERR_CFENGINE_CLOSED';
    if (!(error instanceof CodecError) && !clientGone && this.phase === 'requests') this.log.warn({ err: error }, 'cfengine request failed');
    const message = error instanceof CodecError ? error.message : `internal error: ${messageOf(error)}`;
    this.fail(message, error instanceof CodecError ? 'RELAY_ERR_CFENGINE_CODEC' : clientGone ? 'RELAY_ERR_CFENGINE_CLOSED' : 'RELAY_ERR_INTERNAL');
  }

  setCloseReason(reason: string, code: ErrorCode): void {
    this.closeReason = reason;
    this.closeCode = code;
  }

  setIdleTimeout(ms: number | undefined): void {
    this.socket.setTimeout(ms ?? this.ctx.idleTimeoutMs);
  }

  /** the next transaction, waiting for it; undefined when the connection ends first */
  async nextFrame(): Promise<Buffer | undefined> {
    for (;;) {
      if (this.phase !== 'requests') return undefined;
      const frame = this.decoder.next();
      if (frame !== undefined) return frame.payload;
      await new Promise<void>((resolve) => {
        this.frameWaiter = resolve;
      });
    }
  }

  /**
   * Whole transactions, packed into writes of at most one TLS record's plaintext (§6.2: a transaction
   * never straddles a record; several whole ones may share a record, the receiver reads them one by one).
   */
  writeTransactions(frames: readonly Buffer[]): void | Promise<void> {
    const writes: Buffer[] = [];
    let batch: Buffer[] = [];
    let length = 0;
    for (const frame of frames) {
      if (length + frame.length > TLS_RECORD_BYTES && batch.length > 0) {
        writes.push(batch.length === 1 ? (batch[0] as Buffer) : Buffer.concat(batch, length));
        batch = [];
        length = 0;
      }
      batch.push(frame);
      length += frame.length;
    }
    if (batch.length > 0) writes.push(batch.length === 1 ? (batch[0] as Buffer) : Buffer.concat(batch, length));
    if (writes.length === 1 && !this.writing) return this.writeNow(writes[0] as Buffer);
    return this.writeInOrder(writes);
  }

  private async writeInOrder(writes: readonly Buffer[]): Promise<void> {
    for (const buffer of writes) await this.write(buffer);
  }

  get writeInFlight(): boolean {
    return this.writing;
  }

  /**
   * One transaction (or GET block) per socket.write. A write starts only once the previous one's callback
   * has fired, so Node never merges queued chunks into one SSL_write that OpenSSL would cut across TLS
   * records; the last frame of a reply is not waited for (the next request comes after the client read it).
   */
  async write(buffer: Buffer): Promise<void> {
    while (this.writing) {
      await new Promise<void>((resolve, reject) => this.writeWaiters.push({ resolve, reject }));
    }
    this.writeNow(buffer);
  }

  /**
   * write() when no write is in flight (the synchronous answers); throws when the connection is gone.
   * The bytes go to the socket first: the agent is waiting for them.
   */
  writeNow(buffer: Buffer): void {
    if (this.writing) throw new Error('cfengine: writeNow with a write in flight');
    if (this.socket.destroyed || !this.socket.writable) throw relayError('RELAY_ERR_CFENGINE_CLOSED');
    this.writing = true;
    this.socket.write(buffer, this.afterWrite);
    this.sent += buffer.length;
    this.tally.sent(buffer.length);
  }

  /** the socket's callback for the write in flight: wakes what waits to write (a failure is the socket's 'error') */
  private readonly afterWrite = (error?: Error | null): void => {
    this.writing = false;
    if (this.writeWaiters.length === 0) return;
    const waiters = this.writeWaiters;
    this.writeWaiters = [];
    for (const waiter of waiters) {
      if (error) waiter.reject(error);
      else waiter.resolve();
    }
  };
}

/**
 * TLS over an admitted TCP socket, and its CfengineConnection (server.ts). The warm-up (warm-up.ts) goes through this
 * same function, so the sockets it warms the request path with have the same shape (hidden classes) as an
 * agent's: a socket set up otherwise (measured: without the idle timeout, or
 * without its peer address read) made V8 throw away the optimised stream and request code at the first
 * agent's connection.
 */
export function openConnection(
  socket: Socket,
  secureContext: SecureContext,
  peer: string,
  context: ConnectionContext,
  onClosed: (connection: CfengineConnection) => void,
): CfengineConnection {
  socket.setNoDelay(true);
  const tls = new TLSSocket(socket, {
    isServer: true,
    secureContext,
    requestCert: true,
    rejectUnauthorized: false, // cf-serverd accepts any certificate; the key is checked afterwards (§4)
  });
  // the idle timeout from the start; the identification's deadline is the connection's own timer
  tls.setTimeout(context.idleTimeoutMs);
  return new CfengineConnection(tls, peer, context, onClosed);
}
