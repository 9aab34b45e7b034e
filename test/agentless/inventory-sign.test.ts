// The .sign file: the digest is byte for byte what relayd's tools/rudder-sign gets from
// `openssl dgst -sha512 -hex -sign`, and the keys the root reads come first.

import { execFile } from 'node:child_process';
import { createPrivateKey, createPublicKey } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import { inventorySignature } from '../../src/agentless/index.js';
import { FIXTURE_KEYS, RELAY_ID } from '../support/relay.js';
import { tempDir } from '../support/tmp.js';

const run = promisify(execFile);

t.test('digest = openssl dgst -sha512 -hex -sign over the uncompressed file', async (t) => {
  const keyFile = join(FIXTURE_KEYS, `${RELAY_ID}.nopass.priv`);
  const privateKey = createPrivateKey(await readFile(keyFile));
  const inventory = Buffer.from('<?xml version="1.0"?>\n<REQUEST><DEVICEID>x</DEVICEID></REQUEST>\n');
  const file = join(tempDir(t), 'x.ocs');
  await writeFile(file, inventory);
  const { stdout } = await run('openssl', ['dgst', '-sha512', '-hex', '-sign', keyFile, file]);
  const expected = stdout.replace(/.*= /, '').trim();
  const sign = inventorySignature({
    inventory,
    privateKey,
    publicKeyPem: createPublicKey(privateKey).export({ type: 'pkcs1', format: 'pem' }).toString(),
    hostname: 'relay1.example.net',
    keyDate: new Date('2026-05-04T10:12:00Z'),
  });
  const lines = sign.split('\n');
  t.same(lines.slice(0, 3), ['header=rudder-signature-v1', 'algorithm=sha512', `digest=${expected}`]);
  t.match(sign, /^hash_value=[0-9a-f]{128}$/m);
  t.match(sign, /^short_pubkey=MIIC[A-Za-z0-9+/=]+$/m, 'the PKCS#1 public key body on one line');
  t.match(sign, /^keyid=[0-9A-F]{8}$/m);
});
