// Who may upload (spec-https-front-cfserverd-sync.md §1.2): Basic auth with the installation-wide
// WebDAV credentials, or with `cert_validation` a client certificate. Apache only checks that a
// certificate chains to nodescerts.pem; we check it against the node's own pin, so a certificate
// presented for a known node must be that node's key.

import { X509Certificate, timingSafeEqual } from 'node:crypto';
import { RelayError } from '../errors.js';
import type { NodesRegistry } from '../nodes/index.js';
import type { SpoolQueue } from '../spool/index.js';

export interface UploadAuthOptions {
  /** "basic": Basic auth required (Rudder's default); "certificate": a verified client certificate instead */
  readonly mode: 'basic' | 'certificate';
  readonly user: string;
  /** password of /reports and /inventory-updates; undefined refuses them */
  readonly password: string | undefined;
  /** password of /inventories (new nodes) */
  readonly defaultPassword: string;
  /** cert_validation with a custom CA: a new node's certificate must be issued by it */
  readonly caCertificate: X509Certificate | undefined;
}

export interface ClientIdentity {
  /** node id proven by a pinned client certificate */
  readonly nodeId: string | undefined;
}

function safeEqual(a: string, b: string): boolean {
  const left = Buffer.from(a);
  const right = Buffer.from(b);
  return left.length === right.length && timingSafeEqual(left, right);
}

function basicCredentials(header: string | undefined): { user: string; password: string } | undefined {
  if (header === undefined) return undefined;
  const match = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header);
  if (!match?.[1]) return undefined;
  const decoded = Buffer.from(match[1], 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return undefined;
  return { user: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

function issuedBy(der: Buffer, ca: X509Certificate): boolean {
  try {
    const certificate = new X509Certificate(der);
    const now = Date.now();
    return (
      certificate.checkIssued(ca) &&
      certificate.verify(ca.publicKey) &&
      Date.parse(certificate.validFrom) <= now &&
      now <= Date.parse(certificate.validTo)
    );
  } catch {
    return false;
  }
}

/**
 * Throws RelayError 401/403 when the upload is not allowed. A new node's inventory (/inventories)
 * comes from a node nobody knows yet, so an unknown certificate is not held against it there.
 */
export function authenticateUpload(
  queue: SpoolQueue,
  authorization: string | undefined,
  certificateDer: Buffer | undefined,
  nodes: NodesRegistry,
  options: UploadAuthOptions,
): ClientIdentity {
  const isNewNode = queue === 'inventories';
  let nodeId: string | undefined;
  if (certificateDer !== undefined) {
    const match = nodes.matchCertificate(certificateDer);
    switch (match.kind) {
      case 'match':
        nodeId = match.nodeId;
        break;
      case 'mismatch':
        throw new RelayError('RELAY_ERR_AUTH_CERTIFICATE', `client certificate of node ${match.nodeId} does not match its pinned key`);
      case 'expired':
        throw new RelayError('RELAY_ERR_AUTH_CERTIFICATE', `client certificate of node ${match.nodeId} is outside its validity period`);
      case 'no-pin':
        if (options.mode === 'certificate') {
          throw new RelayError('RELAY_ERR_AUTH_CERTIFICATE', `node ${match.nodeId} has no key hash or certificate to check its client certificate against`);
        }
        break;
      case 'unknown-node':
        if (!isNewNode) throw new RelayError('RELAY_ERR_AUTH_CERTIFICATE', `client certificate of unknown node ${match.nodeId}`);
        if (options.mode === 'certificate' && !(options.caCertificate && issuedBy(certificateDer, options.caCertificate))) {
          throw new RelayError('RELAY_ERR_AUTH_CERTIFICATE', `client certificate of new node ${match.nodeId} is not issued by the configured CA`);
        }
        break;
      case 'no-uid':
        if (!isNewNode) throw new RelayError('RELAY_ERR_AUTH_CERTIFICATE', 'client certificate has no UID=<node id> subject');
        if (options.mode === 'certificate') throw new RelayError('RELAY_ERR_AUTH_CERTIFICATE', 'client certificate has no UID=<node id> subject');
        break;
    }
  }
  if (options.mode === 'certificate') {
    if (certificateDer === undefined) {
      throw new RelayError('RELAY_ERR_AUTH_CERTIFICATE', 'a client certificate is required (peer_authentication = "cert_validation")');
    }
    return { nodeId };
  }
  const credentials = basicCredentials(authorization);
  if (credentials === undefined) throw new RelayError('RELAY_ERR_AUTH_REQUIRED', 'Basic authentication required');
  const expected = isNewNode ? options.defaultPassword : options.password;
  if (expected === undefined || !safeEqual(credentials.user, options.user) || !safeEqual(credentials.password, expected)) {
    throw new RelayError('RELAY_ERR_AUTH_REQUIRED', `wrong user or password for user ${JSON.stringify(credentials.user)}`);
  }
  return { nodeId };
}

/**
 * A node proven by its certificate may upload its own reports, and a relay those of the nodes
 * below it; nobody else's.
 */
export function mayUploadReportOf(uploader: string, reportNode: string, nodes: NodesRegistry): boolean {
  let current = reportNode;
  for (let depth = 0; depth <= 20; depth += 1) {
    if (current === uploader) return true;
    const entry = nodes.get(current);
    if (entry === undefined || entry.policyServer === current) return false;
    current = entry.policyServer;
  }
  return false;
}
