// The requests of a connection (spec-cfengine-protocol.md §7), one implementation each: STAT, OPENDIR,
// MD5, GET, VERSION, and the dispatch to them and to EXEC (exec.ts). File-system calls go through the file
// service (files.ts over src/fs-direct). Each request has a synchronous answer (direct calls, one write; the
// common case, see dispatch) and an asynchronous one (the thread pool of a slow disk, large files, EXEC),
// which say the same bytes (test/cfengine/protocol.test.ts runs every request in both modes).

import { createHash } from 'node:crypto';
import type { BigIntStats } from 'node:fs';
import { displayPath, fsPath } from '../access/index.js';
import {
  FAILED,
  FileType,
  FILE_CHANGED,
  GET_BLOCK_SIZE,
  MAX_PAYLOAD,
  REQUEST_DENIED,
  SERVER_VERSION,
  encodeFrame,
  encodeOpendirReply,
  encodeStatLine,
  md5Answer,
  type Request,
} from './codec.js';
import { exec } from './exec.js';
import {
  OPEN_FOR_READING,
  OPEN_RESOLVED_FOR_READING,
  SYNC_READ_MAX_BYTES,
  closeQuietly,
  directFileSystem,
  fileIdentity,
  inThreadPoolMode,
  listDirectorySync,
  lstatQuietlySync,
  md5OfFileSync,
  statForReplySync,
  fileVersion,
  fstatBig,
  listDirectory,
  lstatQuietly,
  md5OfFile,
  openForReading,
  readAt,
  statForReply,
} from './files.js';
import type { Outcome, Session } from './session.js';

/** CLOCK_DRIFT: SYNCH refused when client and server clocks differ by more (denybadclocks) */
const CLOCK_DRIFT_S = 3600;
/** GET reads (and writes) this much per call (a multiple of the 2048-byte block) */
const GET_READ_BYTES = 32 * GET_BLOCK_SIZE;

/**
 * One request; 'close' when the connection must end after what was written. The common case is answered
 * synchronously (an Outcome, no promise): while the file system is the fast local one (src/fs-direct) and
 * no write is in flight, STAT, OPENDIR, MD5, GET of a small file and VERSION make their file-system calls
 * directly and write their answer at once; otherwise (the thread-pool mode of a slow disk, a large file, a
 * write still in flight, EXEC) the request is answered by the asynchronous handlers below. Per request,
 * that saves the ~8 nested promises and microtask turns that most of the main thread's time went to.
 */
export function dispatch(session: Session, request: Request): Outcome | Promise<Outcome> {
  if (inThreadPoolMode() || session.writeInFlight) return dispatchAsync(session, request);
  switch (request.command) {
    case 'EMPTY':
      return 'continue';
    case 'STAT':
      return statSync(session, request.path, request.clientTime);
    case 'OPENDIR':
      return opendirSync(session, request.path);
    case 'GET':
      return getSync(session, request.path);
    case 'MD5':
      return md5Sync(session, request.path, request.digest);
    case 'VERSION':
      session.tally.command('VERSION', 'ok');
      session.writeNow(encodeFrame(`OK: ${SERVER_VERSION}`));
      return 'continue';
    default:
      return dispatchAsync(session, request);
  }
}

async function dispatchAsync(session: Session, request: Request): Promise<Outcome> {
  switch (request.command) {
    case 'EMPTY':
      return 'continue';
    case 'STAT':
      return stat(session, request.path, request.clientTime);
    case 'OPENDIR':
      return opendir(session, request.path);
    case 'GET':
      return get(session, request.path);
    case 'MD5':
      return md5(session, request.path, request.digest);
    case 'VERSION':
      session.tally.command('VERSION', 'ok');
      await session.write(encodeFrame(`OK: ${SERVER_VERSION}`));
      return 'continue';
    case 'EXEC':
      return exec(session, request.args);
    case 'BAD':
      session.tally.command(knownOrBad(request.word), 'error');
      return protocolError(session, `illegal request ${JSON.stringify(request.word)}`);
    default:
      session.tally.command(request.command, 'error');
      return protocolError(session, `unsupported request ${request.command}`);
  }
}

async function protocolError(session: Session, reason: string): Promise<Outcome> {
  session.setCloseReason(reason, 'RELAY_ERR_CFENGINE_CODEC');
  await session.write(encodeFrame(REQUEST_DENIED));
  return 'close';
}

/** the counter name of a request that did not parse: its command, or BAD for an unknown word */
function knownOrBad(word: string): string {
  if (word === 'SYNCH') return 'STAT';
  return ['GET', 'OPENDIR', 'MD5', 'EXEC'].includes(word) ? word : 'BAD';
}

/** STAT (SYNCH): the 13 fields and the link target, both transactions in one write */
async function stat(session: Session, requested: string, clientTime: number): Promise<Outcome> {
  const { admission, ctx } = session;
  admission.forget(requested);
  const early = await lstatQuietly(requested);
  const path = await admission.admit('STAT', requested, early);
  if (path === undefined) return 'continue';
  // denybadclocks: refused when the client's clock is too far from ours
  const now = Math.floor(Date.now() / 1000);
  if (ctx.denyBadClocks && Math.abs(now - clientTime) > CLOCK_DRIFT_S) {
    admission.denied('STAT', { clientTime, serverTime: now }, 'cfengine clocks too far apart');
    await session.write(encodeFrame(`BAD: Clocks are too far unsynchronized ${now}/${clientTime}`));
    return 'continue';
  }
  const result = await statForReply(path, early);
  if (result.kind === 'error') {
    session.tally.command('STAT', 'absent');
    await session.write(encodeFrame(result.message.slice(0, MAX_PAYLOAD)));
    return 'continue';
  }
  session.tally.command('STAT', 'ok');
  // ≤ 2 × 4096 bytes: one TLS record, one TCP segment. Sent first: the agent waits for it, and what is
  // remembered below is needed only by this connection's next request, which is not read before this
  // handler returns (CfengineConnection.serve answers one request at a time)
  const sent = session.write(Buffer.concat([encodeFrame(encodeStatLine(result.fields)), encodeFrame(`OK:${result.linkTarget}`.slice(0, MAX_PAYLOAD))]));
  const isFile = result.fields.type === FileType.regular;
  admission.remember(requested, {
    resolved: path,
    size: result.fields.size,
    isFile,
    identity: fileIdentity(result.fields),
    version: isFile && early?.isFile() === true ? fileVersion(early) : undefined,
  });
  await sent;
  return 'continue';
}

/** stat() with direct calls and one write */
function statSync(session: Session, requested: string, clientTime: number): Outcome {
  const { admission, ctx } = session;
  admission.forget(requested);
  const early = lstatQuietlySync(requested);
  const path = admission.admitSync('STAT', requested, early);
  if (path === undefined) return 'continue';
  const now = Math.floor(Date.now() / 1000);
  if (ctx.denyBadClocks && Math.abs(now - clientTime) > CLOCK_DRIFT_S) {
    admission.denied('STAT', { clientTime, serverTime: now }, 'cfengine clocks too far apart');
    session.writeNow(encodeFrame(`BAD: Clocks are too far unsynchronized ${now}/${clientTime}`));
    return 'continue';
  }
  const result = statForReplySync(path, early);
  if (result.kind === 'error') {
    session.tally.command('STAT', 'absent');
    session.writeNow(encodeFrame(result.message.slice(0, MAX_PAYLOAD)));
    return 'continue';
  }
  session.tally.command('STAT', 'ok');
  session.writeNow(Buffer.concat([encodeFrame(encodeStatLine(result.fields)), encodeFrame(`OK:${result.linkTarget}`.slice(0, MAX_PAYLOAD))]));
  const isFile = result.fields.type === FileType.regular;
  admission.remember(requested, {
    resolved: path,
    size: result.fields.size,
    isFile,
    identity: fileIdentity(result.fields),
    version: isFile && early?.isFile() === true ? fileVersion(early) : undefined,
  });
  return 'continue';
}

/** opendir() with direct calls; one write unless the listing needs several TLS records */
function opendirSync(session: Session, requested: string): Outcome | Promise<Outcome> {
  const path = session.admission.admitSync('OPENDIR', requested, lstatQuietlySync(requested));
  if (path === undefined) return 'continue';
  const names = listDirectorySync(path);
  if (names === undefined) {
    session.tally.command('OPENDIR', 'absent');
    session.writeNow(encodeFrame(`BAD: cfengine, couldn't open dir ${path}/`.slice(0, MAX_PAYLOAD)));
    return 'continue';
  }
  session.tally.command('OPENDIR', 'ok');
  const written = session.writeTransactions(encodeOpendirReply(names));
  return written === undefined ? 'continue' : written.then(() => 'continue');
}

async function opendir(session: Session, requested: string): Promise<Outcome> {
  const path = await session.admission.admit('OPENDIR', requested, await lstatQuietly(requested));
  if (path === undefined) return 'continue';
  const names = await listDirectory(path);
  if (names === undefined) {
    session.tally.command('OPENDIR', 'absent');
    await session.write(encodeFrame(`BAD: cfengine, couldn't open dir ${path}/`.slice(0, MAX_PAYLOAD)));
    return 'continue';
  }
  session.tally.command('OPENDIR', 'ok');
  await session.writeTransactions(encodeOpendirReply(names));
  return 'continue';
}

async function md5(session: Session, requested: string, digest: Buffer): Promise<Outcome> {
  const { admission, ctx } = session;
  // the path its STAT resolved, while it still names the file STAT saw, and the digest of that file's
  // current version when already known: one lstat instead of reading it
  const statted = admission.statted(requested);
  let local: Buffer | undefined;
  if (statted !== undefined) {
    const current = await lstatQuietly(statted.resolved);
    if (current?.isFile() === true && fileIdentity(current) === statted.identity) {
      const version = fileVersion(current);
      local = ctx.digests.get(statted.resolved, version);
      if (local === undefined) {
        // only the digest of the version just lstatted (opened without following a final symlink: not a
        // file reached through a directory swapped meanwhile); anything else is resolved and checked below
        const hashed = await md5OfFile(statted.resolved, OPEN_RESOLVED_FOR_READING);
        if (hashed !== undefined && hashed.version === version) {
          local = hashed.digest;
          ctx.digests.set(statted.resolved, version, hashed.digest);
        }
      }
    }
  }
  if (local === undefined) {
    const path = await admission.admit('MD5', requested, await lstatQuietly(requested));
    if (path === undefined) return 'continue';
    local = (await md5OfFile(path))?.digest ?? Buffer.alloc(16);
  }
  session.tally.command('MD5', 'ok');
  await session.write(encodeFrame(md5Answer(local.equals(digest))));
  return 'continue';
}

/**
 * md5() with direct calls and one write. A file to hash that is larger than a direct read goes to md5()
 * from the start (nothing has been done yet that it would do again differently): its reads may then go
 * to the thread pool as soon as one is slow.
 */
function md5Sync(session: Session, requested: string, digest: Buffer): Outcome | Promise<Outcome> {
  const { admission, ctx } = session;
  const statted = admission.statted(requested);
  let local: Buffer | undefined;
  if (statted !== undefined) {
    const current = lstatQuietlySync(statted.resolved);
    if (current?.isFile() === true && fileIdentity(current) === statted.identity) {
      const version = fileVersion(current);
      local = ctx.digests.get(statted.resolved, version);
      if (local === undefined) {
        if (current.size > SYNC_READ_MAX_BYTES) return md5(session, requested, digest);
        const hashed = md5OfFileSync(statted.resolved, OPEN_RESOLVED_FOR_READING);
        if (hashed !== undefined && hashed.version === version) {
          local = hashed.digest;
          ctx.digests.set(statted.resolved, version, hashed.digest);
        }
      }
    }
  }
  if (local === undefined) {
    const early = lstatQuietlySync(requested);
    if (early !== undefined && early.size > SYNC_READ_MAX_BYTES) return md5(session, requested, digest);
    const path = admission.admitSync('MD5', requested, early);
    if (path === undefined) return 'continue';
    local = md5OfFileSync(path)?.digest ?? Buffer.alloc(16);
  }
  session.tally.command('MD5', 'ok');
  session.writeNow(encodeFrame(md5Answer(local.equals(digest))));
  return 'continue';
}

/**
 * get() with direct calls: a file smaller than one GET write is read and written at once; a larger one is
 * sent by sendFile (its reads may go to the thread pool, each write waits for the previous one).
 */
function getSync(session: Session, requested: string): Outcome | Promise<Outcome> {
  const { admission } = session;
  const statted = admission.statted(requested);
  let path: string | undefined;
  let fd: number | undefined;
  if (statted !== undefined) {
    path = statted.resolved;
    fd = openQuietlySync(statted.resolved, OPEN_RESOLVED_FOR_READING);
    const opened = fd === undefined ? undefined : fstatQuietlySync(fd);
    if (fd !== undefined && (opened === undefined || fileIdentity(opened) !== statted.identity)) {
      closeQuietly(fd);
      fd = undefined;
      path = undefined;
    }
  }
  let announced = statted !== undefined && statted.resolved === path && statted.isFile ? statted.size : undefined;
  if (fd === undefined) {
    path = admission.admitSync('GET', requested, lstatQuietlySync(requested));
    if (path === undefined) return 'continue';
    fd = openQuietlySync(path, OPEN_FOR_READING);
    announced = statted?.resolved === path && statted.isFile ? statted.size : undefined;
  }
  if (fd === undefined || path === undefined) {
    session.tally.command('GET', 'absent');
    session.setCloseReason('GET: file vanished', 'RELAY_ERR_FILE_CHANGED');
    session.writeNow(rawBlock(FAILED, GET_BLOCK_SIZE));
    return 'close';
  }
  const version = statted?.resolved === path ? statted.version : undefined;
  let sent: Outcome | Promise<Outcome> | undefined;
  try {
    sent = sendSmallFile(session, fd, path, announced, version);
    if (sent === undefined) {
      const open = fd;
      sent = sendFile(session, fd, path, announced, version).finally(() => closeQuietly(open));
    }
    return sent;
  } finally {
    if (typeof sent !== 'object') closeQuietly(fd);
  }
}

/** sendFile for a file smaller than one GET write, at once; undefined (nothing done) for a larger one or a non-root user */
function sendSmallFile(session: Session, fd: number, path: string, announced: bigint | undefined, version: string | undefined): Outcome | undefined {
  const { ctx } = session;
  if (session.username !== 'root') return undefined;
  if (announced === undefined) {
    const info = directFileSystem.fstat(fd);
    if (!info.isFile()) return fileChangedSync(session, path);
    announced = info.size;
  }
  const size = Number(announced);
  if (size >= GET_READ_BYTES) return undefined;
  if (size === 0) {
    if (version !== undefined) ctx.digests.set(path, version, EMPTY_MD5);
    session.tally.command('GET', 'ok');
    return 'continue';
  }
  // one byte more than announced: a file changed since STAT is caught before anything is sent
  const buffer = Buffer.allocUnsafe(size + 1);
  if (directFileSystem.read(fd, buffer, 0, size + 1, 0) !== size) return fileChangedSync(session, path);
  const chunk = buffer.subarray(0, size);
  session.writeNow(chunk);
  if (version !== undefined) {
    // hashed once the bytes are on their way: cached for the MD5 that follows while the file is still that version
    const digest = createHash('md5').update(chunk).digest();
    const after = fstatQuietlySync(fd);
    if (after !== undefined && fileVersion(after) === version) ctx.digests.set(path, version, digest);
  }
  session.tally.command('GET', 'ok');
  return 'continue';
}

function openQuietlySync(path: string, flags: number): number | undefined {
  try {
    return directFileSystem.open(fsPath(path), flags);
  } catch {
    return undefined;
  }
}

function fstatQuietlySync(fd: number): BigIntStats | undefined {
  try {
    return directFileSystem.fstat(fd);
  } catch {
    return undefined;
  }
}

/** fileChanged() written at once */
function fileChangedSync(session: Session, path: string): Outcome {
  session.tally.command('GET', 'error');
  session.setCloseReason('GET: file changed since STAT', 'RELAY_ERR_FILE_CHANGED');
  session.writeNow(rawBlock(`${FILE_CHANGED}: ${path}`, GET_BLOCK_SIZE));
  return 'close';
}

/**
 * Raw file bytes, exactly the size the earlier STAT announced; nothing for an empty file. Anything that
 * would put the stream out of step closes the connection (§13 pitfall 3).
 */
async function get(session: Session, requested: string): Promise<Outcome> {
  const { admission, ctx } = session;
  // the path its STAT resolved, opened without following a final symlink; realpath again otherwise
  const statted = admission.statted(requested);
  let path: string | undefined;
  let fd: number | undefined;
  if (statted !== undefined) {
    path = statted.resolved;
    fd = await openForReading(statted.resolved, OPEN_RESOLVED_FOR_READING).catch(() => undefined);
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
    path = await admission.admit('GET', requested, await lstatQuietly(requested));
    if (path === undefined) return 'continue';
    fd = await openForReading(path, OPEN_FOR_READING).catch(() => undefined);
    // still held to the size STAT announced: a file replaced by a rename must not put the client's byte count out of step
    announced = statted?.resolved === path && statted.isFile ? statted.size : undefined;
  }
  if (fd === undefined || path === undefined) {
    session.tally.command('GET', 'absent');
    session.setCloseReason('GET: file vanished', 'RELAY_ERR_FILE_CHANGED');
    await session.write(rawBlock(FAILED, GET_BLOCK_SIZE));
    return 'close';
  }
  try {
    const version = statted?.resolved === path ? statted.version : undefined;
    return await sendFile(session, fd, path, announced, version);
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
async function sendFile(session: Session, fd: number, path: string, announced: bigint | undefined, version: string | undefined): Promise<Outcome> {
  const { ctx } = session;
  if (announced === undefined || session.username !== 'root') {
    const info = await fstatBig(fd);
    if (session.username !== 'root' && (info.mode & 0o004n) === 0n) {
      // TransferRights: only root (what Rudder agents send) may read files that are not world-readable
      session.admission.denied('GET', { path: displayPath(path), user: session.username });
      await session.write(encodeFrame(FAILED));
      session.setCloseReason('GET refused to non-root user', 'RELAY_ERR_CFENGINE_ACCESS');
      return 'close';
    }
    if (!info.isFile() || (announced !== undefined && info.size !== announced)) return fileChanged(session, path);
    announced = info.size;
  }
  const size = Number(announced);
  if (size === 0) {
    // nothing to read, and the digest is known: cached for the MD5 that follows, as a sent file's is (a
    // version records the size, so this version of the file is empty whatever happened since)
    if (version !== undefined) ctx.digests.set(path, version, EMPTY_MD5);
    session.tally.command('GET', 'ok');
    return 'continue';
  }
  // the first read asks for one byte more than announced: a file changed since STAT is caught before
  // anything is sent; a later change shows as a short read (the client's verify digest catches growth)
  let buffer = Buffer.allocUnsafe(Math.min(size + 1, GET_READ_BYTES));
  let bytesRead = await readAt(fd, buffer, buffer.length, 0);
  if (bytesRead > size || (bytesRead < buffer.length && bytesRead !== size)) return fileChanged(session, path);
  const hash = version === undefined ? undefined : createHash('md5');
  let sent = 0;
  for (;;) {
    const chunk = buffer.subarray(0, bytesRead);
    // hashed once the bytes are on their way (the write is synchronous up to the socket): the agent reads
    // them meanwhile; the chunk is never written to again
    const written = session.write(chunk);
    hash?.update(chunk);
    await written;
    sent += bytesRead;
    if (sent >= size || bytesRead === 0) break;
    buffer = Buffer.allocUnsafe(Math.min(size - sent, GET_READ_BYTES));
    bytesRead = await readAt(fd, buffer, buffer.length, sent);
  }
  if (sent !== size) {
    session.tally.command('GET', 'error');
    session.setCloseReason('GET: file shrank while sending', 'RELAY_ERR_FILE_CHANGED');
    return 'close';
  }
  if (hash !== undefined && version !== undefined) {
    const after = await fstatBig(fd).catch(() => undefined);
    if (after !== undefined && fileVersion(after) === version) ctx.digests.set(path, version, hash.digest());
  }
  session.tally.command('GET', 'ok');
  return 'continue';
}

const EMPTY_MD5 = createHash('md5').digest();

/** cf-serverd's raw "File changed" block, then close: the client's byte count is now wrong */
async function fileChanged(session: Session, path: string): Promise<Outcome> {
  session.tally.command('GET', 'error');
  session.setCloseReason('GET: file changed since STAT', 'RELAY_ERR_FILE_CHANGED');
  await session.write(rawBlock(`${FILE_CHANGED}: ${path}`, GET_BLOCK_SIZE));
  return 'close';
}

/** cf-serverd's raw (unframed) GET failure: the text NUL-padded to a whole block */
function rawBlock(text: string, size: number): Buffer {
  const block = Buffer.alloc(size);
  block.write(text.slice(0, size), 0, 'latin1');
  return block;
}
