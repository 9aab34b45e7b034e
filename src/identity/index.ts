// Face of the identity module: the relay's node id, RSA key pair and agent certificate.
// spec-https-front-cfserverd-sync.md §4. Implementation files in this folder are private.

import type { KeyObject, X509Certificate } from 'node:crypto';
import type { Logger } from 'pino';

export interface KeyDigests {
  /** curl --pinnedpubkey form, as in nodeslist.json: sha256//<base64 of SHA-256(SPKI DER)> */
  readonly sha256Pin: string;
  /** CFEngine SHA= digest, as `cf-key -p` prints it */
  readonly cfengineSha: string;
  /** CFEngine MD5= digest (ppkeys/root-MD5=<hex>.pub, policy_server_hash) */
  readonly cfengineMd5: string;
}

export interface IdentityPaths {
  readonly nodeId: string | undefined;
  readonly nodeIdFile: string;
  readonly privateKeyFile: string;
  readonly publicKeyFile: string;
  readonly certificateFile: string;
}

export interface Identity {
  readonly nodeId: string;
  readonly privateKey: KeyObject;
  /** PKCS#1 PEM, as in localhost.priv */
  readonly privateKeyPem: string;
  readonly publicKey: KeyObject;
  readonly certificatePem: string;
  readonly certificate: X509Certificate;
  readonly digests: KeyDigests;
}

export { ensureIdentity, loadIdentity } from './identity.js';
export { keyDigests } from './digests.js';
export type { Logger };
