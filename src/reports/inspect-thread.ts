// An inspection thread of the reporting queue: reads a spool file and runs the byte-only part of an
// inspection (decode, S/MIME, run log) off the primary's event loop, and removes the files the queue is
// done with (its identity check and unlink). Holds no registry: the primary
// sends the run info and the certificates to check with (cached here by the key it gives them).

import { X509Certificate } from 'node:crypto';
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { publicKeyOfSpki } from '../der/index.js';
import { RelayError } from '../errors.js';
import { removeIfSame } from '../spool/index.js';
import type { Inspection } from './index.js';
import { inspectContent } from './inspect.js';
import type { SignerCertificate } from '../nodes/index.js';
import type { InspectReply, RemovalReply, ThreadBatch, ThreadCertificate, ThreadRemoval, ThreadReplies, ThreadRequest, ThreadSetup } from './inspect-pool.js';
import { verifySignedPart } from './smime.js';

const setup = workerData as ThreadSetup;
const skipEventTypes = new Set(setup.skipEventTypes);
/** certificates by the primary's key; the primary says when to forget them (see forgetCertificates) */
const certificates = new Map<number, SignerCertificate>();

function certificateOf(sent: ThreadCertificate): SignerCertificate {
  let certificate = certificates.get(sent.key);
  if (certificate === undefined) {
    if ('spki' in sent) {
      // the registry's SignerKey: the key from the SPKI, no certificate to parse (an unreadable one throws, as X509Certificate does)
      const view = (bytes: Uint8Array) => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      const spki = view(sent.spki);
      certificate = { issuerDer: view(sent.issuerDer), serialMagnitude: view(sent.serialMagnitude), spki, publicKey: publicKeyOfSpki(spki) };
    } else {
      if (sent.der === undefined) throw new RelayError('RELAY_ERR_INTERNAL', `certificate ${sent.key} was never sent to this thread`);
      certificate = new X509Certificate(sent.der);
    }
    certificates.set(sent.key, certificate);
  }
  return certificate;
}

/**
 * The whole file, read into `slot` when its size is the one the queue saw (a slice of the batch's one
 * transferable buffer), else into a buffer of its own; undefined when it is gone. The size on disk is
 * the truth (a spool file is immutable once renamed in): exactly that many bytes are read, no read
 * past the end to find it.
 */
function readWhole(path: string, slot: Buffer | undefined): Buffer | undefined {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  try {
    const size = fstatSync(fd).size;
    const buffer = slot !== undefined && slot.length === size ? slot : Buffer.allocUnsafeSlow(size);
    let length = 0;
    while (length < size) {
      const read = readSync(fd, buffer, length, size - length, null);
      if (read === 0) break; // shorter than its stat said: what is there
      length += read;
    }
    return length === size ? buffer : buffer.subarray(0, length);
  } finally {
    closeSync(fd);
  }
}

/**
 * The queue's removal of a forwarded file, here beside the file's read (no thread-pool hand-off in the
 * primary): the spool's own remover (the file taken out by a rename, its identity checked, then unlinked; see
 * takeIfSame), whose rename and unlink go to libuv's pool and overlap the inspection of the batch's files. Done
 * in line, an unlink was the start scan's serial wait: in ext4 it waits for the journal whenever other processes
 * write and fsync (uploads do), 0.3–1.3 ms of wall time per file on a busy 2-core machine, longer than the
 * file's inspection, while this one thread sets the pace of the whole queue (bench/pipeline, phase A with the
 * machine busy: 361–393 reports/s in line, 703–857 with the pool).
 */
function remove(removal: ThreadRemoval): Promise<RemovalReply> {
  return removeIfSame(removal.path, removal.expected).then(
    (kind): RemovalReply => ({ id: removal.id, kind }),
    (error: unknown): RemovalReply => ({ id: removal.id, kind: 'error', message: error instanceof Error ? error.message : String(error) }),
  );
}

async function handle(request: ThreadRequest, slot: Buffer | undefined): Promise<InspectReply> {
  if (request.forgetCertificates === true) certificates.clear();
  let bytes: Buffer | undefined;
  try {
    bytes = readWhole(request.path, slot);
  } catch (error) {
    return { id: request.id, kind: 'error', message: error instanceof Error ? error.message : String(error) };
  }
  if (bytes === undefined) return { id: request.id, kind: 'gone' };
  const started = process.hrtime.bigint();
  let inspection: Inspection;
  try {
    const known = request.certificates?.map(certificateOf);
    inspection = await inspectContent(setup, skipEventTypes, request.info, known, verifySignedPart, request.name, bytes);
  } catch (error) {
    // as the inline inspector: an unexpected failure is reported as the file being unreadable
    const message = error instanceof Error ? error.message : String(error);
    inspection = { kind: 'reject', reason: 'undecodable', nodeId: request.info.nodeId, message: `unexpected error while inspecting ${request.name}: ${message}` };
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return { id: request.id, kind: 'inspected', inspection, bytes, seconds };
}

// a batch (what the primary asked in one turn of its event loop), answered in one message: the removals' identity
// checks first and their unlinks started (each frees a place in the queue), then the files, read into one buffer for
// the whole batch, transferred once; the reply leaves when the unlinks are done too (the next batch is taken meanwhile)
parentPort!.on('message', (batch: ThreadBatch) => {
  void (async () => {
    const removing = batch.remove.map(remove);
    const inspected: InspectReply[] = [];
    let total = 0;
    for (const request of batch.inspect) total += request.size ?? 0;
    const shared = total > 0 ? Buffer.allocUnsafeSlow(total) : undefined;
    const transfer = new Set<ArrayBuffer>();
    let offset = 0;
    for (const request of batch.inspect) {
      const size = request.size ?? 0;
      const slot = shared !== undefined && size > 0 ? shared.subarray(offset, offset + size) : undefined;
      offset += size;
      const reply = await handle(request, slot);
      if (reply.kind === 'inspected') transfer.add(reply.bytes.buffer as ArrayBuffer);
      inspected.push(reply);
    }
    const removed = await Promise.all(removing);
    const replies: ThreadReplies = { removed, inspected };
    parentPort!.postMessage(replies, [...transfer]);
  })();
});
