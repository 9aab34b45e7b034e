// Key digests: the HTTPS pin and CFEngine's host key digests (spec-https-front-cfserverd-sync.md §4,
// spec-cfengine-protocol.md §5.2).

import { createHash, type KeyObject } from 'node:crypto';
import { RelayError } from '../errors.js';
import type { KeyDigests } from './index.js';

/** SubjectPublicKeyInfo DER, what curl --pinnedpubkey and nodeslist.json `key-hash` hash. */
export function spkiDer(publicKey: KeyObject): Buffer {
  return publicKey.export({ type: 'spki', format: 'der' });
}

/**
 * n ‖ e as CFEngine's HashPubKey feeds them to the digest: BN_bn2bin of each, i.e. minimal unsigned
 * big-endian bytes, no ASN.1. JWK members are exactly that (base64url, no leading zero byte).
 */
function modulusAndExponent(publicKey: KeyObject): Buffer {
  if (publicKey.asymmetricKeyType !== 'rsa') {
    throw new RelayError(
      'RELAY_ERR_IDENTITY',
      `CFEngine key digests need an RSA key, got ${publicKey.asymmetricKeyType ?? 'unknown'}`,
    );
  }
  const jwk = publicKey.export({ format: 'jwk' });
  if (typeof jwk.n !== 'string' || typeof jwk.e !== 'string') {
    throw new RelayError('RELAY_ERR_IDENTITY', 'RSA key without modulus or exponent');
  }
  return Buffer.concat([stripLeadingZeros(Buffer.from(jwk.n, 'base64url')), stripLeadingZeros(Buffer.from(jwk.e, 'base64url'))]);
}

function stripLeadingZeros(bytes: Buffer): Buffer {
  let start = 0;
  while (start < bytes.length - 1 && bytes[start] === 0) start += 1;
  return bytes.subarray(start);
}

export function keyDigests(publicKey: KeyObject): KeyDigests {
  const pin = createHash('sha256').update(spkiDer(publicKey)).digest('base64');
  const ne = modulusAndExponent(publicKey);
  return {
    sha256Pin: `sha256//${pin}`,
    // community builds (Debian, Rudder) print MD5=; Enterprise/FIPS builds use SHA-256 of the same
    // bytes and print it as SHA= (cf-key HashPrintSafe: any non-MD5 method gets the "SHA=" prefix)
    cfengineSha: `SHA=${createHash('sha256').update(ne).digest('hex')}`,
    cfengineMd5: `MD5=${createHash('md5').update(ne).digest('hex')}`,
  };
}
