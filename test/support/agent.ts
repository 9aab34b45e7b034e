/*
 * Test helpers that behave like a stock Rudder Unix agent (7.x – 9.x).
 *
 * Research notes (facts only; read from public mirrors, no code copied):
 *
 * Identity — Normation/rudder-agent share/commands/agent-check (check_and_fix_keys),
 *            Normation/rudder-packages rudder-agent/SOURCES/openssl.cnf
 *            (installed as /opt/rudder/etc/ssl/openssl-agent.cnf by SOURCES/Makefile.in),
 *            identical on branches 7.0 … 9.2 and master.
 *  - key pair: `cf-key -T 4096` → ppkeys/localhost.priv (PEM "BEGIN RSA PRIVATE KEY",
 *    unencrypted since 7.x; older keys use passphrase "Cfengine passphrase", which
 *    agent check strips) and localhost.pub (PKCS#1 "BEGIN RSA PUBLIC KEY", the same
 *    bytes as `openssl rsa -RSAPublicKey_out`; checked here with cf-key 3.21).
 *    A missing .pub is rebuilt with `openssl rsa -RSAPublicKey_out`.
 *  - certificate: `openssl req -new -batch -sha256 -key localhost.priv -out agent.cert
 *    -x509 -days 3650 -extensions agent_cert -config openssl-agent.cnf -subj "/UID=<uuid>"`.
 *    The config has `[req] distinguished_name=req_distinguished_name`, an empty
 *    `[req_distinguished_name]`, and `[agent_cert]`: basicConstraints=CA:TRUE,
 *    subjectKeyIdentifier=hash, authorityKeyIdentifier=keyid:always,issuer:always,
 *    keyUsage=digitalSignature,dataEncipherment,keyEncipherment,keyAgreement,keyCertSign
 *    (extendedKeyUsage=clientAuth is commented out). Regenerated when the subject UID
 *    differs from uuid.hive or `openssl x509 -modulus` ≠ `openssl rsa -modulus`.
 *  - HTTPS pin (spec-https-front-cfserverd-sync.md §4): sha256//base64(sha256(SPKI DER)),
 *    `openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64`.
 *
 * Run log — rudder-agent share/commands/agent-run + share/lib/report.sh (compress_and_sign)
 *           + share/lib/timestamp.
 *  - cf-agent output is piped through `timestamp` (prefix "<date -u +%Y-%m-%dT%T+00:00> ")
 *    into /var/rudder/tmp/reports/<name>.log, name = `$(date -u +%Y-%m-%dT%T+00:00)@<uuid>`.
 *  - skipped when INITIAL policies or empty file; otherwise
 *    `openssl smime -sign -text -nocerts -signer agent.cert -inkey localhost.priv -in F -out F.signed`
 *    (7.x–8.x add `-passin "pass:Cfengine passphrase"`, dropped in 9.0), mv F.signed F,
 *    `gzip -f F` (so the gzip header carries the original name `<name>.log`), mv to
 *    /var/rudder/reports/ready/<name>.log.gz, then `rudder-client -e /reports/ -- --upload-file <file>`.
 *    Failed uploads are retried by the policy (rudder-techniques common/1.0/reporting-http.cf,
 *    same rudder-client call, ≤ 50 files per run, files older than 7 days purged).
 *  - `-text` prepends "Content-Type: text/plain" and turns the signed content into CRLF;
 *    the outer MIME lines stay LF; detached multipart/signed, micalg sha-256 (OpenSSL 3 default).
 *
 * curl — rudder-agent bin/rudder-client (9.0 = 9.1 = 9.2 = master; 8.x and 7.3 differ as noted).
 *  Always: `--tlsv1.3 --location --fail --connect-timeout 10` (7.3: `--tlsv1.2`), `--silent --show-error`.
 *  Proxy: 9.x `--noproxy *` when agent.conf has no https_proxy, `--proxy <p>` otherwise, nothing
 *         for "system"; 7.x/8.x `--proxy "<p>"` i.e. `--proxy ''` when unset.
 *  Pin: 9.x `--pinnedpubkey <POLICY_SERVER_KEY_HASH or /var/rudder/lib/ssl/policy_server_hash> --insecure`
 *       unless cert validation is on; `--insecure` alone when no hash is known. 7.x/8.x: same
 *       flags, hash from policy_server_hash, replaced (and rewritten) by rudder.json's value.
 *  Auth: `--user DAVUSER:DAVPASSWORD` from rudder.json, or `-u` override; with `-c` (or cert
 *        validation on) `--cert /opt/rudder/etc/ssl/agent.cert --key …/ppkeys/localhost.priv`
 *        INSTEAD of --user (agent-http.{cert,key} when present). Never both.
 *  URL: `https://<server>[:https_port]<endpoint>`, then the caller's curl args after `--`.
 *  Order: curl <always> <proxy> <pin+insecure> [--etag-save T --etag-compare T] --silent --show-error <auth> <url> <args>.
 *  Callers:
 *   reports   (report.sh):    rudder-client -e /reports/ -- --upload-file <ready>/<ts>@<uuid>.log.gz
 *   inventory (bin/do-inventory, techniques inventory/1.0/fusionAgent.st sendInventory):
 *             first time `rudder-client -u rudder:rudder -e /inventories/ -- --upload-file <uuid>_<iso>.ocs.gz -o /dev/null`
 *             then the same for `.ocs.sign`; later runs use `-e /inventory-updates/` with DAV creds
 *             (initial-promises variables.json has DAVUSER=DAVPASSWORD=rudder).
 *   server uuid: rudder-client -e /uuid -- --output inputs/rudder-server-uuid.txt
 *   policies (9.0+ share/commands/agent-update): rudder-client -c -e /common/policies-library-linux.tar.bz2
 *             (and /policies/<uuid>/rules/rudder.tar.bz2) -t /var/rudder/tmp/<basename>.etag -- -o /var/rudder/tmp/<basename>
 *             (the ETag option is `-t <file>`, not `-e`, which is the endpoint).
 *   relay DAV self-test (techniques rudder-service-apache): curl --tlsv1.3 --proxy '' --insecure --silent --fail
 *             --output /dev/null --user <u>:<pw> --upload-file /opt/rudder/etc/uuid.hive https://localhost:<port>/inventory-updates/uuid.hive
 *  `--upload-file F` on a URL ending in "/" makes curl append F's basename, percent-encoded
 *  with LOWERCASE hex by curl 7.88 (":" → %3a, "+" → %2b, "@" → %40): the server sees
 *  `/reports/2024-01-02T03%3a04%3a05%2b00%3a00%40<uuid>.log.gz` and must decode it.
 *
 * Our deviations (for tests): no --fail by default on uploads (so 4xx/5xx are observable through
 * `--write-out`), basic auth and client cert may be combined, no rudder.json/agent.conf lookup.
 */

import { spawn } from 'node:child_process';
import { constants as fsc } from 'node:fs';
import { access, chmod, mkdir, mkdtemp, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';

export interface AgentIdentity {
  nodeId: string;
  dir: string;
  /** localhost.priv: PEM "BEGIN RSA PRIVATE KEY" (may be encrypted with "Cfengine passphrase" for old fixtures) */
  privateKeyFile: string;
  /** localhost.pub: PEM "BEGIN RSA PUBLIC KEY" */
  publicKeyFile: string;
  /** agent.cert: self-signed, subject /UID=<nodeId> */
  certificateFile: string;
  certificatePem: string;
  /** sha256//<base64 sha256 of SPKI DER>, the value of POLICY_SERVER_KEY_HASH / curl --pinnedpubkey */
  sha256Pin: string;
}

/** Our copy of rudder-packages rudder-agent/SOURCES/openssl.cnf (installed as openssl-agent.cnf). */
export const AGENT_OPENSSL_CNF = `[ req ]
distinguished_name = req_distinguished_name

[ req_distinguished_name ]

[ agent_cert ]
basicConstraints        = CA:TRUE
subjectKeyIdentifier    = hash
authorityKeyIdentifier  = keyid:always, issuer:always
keyUsage                = digitalSignature, dataEncipherment, keyEncipherment, keyAgreement, keyCertSign
`;

/** Passphrase of pre-7.x agent keys; 7.x–8.x agents always pass it to openssl (harmless on clear keys). */
export const CFENGINE_PASSPHRASE = 'Cfengine passphrase';

// ---------------------------------------------------------------------------
// process helpers

export interface RunResult {
  code: number;
  stdout: Buffer;
  stderr: string;
}

/** Runs a program (no shell), feeding `input` on stdin. Never rejects on a non-zero exit. */
export function run(
  cmd: string,
  args: readonly string[],
  opts: { input?: Buffer | string; cwd?: string; timeoutMs?: number } = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, LANG: 'C', LC_ALL: 'C' },
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timer: NodeJS.Timeout | undefined;
    if (opts.timeoutMs !== undefined) {
      timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs);
    }
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) => {
      if (timer) clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      resolve({
        code: code ?? (signal ? 128 : 1),
        stdout: Buffer.concat(out),
        stderr: Buffer.concat(err).toString('utf8'),
      });
    });
    child.stdin.on('error', () => {
      /* EPIPE when the child does not read stdin */
    });
    child.stdin.end(opts.input ?? '');
  });
}

async function runOk(cmd: string, args: readonly string[], input?: Buffer | string): Promise<Buffer> {
  const r = await run(cmd, args, input === undefined ? {} : { input });
  if (r.code !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${r.stderr.trim()}`);
  }
  return r.stdout;
}

async function findExecutable(name: string, extraDirs: string[] = []): Promise<string | undefined> {
  const dirs = [...extraDirs, ...(process.env['PATH'] ?? '').split(delimiter).filter(Boolean)];
  for (const d of dirs) {
    const p = join(d, name);
    try {
      await access(p, fsc.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  return undefined;
}

let cfKeyPath: Promise<string | undefined> | undefined;
function cfKey(): Promise<string | undefined> {
  cfKeyPath ??= findExecutable('cf-key', ['/opt/rudder/bin']);
  return cfKeyPath;
}

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------
// identity

/** sha256//base64(sha256(SPKI DER)) of a PEM certificate, computed with openssl as in spec §4. */
export async function certificatePin(certificateFile: string): Promise<string> {
  const pubPem = await runOk('openssl', ['x509', '-pubkey', '-noout', '-in', certificateFile]);
  const der = await runOk('openssl', ['pkey', '-pubin', '-outform', 'der'], pubPem);
  const digest = await runOk('openssl', ['dgst', '-sha256', '-binary'], der);
  const b64 = await runOk('openssl', ['base64', '-A'], digest);
  return `sha256//${b64.toString('ascii').trim()}`;
}

/** Builds an AgentIdentity from existing files (e.g. the relayd fixtures). */
export async function identityFromFiles(files: {
  nodeId: string;
  privateKeyFile: string;
  certificateFile: string;
  publicKeyFile?: string;
  dir?: string;
}): Promise<AgentIdentity> {
  const certificatePem = await readFile(files.certificateFile, 'utf8');
  return {
    nodeId: files.nodeId,
    dir: files.dir ?? join(files.certificateFile, '..'),
    privateKeyFile: files.privateKeyFile,
    publicKeyFile: files.publicKeyFile ?? files.privateKeyFile.replace(/\.priv$/, '.pub'),
    certificateFile: files.certificateFile,
    certificatePem,
    sha256Pin: await certificatePin(files.certificateFile),
  };
}

/**
 * Creates `dir/localhost.priv`, `dir/localhost.pub` and `dir/agent.cert` the way
 * `rudder agent check` does: cf-key -T <bits> when cf-key is installed (same speed as
 * openssl genrsa, and byte-for-byte the agent's formats), otherwise
 * `openssl genrsa -traditional` + `openssl rsa -RSAPublicKey_out`; then `openssl req -x509
 * -extensions agent_cert` with our copy of openssl-agent.cnf.
 */
export async function makeAgentIdentity(
  dir: string,
  nodeId: string,
  opts: { bits?: number; keyTool?: 'cf-key' | 'openssl' } = {},
): Promise<AgentIdentity> {
  const bits = opts.bits ?? 4096;
  if (!Number.isInteger(bits) || bits < 1024) throw new Error(`bad RSA size ${bits}`);
  if (!/^[A-Za-z0-9._-]+$/.test(nodeId)) throw new Error(`unsupported node id ${JSON.stringify(nodeId)}`);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const privateKeyFile = join(dir, 'localhost.priv');
  const publicKeyFile = join(dir, 'localhost.pub');
  const certificateFile = join(dir, 'agent.cert');
  for (const f of [privateKeyFile, publicKeyFile, certificateFile]) {
    if (await exists(f)) throw new Error(`makeAgentIdentity: ${f} already exists`);
  }

  const cfk = opts.keyTool === 'openssl' ? undefined : await cfKey();
  if (opts.keyTool === 'cf-key' && cfk === undefined) throw new Error('cf-key not found');
  let made = false;
  if (cfk !== undefined) {
    // -f <base> writes <base>.priv and <base>.pub
    const r = await run(cfk, ['-T', String(bits), '-f', join(dir, 'localhost')]);
    made = r.code === 0 && (await exists(privateKeyFile)) && (await exists(publicKeyFile));
    if (!made) {
      if (opts.keyTool === 'cf-key') throw new Error(`cf-key failed (${r.code}): ${r.stderr}`);
      await rm(privateKeyFile, { force: true });
      await rm(publicKeyFile, { force: true });
    }
  }
  if (!made) {
    await runOk('openssl', ['genrsa', '-traditional', '-out', privateKeyFile, String(bits)]);
    await runOk('openssl', ['rsa', '-in', privateKeyFile, '-RSAPublicKey_out', '-out', publicKeyFile]);
  }
  await chmod(privateKeyFile, 0o600);
  await chmod(publicKeyFile, 0o600);

  const cnfDir = await mkdtemp(join(tmpdir(), 'onerelay-cnf-'));
  try {
    const cnf = join(cnfDir, 'openssl-agent.cnf');
    await writeFile(cnf, AGENT_OPENSSL_CNF);
    await runOk('openssl', [
      'req', '-new', '-batch', '-sha256',
      '-key', privateKeyFile,
      '-out', certificateFile,
      '-x509', '-days', '3650',
      '-extensions', 'agent_cert',
      '-config', cnf,
      '-subj', `/UID=${nodeId}`,
    ]);
  } finally {
    await rm(cnfDir, { recursive: true, force: true });
  }
  return identityFromFiles({ nodeId, privateKeyFile, publicKeyFile, certificateFile, dir });
}

/** Root of the per-machine identity cache. */
export function identityCacheRoot(): string {
  return join(tmpdir(), 'onerelay-test-identities');
}

const identityMemo = new Map<string, Promise<AgentIdentity>>();

/**
 * An identity for `nodeId`, made once per machine and kept in
 * os.tmpdir()/onerelay-test-identities/<nodeId>-<bits>/ (generated in a temp dir and
 * renamed, so concurrent tap processes are safe). Treat the files as read-only.
 */
export function cachedAgentIdentity(nodeId: string, bits = 4096): Promise<AgentIdentity> {
  const key = `${nodeId}-${bits}`;
  let p = identityMemo.get(key);
  if (!p) {
    p = loadOrCreateCached(nodeId, bits);
    p.catch(() => identityMemo.delete(key));
    identityMemo.set(key, p);
  }
  return p;
}

async function loadCached(dir: string, nodeId: string): Promise<AgentIdentity | undefined> {
  const privateKeyFile = join(dir, 'localhost.priv');
  const publicKeyFile = join(dir, 'localhost.pub');
  const certificateFile = join(dir, 'agent.cert');
  for (const f of [privateKeyFile, publicKeyFile, certificateFile]) {
    if (!(await exists(f))) return undefined;
  }
  try {
    return await identityFromFiles({ nodeId, privateKeyFile, publicKeyFile, certificateFile, dir });
  } catch {
    return undefined;
  }
}

async function loadOrCreateCached(nodeId: string, bits: number): Promise<AgentIdentity> {
  if (!/^[A-Za-z0-9._-]+$/.test(nodeId)) throw new Error(`unsupported node id ${JSON.stringify(nodeId)}`);
  const root = identityCacheRoot();
  const final = join(root, `${nodeId}-${bits}`);
  const hit = await loadCached(final, nodeId);
  if (hit) return hit;

  await mkdir(root, { recursive: true });
  const work = await mkdtemp(join(root, `.tmp-${nodeId}-${bits}-`));
  try {
    await makeAgentIdentity(join(work, 'id'), nodeId, { bits });
    try {
      await rename(join(work, 'id'), final);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw e;
      // another process won the race; use its identity (or replace a broken one)
      const theirs = await loadCached(final, nodeId);
      if (theirs) return theirs;
      await rm(final, { recursive: true, force: true });
      await rename(join(work, 'id'), final);
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  const made = await loadCached(final, nodeId);
  if (!made) throw new Error(`cachedAgentIdentity: ${final} vanished`);
  return made;
}

// ---------------------------------------------------------------------------
// run logs

/** `openssl smime -sign -text -nocerts -signer agent.cert -inkey localhost.priv` over `text`. */
export async function signRunlog(identity: AgentIdentity, text: string | Buffer): Promise<Buffer> {
  const dir = await mkdtemp(join(tmpdir(), 'onerelay-sign-'));
  try {
    const input = join(dir, 'runlog.log');
    const output = join(dir, 'runlog.log.signed');
    await writeFile(input, text);
    await runOk('openssl', [
      'smime', '-sign', '-text', '-nocerts',
      '-signer', identity.certificateFile,
      '-inkey', identity.privateKeyFile,
      '-passin', `pass:${CFENGINE_PASSPHRASE}`,
      '-in', input,
      '-out', output,
    ]);
    return await readFile(output);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** The agent's report time stamp: `date -u +%Y-%m-%dT%T+00:00`. */
export function agentTimestamp(date: Date = new Date()): string {
  return `${date.toISOString().slice(0, 19)}+00:00`;
}

/** `<YYYY-MM-DDThh:mm:ss+00:00>@<uuid>.log.gz` */
export function agentReportName(nodeId: string, date: Date = new Date()): string {
  return `${agentTimestamp(date)}@${nodeId}.log.gz`;
}

/**
 * `gzip -f <fileName>` as the agent runs it: the real gzip binary, so the header carries
 * the original file name and mtime. `fileName` is the uncompressed name (e.g. `…@uuid.log`).
 */
export async function gzipLikeAgent(fileName: string, data: Buffer | string): Promise<Buffer> {
  if (fileName.includes('/')) throw new Error('gzipLikeAgent: bare file name expected');
  const dir = await mkdtemp(join(tmpdir(), 'onerelay-gz-'));
  try {
    const f = join(dir, fileName);
    await writeFile(f, data);
    await runOk('gzip', ['-f', f]);
    return await readFile(`${f}.gz`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Signed then gzipped run log with the agent's file name (time stamp = now unless given). */
export async function signedGzippedReport(
  identity: AgentIdentity,
  text: string | Buffer,
  date: Date = new Date(),
): Promise<{ name: string; body: Buffer }> {
  const name = agentReportName(identity.nodeId, date);
  const signed = await signRunlog(identity, text);
  const body = await gzipLikeAgent(name.slice(0, -'.gz'.length), signed);
  return { name, body };
}

/**
 * A small, valid run log for `nodeId` (complete run: control start … end), in the
 * format of relayd's 2018 fixture: `<execution ts> R: @@policy@@event@@rule@@directive@@
 * report_id@@component@@key@@<start date>##<node>@#message`, LF line endings,
 * trailing newline. Parses to 6 reports: start, 3 results, 1 log_info, end.
 */
export function sampleRunlog(
  nodeId: string,
  opts: { start?: Date; configId?: string } = {},
): string {
  const start = opts.start ?? new Date('2018-08-24T15:55:01Z');
  const configId = opts.configId ?? '20180824-130007-3ad37587';
  const startDate = `${start.toISOString().slice(0, 10)} ${start.toISOString().slice(11, 19)}+00:00`;
  const at = (s: number) => agentTimestamp(new Date(start.getTime() + s * 1000));
  const r = (s: number, fields: string, msg: string) =>
    `${at(s)} R: @@${fields}@@${startDate}##${nodeId}@#${msg}\n`;
  return (
    r(0, `Common@@control@@rudder@@run@@0@@start@@${configId}`, 'Start execution') +
    r(1, 'Common@@result_success@@hasPolicyServer-root@@common-root@@0@@ncf Initialization@@None',
      'Configuration library initialization was correct') +
    r(2, 'Common@@result_success@@hasPolicyServer-root@@common-root@@0@@Security parameters@@None',
      'The internal environment security is acceptable') +
    r(3, 'Common@@log_info@@hasPolicyServer-root@@common-root@@0@@Log system for reports@@None',
      'Detected running syslog as rsyslog') +
    r(4, 'Common@@result_na@@hasPolicyServer-root@@common-root@@0@@Monitoring@@None',
      'No Rudder monitoring information to share with the server') +
    r(5, `Common@@control@@rudder@@run@@0@@end@@${configId}`, 'End execution')
  );
}

// ---------------------------------------------------------------------------
// curl, as bin/rudder-client runs it

export interface CurlResult {
  /** HTTP status from --write-out %{http_code}; 0 when no response was received */
  status: number;
  /** response body (upload) or nothing (download, body goes to the output file) */
  stdout: string;
  stderr: string;
  exitCode: number;
  /** the exact argv given to curl (for logs and assertions) */
  args: string[];
}

interface CurlCommon {
  url: string;
  user?: string;
  password?: string;
  identity?: AgentIdentity;
  pinnedPubKey?: string;
  /** 7.3 agents: `--tlsv1.2` (a minimum, curl still negotiates 1.3 when offered) */
  tls12?: boolean;
  /** add `--fail` like rudder-client (status still reported) */
  fail?: boolean;
  extraArgs?: string[];
  /** kill curl after this long (default 60 s) */
  timeoutMs?: number;
}

export interface CurlUploadOptions extends CurlCommon {
  file: string;
}

export interface CurlDownloadOptions extends CurlCommon {
  output: string;
  etagFile?: string;
}

const WRITE_OUT = '\\n%{http_code}';

function baseArgs(o: CurlCommon, fail: boolean, etagFile?: string): string[] {
  const a = [o.tls12 ? '--tlsv1.2' : '--tlsv1.3', '--location'];
  if (fail) a.push('--fail');
  a.push('--connect-timeout', '10', '--noproxy', '*');
  if (o.pinnedPubKey) a.push('--pinnedpubkey', o.pinnedPubKey);
  a.push('--insecure');
  if (etagFile !== undefined) a.push('--etag-save', etagFile, '--etag-compare', etagFile);
  a.push('--silent', '--show-error');
  if (o.user !== undefined) {
    const cred = o.password !== undefined ? `${o.user}:${o.password}` : o.user.includes(':') ? o.user : `${o.user}:`;
    a.push('--user', cred);
  }
  if (o.identity) a.push('--cert', o.identity.certificateFile, '--key', o.identity.privateKeyFile);
  a.push(o.url);
  return a;
}

/** argv of curlUpload (without the curl binary). */
export function curlUploadArgs(o: CurlUploadOptions): string[] {
  return [...baseArgs(o, o.fail ?? false), '--upload-file', o.file, ...(o.extraArgs ?? []), '--write-out', WRITE_OUT];
}

/** argv of curlDownload (without the curl binary). */
export function curlDownloadArgs(o: CurlDownloadOptions): string[] {
  return [...baseArgs(o, o.fail ?? true, o.etagFile), '-o', o.output, ...(o.extraArgs ?? []), '--write-out', WRITE_OUT];
}

async function runCurl(args: string[], timeoutMs = 60_000): Promise<CurlResult> {
  const r = await run('curl', args, { timeoutMs });
  const out = r.stdout.toString('utf8');
  const m = /\n(\d{3})$/.exec(out);
  return {
    status: m ? Number(m[1]) : 0,
    stdout: m ? out.slice(0, -4) : out,
    stderr: r.stderr,
    exitCode: r.code,
    args,
  };
}

/**
 * `curl --upload-file <file> <url>` with rudder-client's options (PUT; when `url` ends with
 * "/", curl appends the file's percent-encoded basename). No `--fail` unless asked.
 */
export function curlUpload(o: CurlUploadOptions): Promise<CurlResult> {
  return runCurl(curlUploadArgs(o), o.timeoutMs);
}

/** `rudder-client -c -e <endpoint> -t <etagFile> -- -o <output>`: GET with --fail and ETag files. */
export function curlDownload(o: CurlDownloadOptions): Promise<CurlResult> {
  return runCurl(curlDownloadArgs(o), o.timeoutMs);
}
