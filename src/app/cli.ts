#!/usr/bin/env node
// onerelay command line. Exit codes are relayd's (spec-relayd.md §1.3): 0 ok or SIGTERM,
// 2 TOML syntax or type error, 3 any other start error — systemd's RestartPreventExitStatus=2 3.

import cluster from 'node:cluster';
import { parseArgs } from 'node:util';
import { exitCodeOf, runPrimary, runWorker } from './app.js';
import { spoolOf } from './compose.js';
import { checkInstallation } from './check.js';
import { loadConfig, type LogLevel } from '../config/index.js';
import { RelayError, messageOf } from '../errors.js';
import { ensureIdentity } from '../identity/index.js';
import { createLogger } from '../log.js';
import { identityPaths } from './paths.js';
import { VERSION } from '../version.js';
import { mkdir } from 'node:fs/promises';
import { containerConfig } from './container.js';
import { migrateFromRudder } from './migrate.js';
import { nodesTable, traceTimeline, type NodeView } from '../activity/index.js';

const DEFAULT_CONFIG = '/opt/rudder/etc/relayd';
const LEVELS: readonly LogLevel[] = ['off', 'error', 'warn', 'info', 'debug', 'trace'];

const HELP = `onerelay ${VERSION} — a Rudder relay in one process

Usage: onerelay <command> [--config PATH] [--log-level LEVEL]

Commands:
  start   run the relay (default)
  container  the container entry point: start with /etc/onerelay/onerelay.toml if mounted, else with
          a configuration generated from RUDDER_RELAY_* / ONERELAY_* variables (README "Container")
  migrate --from-rudder [--root DIR] [--output FILE]
          write an onerelay configuration from an existing Rudder relay (relayd's main.conf, Apache's
          networks and port, the same identity), using its data in place (default output
          /opt/rudder/etc/onerelay.toml); then run \`onerelay check\`
  health  exit 0 when the running relay's status answers (container HEALTHCHECK)
  reload  ask the running relay to reload (POST system/reload on general.listen): nodes list,
          certificates, log level; what systemd's ExecReload runs
  init    create the identity (node id, RSA key pair, certificate) and the state directories,
          then print the key digests to paste elsewhere; safe to run again
  check   validate the configuration and the data files it names, print every problem
  nodes [--silent]
          every node below the relay: last report, last policy download, agent version, last
          refusal; silent ones (no report for twice activity.run_interval) and refused ones first
  trace <node id | report or inventory file name>
          what the relay saw of a node, or what became of a file (received, verified, forwarded)

Options:
  -c, --config PATH      a TOML file, or a directory holding main.conf and logging.conf
                         as rudder-relayd's -c takes it (default ${DEFAULT_CONFIG})
      --log-level LEVEL  off, error, warn, info, debug or trace (overrides the configuration)
  -t, --test             same as check (rudder-relayd compatibility)
      --silent           nodes: only the silent ones
      --json             nodes, trace: the local API's JSON instead of text
  -h, --help             this help
  -V, --version          print the version

Exit codes: 0 ok, 2 configuration syntax or type error, 3 any other start error.
`;

async function init(configPath: string, level: LogLevel | undefined): Promise<number> {
  const { config, warnings } = await loadConfig(configPath);
  for (const warning of warnings) process.stderr.write(`warning: ${warning}\n`);
  const log = createLogger(level ?? 'warn');
  const { identity, created } = await ensureIdentity(identityPaths(config), log);
  await spoolOf(config, log).prepare({ cleanTmp: false });
  await mkdir(config.policies.directory, { recursive: true });
  for (const path of created) process.stdout.write(`created ${path}\n`);
  process.stdout.write(
    [
      `node id:          ${identity.nodeId}`,
      `key hash (curl pin, nodeslist.json key-hash): ${identity.digests.sha256Pin}`,
      `CFEngine key digest: ${identity.digests.cfengineSha}`,
      `CFEngine key digest: ${identity.digests.cfengineMd5}`,
      `private key:      ${config.identity.privateKeyFile}`,
      `public key:       ${config.identity.publicKeyFile}`,
      `certificate:      ${config.identity.certificateFile}`,
      '',
      ...registrationSteps(config, configPath, identity.nodeId),
    ].join('\n'),
  );
  return 0;
}

/** how a new relay becomes a relay on the root (README "The relay as a Rudder node") */
function registrationSteps(config: Awaited<ReturnType<typeof loadConfig>>['config'], configPath: string, nodeId: string): string[] {
  if (nodeId === 'root') return [];
  const upstream = `https://${config.output.upstream.host}:${config.general.httpsPort}`;
  const sends = config.node.inventory && config.processing.inventory.output === 'upstream';
  return [
    `To register relay ${nodeId} with its Rudder server:`,
    `  1. start it: onerelay start --config ${configPath} (or systemctl enable --now onerelay).`,
    sends
      ? `     Within a minute it sends its signed inventory to ${upstream}/inventories/ (first inventory, default password).`
      : '     It sends no inventory of its own ([node] inventory = false or inventory output disabled): send one as a Rudder agent would.',
    `  2. on the root, accept the new node ${nodeId}: web interface, Node management > Pending nodes,`,
    `     or POST /rudder/api/latest/nodes/pending/${nodeId} with {"status":"accepted"}.`,
    `  3. on the root, make it a relay: rudder server node-to-relay ${nodeId}`,
    '  4. the relay picks up its own policies at its next sync; from then on it sends its inventory to',
    '     /inventory-updates/ with the DAV credentials of those policies, once a day and when its identity changes.',
    '',
  ];
}

async function localApi(configPath: string): Promise<string> {
  const { config } = await loadConfig(configPath);
  const host = config.general.listen.host.includes(':') ? `[${config.general.listen.host}]` : config.general.listen.host;
  return `http://${host === '0.0.0.0' ? '127.0.0.1' : host}:${config.general.listen.port}`;
}

async function health(configPath: string | undefined): Promise<number> {
  const apiPort = process.env['ONERELAY_API_PORT'];
  const base = configPath === undefined && apiPort !== undefined ? `http://127.0.0.1:${apiPort}` : await localApi(configPath ?? DEFAULT_CONFIG);
  try {
    const response = await fetch(`${base}/rudder/relay-api/1/system/status`, { signal: AbortSignal.timeout(5_000) });
    const body = (await response.json()) as { data?: { https?: { status?: string } } };
    if (response.ok && body.data?.https?.status === 'success') return 0;
    process.stderr.write(`unhealthy: ${JSON.stringify(body.data?.https ?? body)}\n`);
    return 1;
  } catch (error) {
    process.stderr.write(`unhealthy: ${messageOf(error)}\n`);
    return 1;
  }
}

async function reload(configPath: string): Promise<number> {
  const url = `${await localApi(configPath)}/rudder/relay-api/1/system/reload`;
  let response: Response;
  try {
    response = await fetch(url, { method: 'POST', signal: AbortSignal.timeout(30_000) });
  } catch (error) {
    process.stderr.write(`error: cannot reach the relay at ${url}: ${messageOf(error)}\n`);
    return 3;
  }
  const body = await response.text();
  if (response.ok) {
    process.stdout.write('reloaded\n');
    return 0;
  }
  process.stderr.write(`error: reload failed (${response.status}): ${body}\n`);
  return 3;
}

/** the local API's activity answers, printed for a person (or as JSON) */
async function activityCommand(configPath: string, command: 'nodes' | 'trace', subject: string | undefined, flags: { silent: boolean; json: boolean }): Promise<number> {
  const base = `${await localApi(configPath)}/rudder/relay-api/1`;
  const get = async (path: string): Promise<{ status: number; body: { data?: unknown; errorDetails?: string; code?: string } }> => {
    try {
      const response = await fetch(`${base}${path}`, { signal: AbortSignal.timeout(30_000) });
      return { status: response.status, body: (await response.json()) as { data?: unknown; errorDetails?: string } };
    } catch (error) {
      throw new RelayError('RELAY_ERR_ACTIVITY_DATABASE', `cannot reach the relay at ${base}: ${messageOf(error)}`, { cause: error });
    }
  };
  const failed = (answer: { status: number; body: { errorDetails?: string; code?: string } }) => {
    process.stderr.write(`error: ${answer.body.code ?? answer.status}: ${answer.body.errorDetails ?? 'no answer'}\n`);
    return 3;
  };
  if (command === 'nodes') {
    const answer = await get(`/nodes${flags.silent ? '?silent=true' : ''}`);
    if (answer.status !== 200) return failed(answer);
    const data = answer.body.data as { nodes: NodeView[] };
    process.stdout.write(flags.json ? `${JSON.stringify(data, null, 2)}\n` : nodesTable(data.nodes));
    return 0;
  }
  if (subject === undefined) {
    process.stderr.write('trace: expected a node id or a file name\n');
    return 2;
  }
  // a report or inventory file name has a dot; a node id does not
  const isFile = subject.includes('.');
  const answer = await get(isFile ? `/ledger?file=${encodeURIComponent(subject)}` : `/nodes/${encodeURIComponent(subject)}`);
  if (answer.status !== 200) return failed(answer);
  if (flags.json) process.stdout.write(`${JSON.stringify(answer.body.data, null, 2)}\n`);
  else if (isFile) {
    const files = (answer.body.data as { files: Parameters<typeof traceTimeline>[0]['files'] }).files ?? [];
    process.stdout.write(files.length === 0 ? `${subject}: not in the ledger (never received here, or older than activity.detail_window)\n` : traceTimeline({ files }));
  } else process.stdout.write(traceTimeline({ node: answer.body.data as NonNullable<Parameters<typeof traceTimeline>[0]['node']> }));
  return 0;
}

async function check(configPath: string): Promise<number> {
  const result = await checkInstallation(configPath);
  for (const warning of result.warnings) process.stdout.write(`warning: ${warning}\n`);
  for (const problem of result.problems) process.stdout.write(`error: ${problem}\n`);
  if (result.exitCode === 0) process.stdout.write('Syntax: OK\n');
  return result.exitCode;
}

async function main(argv: string[]): Promise<number | undefined> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        config: { type: 'string', short: 'c' },
        'log-level': { type: 'string' },
        test: { type: 'boolean', short: 't' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean', short: 'V' },
        'from-rudder': { type: 'boolean' },
        root: { type: 'string' },
        output: { type: 'string' },
        silent: { type: 'boolean' },
        json: { type: 'boolean' },
      },
    });
  } catch (error) {
    process.stderr.write(`${messageOf(error)}\n\n${HELP}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  if (values.version) {
    process.stdout.write(`onerelay ${VERSION}\n`);
    return 0;
  }
  const level = values['log-level'];
  if (level !== undefined && !(LEVELS as readonly string[]).includes(level)) {
    process.stderr.write(`--log-level ${level}: expected one of ${LEVELS.join(', ')}\n`);
    return 2;
  }
  const logLevel = level as LogLevel | undefined;
  const configPath = values.config ?? DEFAULT_CONFIG;
  const command = values.test ? 'check' : (positionals[0] ?? 'start');
  if (positionals.length > (command === 'trace' ? 2 : 1)) {
    process.stderr.write(`unexpected argument ${positionals[1]}\n\n${HELP}`);
    return 2;
  }
  switch (command) {
    case 'start':
      await runPrimary({ configPath, logLevel });
      return undefined;
    case 'init':
      try {
        return await init(configPath, logLevel);
      } catch (error) {
        process.stderr.write(`error: ${messageOf(error)}\n`);
        return exitCodeOf(error);
      }
    case 'check':
      return check(configPath);
    case 'container':
      try {
        await runPrimary({ configPath: await containerConfig(), logLevel });
        return undefined;
      } catch (error) {
        process.stderr.write(`error: ${messageOf(error)}\n`);
        return exitCodeOf(error);
      }
    case 'health':
      return health(values.config);
    case 'migrate': {
      if (!values['from-rudder']) {
        process.stderr.write('migrate: only --from-rudder is supported\n');
        return 2;
      }
      try {
        const result = await migrateFromRudder({ root: values.root ?? '/', output: values.output ?? '/opt/rudder/etc/onerelay.toml' });
        for (const note of result.notes) process.stdout.write(`${note}\n`);
        process.stdout.write(`next: onerelay check --config ${result.output}\n`);
        return 0;
      } catch (error) {
        process.stderr.write(`error: ${messageOf(error)}\n`);
        return exitCodeOf(error);
      }
    }
    case 'nodes':
    case 'trace':
      try {
        return await activityCommand(configPath, command, positionals[1], { silent: values.silent === true, json: values.json === true });
      } catch (error) {
        process.stderr.write(`error: ${messageOf(error)}\n`);
        return exitCodeOf(error);
      }
    case 'reload':
      try {
        return await reload(configPath);
      } catch (error) {
        process.stderr.write(`error: ${messageOf(error)}\n`);
        return exitCodeOf(error);
      }
    default:
      process.stderr.write(`unknown command ${command}\n\n${HELP}`);
      return 2;
  }
}

if (cluster.isWorker) {
  void runWorker();
} else {
  main(process.argv.slice(2)).then(
    (code) => {
      if (code !== undefined) process.exitCode = code;
    },
    (error: unknown) => {
      process.stderr.write(`error: ${messageOf(error)}\n`);
      process.exitCode = 3;
    },
  );
}
