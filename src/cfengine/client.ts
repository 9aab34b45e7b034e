// The client half of the CFEngine protocol (version 2/3, "TLS"), as libcfnet 3.21 speaks it
// (ServerConnection → TLSConnect → TLSClientIdentificationDialog; spec-cfengine-protocol.md §5–8):
// TCP with TCP_NODELAY, TLS presenting a CN=a certificate made from our RSA key, a check of the key the
// server presents (done by the caller: a pin), the version line, IDENTITY, then framed transactions.
// Used by the native remote run (cf-runagent's EXEC, HailExec in cf-runagent.c).

import type { KeyObject } from 'node:crypto';
import { connect as tcpConnect } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { RelayError, messageOf, relayError } from '../errors.js';
import { makeServerCertificate } from './certificate.js';
import { CFD_TERMINATOR, HEADER_SIZE, decodeHeader, encodeFrame, parseVersionLine, type Frame } from './codec.js';

/** what this client asks for (CF_PROTOCOL_LATEST of 3.21); it drops to the server's if lower and ≥ 2 */
export const CLIENT_PROTOCOL_VERSION = 3;
export const CLIENT_VERSION = '3.21.0';
/** TLSRecvLines reads the identification lines into a 1024-byte buffer */
const MAX_LINE_BYTES = 1024;
/** bytes received and not read yet before the socket is paused */
const MAX_PENDING_BYTES = 1024 * 1024;

export class CfengineClientError extends RelayError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('RELAY_ERR_CFENGINE_CLIENT', message, options);
    this.name = 'CfengineClientError';
  }
}

export interface CfengineClientOptions {
  readonly host: string;
  readonly port: number;
  /** our RSA key: the TLS certificate (CN=a, like cf-agent's) is made from it */
  readonly privateKey: KeyObject;
  /** a certificate made from privateKey, to avoid one signature per connection */
  readonly certificate?: string;
  /** TCP connect + TLS handshake + identification */
  readonly connectTimeoutMs: number;
  /**
   * checks the server's public key (RSA) after the handshake: undefined to go on, or why it is refused.
   * cf-agent compares it with ppkeys/root-<digest>.pub; a relay compares it with the node's pin.
   */
  readonly verifyServerKey: (publicKey: KeyObject) => string | undefined;
  /** IDENTITY USERNAME=… (cf-runagent sends the user it runs as; Rudder runs it as root) */
  readonly username?: string;
  readonly signal?: AbortSignal;
}

export interface CfengineClient {
  /** the negotiated protocol version (2 or 3) */
  readonly protocolVersion: number;
  readonly serverKey: KeyObject;
  /** one transaction, written alone (never merged past a TLS record with others) */
  send(payload: Buffer | string): Promise<void>;
  /**
   * several transactions in one write, for pipelining (each still a whole frame: cf-serverd reads a header
   * then a body, one SSL_read each, so the caller keeps a batch within one TLS record, ≤ 16 KiB)
   */
  sendMany(payloads: ReadonlyArray<Buffer | string>): Promise<void>;
  /** the next transaction; rejects when the connection ends or `signal` aborts */
  readFrame(): Promise<Frame>;
  /** 1 to `max` bytes of the raw (unframed) stream: a GET reply, sized by the STAT before it */
  readRaw(max: number): Promise<Buffer>;
  close(): void;
}

function abortReason(signal: AbortSignal | undefined): string {
  const reason: unknown = signal?.reason;
  if (reason instanceof Error && reason.name === 'TimeoutError') return 'timed out';
  return reason instanceof Error ? reason.message : 'aborted';
}

/** connects, checks the server key and identifies; rejects with a CfengineClientError saying why not */
export async function connectCfengineServer(options: CfengineClientOptions): Promise<CfengineClient> {
  const { signal } = options;
  if (signal?.aborted) throw new CfengineClientError(abortReason(signal));
  const tcp = tcpConnect({ host: options.host, port: options.port, noDelay: true });
  tcp.setNoDelay(true);
  tcp.on('error', () => undefined); // reported through the TLS socket or the connect step
  let socket: TLSSocket | undefined;
  const destroyAll = (): void => {
    socket?.destroy();
    tcp.destroy();
  };
  const onAbort = (): void => destroyAll();
  signal?.addEventListener('abort', onAbort, { once: true });

  let buffer: Buffer = Buffer.alloc(0);
  let ended: string | undefined;
  let wake: (() => void) | undefined;
  const wakeUp = (): void => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  const waitData = (): Promise<void> =>
    new Promise((resolve) => {
      wake = resolve;
    });

  const timer = setTimeout(() => {
    ended = `connection timed out after ${options.connectTimeoutMs} ms`;
    destroyAll();
    wakeUp();
  }, options.connectTimeoutMs);
  try {
    await new Promise<void>((resolve, reject) => {
      const fail = (error: Error): void => reject(new CfengineClientError(ended ?? (signal?.aborted ? abortReason(signal) : `cannot connect: ${error.message}`)));
      tcp.once('connect', () => resolve());
      tcp.once('error', fail);
      tcp.once('close', () => fail(relayError('RELAY_ERR_CFENGINE_CLOSED')));
    });
    const tls = tlsConnect({
      socket: tcp,
      key: options.privateKey.export({ type: 'pkcs1', format: 'pem' }),
      cert: options.certificate ?? makeServerCertificate(options.privateKey),
      rejectUnauthorized: false, // any certificate: the key is checked below, as libcfnet does
      checkServerIdentity: () => undefined,
      minVersion: 'TLSv1.2',
    });
    socket = tls;
    await new Promise<void>((resolve, reject) => {
      tls.once('secureConnect', () => resolve());
      tls.once('error', (error) => reject(new CfengineClientError(ended ?? (signal?.aborted ? abortReason(signal) : `TLS handshake failed: ${error.message}`))));
      tls.once('close', () => reject(new CfengineClientError(ended ?? (signal?.aborted ? abortReason(signal) : 'connection closed during the TLS handshake'))));
    });
    tls.on('error', (error) => {
      ended ??= `connection error: ${error.message}`;
      wakeUp();
    });
    tls.on('close', () => {
      ended ??= 'connection closed by the server';
      wakeUp();
    });

    const certificate = tls.getPeerX509Certificate();
    if (certificate === undefined) throw new CfengineClientError('the server presented no certificate');
    const serverKey = certificate.publicKey;
    if (serverKey.asymmetricKeyType !== 'rsa') throw new CfengineClientError(`the server key is ${serverKey.asymmetricKeyType ?? 'unknown'}, not RSA`);
    const refusal = options.verifyServerKey(serverKey);
    if (refusal !== undefined) throw new CfengineClientError(refusal);

    tls.on('data', (chunk: Buffer) => {
      buffer = buffer.length === 0 ? chunk : Buffer.concat([buffer, chunk]);
      wakeUp();
    });
    const readLine = async (): Promise<string> => {
      for (;;) {
        const newline = buffer.indexOf(0x0a);
        if (newline !== -1) {
          const line = buffer.subarray(0, newline).toString('latin1');
          buffer = buffer.subarray(newline + 1);
          return line;
        }
        if (buffer.length > MAX_LINE_BYTES) throw new CfengineClientError('identification line too long');
        if (ended !== undefined) throw new CfengineClientError(`${ended} during identification`);
        await waitData();
      }
    };
    const writeRaw = (bytes: Buffer | string): Promise<void> =>
      new Promise((resolve, reject) => {
        tls.write(bytes, (error) => (error ? reject(new CfengineClientError(`send failed: ${error.message}`)) : resolve()));
      });

    // TLSClientIdentificationDialog
    const banner = await readLine();
    const offered = parseVersionLine(banner);
    if (offered === undefined || offered < 2) throw new CfengineClientError(`the server sent a bad version line: ${JSON.stringify(banner.slice(0, 80))}`);
    const protocolVersion = Math.min(offered, CLIENT_PROTOCOL_VERSION);
    await writeRaw(`CFE_v${protocolVersion} cf-agent ${CLIENT_VERSION}\n`);
    await writeRaw(`IDENTITY USERNAME=${options.username ?? 'root'}\n`);
    const welcome = await readLine();
    if (!welcome.startsWith('OK WELCOME')) throw new CfengineClientError(`the server did not accept our identity: ${JSON.stringify(welcome.slice(0, 80))}`);
    clearTimeout(timer);

    // framed transactions from here on. Bytes are kept as they come and cut into transactions (or raw
    // GET data, which is not framed) only when read, so both kinds can follow each other on one stream.
    const pending: Buffer[] = [];
    let pendingBytes = 0;
    const append = (chunk: Buffer): void => {
      if (chunk.length === 0) return;
      pending.push(chunk);
      pendingBytes += chunk.length;
      if (pendingBytes >= MAX_PENDING_BYTES) tls.pause();
    };
    /** the first `n` pending bytes (n ≤ pendingBytes), removed */
    const take = (n: number): Buffer => {
      const parts: Buffer[] = [];
      let wanted = n;
      while (wanted > 0) {
        const head = pending[0]!;
        if (head.length <= wanted) {
          parts.push(head);
          pending.shift();
          wanted -= head.length;
        } else {
          parts.push(head.subarray(0, wanted));
          pending[0] = head.subarray(wanted);
          wanted = 0;
        }
      }
      pendingBytes -= n;
      if (pendingBytes < MAX_PENDING_BYTES / 2 && tls.isPaused()) tls.resume();
      return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
    };
    const peek = (n: number): Buffer => {
      const head = pending[0]!;
      if (head.length >= n) return head.subarray(0, n);
      const joined = Buffer.concat(pending);
      pending.length = 0;
      pending.push(joined);
      return joined.subarray(0, n);
    };
    const waitMore = async (): Promise<void> => {
      if (signal?.aborted) throw new CfengineClientError(abortReason(signal));
      if (ended !== undefined) throw new CfengineClientError(ended);
      await waitData();
    };
    append(buffer);
    buffer = Buffer.alloc(0);
    tls.removeAllListeners('data');
    tls.on('data', (chunk: Buffer) => {
      append(chunk);
      wakeUp();
    });
    // while the connection is in use, an abort (destroying the sockets) also wakes a pending read
    signal?.addEventListener('abort', wakeUp, { once: true });
    return {
      protocolVersion,
      serverKey,
      send: (payload) => {
        if (ended !== undefined) return Promise.reject(new CfengineClientError(ended));
        return writeRaw(encodeFrame(payload));
      },
      sendMany: (payloads) => {
        if (ended !== undefined) return Promise.reject(new CfengineClientError(ended));
        return writeRaw(Buffer.concat(payloads.map((payload) => encodeFrame(payload))));
      },
      async readFrame() {
        for (;;) {
          if (pendingBytes >= HEADER_SIZE) {
            let length: number;
            try {
              ({ length } = decodeHeader(peek(HEADER_SIZE)));
            } catch (error) {
              tls.destroy();
              throw new CfengineClientError(`protocol error: ${messageOf(error)}`);
            }
            if (pendingBytes >= HEADER_SIZE + length) {
              const header = take(HEADER_SIZE);
              return { status: header[0] === 0x6d ? 'm' : 't', payload: Buffer.from(take(length)) };
            }
          }
          await waitMore();
        }
      },
      async readRaw(max) {
        for (;;) {
          if (pendingBytes > 0) return take(Math.min(max, pending[0]!.length));
          await waitMore();
        }
      },
      close() {
        signal?.removeEventListener('abort', onAbort);
        signal?.removeEventListener('abort', wakeUp);
        destroyAll();
      },
    };
  } catch (error) {
    clearTimeout(timer);
    signal?.removeEventListener('abort', onAbort);
    destroyAll();
    if (error instanceof CfengineClientError) throw error;
    throw new CfengineClientError(messageOf(error));
  }
}

// ---- EXEC, as cf-runagent 3.21 sends it (HailExec) ----

/** "EXEC", then " -D<c1,c2>" (no space after -D) and " -b <b1,b2>" */
export function execRequest(classes: readonly string[], bundles: readonly string[] = []): string {
  let request = 'EXEC';
  if (classes.length > 0) request += ` -D${classes.join(',')}`;
  if (bundles.length > 0) request += ` -b ${bundles.join(',')}`;
  return request;
}

export interface ExecResult {
  /** from "(exit code: N)" (cf-serverd 3.18+); undefined when none came */
  readonly exitCode: number | undefined;
  /** a "BAD:" reply (refusal) came */
  readonly refused: boolean;
  /** the terminator came (otherwise the connection ended first) */
  readonly complete: boolean;
}

/** the reply text as the C client sees it: up to the first NUL */
function cString(payload: Buffer): string {
  const nul = payload.indexOf(0);
  return payload.subarray(0, nul === -1 ? payload.length : nul).toString('utf8');
}

/**
 * Sends EXEC, the class-selection frames (`select`, cf-runagent -s) and the terminator, then reads
 * transactions until the terminator, giving each to `onLine` formatted as cf-runagent prints it after
 * `<prefix>> `: "!! " + the text after "BAD:" (then a newline), "-> " + command output, anything else as
 * is; a newline is added when the transaction has none: the same bytes as cf-runagent's stdout.
 */
export async function runExec(
  client: CfengineClient,
  request: { classes: readonly string[]; bundles?: readonly string[]; select?: readonly string[] },
  prefix: string,
  onLine: (line: string) => void,
): Promise<ExecResult> {
  await client.send(execRequest(request.classes, request.bundles));
  for (const cls of request.select ?? []) await client.send(cls);
  await client.send(CFD_TERMINATOR);
  let exitCode: number | undefined;
  let refused = false;
  for (;;) {
    let frame: Frame;
    try {
      frame = await client.readFrame();
    } catch (error) {
      if (error instanceof CfengineClientError && /closed/.test(error.message)) return { exitCode, refused, complete: false };
      throw error;
    }
    const text = cString(frame.payload);
    if (text.startsWith(CFD_TERMINATOR)) return { exitCode, refused, complete: true };
    let line: string;
    if (text.startsWith('BAD:')) {
      refused = true;
      line = `${prefix}> !! ${text.slice(4)}\n`;
    } else if (text.startsWith('> ')) {
      line = `${prefix}> -> ${text.slice(2)}`;
    } else {
      if (text.startsWith('(exit code:')) {
        const match = /^\(exit code:\s*([+-]?\d+)/.exec(text);
        if (match !== null) exitCode = Number(match[1]);
      }
      line = `${prefix}> ${text}`;
    }
    // cf-runagent appends a newline when the transaction has none (so a "BAD:" line is followed by an empty one)
    if (text.length > 0 && !text.endsWith('\n')) line += '\n';
    onLine(line);
  }
}
