// The relay's own identity: node id, RSA key pair (CFEngine ppkeys format) and agent certificate.
// spec-https-front-cfserverd-sync.md §4; spec-cfengine-protocol.md §5.1.

import {
  X509Certificate,
  createPrivateKey,
  createPublicKey,
  generateKeyPair,
  randomUUID,
  type KeyObject,
} from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import type { Logger } from 'pino';
import { RelayError, messageOf } from '../errors.js';
import { certificateUid, createAgentCertificate } from './certificate.js';
import { keyDigests, spkiDer } from './digests.js';
import { codeOf, createFileAtomically, ensureDirectory, exists } from './files.js';
import type { Identity, IdentityPaths } from './index.js';

/** rudder-uuidgen's rule (spec-https-front-cfserverd-sync.md §4): lowercase uuid, or root */
const NODE_ID_PATTERN = /^(?:[a-f0-9]{8}-(?:[a-f0-9]{4}-){3}[a-f0-9]{12}|root)$/;
/** pre-7.x Rudder / pre-3.18 CFEngine keys are PEM-encrypted with this public passphrase */
const LEGACY_PASSPHRASE = 'Cfengine passphrase';
const RSA_BITS = 4096;

const generateRsaKeyPair = promisify(generateKeyPair);

export async function ensureIdentity(
  paths: IdentityPaths,
  log: Logger,
): Promise<{ identity: Identity; created: string[] }> {
  const identityLog = log.child({ module: 'identity' });
  const created: string[] = [];

  let nodeId: string;
  if (paths.nodeId !== undefined) {
    nodeId = validateNodeId(paths.nodeId, 'the configured node_id');
  } else {
    if (!(await exists(paths.nodeIdFile))) {
      const generated = randomUUID();
      await ensureDirectory(path.dirname(paths.nodeIdFile), 0o755);
      if (await createFileAtomically(paths.nodeIdFile, `${generated}\n`, 0o644)) {
        created.push(paths.nodeIdFile);
        identityLog.info({ file: paths.nodeIdFile, nodeId: generated }, 'generated node id');
      }
    }
    nodeId = await readNodeId(paths.nodeIdFile);
  }

  if (!(await exists(paths.privateKeyFile))) {
    identityLog.info({ file: paths.privateKeyFile, bits: RSA_BITS }, 'generating RSA key pair');
    const { privateKey } = await generateRsaKeyPair('rsa', { modulusLength: RSA_BITS, publicExponent: 0x10001 });
    await ensureDirectory(path.dirname(paths.privateKeyFile), 0o700);
    const pem = privateKey.export({ type: 'pkcs1', format: 'pem' }).toString();
    if (await createFileAtomically(paths.privateKeyFile, pem, 0o600)) {
      created.push(paths.privateKeyFile);
      identityLog.info({ file: paths.privateKeyFile }, 'created private key');
    }
  }
  const privateKey = await readPrivateKey(paths.privateKeyFile);
  const publicKey = createPublicKey(privateKey);

  if (!(await exists(paths.publicKeyFile))) {
    await ensureDirectory(path.dirname(paths.publicKeyFile), 0o700);
    // PKCS#1 RSA PUBLIC KEY, mode 0600: what cf-key writes as localhost.pub
    const pem = publicKey.export({ type: 'pkcs1', format: 'pem' }).toString();
    if (await createFileAtomically(paths.publicKeyFile, pem, 0o600)) {
      created.push(paths.publicKeyFile);
      identityLog.info({ file: paths.publicKeyFile }, 'created public key');
    }
  }

  if (!(await exists(paths.certificateFile))) {
    await ensureDirectory(path.dirname(paths.certificateFile), 0o755);
    const pem = await createAgentCertificate(nodeId, privateKey);
    if (await createFileAtomically(paths.certificateFile, pem, 0o644)) {
      created.push(paths.certificateFile);
      identityLog.info({ file: paths.certificateFile, nodeId }, 'created agent certificate');
    }
  }

  const identity = await loadIdentityFor(paths, nodeId);
  identityLog.info({ nodeId, keyHash: identity.digests.sha256Pin, cfengineKey: identity.digests.cfengineMd5 }, 'identity loaded');
  return { identity, created };
}

export async function loadIdentity(paths: IdentityPaths): Promise<Identity> {
  const nodeId =
    paths.nodeId !== undefined ? validateNodeId(paths.nodeId, 'the configured node_id') : await readNodeId(paths.nodeIdFile);
  return loadIdentityFor(paths, nodeId);
}

async function loadIdentityFor(paths: IdentityPaths, nodeId: string): Promise<Identity> {
  const privateKey = await readPrivateKey(paths.privateKeyFile);
  const publicKey = createPublicKey(privateKey);
  const publicKeyDer = spkiDer(publicKey);

  const publicKeyText = await readIdentityFile(paths.publicKeyFile, 'public key');
  let filePublicKey: KeyObject;
  try {
    filePublicKey = createPublicKey(publicKeyText);
  } catch (error) {
    throw new RelayError('RELAY_ERR_IDENTITY', `cannot read public key ${paths.publicKeyFile}: ${messageOf(error)}`, {
      cause: error,
    });
  }
  if (!spkiDer(filePublicKey).equals(publicKeyDer)) {
    throw new RelayError(
      'RELAY_ERR_IDENTITY',
      `public key ${paths.publicKeyFile} does not match private key ${paths.privateKeyFile}`,
    );
  }

  const certificatePem = await readIdentityFile(paths.certificateFile, 'certificate');
  let certificate: X509Certificate;
  let uid: string | undefined;
  try {
    certificate = new X509Certificate(certificatePem);
    uid = certificateUid(certificate);
  } catch (error) {
    throw new RelayError(
      'RELAY_ERR_CERTIFICATE',
      `cannot read certificate ${paths.certificateFile}: ${messageOf(error)}`,
      { cause: error },
    );
  }
  if (!spkiDer(certificate.publicKey).equals(publicKeyDer)) {
    throw new RelayError(
      'RELAY_ERR_CERTIFICATE',
      `certificate ${paths.certificateFile} does not match private key ${paths.privateKeyFile} (different public key)`,
    );
  }
  if (uid !== nodeId) {
    throw new RelayError(
      'RELAY_ERR_CERTIFICATE',
      `certificate ${paths.certificateFile} has subject UID=${uid ?? '(none)'}, expected UID=${nodeId} (the node id)`,
    );
  }

  return {
    nodeId,
    privateKey,
    // always unencrypted PKCS#1, even when the file carries the legacy passphrase
    privateKeyPem: privateKey.export({ type: 'pkcs1', format: 'pem' }).toString(),
    publicKey,
    certificatePem,
    certificate,
    digests: keyDigests(publicKey),
  };
}

async function readNodeId(file: string): Promise<string> {
  const text = await readIdentityFile(file, 'node id file');
  // relayd uses the file content as is; a trailing newline (rudder-uuidgen writes one) must not matter
  return validateNodeId(text.trim(), `node id file ${file}`);
}

function validateNodeId(nodeId: string, source: string): string {
  if (!NODE_ID_PATTERN.test(nodeId)) {
    throw new RelayError(
      'RELAY_ERR_IDENTITY',
      `invalid node id ${JSON.stringify(nodeId)} in ${source}: expected a lowercase uuid (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx) or "root"`,
    );
  }
  return nodeId;
}

async function readPrivateKey(file: string): Promise<KeyObject> {
  const pem = await readIdentityFile(file, 'private key');
  let key: KeyObject;
  try {
    // the passphrase is only used when the PEM is encrypted (old `Cfengine passphrase` keys)
    key = createPrivateKey({ key: pem, format: 'pem', passphrase: LEGACY_PASSPHRASE });
  } catch (error) {
    throw new RelayError('RELAY_ERR_IDENTITY', `cannot read private key ${file}: ${messageOf(error)}`, { cause: error });
  }
  if (key.asymmetricKeyType !== 'rsa') {
    throw new RelayError(
      'RELAY_ERR_IDENTITY',
      `private key ${file} is ${key.asymmetricKeyType ?? 'unknown'}, expected RSA (CFEngine keys are RSA)`,
    );
  }
  return key;
}

async function readIdentityFile(file: string, what: string): Promise<string> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (error) {
    const reason = codeOf(error) === 'ENOENT' ? 'file does not exist' : messageOf(error);
    throw new RelayError('RELAY_ERR_IDENTITY', `cannot read ${what} ${file}: ${reason}`, { cause: error });
  }
}
