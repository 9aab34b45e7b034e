// A real HTTPS upstream for tests: answers GET /uuid and WebDAV PUTs on /reports/, /inventories/ and /inventory-updates/
// like the upstream Apache (spec-https-front-cfserverd-sync.md §1.1–1.2), records what it received, and
// injects faults on demand (down, 503, any status, delays, a request that is never answered).

import { X509Certificate, generateKeyPairSync } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type ServerOptions } from 'node:https';
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import forge from 'node-forge';
import { tempDir, type Teardownable } from './tmp.js';
import { FIXTURES } from './fixtures.js';

export const UPSTREAM_FIXTURE_KEYS = `${FIXTURES}/files/keys`;
/** the default identity the test upstream presents (as the upstream Apache presents its agent.cert) */
export const UPSTREAM_DEFAULT_ID = 'e745a140-40bc-4b86-b6dc-084488fc906b';
export const UPSTREAM_DEFAULT_KEY_FILE = join(UPSTREAM_FIXTURE_KEYS, `${UPSTREAM_DEFAULT_ID}.nopass.priv`);
export const UPSTREAM_DEFAULT_CERT_FILE = join(UPSTREAM_FIXTURE_KEYS, `${UPSTREAM_DEFAULT_ID}.cert`);
/** another fixture identity, to present a certificate a relay did not pin */
export const OTHER_KEY_FILE = join(UPSTREAM_FIXTURE_KEYS, '37817c4d-fbf7-4850-a985-50021f4e8f41.nopass.priv');
export const OTHER_CERT_FILE = join(UPSTREAM_FIXTURE_KEYS, '37817c4d-fbf7-4850-a985-50021f4e8f41.cert');

export type UpstreamEndpoint = 'reports' | 'inventories' | 'inventory-updates';
export const UPSTREAM_ENDPOINTS: readonly UpstreamEndpoint[] = ['reports', 'inventories', 'inventory-updates'];

/**
 * - `ok`: store and answer 201/204
 * - `down`: the listener is closed and open connections destroyed (connection refused); `ok` re-listens on the same port
 * - `fail-503-every-other`: the 1st, 3rd, 5th… PUT (counted from the switch) get 503, the others are stored
 * - `fail-503-always`: every PUT gets 503
 * - `{ status }`: every PUT gets that status (body `<status> forced by the test upstream`)
 * - `{ delayMs }`: wait that long after the body was read, then behave like `ok`
 * - `hang`: TLS and HTTP accepted, the request read, never answered
 */
export type UpstreamMode =
  | 'ok'
  | 'down'
  | 'fail-503-every-other'
  | 'fail-503-always'
  | 'hang'
  | { readonly status: number }
  | { readonly delayMs: number };

export interface UpstreamCredentials {
  /** default `rudder` */
  readonly user: string;
  /** reports and inventory updates (htpasswd-webdav); default `dav-secret` */
  readonly password: string;
  /** new inventories (htpasswd-webdav-initial); default `rudder` */
  readonly defaultPassword: string;
}

export interface ReceivedFile {
  readonly endpoint: UpstreamEndpoint;
  /** percent-decoded */
  readonly name: string;
  readonly body: Buffer;
  readonly user: string | undefined;
  readonly password: string | undefined;
  readonly at: Date;
  readonly headers: IncomingMessage['headers'];
}

export interface UpstreamRequest {
  readonly method: string;
  /** as sent, not decoded */
  readonly url: string;
  readonly status: number | undefined;
  readonly user: string | undefined;
  readonly at: Date;
  readonly headers: IncomingMessage['headers'];
}

export interface UpstreamStartOptions extends Partial<UpstreamCredentials> {
  /** PEM text or file paths; default: the e745a140 fixture identity */
  readonly certificate?: { readonly key: string; readonly cert: string };
  readonly mode?: UpstreamMode;
  /** what GET /uuid answers (the upstream's node id, as Apache serves uuid.hive); default the e745a140 fixture id */
  readonly uuid?: string;
}

export interface TestUpstream {
  readonly host: '127.0.0.1';
  readonly port: number;
  /** `https://127.0.0.1:<port>` */
  readonly url: string;
  /** the certificate presented, as a file a relay can pin (server_certificate_file) */
  readonly certificateFile: string;
  readonly certificatePem: string;
  readonly credentials: UpstreamCredentials;
  /** every file stored (201/204), in order, overwrites included */
  readonly received: ReceivedFile[];
  /** every request seen, answered or not, refused ones included */
  readonly requests: UpstreamRequest[];
  /** the files currently stored on an endpoint (like the DAV directory): one per name, last version, in order of first arrival */
  files(endpoint: UpstreamEndpoint): ReceivedFile[];
  setMode(mode: UpstreamMode): Promise<void>;
  readonly mode: UpstreamMode;
  setCredentials(credentials: Partial<UpstreamCredentials>): void;
  /** resolves once `count` distinct files (endpoint + name) were stored; rejects after timeoutMs */
  waitFor(count: number, timeoutMs?: number): Promise<void>;
  /** TLS handshakes completed (keep-alive check) */
  readonly handshakes: number;
  /** PUTs being handled right now, and the most at once since start / resetStats() */
  readonly inFlight: number;
  readonly maxInFlight: number;
  resetStats(): void;
  close(): Promise<void>;
}

function pemOrFile(value: string): string {
  return value.includes('-----BEGIN') ? value : readFileSync(value, 'utf8');
}

function basicCredentials(header: string | undefined): { user: string; password: string } | undefined {
  const match = /^Basic\s+(\S+)$/i.exec(header ?? '');
  if (match?.[1] === undefined) return undefined;
  const decoded = Buffer.from(match[1], 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return undefined;
  return { user: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.once('end', () => resolve(Buffer.concat(chunks)));
    req.once('error', reject);
  });
}

const DAV_PATH = /^\/+(reports|inventories|inventory-updates)\/([^/]+)$/;

export async function startUpstream(t: Teardownable, opts: UpstreamStartOptions = {}): Promise<TestUpstream> {
  const keyPem = pemOrFile(opts.certificate?.key ?? UPSTREAM_DEFAULT_KEY_FILE);
  const certificatePem = pemOrFile(opts.certificate?.cert ?? UPSTREAM_DEFAULT_CERT_FILE);
  let certificateFile: string;
  if (opts.certificate === undefined) certificateFile = UPSTREAM_DEFAULT_CERT_FILE;
  else if (!opts.certificate.cert.includes('-----BEGIN')) certificateFile = opts.certificate.cert;
  else {
    certificateFile = join(tempDir(t, 'onerelay-upstream-'), 'server.cert');
    writeFileSync(certificateFile, certificatePem);
  }

  let credentials: UpstreamCredentials = {
    user: opts.user ?? 'rudder',
    password: opts.password ?? 'dav-secret',
    defaultPassword: opts.defaultPassword ?? 'rudder',
  };
  let mode: UpstreamMode = opts.mode ?? 'ok';
  let modeCounter = 0;
  let handshakes = 0;
  let inFlight = 0;
  let maxInFlight = 0;
  const stored = new Map<UpstreamEndpoint, Map<string, ReceivedFile>>(UPSTREAM_ENDPOINTS.map((endpoint) => [endpoint, new Map()]));
  const received: ReceivedFile[] = [];
  const requests: UpstreamRequest[] = [];
  const sockets = new Set<Socket>();
  const hanging = new Set<ServerResponse>();
  const waiters = new Set<() => void>();

  function answer(req: IncomingMessage, res: ServerResponse, status: number, text: string, user: string | undefined): void {
    requests.push({ method: req.method ?? '', url: req.url ?? '', status, user, at: new Date(), headers: req.headers });
    // the shape of Apache's error documents
    const title = STATUS_CODES[status] ?? String(status);
    const html = `<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN">\n<html><head>\n<title>${status} ${title}</title>\n</head><body>\n<h1>${title}</h1>\n<p>${text}</p>\n</body></html>\n`;
    const headers: Record<string, string> = { 'content-type': 'text/html; charset=iso-8859-1', 'content-length': String(Buffer.byteLength(html)) };
    if (status === 401) headers['www-authenticate'] = 'Basic realm="WebDAV Storage"';
    res.writeHead(status, headers).end(html);
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = req.url ?? '';
    const credentialsSent = basicCredentials(req.headers.authorization);
    const path = url.split('?')[0] ?? '';
    if (path === '/uuid' && (req.method === 'GET' || req.method === 'HEAD')) {
      // what the agent's do-inventory asks first (rudder-client -e /uuid)
      await readBody(req);
      const text = `${opts.uuid ?? UPSTREAM_DEFAULT_ID}\n`;
      requests.push({ method: req.method, url, status: 200, user: credentialsSent?.user, at: new Date(), headers: req.headers });
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': String(Buffer.byteLength(text)) }).end(req.method === 'HEAD' ? undefined : text);
      return;
    }
    const match = DAV_PATH.exec(path);
    if (match === null) {
      await readBody(req);
      answer(req, res, 404, `The requested URL was not found on this server.`, credentialsSent?.user);
      return;
    }
    if (req.method !== 'PUT') {
      await readBody(req);
      answer(req, res, 403, `You don't have permission to access this resource.`, credentialsSent?.user);
      return;
    }
    const endpoint = match[1] as UpstreamEndpoint;
    let name: string;
    try {
      name = decodeURIComponent(match[2] ?? '');
    } catch {
      name = '';
    }
    inFlight += 1;
    maxInFlight = Math.max(maxInFlight, inFlight);
    try {
      const body = await readBody(req);
      const current = mode;
      if (current === 'hang') {
        requests.push({ method: 'PUT', url, status: undefined, user: credentialsSent?.user, at: new Date(), headers: req.headers });
        hanging.add(res);
        return;
      }
      if (typeof current === 'object' && 'delayMs' in current) await new Promise((r) => setTimeout(r, current.delayMs));
      const expected = endpoint === 'inventories' ? credentials.defaultPassword : credentials.password;
      if (credentialsSent === undefined || credentialsSent.user !== credentials.user || credentialsSent.password !== expected) {
        answer(req, res, 401, 'This server could not verify that you are authorized to access the document requested.', credentialsSent?.user);
        return;
      }
      if (name === '' || name.includes('/') || name.startsWith('.')) {
        answer(req, res, 403, `You don't have permission to access this resource.`, credentialsSent.user);
        return;
      }
      modeCounter += 1;
      const forced =
        current === 'fail-503-always' || (current === 'fail-503-every-other' && modeCounter % 2 === 1)
          ? 503
          : typeof current === 'object' && 'status' in current
            ? current.status
            : undefined;
      if (forced !== undefined) {
        answer(req, res, forced, `${forced} forced by the test upstream`, credentialsSent.user);
        return;
      }
      const files = stored.get(endpoint) ?? new Map<string, ReceivedFile>();
      const isOverwrite = files.has(name);
      const file: ReceivedFile = { endpoint, name, body, user: credentialsSent.user, password: credentialsSent.password, at: new Date(), headers: req.headers };
      files.set(name, file);
      received.push(file);
      for (const wake of [...waiters]) wake();
      if (isOverwrite) {
        requests.push({ method: 'PUT', url, status: 204, user: credentialsSent.user, at: new Date(), headers: req.headers });
        res.writeHead(204).end();
      } else {
        answer(req, res, 201, `Resource /${endpoint}/${name} has been created.`, credentialsSent.user);
      }
    } finally {
      inFlight -= 1;
    }
  }

  const serverOptions: ServerOptions = { key: keyPem, cert: certificatePem, minVersion: 'TLSv1.3' };
  const server: Server = createServer(serverOptions, (req, res) => {
    handle(req, res).catch((error: unknown) => {
      if (!res.headersSent) res.writeHead(500).end(String(error));
    });
  });
  server.keepAliveTimeout = 5_000; // Apache's KeepAliveTimeout
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  server.on('secureConnection', () => {
    handshakes += 1;
  });
  server.on('tlsClientError', () => undefined);

  function listen(port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => {
        server.off('error', reject);
        const address = server.address();
        if (address === null || typeof address === 'string') reject(new Error('test upstream: no TCP address'));
        else resolve(address.port);
      });
    });
  }

  function stopListening(): Promise<void> {
    if (!server.listening) return Promise.resolve();
    return new Promise((resolve) => {
      server.close(() => resolve());
      for (const res of hanging) res.destroy();
      hanging.clear();
      for (const socket of sockets) socket.destroy();
    });
  }

  const port = await listen(0);
  let closed = false;

  const upstream: TestUpstream = {
    host: '127.0.0.1',
    port,
    url: `https://127.0.0.1:${port}`,
    certificateFile,
    certificatePem,
    get credentials() {
      return credentials;
    },
    received,
    requests,
    files(endpoint) {
      return [...(stored.get(endpoint)?.values() ?? [])];
    },
    get mode() {
      return mode;
    },
    async setMode(next) {
      if (closed) throw new Error('test upstream is closed');
      mode = next;
      modeCounter = 0;
      if (next === 'down') await stopListening();
      else if (!server.listening) await listen(port);
      if (next !== 'hang') {
        for (const res of hanging) res.destroy();
        hanging.clear();
      }
    },
    setCredentials(next) {
      credentials = { ...credentials, ...next };
    },
    waitFor(count, timeoutMs = 10_000) {
      const distinct = () => new Set(received.map((file) => `${file.endpoint}/${file.name}`)).size;
      if (distinct() >= count) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          waiters.delete(check);
          const names = received.map((file) => `${file.endpoint}/${file.name}`).join(', ');
          reject(new Error(`test upstream: ${distinct()} of ${count} files received after ${timeoutMs} ms (${names})`));
        }, timeoutMs);
        function check(): void {
          if (distinct() < count) return;
          clearTimeout(timer);
          waiters.delete(check);
          resolve();
        }
        waiters.add(check);
      });
    },
    get handshakes() {
      return handshakes;
    },
    get inFlight() {
      return inFlight;
    },
    get maxInFlight() {
      return maxInFlight;
    },
    resetStats() {
      handshakes = 0;
      maxInFlight = inFlight;
    },
    async close() {
      if (closed) return;
      closed = true;
      await stopListening();
    },
  };
  t.teardown(() => upstream.close());
  return upstream;
}

export interface MadeCertificate {
  readonly key: string;
  readonly cert: string;
}

/**
 * A self-signed certificate (RSA 2048 from node:crypto, signed with node-forge) with chosen validity and
 * subjectAltName, e.g. an expired one or one valid for IP 127.0.0.1.
 */
export function makeCertificate(opts: {
  readonly commonName?: string;
  readonly notBefore?: Date;
  readonly notAfter?: Date;
  readonly ipAddresses?: readonly string[];
  readonly dnsNames?: readonly string[];
  readonly isCa?: boolean;
}): MadeCertificate {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const keyPem = privateKey.export({ type: 'pkcs1', format: 'pem' }).toString();
  const forgeKey = forge.pki.privateKeyFromPem(keyPem) as forge.pki.rsa.PrivateKey;
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.rsa.setPublicKey(forgeKey.n, forgeKey.e);
  cert.serialNumber = `01${forge.util.bytesToHex(forge.random.getBytesSync(8))}`;
  cert.validity.notBefore = opts.notBefore ?? new Date(Date.now() - 3600_000);
  cert.validity.notAfter = opts.notAfter ?? new Date(Date.now() + 24 * 3600_000);
  const subject = [{ name: 'commonName', value: opts.commonName ?? 'onerelay test upstream' }];
  cert.setSubject(subject);
  cert.setIssuer(subject);
  const altNames = [
    ...(opts.ipAddresses ?? []).map((ip) => ({ type: 7, ip })),
    ...(opts.dnsNames ?? []).map((value) => ({ type: 2, value })),
  ];
  cert.setExtensions([
    { name: 'basicConstraints', cA: opts.isCa ?? false },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, keyCertSign: opts.isCa ?? false },
    ...(altNames.length > 0 ? [{ name: 'subjectAltName', altNames }] : []),
  ]);
  cert.sign(forgeKey, forge.md.sha256.create());
  const certPem = forge.pki.certificateToPem(cert);
  new X509Certificate(certPem); // fail here, not in a TLS handshake, if forge produced something odd
  return { key: keyPem, cert: certPem };
}
