// Framing of a blob batch (one streamed response for many content-addressed blobs):
//
//   B <sha256 hex> <size>\n<size bytes>     a blob
//   M <sha256 hex>\n                        not available (not in the requester's manifest, or changed since)
//   E\n                                     end of batch: anything shorter is a truncated response
//
// Nothing is buffered whole: the server streams each file, the client hands each chunk to a writer.

import { RelayError } from '../../errors.js';

const MAX_HEADER = 128;

/** hashes per POST /blobs (the JSON request body stays well below fastify's default 1 MiB limit) */
export const MAX_BLOBS_PER_BATCH = 8192;

export function blobHeader(sha256: string, size: number): Buffer {
  return Buffer.from(`B ${sha256} ${size}\n`, 'latin1');
}

export function missingFrame(sha256: string): Buffer {
  return Buffer.from(`M ${sha256}\n`, 'latin1');
}

export const END_FRAME = Buffer.from('E\n', 'latin1');

export interface BlobWriter {
  write(chunk: Buffer): void | Promise<void>;
  /** all `size` bytes were received */
  end(): Promise<void>;
}

export interface FrameSink {
  blob(sha256: string, size: number): BlobWriter | Promise<BlobWriter>;
  missing(sha256: string): void;
}

export class FrameError extends RelayError {
  constructor(message: string) {
    super('RELAY_ERR_SYNC_FORMAT', message);
    this.name = 'FrameError';
  }
}

const BLOB_HEADER = /^B ([0-9a-f]{64}) (\d{1,15})$/;
const MISSING_HEADER = /^M ([0-9a-f]{64})$/;

/** reads a whole batch; throws FrameError on a malformed or truncated stream, or what the sink throws */
export async function readFrames(body: AsyncIterable<Buffer>, sink: FrameSink): Promise<void> {
  let header = Buffer.alloc(0);
  let writer: BlobWriter | undefined;
  let remaining = 0;
  let ended = false;
  for await (const chunk of body) {
    let offset = 0;
    while (offset < chunk.length) {
      if (ended) throw new FrameError('data after the end of the batch');
      if (writer !== undefined) {
        const take = Math.min(remaining, chunk.length - offset);
        await writer.write(chunk.subarray(offset, offset + take));
        offset += take;
        remaining -= take;
        if (remaining === 0) {
          const done = writer;
          writer = undefined;
          await done.end();
        }
        continue;
      }
      const newline = chunk.indexOf(0x0a, offset);
      const end = newline < 0 ? chunk.length : newline;
      header = Buffer.concat([header, chunk.subarray(offset, end)]);
      if (header.length > MAX_HEADER) throw new FrameError('frame header too long');
      offset = end;
      if (newline < 0) continue;
      offset += 1;
      const line = header.toString('latin1');
      header = Buffer.alloc(0);
      const blob = BLOB_HEADER.exec(line);
      if (blob !== null) {
        const size = Number(blob[2]);
        writer = await sink.blob(blob[1] ?? '', size);
        remaining = size;
        if (size === 0) {
          const done = writer;
          writer = undefined;
          await done.end();
        }
        continue;
      }
      const missing = MISSING_HEADER.exec(line);
      if (missing !== null) {
        sink.missing(missing[1] ?? '');
        continue;
      }
      if (line === 'E') {
        ended = true;
        continue;
      }
      throw new FrameError(`malformed frame header ${JSON.stringify(line.slice(0, 40))}`);
    }
  }
  if (!ended) throw new FrameError(writer !== undefined ? `batch truncated inside a blob (${remaining} bytes missing)` : 'batch truncated (no end frame)');
}
