// nginx as the peer for upload benches: Debian's nginx with its own config in a temp dir, doing what
// Apache mod_dav does on a Rudder relay for `PUT /reports/<file>` (TLS 1.3, optional client cert,
// basic auth against an htpasswd file, file written to a temp file then renamed into place).
// Also the peer for policy downloads: the same TLS setup serving a directory tree under /policies/.

import { execFile } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { acceptsConnections, startServer, waitUntilReady, type Server } from './processes.js';

const execFileAsync = promisify(execFile);
const nginxBinary = '/usr/sbin/nginx';

export interface NginxOptions {
  /** empty directory for everything nginx writes */
  readonly directory: string;
  readonly port: number;
  readonly keyFile: string;
  readonly certificateFile: string;
  readonly user: string;
  readonly password: string;
}

export interface NginxUploads {
  readonly server: Server;
  /** where `PUT /reports/<file>` lands */
  readonly reportsDirectory: string;
}

/** "nginx/1.22.1", or throws when nginx cannot serve DAV uploads (unless `uploads` is false). */
export async function nginxVersion(uploads = true): Promise<string> {
  const { stderr } = await execFileAsync(nginxBinary, ['-V']);
  const version = /nginx version: (\S+)/.exec(stderr)?.[1] ?? 'nginx';
  if (!uploads) return version;
  if (!stderr.includes('--with-http_dav_module')) {
    throw new Error(`${nginxBinary} has no dav module: apt-get install -y nginx-full`);
  }
  if (stderr.includes('--without-http_auth_basic_module')) {
    throw new Error(`${nginxBinary} has no auth_basic module: apt-get install -y nginx-full`);
  }
  return version;
}

export async function startNginxUploads(options: NginxOptions): Promise<NginxUploads> {
  const reportsDirectory = join(options.directory, 'reports');
  await mkdir(reportsDirectory, { recursive: true });
  // apr1 (MD5) is what Apache's htpasswd writes by default, as for Rudder's htpasswd-webdav
  const { stdout: hash } = await execFileAsync('openssl', ['passwd', '-apr1', options.password]);
  const htpasswd = join(options.directory, 'htpasswd');
  await writeFile(htpasswd, `${options.user}:${hash.trim()}\n`);

  const server = await startNginx(options, `
    location /reports/ {
      alias ${reportsDirectory}/;
      dav_methods PUT;
      create_full_put_path off;
      limit_except PUT { deny all; }
      auth_basic "WebDAV Storage";
      auth_basic_user_file ${htpasswd};
    }`);
  return { server, reportsDirectory };
}

export interface NginxPoliciesOptions {
  /** empty directory for everything nginx writes */
  readonly directory: string;
  readonly port: number;
  readonly keyFile: string;
  readonly certificateFile: string;
  /** served as /policies/ (`<uuid>/rules/rudder.tar.bz2` below it), as onerelay's [policies] directory */
  readonly policiesDirectory: string;
}

/**
 * `GET /policies/<uuid>/…` from the policies directory, over TLS 1.3 with the client certificate requested
 * (optional_no_ca: nginx asks for it and lets any through, it has no node list); ETag on (nginx's default).
 */
export async function startNginxPolicies(options: NginxPoliciesOptions): Promise<Server> {
  await mkdir(options.directory, { recursive: true });
  return startNginx(options, `
    location /policies/ {
      alias ${options.policiesDirectory}/;
      etag on;
      limit_except GET { deny all; }
    }`);
}

/** nginx with one TLS 1.3 server on 127.0.0.1:`port` holding `locations`; ready when it accepts connections */
async function startNginx(
  options: { readonly directory: string; readonly port: number; readonly keyFile: string; readonly certificateFile: string },
  locations: string,
): Promise<Server> {
  await mkdir(join(options.directory, 'client-body'), { recursive: true });
  const temp = (name: string): string => join(options.directory, name);
  const config = `
daemon off;
worker_processes auto;
${process.getuid?.() === 0 ? 'user root;' : ''}
pid ${temp('nginx.pid')};
error_log ${temp('error.log')} warn;
events { worker_connections 1024; }
http {
  access_log ${temp('access.log')};
  client_body_temp_path ${temp('client-body')};
  proxy_temp_path ${temp('proxy')};
  fastcgi_temp_path ${temp('fastcgi')};
  uwsgi_temp_path ${temp('uwsgi')};
  scgi_temp_path ${temp('scgi')};
  server {
    listen 127.0.0.1:${options.port} ssl;
    ssl_certificate ${options.certificateFile};
    ssl_certificate_key ${options.keyFile};
    ssl_protocols TLSv1.3;
    ssl_verify_client optional_no_ca;${process.env['BENCH_NGINX_TICKETS'] === 'off' ? '\n    ssl_session_tickets off;' : ''}${locations}
  }
}
`;
  const configFile = temp('nginx.conf');
  await writeFile(configFile, config);
  const server = startServer({
    name: 'nginx',
    command: nginxBinary,
    args: ['-p', options.directory, '-c', configFile, '-e', temp('error.log')],
    cwd: options.directory,
    logFile: temp('stderr.log'),
    stopSignal: 'SIGTERM',
  });
  try {
    await waitUntilReady(server, () => acceptsConnections(options.port), 10_000);
  } catch (error) {
    await server.stop();
    throw error;
  }
  return server;
}
