// One client connection after TCP admission: TLS, the identification lines, then strictly sequential
// requests (spec-cfengine-protocol.md §3–7). Every transaction is one Buffer written with one
// socket.write, and the next write waits for the previous one's callback, so Node never merges frames
// into a write that OpenSSL would cut across TLS records (§13 pitfall 2).

import { createHash, type KeyObject } from 'node:crypto';
import type { BigIntStats } from 'node:fs';
import type { TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { messageOf, relayError } from '../errors.js';
import { keyDigests } from '../identity/index.js';
import type { NodesRegistry } from '../nodes/index.js';
import type { CfengineCounters, ExecHandler } from './index.js';
import { displayPath, fsPath, type PathAcl, type Reader } from './access.js';
import {
  CFD_TERMINATOR,
  CodecError,
  FAILED,
  FileType,
  FILE_CHANGED,
  FrameDecoder,
  GET_BLOCK_SIZE,
  MAX_PAYLOAD,
  REQUEST_DENIED,
  SERVER_PROTOCOL_VERSION,
  SERVER_VERSION,
  encodeFrame,
  encodeOpendirReply,
  encodeStatLine,
  md5Answer,
  parseIdentityLine,
  parseRequest,
  parseVersionLine,
  serverHello,
  welcomeLine,
  WELCOME_START,
  type Request,
} from './codec.js';
import {
  OPEN_FOR_READING,
  OPEN_RESOLVED_FOR_READING,
  closeQuietly,
  fileIdentity,
  fileVersion,
  fstatBig,
  listDirectory,
  listDirectorySync,
  lstatQuietly,
  lstatQuietlySync,
  md5OfFile,
  md5OfFileSync,
  openForReading,
  readAt,
  readWholeSync,
  resolveRequestPath,
  resolveRequestPathSync,
  statForReply,
  statForReplySync,
  type DigestCache,
  type DirectoryCache,
  type StatResult,
} from './files.js';
import { inThreadPoolMode } from '../fs-direct/index.js';

/** cf-serverd reads the identification lines into a 1024-byte buffer */
const MAX_IDENTIFICATION_BYTES = 1024;
/** CLOCK_DRIFT: SYNCH refused when client and server clocks differ by more (denybadclocks) */
const CLOCK_DRIFT_S = 3600;
/** paths resolved and sizes announced by STAT, for the MD5 and GET that follow (one agent run STATs each path once) */
const MAX_REMEMBERED_STATS = 4096;
/** after a protocol error: how long the peer has to close before we drop the socket */
const CLOSE_GRACE_MS = 2000;
/** denial lines logged per connection; the rest are only counted (in the connection's closing line) */
const MAX_DENIAL_LINES = 50;
/** GET reads (and writes) this much per call (a multiple of the 2048-byte block) */
const GET_READ_BYTES = 32 * GET_BLOCK_SIZE;
/** the largest file getNow answers at once (a STAT's size is a bigint) */
const GET_NOW_MAX_SIZE = BigInt(GET_READ_BYTES);
/** the plaintext of one TLS record: whole transactions up to this total may share one write (§6.2) */
const TLS_RECORD_BYTES = 16384;

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

/** cf-serverd's MatchClasses reads at most this many class-selection transactions */
const MAX_EXEC_SELECT_FRAMES = 10;
/** CharsetAcceptable for EXEC -D/-b tokens */
const EXEC_TOKEN = /^[A-Za-z0-9_:]+$/;
/** "> " + line + "\n" must fit one transaction */
const MAX_EXEC_LINE_BYTES = MAX_PAYLOAD - 3;

type Outcome = 'continue' | 'close';

/** what a STAT resolved and announced */
interface Statted {
  readonly resolved: string;
  readonly size: bigint;
  readonly isFile: boolean;
  /**
   * device:inode of what STAT described: the MD5 and GET that follow use `resolved` only while it still
   * names that file (a directory on the way swapped for a link would otherwise lead elsewhere)
   */
  readonly identity: string;
  /** fileVersion of what STAT described (regular files only): a GET that sends that version caches its digest */
  readonly version: string | undefined;
}

export class CfengineConnection {
  private phase: 'handshake' | 'identification' | 'requests' | 'closing' | 'closed' = 'handshake';
  private identification = '';
  /** WELCOME_START sent before IDENTITY arrived */
  private welcomeStarted = false;
  private readonly decoder: FrameDecoder;
  private busy = false;
  private reader: Reader = { nodeId: undefined };
  private key = '';
  /** sha256//… of the client's SPKI: what execKeys pins */
  private keyPin = '';
  private username = '';
  /** wakes a handler waiting for the next transaction (EXEC's class frames) */
  private frameWaiter: (() => void) | undefined;
  private readonly statted = new Map<string, Statted>();
  private readonly startedAt = Date.now();
  private requests = 0;
  private denials = 0;
  private sent = 0;
  private closeReason = 'client closed';
  /** what follows CFE_vN on the version line, e.g. "cf-agent 3.21.4" (node activity's agent version) */
  private agent: string | undefined;
  private failed = false;
  private log: Logger;
  private writing = false;
  /** write() calls waiting for the write in flight */
  private writeWaiters: Array<{ resolve: () => void; reject: (error: Error) => void }> = [];

  constructor(
    private readonly socket: TLSSocket,
    private readonly peer: string,
    private readonly ctx: ConnectionContext,
    private readonly onClosed: (connection: CfengineConnection) => void,
  ) {
    this.log = ctx.log.child({ peer });
    this.decoder = new FrameDecoder(ctx.maxInputBytes);
    socket.on('secure', () => this.onSecure());
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (error) => this.fail(`socket error: ${error.message}`));
    socket.on('timeout', () => this.fail(this.phase === 'handshake' ? 'TLS handshake timeout' : 'idle timeout'));
    socket.on('close', () => this.onClose());
  }

  /** stop(): close at once */
  destroy(reason: string): void {
    this.closeReason = reason;
    this.socket.destroy();
  }

  private fail(reason: string): void {
    if (this.phase === 'closed') return;
    if (this.phase === 'closing') {
      this.socket.destroy();
      return;
    }
    this.failed = true;
    this.closeReason = reason;
    this.socket.destroy();
  }

  private onClose(): void {
    if (this.phase === 'closed') return;
    this.phase = 'closed';
    this.frameWaiter?.();
    this.afterWrite(relayError('RELAY_ERR_CFENGINE_CLOSED')); // a write() still waiting gives up
    if (this.failed) this.ctx.counters.connection('closed-error');
    const fields = {
      known: this.reader.nodeId !== undefined,
      requests: this.requests,
      denials: this.denials,
      bytes: this.sent,
      durationMs: Date.now() - this.startedAt,
      reason: this.closeReason,
    };
    this.ctx.counters.session?.({ node: this.reader.nodeId, peer: this.peer, agent: this.agent, ok: !this.failed && this.denials === 0, reason: this.failed ? this.closeReason : this.denials > 0 ? `${this.denials} denied` : 'ok' });
    if (this.failed) this.log.info(fields, 'cfengine connection closed on error');
    else this.log.info(fields, 'cfengine connection closed');
    this.onClosed(this);
  }

  // ---- TLS and identification (§5.3, §6.1) ----

  private onSecure(): void {
    const certificate = this.socket.getPeerX509Certificate();
    if (certificate === undefined) return this.fail('no client certificate');
    const publicKey: KeyObject = certificate.publicKey;
    if (publicKey.asymmetricKeyType !== 'rsa') return this.fail(`client key is ${publicKey.asymmetricKeyType ?? 'unknown'}, not RSA`);
    try {
      const digests = keyDigests(publicKey);
      this.key = digests.cfengineMd5;
      this.keyPin = digests.sha256Pin;
    } catch (error) {
      return this.fail(`client key unusable: ${messageOf(error)}`);
    }
    const node = this.ctx.nodes.findByPublicKey(publicKey.export({ type: 'spki', format: 'der' }));
    this.reader = { nodeId: node?.id };
    this.log = this.log.child({ node: node?.id, key: this.key });
    this.phase = 'identification';
    this.writeLine(serverHello());
  }

  private onData(chunk: Buffer): void {
    if (this.phase === 'identification') {
      this.identification += chunk.toString('latin1');
      if (this.identification.length > MAX_IDENTIFICATION_BYTES) return this.fail('identification lines too long');
      this.identify();
      return;
    }
    if (this.phase !== 'requests') return;
    try {
      this.decoder.push(chunk);
    } catch (error) {
      return this.fail(messageOf(error));
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
      return this.fail(`protocol version refused: ${JSON.stringify(versionLine.slice(0, 64))}`);
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
    if (identity === undefined) return this.fail(`invalid IDENTITY: ${JSON.stringify(identityLine.slice(0, 64))}`);
    this.username = identity.username;
    this.phase = 'requests';
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
   * Requests in order. While the file system is in direct mode (src/fs-direct) the common ones are answered
   * synchronously, here, without a promise per step: an agent waits for each reply before it sends the next
   * request, so its run lasts the sum of our per-request latencies. Anything that must wait (a write still
   * in flight, a reply of several records, a large file, the thread pool) goes on asynchronously, and the
   * requests after it wait their turn.
   */
  private pump(): void {
    if (this.busy || this.phase !== 'requests') return;
    try {
      for (;;) {
        if (this.phase !== 'requests') return;
        const frame = this.decoder.next();
        if (frame === undefined) return;
        this.requests += 1;
        const request = parseRequest(frame.payload);
        const answer = this.writing || inThreadPoolMode() ? this.handle(request) : this.answerNow(request);
        if (answer === 'continue') continue;
        if (answer === 'close') return this.closeOnError();
        this.busy = true;
        void this.finish(answer);
        return;
      }
    } catch (error) {
      this.failOn(error);
    }
  }

  /** waits for a request answered asynchronously, then serves the ones queued behind it */
  private async finish(pending: Promise<Outcome>): Promise<void> {
    try {
      for (let answer = pending; ; ) {
        if ((await answer) === 'close') return this.closeOnError();
        if (this.phase !== 'requests') return;
        const frame = this.decoder.next();
        if (frame === undefined) return;
        this.requests += 1;
        answer = this.handle(parseRequest(frame.payload));
      }
    } catch (error) {
      this.failOn(error);
    } finally {
      this.busy = false;
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
    const message = error instanceof CodecError ? error.message : `internal error: ${messageOf(error)}`;
    this.fail(message);
  }

  /** the synchronous answers (see pump); what cannot be answered now is handed to the asynchronous path */
  private answerNow(request: Request): Outcome | Promise<Outcome> {
    switch (request.command) {
      case 'EMPTY':
        return 'continue';
      case 'STAT':
        return this.statNow(request.path, request.clientTime);
      case 'OPENDIR':
        return this.opendirNow(request.path);
      case 'GET':
        return this.getNow(request.path);
      case 'MD5':
        return this.md5Now(request.path, request.digest);
      default:
        return this.handle(request);
    }
  }

  private async handle(request: Request): Promise<Outcome> {
    switch (request.command) {
      case 'EMPTY':
        return 'continue';
      case 'STAT':
        return this.stat(request.path, request.clientTime);
      case 'OPENDIR':
        return this.opendir(request.path);
      case 'GET':
        return this.get(request.path);
      case 'MD5':
        return this.md5(request.path, request.digest);
      case 'VERSION':
        this.ctx.counters.command('VERSION', 'ok');
        await this.write(encodeFrame(`OK: ${SERVER_VERSION}`));
        return 'continue';
      case 'EXEC':
        return this.exec(request.args);
      case 'BAD':
        this.ctx.counters.command(knownOrBad(request.word), 'error');
        return this.protocolError(`illegal request ${JSON.stringify(request.word)}`);
      default:
        this.ctx.counters.command(request.command, 'error');
        return this.protocolError(`unsupported request ${request.command}`);
    }
  }

  /** the next transaction, waiting for it; undefined when the connection ends first */
  private async nextFrame(): Promise<Buffer | undefined> {
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
   * Inbound remote run (spec-https-front-cfserverd-sync.md §2.5, cf-serverd's DoExec2): only a key in
   * execKeys; the client's class-selection frames up to the terminator; only -D and -b with
   * [A-Za-z0-9_:] tokens (-b has no meaning here and is refused); then "cf-serverd executing
   * cfruncommand: …", one "> line" per output line, "(exit code: N)", and always the terminator.
   */
  private async exec(args: string): Promise<Outcome> {
    const { exec } = this.ctx;
    if (exec.run === undefined || !exec.keys.has(this.keyPin)) {
      // like a cfruncommand path not admitted for this key: refusal, terminator, close
      this.denied('EXEC', {}, exec.run === undefined ? 'cfengine EXEC refused: no remote run here' : 'cfengine EXEC refused: key not admitted');
      await this.write(encodeFrame(FAILED));
      await this.write(encodeFrame(`${CFD_TERMINATOR}\0`));
      this.closeReason = 'EXEC refused';
      return 'close';
    }
    const terminate = async (): Promise<Outcome> => {
      await this.write(encodeFrame(`${CFD_TERMINATOR}\0`));
      return 'continue';
    };
    const refuse = async (line: string): Promise<Outcome> => {
      this.denied('EXEC', { args: args.slice(0, 200) }, `cfengine ${line}`);
      await this.write(encodeFrame(line.slice(0, MAX_PAYLOAD)));
      return terminate();
    };
    // MatchClasses: class-selection frames (cf-runagent -s) until the terminator
    let selected = 0;
    for (let count = 0; count < MAX_EXEC_SELECT_FRAMES; count++) {
      const payload = await this.nextFrame();
      if (payload === undefined) return 'close';
      if (payload.toString('latin1').startsWith(CFD_TERMINATOR)) break;
      selected += 1;
    }
    if (selected > 0) {
      // no class of this relay can match a selection: cf-serverd's ReplyNothing, then the denial
      await this.write(encodeFrame(`Hello ${this.peer} (${this.peer}), nothing relevant to do here...\n\n`));
      return refuse('EXEC denied due to failed class match (check cf-serverd verbose output)');
    }
    const classes: string[] = [];
    let rest = args.replace(/^[ \t]+/, '');
    while (rest !== '') {
      const option = rest.slice(0, 2);
      if (option !== '-D' && option !== '-b') return refuse(`EXEC denied: invalid arguments: ${rest}`);
      const list = rest.slice(2).replace(/^[ \t]+/, '');
      const end = list.search(/[ \t]/);
      const tokens = (end === -1 ? list : list.slice(0, end)).split(',');
      rest = (end === -1 ? '' : list.slice(end)).replace(/^[ \t]+/, '');
      if (tokens.length === 1 && tokens[0] === '') continue;
      if (option === '-b') return refuse('EXEC denied bundle activation (check cf-serverd verbose output)');
      if (!tokens.every((token) => EXEC_TOKEN.test(token))) return refuse('EXEC denied role activation (check cf-serverd verbose output)');
      classes.push(...tokens);
    }
    const command = classes.length > 0 ? `${exec.command} -D ${classes.join(',')}` : exec.command;
    this.ctx.counters.command('EXEC', 'ok');
    this.log.info({ command: 'EXEC', classes }, `cfengine EXEC: running ${command}`);
    await this.write(encodeFrame(`cf-serverd executing cfruncommand: ${command}\n`.slice(0, MAX_PAYLOAD)));
    // lines in order, each one transaction; the socket stays quiet while the command is (a sync may be slow)
    let chain: Promise<void> = Promise.resolve();
    const writeLine = (text: string): void => {
      for (const line of text.split('\n')) {
        let bytes = Buffer.from(line, 'utf8');
        if (bytes.length > MAX_EXEC_LINE_BYTES) bytes = bytes.subarray(0, MAX_EXEC_LINE_BYTES);
        const frame = encodeFrame(Buffer.concat([Buffer.from('> '), bytes, Buffer.from('\n')]));
        chain = chain.then(() => this.write(frame)).catch(() => undefined);
      }
    };
    this.socket.setTimeout(0);
    let exitCode: number;
    try {
      exitCode = await exec.run(classes, writeLine);
    } catch (error) {
      writeLine(`error: ${messageOf(error)}`);
      exitCode = 1;
    } finally {
      this.socket.setTimeout(this.ctx.idleTimeoutMs);
    }
    await chain;
    await this.write(encodeFrame(`(exit code: ${exitCode})\n`));
    this.log.info({ command: 'EXEC', exitCode }, 'cfengine EXEC done');
    return terminate();
  }

  private async protocolError(reason: string): Promise<Outcome> {
    this.closeReason = reason;
    await this.write(encodeFrame(REQUEST_DENIED));
    return 'close';
  }

  /**
   * Resolve (realpath), then check the ACL on the resolved path; sends the refusal itself and returns
   * undefined when not allowed.
   */
  private async admit(command: string, requested: string): Promise<string | undefined> {
    const resolved = await resolveRequestPath(requested);
    if (resolved.kind === 'absent') {
      this.ctx.counters.command(command, 'absent');
      await this.write(encodeFrame(FAILED));
      return undefined;
    }
    return this.authorise(command, resolved.path);
  }

  private async authorise(command: string, path: string): Promise<string | undefined> {
    if (this.permitted(command, path)) return path;
    await this.write(encodeFrame(FAILED));
    return undefined;
  }

  /** the ACL's verdict on a resolved path; a refusal is counted and logged (the caller answers it) */
  private permitted(command: string, path: string): boolean {
    if (this.ctx.acl.check(path, this.reader) !== undefined) return true;
    this.denied(command, { path: displayPath(path) });
    return false;
  }

  /** admit() for the synchronous answers: the resolved path, or undefined once the refusal is written */
  private admitNow(command: string, requested: string, early: BigIntStats | undefined): string | undefined {
    const resolved = resolveRequestPathSync(requested, early, this.ctx.directories);
    if (resolved.kind === 'absent') {
      this.ctx.counters.command(command, 'absent');
      this.writeNow(encodeFrame(FAILED));
      return undefined;
    }
    if (this.permitted(command, resolved.path)) return resolved.path;
    this.writeNow(encodeFrame(FAILED));
    return undefined;
  }

  /** counts a denial and logs it (node and key are fields of this connection's logger) */
  private denied(command: string, fields: Record<string, unknown>, message = 'cfengine access denied'): void {
    this.ctx.counters.command(command, 'denied');
    this.denials += 1;
    if (this.denials <= MAX_DENIAL_LINES) this.log.warn({ event: 'denied', code: 'RELAY_ERR_CFENGINE_ACCESS', command, ...fields }, message);
    else if (this.denials === MAX_DENIAL_LINES + 1) this.log.warn({ command }, 'cfengine: further denials on this connection are only counted');
  }

  private async stat(requested: string, clientTime: number): Promise<Outcome> {
    this.statted.delete(requested);
    const early = lstatQuietly(requested);
    const path = await this.admit('STAT', requested);
    if (path === undefined) return 'continue';
    const clocks = this.clockRefusal(clientTime);
    if (clocks !== undefined) {
      await this.write(clocks);
      return 'continue';
    }
    const lstatted = await early;
    await this.write(this.statAnswer(requested, path, await statForReply(path, lstatted), lstatted));
    return 'continue';
  }

  private statNow(requested: string, clientTime: number): Outcome {
    this.statted.delete(requested);
    const early = lstatQuietlySync(requested);
    const path = this.admitNow('STAT', requested, early);
    if (path === undefined) return 'continue';
    const clocks = this.clockRefusal(clientTime);
    if (clocks !== undefined) {
      this.writeNow(clocks);
      return 'continue';
    }
    this.writeNow(this.statAnswer(requested, path, statForReplySync(path, early), early));
    return 'continue';
  }

  /** denybadclocks: the refusal to send when the client's clock is too far from ours */
  private clockRefusal(clientTime: number): Buffer | undefined {
    const now = Math.floor(Date.now() / 1000);
    if (!this.ctx.denyBadClocks || Math.abs(now - clientTime) <= CLOCK_DRIFT_S) return undefined;
    this.denied('STAT', { clientTime, serverTime: now }, 'cfengine clocks too far apart');
    return encodeFrame(`BAD: Clocks are too far unsynchronized ${now}/${clientTime}`);
  }

  /** STAT's reply, remembering what it announced; `lstatted` is the lstat of the requested path */
  private statAnswer(requested: string, path: string, result: StatResult, lstatted: BigIntStats | undefined): Buffer {
    if (result.kind === 'error') {
      this.ctx.counters.command('STAT', 'absent');
      return encodeFrame(result.message.slice(0, MAX_PAYLOAD));
    }
    const isFile = result.fields.type === FileType.regular;
    this.remember(requested, {
      resolved: path,
      size: result.fields.size,
      isFile,
      identity: fileIdentity(result.fields),
      version: isFile && lstatted?.isFile() === true ? fileVersion(lstatted) : undefined,
    });
    this.ctx.counters.command('STAT', 'ok');
    // both transactions in one write: ≤ 2 × 4096 bytes, one TLS record, one TCP segment
    return Buffer.concat([encodeFrame(encodeStatLine(result.fields)), encodeFrame(`OK:${result.linkTarget}`.slice(0, MAX_PAYLOAD))]);
  }

  /** what STAT resolved and announced, for the MD5/GET of the same path that follow it */
  private remember(requested: string, statted: Statted): void {
    this.statted.delete(requested);
    this.statted.set(requested, statted);
    if (this.statted.size > MAX_REMEMBERED_STATS) {
      const oldest = this.statted.keys().next().value;
      if (oldest !== undefined) this.statted.delete(oldest);
    }
  }

  private async opendir(requested: string): Promise<Outcome> {
    // list alongside the realpath (names only, sent after the ACL check): one file-system round trip
    const listing = listDirectory(requested);
    const path = await this.admit('OPENDIR', requested);
    if (path === undefined) return 'continue';
    const names = await listing;
    if (names === undefined) {
      this.ctx.counters.command('OPENDIR', 'absent');
      await this.write(encodeFrame(`BAD: cfengine, couldn't open dir ${path}/`.slice(0, MAX_PAYLOAD)));
      return 'continue';
    }
    this.ctx.counters.command('OPENDIR', 'ok');
    await this.writeTransactions(encodeOpendirReply(names));
    return 'continue';
  }

  private opendirNow(requested: string): Outcome | Promise<Outcome> {
    const path = this.admitNow('OPENDIR', requested, lstatQuietlySync(requested));
    if (path === undefined) return 'continue';
    const names = listDirectorySync(path);
    if (names === undefined) {
      this.ctx.counters.command('OPENDIR', 'absent');
      this.writeNow(encodeFrame(`BAD: cfengine, couldn't open dir ${path}/`.slice(0, MAX_PAYLOAD)));
      return 'continue';
    }
    this.ctx.counters.command('OPENDIR', 'ok');
    const frames = encodeOpendirReply(names);
    if (frames.length > 1 && frames.reduce((total, frame) => total + frame.length, 0) > TLS_RECORD_BYTES) {
      return this.writeTransactions(frames).then(() => 'continue');
    }
    this.writeNow(frames.length === 1 ? (frames[0] as Buffer) : Buffer.concat(frames));
    return 'continue';
  }

  private async md5(requested: string, digest: Buffer): Promise<Outcome> {
    // the path its STAT resolved, opened without following a final symlink; realpath again otherwise
    // and the digest of the file's current version when already known: one lstat instead of reading it
    const statted = this.statted.get(requested);
    let local: Buffer | undefined;
    if (statted !== undefined && this.ctx.acl.check(statted.resolved, this.reader) !== undefined) {
      const current = await lstatQuietly(statted.resolved);
      if (current?.isFile() === true && fileIdentity(current) === statted.identity) {
        const version = fileVersion(current);
        const { resolved } = statted;
        local = this.ctx.digests.get(resolved, version);
        if (local === undefined) {
          // as md5Now: only the digest of that version (any write changes the ctime), else checked again below
          const hashed = await md5OfFile(resolved, OPEN_RESOLVED_FOR_READING);
          if (hashed !== undefined && (await hashed.version) === version) {
            local = hashed.digest;
            this.ctx.digests.set(resolved, version, hashed.digest);
          }
        }
      }
    }
    if (local === undefined) {
      const path = await this.admit('MD5', requested);
      if (path === undefined) return 'continue';
      local = (await md5OfFile(path))?.digest ?? Buffer.alloc(16);
    }
    this.ctx.counters.command('MD5', 'ok');
    await this.write(encodeFrame(md5Answer(local.equals(digest))));
    return 'continue';
  }

  private md5Now(requested: string, digest: Buffer): Outcome {
    const statted = this.statted.get(requested);
    let local: Buffer | undefined;
    if (statted !== undefined && this.ctx.acl.check(statted.resolved, this.reader) !== undefined) {
      const current = lstatQuietlySync(statted.resolved);
      if (current?.isFile() === true && fileIdentity(current) === statted.identity) {
        const version = fileVersion(current);
        const { resolved } = statted;
        local = this.ctx.digests.get(resolved, version);
        if (local === undefined) {
          // only the digest of the version just lstatted (same inode: not a file reached through a directory
          // swapped meanwhile); anything else is resolved and checked again below
          const hashed = md5OfFileSync(resolved, OPEN_RESOLVED_FOR_READING);
          if (hashed !== undefined && hashed.version === version) {
            local = hashed.digest;
            this.ctx.digests.set(resolved, version, hashed.digest);
          }
        }
      }
    }
    if (local === undefined) {
      const path = this.admitNow('MD5', requested, lstatQuietlySync(requested));
      if (path === undefined) return 'continue';
      local = md5OfFileSync(path)?.digest ?? Buffer.alloc(16);
    }
    this.ctx.counters.command('MD5', 'ok');
    this.writeNow(encodeFrame(md5Answer(local.equals(digest))));
    return 'continue';
  }

  /**
   * GET of a file its STAT announced, small enough for one read and one write (most policy files): read,
   * sent, and its digest cached for the MD5 that follows. Anything else goes the asynchronous way.
   */
  private getNow(requested: string): Outcome | Promise<Outcome> {
    const statted = this.statted.get(requested);
    if (
      statted === undefined ||
      !statted.isFile ||
      statted.size > GET_NOW_MAX_SIZE ||
      this.username !== 'root' ||
      this.ctx.acl.check(statted.resolved, this.reader) === undefined
    ) {
      return this.get(requested);
    }
    const size = Number(statted.size);
    if (size === 0) {
      // nothing to send, as sendFile: the client reads no bytes
      this.ctx.counters.command('GET', 'ok');
      return 'continue';
    }
    const read = readWholeSync(statted.resolved, OPEN_RESOLVED_FOR_READING, size);
    if (read === undefined || read.identity !== statted.identity) {
      // not the file STAT saw: get() resolves and checks it again, and still holds it to the size STAT
      // announced (a file replaced by a rename must not put the client's byte count out of step)
      return this.get(requested);
    }
    if (read.bytes.length !== size) {
      this.ctx.counters.command('GET', 'error');
      this.closeReason = 'GET: file changed since STAT';
      this.writeNow(rawBlock(`${FILE_CHANGED}: ${statted.resolved}`, GET_BLOCK_SIZE));
      return 'close';
    }
    this.writeNow(read.bytes);
    // hashed once the bytes are on their way (same rule as sendFile: only the version STAT described)
    if (statted.version !== undefined && read.version === statted.version) {
      this.ctx.digests.set(statted.resolved, statted.version, createHash('md5').update(read.bytes).digest());
    }
    this.ctx.counters.command('GET', 'ok');
    return 'continue';
  }

  /**
   * Raw file bytes, exactly the size the earlier STAT announced, in 2048-byte blocks each written
   * alone as cf-serverd's TLSSend does (so each block is its own TLS record); nothing for an empty file.
   * Anything that would put the stream out of step closes the connection (§13 pitfall 3).
   */
  private async get(requested: string): Promise<Outcome> {
    // the path its STAT resolved, opened without following a final symlink; realpath again otherwise
    const statted = this.statted.get(requested);
    let path: string | undefined;
    let fd: number | undefined;
    if (statted !== undefined && this.ctx.acl.check(statted.resolved, this.reader) !== undefined) {
      path = statted.resolved;
      fd = await openForReading(path, OPEN_RESOLVED_FOR_READING).catch(() => undefined);
      const opened = fd === undefined ? undefined : await fstatBig(fd).catch(() => undefined);
      if (fd !== undefined && (opened === undefined || fileIdentity(opened) !== statted.identity)) {
        // not the file STAT saw: resolved and checked again
        closeQuietly(fd);
        fd = undefined;
        path = undefined;
      }
    }
    let announced = statted !== undefined && statted.resolved === path && statted.isFile ? statted.size : undefined;
    if (fd === undefined) {
      path = await this.admit('GET', requested);
      if (path === undefined) return 'continue';
      fd = await openForReading(path, OPEN_FOR_READING).catch(() => undefined);
      announced = statted?.resolved === path && statted.isFile ? statted.size : undefined;
    }
    if (fd === undefined || path === undefined) {
      this.ctx.counters.command('GET', 'absent');
      this.closeReason = 'GET: file vanished';
      await this.write(rawBlock(FAILED, GET_BLOCK_SIZE));
      return 'close';
    }
    try {
      const version = statted?.resolved === path ? statted.version : undefined;
      return await this.sendFile(fd, path, announced, version);
    } finally {
      closeQuietly(fd);
    }
  }

  /**
   * The file's bytes in writes of up to GET_READ_BYTES: GET data is a raw stream that the client reads in
   * pieces of at most its buffer size, so record boundaries do not matter there (§6.2, §7 GET). The bytes
   * are hashed on the way: cf-agent's verify asks for this file's MD5 next, and a file still at the version
   * its STAT saw (fstat after sending) gets that digest cached instead of being read again.
   */
  private async sendFile(fd: number, path: string, announced: bigint | undefined, version: string | undefined): Promise<Outcome> {
    if (announced === undefined || this.username !== 'root') {
      const info = await fstatBig(fd);
      if (this.username !== 'root' && (info.mode & 0o004n) === 0n) {
        // TransferRights: only root (what Rudder agents send) may read files that are not world-readable
        this.denied('GET', { path: displayPath(path), user: this.username });
        await this.write(encodeFrame(FAILED));
        this.closeReason = 'GET refused to non-root user';
        return 'close';
      }
      if (!info.isFile() || (announced !== undefined && info.size !== announced)) return this.fileChanged(path);
      announced = info.size;
    }
    const size = Number(announced);
    if (size === 0) {
      this.ctx.counters.command('GET', 'ok');
      return 'continue';
    }
    // the first read asks for one byte more than announced: a file changed since STAT is caught before
    // anything is sent; a later change shows as a short read (the client's verify digest catches growth)
    let buffer = Buffer.allocUnsafe(Math.min(size + 1, GET_READ_BYTES));
    let bytesRead = await readAt(fd, buffer, buffer.length, 0);
    if (bytesRead > size || (bytesRead < buffer.length && bytesRead !== size)) return this.fileChanged(path);
    const hash = version === undefined ? undefined : createHash('md5');
    let sent = 0;
    for (;;) {
      const chunk = buffer.subarray(0, bytesRead);
      hash?.update(chunk);
      await this.write(chunk);
      sent += bytesRead;
      if (sent >= size || bytesRead === 0) break;
      buffer = Buffer.allocUnsafe(Math.min(size - sent, GET_READ_BYTES));
      bytesRead = await readAt(fd, buffer, buffer.length, sent);
    }
    if (sent !== size) {
      this.ctx.counters.command('GET', 'error');
      this.closeReason = 'GET: file shrank while sending';
      return 'close';
    }
    if (hash !== undefined && version !== undefined) {
      const after = await fstatBig(fd).catch(() => undefined);
      if (after !== undefined && fileVersion(after) === version) this.ctx.digests.set(path, version, hash.digest());
    }
    this.ctx.counters.command('GET', 'ok');
    return 'continue';
  }

  /** cf-serverd's raw "File changed" block, then close: the client's byte count is now wrong */
  private async fileChanged(path: string): Promise<Outcome> {
    this.ctx.counters.command('GET', 'error');
    this.closeReason = 'GET: file changed since STAT';
    await this.write(rawBlock(`${FILE_CHANGED}: ${path}`, GET_BLOCK_SIZE));
    return 'close';
  }

  /**
   * Whole transactions, packed into writes of at most one TLS record's plaintext (§6.2: a transaction
   * never straddles a record; several whole ones may share a record, the receiver reads them one by one).
   */
  private async writeTransactions(frames: readonly Buffer[]): Promise<void> {
    let batch: Buffer[] = [];
    let length = 0;
    for (const frame of frames) {
      if (length + frame.length > TLS_RECORD_BYTES && batch.length > 0) {
        await this.write(batch.length === 1 ? (batch[0] as Buffer) : Buffer.concat(batch, length));
        batch = [];
        length = 0;
      }
      batch.push(frame);
      length += frame.length;
    }
    if (batch.length > 0) await this.write(batch.length === 1 ? (batch[0] as Buffer) : Buffer.concat(batch, length));
  }

  /**
   * One transaction (or GET block) per socket.write. A write starts only once the previous one's callback
   * has fired, so Node never merges queued chunks into one SSL_write that OpenSSL would cut across TLS
   * records; the last frame of a reply is not waited for (the next request comes after the client read it).
   */
  private async write(buffer: Buffer): Promise<void> {
    while (this.writing) {
      await new Promise<void>((resolve, reject) => this.writeWaiters.push({ resolve, reject }));
    }
    this.writeNow(buffer);
  }

  /**
   * write() when no write is in flight (the synchronous answers); throws when the connection is gone.
   * The bytes go to the socket first: the agent is waiting for them.
   */
  private writeNow(buffer: Buffer): void {
    if (this.socket.destroyed || !this.socket.writable) throw relayError('RELAY_ERR_CFENGINE_CLOSED');
    this.writing = true;
    this.socket.write(buffer, this.afterWrite);
    this.sent += buffer.length;
    this.ctx.counters.bytesSent(buffer.length);
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

/** the counter name of a request that did not parse: its command, or BAD for an unknown word */
function knownOrBad(word: string): string {
  if (word === 'SYNCH') return 'STAT';
  return ['GET', 'OPENDIR', 'MD5', 'EXEC'].includes(word) ? word : 'BAD';
}

/** cf-serverd's raw (unframed) GET failure: the text NUL-padded to a whole block */
function rawBlock(text: string, size: number): Buffer {
  const block = Buffer.alloc(size);
  block.write(text.slice(0, size), 0, 'latin1');
  return block;
}
