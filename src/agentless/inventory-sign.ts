// The `.sign` file the root checks before it accepts an inventory (CheckInventoryDigest.scala
// ParseInventoryDigestFileV1 + check): java.util.Properties lines; `header=rudder-signature-v1`,
// `algorithm=sha512` and `digest=<hex of the RSA PKCS#1 v1.5 SHA-512 signature of the uncompressed file>`
// are what the root reads. The informative keys follow relayd's tools/rudder-sign.

import { createHash, sign, type KeyObject } from 'node:crypto';

export interface SignatureInput {
  /** the uncompressed .ocs bytes (the root gunzips before verifying) */
  readonly inventory: Buffer;
  readonly privateKey: KeyObject;
  /** PKCS#1 PEM of localhost.pub (short_pubkey) */
  readonly publicKeyPem: string;
  readonly hostname: string;
  /** modification time of the private key file (keydate) */
  readonly keyDate: Date;
}

/** `stat -c %y` style: 2026-05-04 10:12:00.000000000 +0000 (informative only) */
function statDate(date: Date): string {
  return `${date.toISOString().replace('T', ' ').replace('Z', '').replace(/\.(\d{3})$/, '.$1000000')} +0000`;
}

export function inventorySignature(input: SignatureInput): string {
  // same bytes as `openssl dgst -sha512 -hex -sign localhost.priv` (PKCS#1 v1.5 is the RSA default of both)
  const digest = sign('sha512', input.inventory, input.privateKey).toString('hex');
  const modulus = input.privateKey.export({ format: 'jwk' }).n ?? '';
  const keyId = Buffer.from(modulus, 'base64url').toString('hex').toUpperCase().slice(-8);
  const shortPublicKey = input.publicKeyPem
    .split('\n')
    .filter((line) => line !== '' && !line.includes('---'))
    .join('');
  // Properties.load: a value cannot hold a raw newline, and ':' '=' only matter in keys
  const oneLine = (value: string) => value.replace(/[\r\n]/g, ' ');
  return [
    'header=rudder-signature-v1',
    'algorithm=sha512',
    `digest=${digest}`,
    `hash_value=${createHash('sha512').update(input.inventory).digest('hex')}`,
    `short_pubkey=${shortPublicKey}`,
    `hostname=${oneLine(input.hostname)}`,
    `keydate=${statDate(input.keyDate)}`,
    `keyid=${keyId}`,
    '',
  ].join('\n');
}
