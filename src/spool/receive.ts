// Durable intake: the body streams into <base>/.tmp/, is fsynced, then linked or renamed into
// place and the directory fsynced, all before the caller answers 2xx (CONVENTIONS.md "Data on disk").
// A crash at any instant leaves nothing or a whole file in the target directory.

import { createHash, randomBytes } from 'node:crypto';
import { link, open, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { RelayError, messageOf } from '../errors.js';
import { fsyncDirectory } from './durable.js';

export interface ReceiveResult {
  /** true: a new file; false: an existing file of that name was replaced (WebDAV 204) */
  readonly created: boolean;
  readonly bytes: number;
  readonly path: string;
  /** hex sha256 of the body, hashed as it was written (the delivery ledger's proof of what arrived) */
  readonly sha256: string;
}

export async function receiveInto(
  tmpDirectory: string,
  targetDirectory: string,
  name: string,
  body: Readable,
  maxBytes: number,
): Promise<ReceiveResult> {
  const tmpPath = join(tmpDirectory, `${name.slice(0, 64)}.${process.pid}.${randomBytes(6).toString('hex')}`);
  const finalPath = join(targetDirectory, name);
  const handle = await open(tmpPath, 'wx', 0o640);
  let bytes = 0;
  let renamed = false;
  const hash = createHash('sha256');
  try {
    try {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        bytes += chunk.length;
        if (bytes > maxBytes) {
          throw new RelayError('RELAY_ERR_UPLOAD_TOO_LARGE', `body larger than the limit of ${maxBytes} bytes`);
        }
        hash.update(chunk);
        let offset = 0;
        while (offset < chunk.length) {
          const { bytesWritten } = await handle.write(chunk, offset);
          offset += bytesWritten;
        }
      }
    } catch (error) {
      if (error instanceof RelayError) throw error;
      throw new RelayError('RELAY_ERR_UPLOAD_INCOMPLETE', `upload interrupted after ${bytes} bytes`, { cause: error });
    }
    if (!body.readableEnded && body.readableAborted) {
      throw new RelayError('RELAY_ERR_UPLOAD_INCOMPLETE', `upload interrupted after ${bytes} bytes`);
    }
    await handle.sync();
    await handle.close();
    let created = true;
    try {
      await link(tmpPath, finalPath);
      await unlink(tmpPath);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      created = false;
      await rename(tmpPath, finalPath);
    }
    renamed = true;
    await fsyncDirectory(targetDirectory);
    return { created, bytes, path: finalPath, sha256: hash.digest('hex') };
  } catch (error) {
    await handle.close().catch(() => undefined);
    if (!renamed) await unlink(tmpPath).catch(() => undefined);
    if (error instanceof RelayError) throw error;
    throw new RelayError('RELAY_ERR_SPOOL_WRITE', `could not store ${name}: ${messageOf(error)}`, { cause: error });
  }
}
