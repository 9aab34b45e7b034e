// The bench upstream (forked by upstream.ts, its own process and event loop): an HTTPS server (TLS 1.3,
// keep-alive) taking `PUT /reports|inventories|inventory-updates/<file>` with basic auth like the
// upstream Apache, answering 201 (204 on overwrite) and keeping only counts and a SHA-256 per file.

import { createHash } from 'node:crypto';
import { createServer } from 'node:https';
import type { UpstreamChildMessage, UpstreamParentMessage } from './upstream.js';

const DAV_PATH = /^\/+(reports|inventories|inventory-updates)\/([^/?]+)$/;

/** epoch ms, high resolution, comparable with the parent's */
const now = (): number => performance.timeOrigin + performance.now();

function send(message: UpstreamChildMessage): void {
  process.send?.(message);
}

const digests = new Map<string, string>();
let puts = 0;
let bytes = 0;
let refused = 0;
let handshakes = 0;
let failed = 0;
let hung = 0;
let failShare = 0;
let hang = false;
let firstAt: number | undefined;
const watches: number[] = [];

function checkWatches(): void {
  for (let index = watches.length - 1; index >= 0; index--) {
    const count = watches[index]!;
    if (digests.size >= count) {
      watches.splice(index, 1);
      send({ type: 'reached', count, at: now() });
    }
  }
}

process.on('message', (message: UpstreamParentMessage) => {
  switch (message.type) {
    case 'start': {
      const expected = `Basic ${Buffer.from(`${message.user}:${message.password}`).toString('base64')}`;
      const server = createServer({ key: message.key, cert: message.cert, minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3' }, (req, res) => {
        const match = DAV_PATH.exec(req.url ?? '');
        const hash = createHash('sha256');
        let size = 0;
        req.on('data', (chunk: Buffer) => {
          size += chunk.length;
          hash.update(chunk);
        });
        req.on('end', () => {
          if (req.method !== 'PUT' || match === null) {
            refused++;
            res.writeHead(match === null ? 404 : 405, { 'content-length': '0' }).end();
            return;
          }
          if (req.headers.authorization !== expected) {
            refused++;
            res.writeHead(401, { 'www-authenticate': 'Basic realm="WebDAV Storage"', 'content-length': '0' }).end();
            return;
          }
          if (hang) {
            // read, never answered: the relay's request stays in flight
            hung++;
            return;
          }
          if (failShare > 0 && Math.random() < failShare) {
            failed++;
            res.writeHead(503, { 'content-length': '0' }).end();
            return;
          }
          let name: string;
          try {
            name = `${match[1]}/${decodeURIComponent(match[2]!)}`;
          } catch {
            refused++;
            res.writeHead(400, { 'content-length': '0' }).end();
            return;
          }
          const isOverwrite = digests.has(name);
          digests.set(name, hash.digest('hex'));
          puts++;
          bytes += size;
          firstAt ??= now();
          if (puts === 1) send({ type: 'first', at: firstAt });
          const text = `Resource /${name} has been created.\n`;
          if (isOverwrite) res.writeHead(204).end();
          else res.writeHead(201, { 'content-type': 'text/plain', 'content-length': String(text.length) }).end(text);
          checkWatches();
        });
      });
      server.keepAliveTimeout = 5_000; // Apache's KeepAliveTimeout
      server.on('secureConnection', () => handshakes++);
      server.on('tlsClientError', () => undefined);
      server.listen(0, '127.0.0.1', () => {
        const address = server.address();
        send({ type: 'listening', port: typeof address === 'object' && address !== null ? address.port : 0 });
      });
      break;
    }
    case 'faults':
      failShare = message.failShare ?? 0;
      hang = message.hang ?? false;
      break;
    case 'watch':
      watches.push(message.count);
      checkWatches();
      break;
    case 'stats':
      send({ type: 'stats', id: message.id, stats: { files: digests.size, puts, bytes, refused, handshakes, failed, hung, firstAt, at: now() } });
      break;
    case 'digests':
      send({ type: 'digests', id: message.id, digests: [...digests] });
      break;
  }
});
process.on('disconnect', () => process.exit(0));
