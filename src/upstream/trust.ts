// How the upstream's TLS certificate is trusted (spec-relayd.md §9.2): a custom undici connector per
// peer-authentication mode. Pinning compares the presented leaf's DER with the pinned file byte for byte.

import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { rootCertificates, type TLSSocket } from 'node:tls';
import type { buildConnector } from 'undici';
import type { Undici } from './undici.js';
import type { PeerAuthentication } from '../config/index.js';
import { pemToDer } from '../der/index.js';
import { RelayError, messageOf } from '../errors.js';

/** What was read from `server_certificate_file`; `bytes` undefined = the file is missing. */
export interface PinnedCertificate {
  readonly file: string;
  readonly bytes: Buffer | undefined;
  /** the trusted certificates in the file (several only during a rotation), empty when unusable */
  readonly certificates: readonly X509Certificate[];
  /** why nothing can be sent with this pin, if so */
  readonly problem: string | undefined;
}


export async function readPinnedCertificate(file: string): Promise<PinnedCertificate> {
  try {
    return interpretPinned(file, await readFile(file));
  } catch (error) {
    return unreadablePin(file, error);
  }
}

/** at creation only (the factory is synchronous); reload() uses the asynchronous reader */
export function readPinnedCertificateSync(file: string): PinnedCertificate {
  try {
    return interpretPinned(file, readFileSync(file));
  } catch (error) {
    return unreadablePin(file, error);
  }
}

function unreadablePin(file: string, error: unknown): PinnedCertificate {
  const code = (error as NodeJS.ErrnoException).code;
  const problem = `pinned upstream certificate ${file} cannot be read (${code ?? messageOf(error)}); nothing is forwarded until it exists (data sync may bring it) and the relay is reloaded`;
  return { file, bytes: undefined, certificates: [], problem };
}

function interpretPinned(file: string, bytes: Buffer): PinnedCertificate {
  try {
    const blocks = pemToDer(bytes.toString('latin1'));
    if (blocks.length === 0) throw new RelayError('RELAY_ERR_UPSTREAM_CERTIFICATE', 'no PEM CERTIFICATE block');
    const certificates = blocks.map((der) => new X509Certificate(der));
    return { file, bytes, certificates, problem: undefined };
  } catch (error) {
    const problem = `pinned upstream certificate ${file} is not a PEM certificate (${messageOf(error)}); nothing is forwarded until it is replaced and the relay is reloaded`;
    return { file, bytes, certificates: [], problem };
  }
}

/** same file content (both missing counts as the same) */
export function isSamePin(a: PinnedCertificate | undefined, b: PinnedCertificate | undefined): boolean {
  if (a?.bytes === undefined || b?.bytes === undefined) return a?.bytes === b?.bytes;
  return a.bytes.equals(b.bytes);
}

/** Raised by the pinning connector; the message is what status().lastError shows. */
export class PinRefusedError extends RelayError {
  constructor(message: string) {
    super('RELAY_ERR_UPSTREAM_CERTIFICATE', message);
    this.name = 'PinRefusedError';
  }
}

/** undefined when the presented certificate is the pinned one and valid now, else why it is refused */
export function checkPinned(presented: X509Certificate | undefined, pinned: PinnedCertificate, now = new Date()): string | undefined {
  if (presented === undefined) return `upstream presented no certificate (pinned certificate ${pinned.file})`;
  const match = pinned.certificates.find((certificate) => certificate.raw.equals(presented.raw));
  if (match === undefined) {
    const fingerprint = presented.fingerprint256;
    return `upstream certificate does not match the pinned certificate ${pinned.file} (presented ${presented.subject.replace(/\n/g, ', ')}, SHA-256 ${fingerprint})`;
  }
  if (now < new Date(match.validFrom)) return `pinned upstream certificate ${pinned.file} is not valid before ${match.validFrom}`;
  if (now > new Date(match.validTo)) return `pinned upstream certificate ${pinned.file} expired on ${match.validTo}`;
  return undefined;
}

export interface TrustOptions {
  readonly peerAuthentication: PeerAuthentication;
  readonly caPath: string | undefined;
  readonly connectTimeoutMs: number;
  /** presented to peers that ask (the relay's agent key and certificate) */
  readonly clientCertificate?: { readonly key: string; readonly cert: string } | undefined;
}

/** Extra roots for cert_validation; unreadable ca_path is a start failure like relayd (spec-relayd.md §9.2). */
export function readCaPath(caPath: string): string {
  try {
    return readFileSync(caPath, 'utf8');
  } catch (error) {
    throw new RelayError('RELAY_ERR_CONFIG_FILE', `general.ca_path ${caPath} cannot be read: ${messageOf(error)}`, { cause: error });
  }
}

/**
 * An undici connector: TLS 1.3 only, HTTP/1.1 only, connect timeout covering TCP and the TLS handshake.
 * `pinned` is only used (and required) in cert_pinning mode.
 */
export function buildTrustingConnector(
  { buildConnector }: Undici,
  options: TrustOptions,
  pinned: PinnedCertificate | undefined,
  extraCa: string | undefined,
): buildConnector.connector {
  const common = {
    minVersion: 'TLSv1.3',
    allowH2: false,
    timeout: options.connectTimeoutMs,
    ...(options.clientCertificate ? { key: options.clientCertificate.key, cert: options.clientCertificate.cert } : {}),
  } as const;
  switch (options.peerAuthentication) {
    case 'cert_validation':
      return buildConnector({
        ...common,
        rejectUnauthorized: true,
        ...(extraCa === undefined ? {} : { ca: [...rootCertificates, extraCa] }),
      });
    case 'dangerous_none':
      return buildConnector({ ...common, rejectUnauthorized: false });
    case 'cert_pinning': {
      if (pinned === undefined) throw new RelayError('RELAY_ERR_INTERNAL', 'cert_pinning connector without a pinned certificate');
      // no session resumption: every connection shows its certificate and is checked
      const base = buildConnector({ ...common, rejectUnauthorized: false, maxCachedSessions: 0 });
      return (connectOptions, callback) => {
        base(connectOptions, (error, socket) => {
          if (error !== null) {
            callback(error, null);
            return;
          }
          const refused = checkPinned((socket as TLSSocket).getPeerX509Certificate(), pinned);
          if (refused === undefined) {
            callback(null, socket);
            return;
          }
          socket.destroy();
          callback(new PinRefusedError(refused), null);
        });
      };
    }
  }
}
