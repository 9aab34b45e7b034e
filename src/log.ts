// One pino logger per process; modules take `log.child({ module })` (CONVENTIONS.md "Logs").

import { pino, type Logger, type LevelWithSilent } from 'pino';
import type { LogLevel } from './config/index.js';

export type { Logger };

export function pinoLevel(level: LogLevel): LevelWithSilent {
  return level === 'off' ? 'silent' : level;
}

export function createLogger(level: LogLevel, bindings: Record<string, unknown> = {}): Logger {
  return pino({
    level: pinoLevel(level),
    base: { pid: process.pid, ...bindings },
    timestamp: pino.stdTimeFunctions.isoTime,
    // never log credentials, even if a request object slips into a log call
    redact: { paths: ['req.headers.authorization', '*.password', '*.privateKeyPem'], remove: true },
  });
}
