// The library archive of a stock Rudder root (9.0+): /common/policies-library-linux.tar.bz2 exists only on the
// root's HTTPS side (spec-https-front-cfserverd-sync.md §3.4), so the CFEngine-protocol pull fetches it over
// HTTPS with the pinned upstream client (the relay's certificate as client certificate), If-None-Match with the
// ETag saved last time (304: nothing to do), and writes it with spool's atomic stream write into
// policies.directory/common/ so that the HTTPS front door serves it to the nodes below (their HTTPS policy
// updates need it).

import { lstat, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { RelayError, isRelayError, messageOf, relayError } from '../../errors.js';
import type { PeerClient } from '../../upstream/index.js';
import { writeStreamAtomically } from '../lib/fs-util.js';

export const LIBRARY_ARCHIVE = 'policies-library-linux.tar.bz2';
const ARCHIVE_PATH = `/common/${LIBRARY_ARCHIVE}`;
/** far above the real archive (a few MB): a bound on what an upstream can make us write */
const MAX_ARCHIVE_BYTES = 1024 * 1024 * 1024;

export interface LibraryArchiveRequest {
  readonly client: PeerClient | undefined;
  /** policies.directory/common */
  readonly destination: string;
  /** the ETag of the archive installed here, if any */
  readonly etag: string | undefined;
  readonly log: Logger;
}

export interface LibraryArchiveResult {
  readonly changed: boolean;
  readonly bytes: number;
  /** the ETag to send next time */
  readonly etag: string | undefined;
}

export async function fetchLibraryArchive(request: LibraryArchiveRequest, signal: AbortSignal): Promise<LibraryArchiveResult> {
  const { client, destination, log } = request;
  if (client === undefined) {
    log.debug('sync: no usable HTTPS upstream (host or pinned certificate missing), library archive not fetched');
    return { changed: false, bytes: 0, etag: request.etag };
  }
  const target = join(destination, LIBRARY_ARCHIVE);
  const present = await lstat(target).then(
    () => true,
    () => false,
  );
  const etag = present ? request.etag : undefined;
  let response;
  try {
    response = await client.request('GET', ARCHIVE_PATH, undefined, etag === undefined ? {} : { 'if-none-match': etag });
  } catch (error) {
    throw new RelayError('RELAY_ERR_UPSTREAM_UNAVAILABLE', `sync: GET ${ARCHIVE_PATH} from the upstream: ${messageOf(error)}`, { cause: error });
  }
  if (response.status === 304) {
    await response.body.dump();
    return { changed: false, bytes: 0, etag };
  }
  if (response.status === 404) {
    // roots before 9.0 have no archive; the nodes below then update over the CFEngine protocol
    await response.body.dump();
    log.debug('sync: the upstream has no library archive (404)');
    return { changed: false, bytes: 0, etag };
  }
  if (response.status !== 200) {
    const text = (await response.body.text().catch(() => '')).trim().slice(0, 200);
    throw new RelayError(
      response.status >= 500 ? 'RELAY_ERR_UPSTREAM_UNAVAILABLE' : 'RELAY_ERR_UPSTREAM_REFUSED',
      `sync: GET ${ARCHIVE_PATH} from the upstream answered ${response.status}${text === '' ? '' : ` (${text})`}`,
    );
  }
  const header = response.headers?.['etag'];
  const newEtag = Array.isArray(header) ? header[0] : header;
  await mkdir(destination, { recursive: true });
  const onAbort = (): void => {
    response.body.destroy(relayError('RELAY_ERR_SYNC_STOPPED'));
  };
  signal.addEventListener('abort', onAbort, { once: true });
  let bytes: number;
  try {
    bytes = await writeStreamAtomically(target, response.body as AsyncIterable<Buffer>, { mode: 0o644, tempPrefix: `.${LIBRARY_ARCHIVE}.`, maxBytes: MAX_ARCHIVE_BYTES });
  } catch (error) {
    if (signal.aborted) throw error;
    // this disk's trouble keeps its code; anything else is the upstream's answer breaking off
    if (isRelayError(error) && error.code === 'RELAY_ERR_SPOOL_WRITE') throw error;
    throw new RelayError('RELAY_ERR_UPSTREAM_UNAVAILABLE', `sync: library archive: ${messageOf(error)}`, { cause: error });
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
  log.info({ bytes, etag: newEtag }, 'sync: library archive updated');
  return { changed: true, bytes, etag: newEtag };
}
