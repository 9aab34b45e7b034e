// The CFEngine copy client: what cf-agent's copy_from does against a stock cf-serverd (STAT, OPENDIR, MD5, GET;
// spec-cfengine-protocol.md §7), used by the sync's CFEngine pull (spec-https-front-cfserverd-sync.md §3.4):
// several TLS connections, and on each one requests pipelined. cf-serverd answers one request at a time and
// in order, reading each request with one SSL_read for the header and one for the body, so requests queued
// behind one another are answered as if sent one by one, provided no frame straddles a TLS record: requests go
// out in writes of whole frames of at most 16 000 bytes, one write in flight per connection (Node would merge
// queued writes into one SSL_write, which OpenSSL cuts at 16 KiB).
// GET answers raw bytes sized by the STAT before it (spec-cfengine-protocol.md §7 GET); a refusal or a file
// changed during the copy puts the stream out of step, so that connection is dropped and its requests fail.
// Callers verify what they fetched (MD5) and retry failed requests on another connection.

import type { KeyObject } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { once } from 'node:events';
import { RelayError, messageOf } from '../errors.js';
import { CfengineClientError, connectCfengineServer, type CfengineClient } from './client.js';
import { CFD_FALSE, CFD_TERMINATOR, CFD_TRUE, GET_BLOCK_SIZE, MD5_DIGEST_OFFSET, MD5_DIGEST_SIZE, decodeOpendirPacket, parseStatLine, type StatFields } from './codec.js';

const MAX_BATCH_BYTES = 16_000;
/** requests sent and not answered yet, per connection */
const PIPELINE_DEPTH = 64;
const CONNECT_TIMEOUT_MS = 15_000;
const ATTEMPTS = 3;

export interface CopyClientOptions {
  readonly host: string;
  readonly port: number;
  readonly privateKey: KeyObject;
  readonly certificate: string;
  /** TLS connections opened (as needed) and used round robin */
  readonly connections: number;
  /** the server's key check (a pin): undefined to go on, or why it is refused (CfengineClientOptions) */
  readonly verifyServerKey: (key: KeyObject) => string | undefined;
  readonly signal: AbortSignal;
}

export interface RemoteStat {
  readonly kind: 'file' | 'directory' | 'other';
  readonly mode: number;
  readonly size: number;
  /** seconds */
  readonly mtime: number;
}

/** a request the server refused (missing file, ACL) — the connection is still usable */
export class CfengineRefusedError extends RelayError {
  constructor(message: string) {
    super('RELAY_ERR_CFENGINE_REFUSED', message);
    this.name = 'CfengineRefusedError';
  }
}

type Job = { payload: Buffer | string; read: (client: CfengineClient) => Promise<void> };

function text(payload: Buffer): string {
  const nul = payload.indexOf(0);
  return payload.subarray(0, nul === -1 ? payload.length : nul).toString('utf8');
}

/** one pipelined connection; `dead` once anything went wrong on it */
class Connection {
  dead: string | undefined;
  private readonly outbox: Job[] = [];
  private writing = false;
  private inFlight = 0;
  private readonly waiting: Array<() => void> = [];
  private replies: Promise<void> = Promise.resolve();

  constructor(private readonly client: CfengineClient) {}

  get load(): number {
    return this.inFlight + this.outbox.length;
  }

  run<T>(payload: Buffer | string, read: (client: CfengineClient) => Promise<T>): Promise<T> {
    if (this.dead !== undefined) return Promise.reject(new CfengineClientError(this.dead));
    return new Promise<T>((resolve, reject) => {
      this.outbox.push({
        payload,
        read: async (client) => {
          if (this.dead !== undefined) {
            // what is still buffered belongs to a stream out of step
            reject(new CfengineClientError(this.dead));
            return;
          }
          try {
            resolve(await read(client));
          } catch (error) {
            if (!(error instanceof CfengineRefusedError)) this.kill(messageOf(error));
            reject(error);
          }
        },
      });
      void this.pump();
    });
  }

  kill(reason: string): void {
    this.dead ??= reason;
    this.client.close();
  }

  private async pump(): Promise<void> {
    if (this.writing) return;
    this.writing = true;
    try {
      while (this.outbox.length > 0 && this.dead === undefined) {
        if (this.inFlight >= PIPELINE_DEPTH) {
          await new Promise<void>((resolve) => this.waiting.push(resolve));
          continue;
        }
        const batch: Job[] = [];
        let bytes = 0;
        while (this.outbox.length > 0 && this.inFlight + batch.length < PIPELINE_DEPTH) {
          const next = this.outbox[0]!;
          const size = 8 + Buffer.byteLength(next.payload);
          if (batch.length > 0 && bytes + size > MAX_BATCH_BYTES) break;
          batch.push(this.outbox.shift()!);
          bytes += size;
        }
        this.inFlight += batch.length;
        // replies are read in request order, each job after the one before
        for (const job of batch) {
          this.replies = this.replies.then(async () => {
            await job.read(this.client);
            this.inFlight -= 1;
            this.waiting.shift()?.();
          });
        }
        try {
          await this.client.sendMany(batch.map((job) => job.payload));
        } catch (error) {
          this.kill(messageOf(error));
        }
      }
    } finally {
      this.writing = false;
    }
    if (this.dead !== undefined) {
      // requests not sent: failed, so that callers retry them elsewhere
      for (const job of this.outbox.splice(0)) void job.read(this.client);
      for (const wake of this.waiting.splice(0)) wake();
    }
  }
}

export interface CopyClient {
  stat(path: string): Promise<RemoteStat>;
  opendir(path: string): Promise<string[]>;
  /** true when the server's file differs from `digest` */
  md5Differs(path: string, digest: Buffer): Promise<boolean>;
  /** the file's `size` bytes written to `destination` (created, mode 0600, not fsynced: the caller verifies, then syncs) */
  get(path: string, size: number, destination: string): Promise<void>;
  /** requests sent (for the status' request count) */
  readonly requests: number;
  close(): void;
}

export function createCopyClient(options: CopyClientOptions): CopyClient {
  const connections: Array<Promise<Connection> | undefined> = Array.from({ length: options.connections }, () => undefined);
  let requests = 0;
  let next = 0;

  const open = async (): Promise<Connection> => {
    const client = await connectCfengineServer({
      host: options.host,
      port: options.port,
      privateKey: options.privateKey,
      certificate: options.certificate,
      connectTimeoutMs: CONNECT_TIMEOUT_MS,
      verifyServerKey: options.verifyServerKey,
      username: 'root',
      signal: options.signal,
    });
    return new Connection(client);
  };

  /** the least loaded live connection (opening them as needed, one at a time each) */
  async function connection(): Promise<Connection> {
    // round robin over slots; a dead or failed slot is reopened
    const slot = next;
    next = (next + 1) % connections.length;
    let pending = connections[slot];
    if (pending !== undefined) {
      const existing = await pending.catch(() => undefined);
      if (existing !== undefined && existing.dead === undefined) return existing;
    }
    pending = open();
    connections[slot] = pending;
    pending.catch(() => {
      if (connections[slot] === pending) connections[slot] = undefined;
    });
    return pending;
  }

  /** one request; a broken connection (not a refusal) is retried on another, up to ATTEMPTS times */
  async function run<T>(payload: Buffer | string, read: (client: CfengineClient) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt += 1) {
      if (options.signal.aborted) throw new CfengineClientError('copy stopped (aborted)');
      requests += 1;
      try {
        return await (await connection()).run(payload, read);
      } catch (error) {
        if (error instanceof CfengineRefusedError || attempt >= ATTEMPTS || options.signal.aborted) throw error;
      }
    }
  }

  const refusal = (what: string, reply: string): CfengineRefusedError => new CfengineRefusedError(`${what}: ${reply.slice(0, 200)}`);

  return {
    get requests() {
      return requests;
    },
    stat(path) {
      return run(`SYNCH ${Math.floor(Date.now() / 1000)} STAT ${path}`, async (client) => {
        const first = text((await client.readFrame()).payload);
        if (first.startsWith('BAD:')) throw refusal(`STAT ${path}`, first);
        const fields: StatFields | undefined = parseStatLine(first);
        if (fields === undefined) throw new CfengineClientError(`STAT ${path}: unreadable answer ${JSON.stringify(first.slice(0, 80))}`);
        await client.readFrame(); // "OK:" or "OK:<link target>"
        return {
          kind: fields.type === 0 ? 'file' : fields.type === 2 ? 'directory' : 'other',
          mode: fields.mode,
          size: Number(fields.size),
          mtime: Number(fields.mtime),
        } satisfies RemoteStat;
      });
    },
    opendir(path) {
      return run(`OPENDIR ${path}`, async (client) => {
        const names: string[] = [];
        for (;;) {
          const frame = await client.readFrame();
          const head = text(frame.payload);
          if (names.length === 0 && head.startsWith('BAD:')) throw refusal(`OPENDIR ${path}`, head);
          const { done, error } = decodeOpendirPacket(frame.payload, names);
          if (error !== undefined) throw new CfengineClientError(`OPENDIR ${path}: ${error}`);
          if (done || head.startsWith(CFD_TERMINATOR)) break;
        }
        return names.filter((name) => name !== '.' && name !== '..');
      });
    },
    md5Differs(path, digest) {
      return run(Buffer.concat([Buffer.from(`MD5 ${path}`, 'latin1'), Buffer.alloc(MD5_DIGEST_OFFSET), digest.subarray(0, MD5_DIGEST_SIZE)]), async (client) => {
        const answer = text((await client.readFrame()).payload);
        if (answer === CFD_TRUE) return true;
        if (answer === CFD_FALSE) return false;
        throw refusal(`MD5 ${path}`, answer);
      });
    },
    get(path, size, destination) {
      return run(`GET ${GET_BLOCK_SIZE} ${path}`, async (client) => {
        const out = createWriteStream(destination, { mode: 0o600 });
        try {
          let remaining = size;
          let first = true;
          while (remaining > 0) {
            const chunk = await client.readRaw(remaining);
            if (first) {
              first = false;
              // a refusal instead of the bytes (raw, or framed "t <n>" + BAD): the stream is out of step
              const head = chunk.subarray(0, 16).toString('latin1');
              if (head.startsWith('BAD: ') || /^t \d+\0*BAD/.test(head)) throw new CfengineClientError(`GET ${path}: refused or changed during the copy`);
            }
            remaining -= chunk.length;
            if (!out.write(chunk)) await once(out, 'drain');
          }
          out.end();
          await once(out, 'close');
        } catch (error) {
          out.destroy();
          throw error;
        }
      });
    },
    close() {
      for (const pending of connections) void pending?.then((c) => c.kill('closed')).catch(() => undefined);
    },
  };
}
