// Node identities for benches: RSA 4096 key (or another size) (PKCS#1 PEM, like cf-key's localhost.priv) and a
// self-signed certificate with subject UID=<node id>, like an agent's agent.cert. RSA 4096 keys
// take seconds to make, so they are made once with openssl and cached under the OS temp dir.

import { execFile } from 'node:child_process';
import { createHash, createPublicKey, randomUUID, X509Certificate } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

export const cacheDirectory = join(tmpdir(), 'onerelay-bench-cache');

export interface NodeIdentity {
  readonly nodeId: string;
  /** PKCS#1 PEM ("BEGIN RSA PRIVATE KEY") */
  readonly privateKeyPem: string;
  /** PKCS#1 PEM ("BEGIN RSA PUBLIC KEY"), as cf-key writes localhost.pub */
  readonly publicKeyPem: string;
  readonly certificatePem: string;
  /** nodeslist.json key-hash form: sha256//<base64 of SHA-256(SPKI DER)> */
  readonly keyHash: string;
}

/** Where the identity cached under `name` keeps its files (localhost.priv, agent.cert), for openssl. */
export function identityFiles(name: string): { readonly privateKeyFile: string; readonly certificateFile: string } {
  const directory = join(cacheDirectory, name);
  return { privateKeyFile: join(directory, 'localhost.priv'), certificateFile: join(directory, 'agent.cert') };
}

/**
 * The identity cached under `name`, made with openssl on first use. `bits` is the RSA key size when it
 * is made (agents' keys are 4096 bits; a bench's load generator may use 2048 to stay lighter than the
 * server it measures): give each size its own names.
 */
export async function cachedIdentity(name: string, bits = 4096): Promise<NodeIdentity> {
  const directory = join(cacheDirectory, name);
  try {
    return await readIdentity(directory);
  } catch {
    await makeIdentity(directory, bits);
    return readIdentity(directory);
  }
}

/** Several cached identities, made at most two at a time (key generation is CPU-bound). */
export async function cachedIdentities(names: readonly string[], bits = 4096): Promise<NodeIdentity[]> {
  const identities: NodeIdentity[] = new Array<NodeIdentity>(names.length);
  let next = 0;
  const lane = async (): Promise<void> => {
    for (let index = next++; index < names.length; index = next++) {
      identities[index] = await cachedIdentity(names[index]!, bits);
    }
  };
  await Promise.all([lane(), lane()]);
  return identities;
}

export function keyHashOf(certificate: string | X509Certificate): string {
  const parsed = typeof certificate === 'string' ? new X509Certificate(certificate) : certificate;
  const spki = parsed.publicKey.export({ type: 'spki', format: 'der' });
  return `sha256//${createHash('sha256').update(spki).digest('base64')}`;
}

async function readIdentity(directory: string): Promise<NodeIdentity> {
  const [nodeId, privateKeyPem, certificatePem] = await Promise.all([
    readFile(join(directory, 'node-id'), 'utf8'),
    readFile(join(directory, 'localhost.priv'), 'utf8'),
    readFile(join(directory, 'agent.cert'), 'utf8'),
  ]);
  const publicKeyPem = createPublicKey(privateKeyPem).export({ type: 'pkcs1', format: 'pem' }).toString();
  return { nodeId: nodeId.trim(), privateKeyPem, publicKeyPem, certificatePem, keyHash: keyHashOf(certificatePem) };
}

// Made in a sibling temp dir then renamed, so an interrupted run never leaves half an identity.
async function makeIdentity(directory: string, bits: number): Promise<void> {
  await mkdir(cacheDirectory, { recursive: true });
  const work = await mkdtemp(join(cacheDirectory, '.new-'));
  try {
    const nodeId = randomUUID();
    const key = join(work, 'localhost.priv');
    await execFileAsync('openssl', ['genrsa', '-traditional', '-out', key, String(bits)]);
    await execFileAsync('openssl', [
      'req', '-new', '-x509', '-sha256', '-days', '3650', '-key', key,
      '-subj', `/UID=${nodeId}`, '-out', join(work, 'agent.cert'),
    ]);
    await writeFile(join(work, 'node-id'), `${nodeId}\n`);
    await rm(directory, { recursive: true, force: true });
    await rename(work, directory);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
