// An inspection thread of the reporting queue: reads a spool file and runs the byte-only part of an
// inspection (decode, S/MIME, run log) off the primary's event loop. Holds no registry: the primary
// sends the run info and the certificates to check with (cached here by the key it gives them).

import { X509Certificate } from 'node:crypto';
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { RelayError } from '../errors.js';
import type { Inspection } from './index.js';
import { inspectContent } from './inspect.js';
import type { ThreadReply, ThreadRequest, ThreadSetup } from './inspect-pool.js';
import { verifySignedPart } from './smime.js';

const setup = workerData as ThreadSetup;
const skipEventTypes = new Set(setup.skipEventTypes);
/** certificates by the primary's key; the primary says when to forget them (see forgetCertificates) */
const certificates = new Map<number, X509Certificate>();

function certificateOf(key: number, der: Uint8Array | undefined): X509Certificate {
  let certificate = certificates.get(key);
  if (certificate === undefined) {
    if (der === undefined) throw new RelayError('RELAY_ERR_INTERNAL', `certificate ${key} was never sent to this thread`);
    certificate = new X509Certificate(der);
    certificates.set(key, certificate);
  }
  return certificate;
}

/** the whole file in a buffer of its own (transferable, unlike the pooled ones), or undefined when it is gone */
function readWhole(path: string): Buffer | undefined {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  try {
    let buffer = Buffer.allocUnsafeSlow(fstatSync(fd).size);
    let length = 0;
    for (;;) {
      if (length === buffer.length) {
        // grew since the stat (not for spool files, which are immutable): read on
        const bigger = Buffer.allocUnsafeSlow(Math.max(64 * 1024, buffer.length * 2));
        buffer.copy(bigger, 0, 0, length);
        buffer = bigger;
      }
      const read = readSync(fd, buffer, length, buffer.length - length, null);
      if (read === 0) break;
      length += read;
    }
    return length === buffer.length ? buffer : buffer.subarray(0, length);
  } finally {
    closeSync(fd);
  }
}

async function handle(request: ThreadRequest): Promise<{ reply: ThreadReply; transfer: ArrayBuffer[] }> {
  if (request.forgetCertificates === true) certificates.clear();
  let bytes: Buffer | undefined;
  try {
    bytes = readWhole(request.path);
  } catch (error) {
    return { reply: { id: request.id, kind: 'error', message: error instanceof Error ? error.message : String(error) }, transfer: [] };
  }
  if (bytes === undefined) return { reply: { id: request.id, kind: 'gone' }, transfer: [] };
  const started = process.hrtime.bigint();
  let inspection: Inspection;
  try {
    const known = request.certificates?.map(({ key, der }) => certificateOf(key, der));
    inspection = await inspectContent(setup, skipEventTypes, request.info, known, verifySignedPart, request.name, bytes);
  } catch (error) {
    // as the inline inspector: an unexpected failure is reported as the file being unreadable
    const message = error instanceof Error ? error.message : String(error);
    inspection = { kind: 'reject', reason: 'undecodable', nodeId: request.info.nodeId, message: `unexpected error while inspecting ${request.name}: ${message}` };
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return { reply: { id: request.id, kind: 'inspected', inspection, bytes, seconds }, transfer: [bytes.buffer as ArrayBuffer] };
}

// a batch of requests (those the primary made in one tick), answered in one message
parentPort!.on('message', (requests: readonly ThreadRequest[]) => {
  void (async () => {
    const replies: ThreadReply[] = [];
    const transfer: ArrayBuffer[] = [];
    for (const request of requests) {
      const answer = await handle(request);
      replies.push(answer.reply);
      transfer.push(...answer.transfer);
    }
    parentPort!.postMessage(replies, transfer);
  })();
});
