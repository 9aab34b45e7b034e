// One pino logger per process; modules take `log.child({ module })` (CONVENTIONS.md "Logs").
// Repeated identical warnings and errors are rate-limited (relayd flooded daemon.log with one line per
// retry), and the last errors are kept for the status page. Refusals are never rate-limited: each refused
// request or access is its own event (another client, path or code), and what an administrator greps for
// after an attack; only repeats of the same internal error are.

import { pino, type Logger, type LevelWithSilent } from 'pino';
import type { LogLevel } from './config/index.js';

export type { Logger };

export function pinoLevel(level: LogLevel): LevelWithSilent {
  return level === 'off' ? 'silent' : level;
}

export interface RecentError {
  readonly at: string;
  readonly level: 'warn' | 'error' | 'fatal';
  readonly message: string;
  readonly module: string | undefined;
}

/** lines of the same message in a window beyond which further ones are counted, not written */
const BURST = 5;
const WINDOW_MS = 60_000;
const RECENT = 20;
/** events that are refusals of a client's request: always written, never counted into a suppressed line */
const REFUSAL_EVENTS: ReadonlySet<string> = new Set(['access', 'denied', 'refused']);
/**
 * stdout is written in batches of at least this many bytes, and at least every LOG_FLUSH_MS: one write(2)
 * per access line cost a front-door worker ~10% of its CPU under a download load (bench/policies profile)
 */
const LOG_BATCH_BYTES = 4096;
const LOG_FLUSH_MS = 100;

/** what pino writes to: sonic-boom's buffered stdout, behind a flush timer armed only when a line is buffered */
interface LogStream {
  write(line: string): void;
  flushSync(): void;
}

let stdout: LogStream | undefined;

/**
 * one buffered stdout per process, written out at exit (also after an uncaught exception). The buffer is flushed
 * LOG_FLUSH_MS after a line went into it, by a one-shot timer: sonic-boom's own `periodicFlush` is an interval
 * that writes even when nothing is buffered (an empty write(2) every 100 ms), which woke an idle relay ten times
 * a second in each process
 */
function stdoutDestination(): LogStream {
  if (stdout !== undefined) return stdout;
  const destination = pino.destination({ dest: 1, sync: true, minLength: LOG_BATCH_BYTES });
  let timer: NodeJS.Timeout | undefined;
  const flushLater = (): void => {
    timer = undefined;
    try {
      destination.flush();
    } catch {
      // stdout is gone: nothing left to tell
    }
  };
  process.once('exit', () => {
    try {
      destination.flushSync();
    } catch {
      // stdout is gone: nothing left to tell
    }
  });
  stdout = {
    write(line) {
      destination.write(line);
      if (timer === undefined) {
        timer = setTimeout(flushLater, LOG_FLUSH_MS);
        timer.unref();
      }
    },
    flushSync: () => destination.flushSync(),
  };
  return stdout;
}

const recent: RecentError[] = [];

/** the last warnings and errors of this process, newest first */
export function recentErrors(): readonly RecentError[] {
  return recent;
}

interface Window {
  start: number;
  count: number;
  suppressed: number;
}

export function createLogger(level: LogLevel, bindings: Record<string, unknown> = {}): Logger {
  const windows = new Map<string, Window>();
  const logger: Logger = pino({
    level: pinoLevel(level),
    base: { pid: process.pid, ...bindings },
    timestamp: pino.stdTimeFunctions.isoTime,
    // never log credentials, even if a request object slips into a log call
    redact: { paths: ['req.headers.authorization', '*.password', '*.privateKeyPem'], remove: true },
    hooks: {
      logMethod(args, method, levelNumber) {
        if (levelNumber < 40) return method.apply(this, args);
        const [first, second] = args as unknown[];
        const fields = typeof first === 'object' && first !== null ? (first as Record<string, unknown>) : {};
        if (typeof fields['event'] === 'string' && REFUSAL_EVENTS.has(fields['event'])) return method.apply(this, args);
        const message = typeof first === 'string' ? first : typeof second === 'string' ? second : '';
        const module = (this as unknown as { bindings(): Record<string, unknown> }).bindings()['module'];
        const key = `${String(module)}|${levelNumber}|${String(fields['event'] ?? '')}|${message}`;
        const now = Date.now();
        let window = windows.get(key);
        if (window === undefined || now - window.start > WINDOW_MS) {
          if (window !== undefined && window.suppressed > 0) {
            method.apply(this, [{ event: 'log_suppressed', repeats: window.suppressed }, `previous message repeated ${window.suppressed} more times: ${message}`] as never);
          }
          window = { start: now, count: 0, suppressed: 0 };
          windows.set(key, window);
          if (windows.size > 1_000) windows.clear();
        }
        window.count += 1;
        if (window.count > BURST) {
          window.suppressed += 1;
          return undefined;
        }
        recent.unshift({
          at: new Date(now).toISOString(),
          level: levelNumber >= 60 ? 'fatal' : levelNumber >= 50 ? 'error' : 'warn',
          message: [message, typeof fields['reason'] === 'string' ? fields['reason'] : typeof fields['error'] === 'string' ? fields['error'] : '']
            .filter(Boolean)
            .join(': '),
          module: typeof module === 'string' ? module : undefined,
        });
        recent.length = Math.min(recent.length, RECENT);
        if (window.count === BURST) {
          method.apply(this, args);
          return method.apply(this, [{ event: 'log_rate_limited' }, `same message ${BURST} times in ${WINDOW_MS / 1000} s: further repeats are counted, not written`] as never);
        }
        return method.apply(this, args);
      },
    },
  }, stdoutDestination());
  return logger;
}
