// Inbound remote run (spec-https-front-cfserverd-sync.md §2.5, cf-serverd's DoExec2): only a key in
// execKeys and the user in allowusers; the client's class-selection frames up to the terminator; only -D
// and -b with [A-Za-z0-9_:] tokens, each -D class authorised by Rudder's `roles` (-b has no meaning here and
// is refused); then "cf-serverd executing cfruncommand: …", one "> line" per output line,
// "(exit code: N)", and always the terminator.

import { messageOf } from '../errors.js';
import { CFD_TERMINATOR, FAILED, MAX_PAYLOAD, encodeFrame } from './codec.js';
import type { Outcome, Session } from './session.js';

/** cf-serverd's MatchClasses reads at most this many class-selection transactions */
const MAX_EXEC_SELECT_FRAMES = 10;
/** CharsetAcceptable for EXEC -D/-b tokens */
const EXEC_TOKEN = /^[A-Za-z0-9_:]+$/;
/**
 * Rudder's cf-serverd `roles` (rudder-techniques common/1.0/cf-serverd.st, Rudder 9): the classes an EXEC
 * may define, matched as anchored regexes; each `authorize => { "root" }`, which the allowusers check below
 * already demands of every EXEC
 */
export const EXEC_ROLES: readonly string[] = ['force_inventory', 'info', 'debug', 'trace'];
/** cf-serverd's allowusers is POLICYSERVER_ADMIN (root) and the nodes' admins, whose keys the path ACL never admits */
const EXEC_USERS: ReadonlySet<string> = new Set(['root']);
/** "> " + line + "\n" must fit one transaction */
const MAX_EXEC_LINE_BYTES = MAX_PAYLOAD - 3;

/** the classes of EXEC's arguments, or the refusal line cf-serverd would send */
export function parseExecArguments(args: string): { readonly classes: readonly string[] } | { readonly refusal: string } {
  const classes: string[] = [];
  let rest = args.replace(/^[ \t]+/, '');
  while (rest !== '') {
    const option = rest.slice(0, 2);
    if (option !== '-D' && option !== '-b') return { refusal: `EXEC denied: invalid arguments: ${rest}` };
    const list = rest.slice(2).replace(/^[ \t]+/, '');
    const end = list.search(/[ \t]/);
    const tokens = (end === -1 ? list : list.slice(0, end)).split(',');
    rest = (end === -1 ? '' : list.slice(end)).replace(/^[ \t]+/, '');
    if (tokens.length === 1 && tokens[0] === '') continue;
    if (option === '-b') return { refusal: 'EXEC denied bundle activation (check cf-serverd verbose output)' };
    if (!tokens.every((token) => EXEC_TOKEN.test(token) && EXEC_ROLES.includes(token))) return { refusal: 'EXEC denied role activation (check cf-serverd verbose output)' };
    classes.push(...tokens);
  }
  return { classes };
}

export async function exec(session: Session, args: string): Promise<Outcome> {
  const { exec: config } = session.ctx;
  if (config.run === undefined || !config.keys.has(session.keyPin) || !EXEC_USERS.has(session.username)) {
    // like a cfruncommand path not admitted for this key, or a user not in allowusers: refusal, terminator, close
    const why =
      config.run === undefined ? 'no remote run here' : !config.keys.has(session.keyPin) ? 'key not admitted' : `user ${JSON.stringify(session.username)} not in allowusers`;
    session.admission.denied('EXEC', { user: session.username }, `cfengine EXEC refused: ${why}`);
    await session.write(encodeFrame(FAILED));
    await session.write(encodeFrame(`${CFD_TERMINATOR}\0`));
    session.setCloseReason('EXEC refused', 'RELAY_ERR_CFENGINE_ACCESS');
    return 'close';
  }
  const terminate = async (): Promise<Outcome> => {
    await session.write(encodeFrame(`${CFD_TERMINATOR}\0`));
    return 'continue';
  };
  const refuse = async (line: string): Promise<Outcome> => {
    session.admission.denied('EXEC', { args: args.slice(0, 200) }, `cfengine ${line}`);
    await session.write(encodeFrame(line.slice(0, MAX_PAYLOAD)));
    return terminate();
  };
  // MatchClasses: class-selection frames (cf-runagent -s) until the terminator
  let selected = 0;
  for (let count = 0; count < MAX_EXEC_SELECT_FRAMES; count++) {
    const payload = await session.nextFrame();
    if (payload === undefined) return 'close';
    if (payload.toString('latin1').startsWith(CFD_TERMINATOR)) break;
    selected += 1;
  }
  if (selected > 0) {
    // no class of this relay can match a selection: cf-serverd's ReplyNothing, then the denial
    await session.write(encodeFrame(`Hello ${session.peer} (${session.peer}), nothing relevant to do here...\n\n`));
    return refuse('EXEC denied due to failed class match (check cf-serverd verbose output)');
  }
  const parsed = parseExecArguments(args);
  if ('refusal' in parsed) return refuse(parsed.refusal);
  const { classes } = parsed;
  const command = classes.length > 0 ? `${config.command} -D ${classes.join(',')}` : config.command;
  session.tally.command('EXEC', 'ok');
  session.log.info({ command: 'EXEC', classes }, `cfengine EXEC: running ${command}`);
  await session.write(encodeFrame(`cf-serverd executing cfruncommand: ${command}\n`.slice(0, MAX_PAYLOAD)));
  // lines in order, each one transaction; the socket stays quiet while the command is (a sync may be slow)
  let chain: Promise<void> = Promise.resolve();
  const writeLine = (text: string): void => {
    for (const line of text.split('\n')) {
      let bytes = Buffer.from(line, 'utf8');
      if (bytes.length > MAX_EXEC_LINE_BYTES) bytes = bytes.subarray(0, MAX_EXEC_LINE_BYTES);
      const frame = encodeFrame(Buffer.concat([Buffer.from('> '), bytes, Buffer.from('\n')]));
      chain = chain.then(() => session.write(frame)).catch(() => undefined);
    }
  };
  session.setIdleTimeout(0);
  let exitCode: number;
  try {
    exitCode = await config.run(classes, writeLine);
  } catch (error) {
    writeLine(`error: ${messageOf(error)}`);
    exitCode = 1;
  } finally {
    session.setIdleTimeout(undefined);
  }
  await chain;
  await session.write(encodeFrame(`(exit code: ${exitCode})\n`));
  session.log.info({ command: 'EXEC', exitCode }, 'cfengine EXEC done');
  return terminate();
}
