// Access checks of one connection (docs/access-rules.md, the 5309 rows): a requested path is resolved
// (realpath) and the ACL of src/access decides on the resolved path; refusals are counted and logged. What a
// STAT resolved and announced is remembered, so the MD5 and GET of the same path that follow it (one agent
// run STATs each path once) use it again while the ACL still admits it. Only canonical requests are
// remembered, within a byte budget: the key is the client's text, and any key from an allowed network could
// otherwise fill the connection's heap with thousands of 4 KB spellings (slashes spread differently) of one file.

import type { BigIntStats } from 'node:fs';
import type { Logger } from 'pino';
import { displayPath, type Reader } from '../access/index.js';
import { FAILED, encodeFrame } from './codec.js';
import { resolveRequestPath, resolveRequestPathSync, type Resolved } from './files.js';
import type { ConnectionContext, Tally } from './session.js';

/** paths resolved and sizes announced by STAT, for the MD5 and GET that follow */
const MAX_REMEMBERED_STATS = 4096;
/**
 * characters of requested and resolved paths remembered per connection: cf-agent sends the MD5 or GET of a
 * file right after its STAT (SourceSearchAndCopy), so ~800 Rudder-length paths are plenty; a symlink loop in
 * a served tree (canonical spellings without end) stays within this
 */
const MAX_REMEMBERED_CHARS = 256 * 1024;
/** "//", "/./", "/../", a final "/", "/." or "/..": not how cf-agent spells a path (it joins OPENDIR's names with one "/") */
const NON_CANONICAL = /\/\/|\/\.\.?(?:\/|$)|.\/$/;
/** denial lines logged per connection; the rest are only counted (in the connection's closing line) */
const MAX_DENIAL_LINES = 50;

/** what a STAT resolved and announced */
export interface Statted {
  readonly resolved: string;
  readonly size: bigint;
  readonly isFile: boolean;
  /**
   * device:inode of what STAT described: the MD5 and GET that follow use `resolved` only while it still
   * names that file (a directory on the way swapped for a link would otherwise lead elsewhere)
   */
  readonly identity: string;
  /** fileVersion of what STAT described (regular files only): a GET that sends that version caches its digest */
  readonly version: string | undefined;
}

export class Admission {
  private readonly stats = new Map<string, Statted>();
  /** characters of the keys and resolved paths in `stats` (MAX_REMEMBERED_CHARS) */
  private statsChars = 0;
  /** refusals on this connection (its closing line) */
  denials = 0;
  reader: Reader = { nodeId: undefined };
  log: Logger;

  constructor(
    private readonly ctx: ConnectionContext,
    log: Logger,
    /** sends one refusal transaction (the connection's ordered write) */
    private readonly write: (buffer: Buffer) => Promise<void>,
    /** the same when no write is in flight (the synchronous request path) */
    private readonly writeNow: (buffer: Buffer) => void,
    private readonly tally: Tally,
  ) {
    this.log = log;
  }

  /** the client proved its key: who reads from now on, and the logger with node and key */
  identified(reader: Reader, log: Logger): void {
    this.reader = reader;
    this.log = log;
  }

  /**
   * Resolves `requested` (realpath; `early` is its lstat, see resolveRequestPath) and checks the ACL on the
   * resolved path: the resolved path, or undefined once the refusal is written.
   */
  async admit(command: string, requested: string, early: BigIntStats | undefined): Promise<string | undefined> {
    const path = this.verdict(command, await resolveRequestPath(requested, early, this.ctx.directories));
    if (path === undefined) await this.write(encodeFrame(FAILED));
    return path;
  }

  /** admit() with direct file-system calls and the refusal written at once (no write may be in flight) */
  admitSync(command: string, requested: string, early: BigIntStats | undefined): string | undefined {
    const path = this.verdict(command, resolveRequestPathSync(requested, early, this.ctx.directories));
    if (path === undefined) this.writeNow(encodeFrame(FAILED));
    return path;
  }

  /** the resolved path if it exists and the ACL admits it; otherwise undefined, counted (and a denial logged) */
  private verdict(command: string, resolved: Resolved): string | undefined {
    if (resolved.kind === 'absent') {
      this.tally.command(command, 'absent');
      return undefined;
    }
    return this.permitted(command, resolved.path) ? resolved.path : undefined;
  }

  /** the ACL's verdict on a resolved path; a refusal is counted and logged (the caller answers it) */
  permitted(command: string, path: string): boolean {
    if (this.ctx.acl.check(path, this.reader) !== undefined) return true;
    this.denied(command, { path: displayPath(path) });
    return false;
  }

  /** counts a denial and logs it (node and key are fields of this connection's logger) */
  denied(command: string, fields: Record<string, unknown>, message = 'cfengine access denied'): void {
    this.tally.command(command, 'denied');
    this.denials += 1;
    if (this.denials <= MAX_DENIAL_LINES) this.log.warn({ event: 'denied', code: 'RELAY_ERR_CFENGINE_ACCESS', command, ...fields }, message);
    else if (this.denials === MAX_DENIAL_LINES + 1) this.log.warn({ command }, 'cfengine: further denials on this connection are only counted');
  }

  /** what the last STAT of `requested` resolved, while the ACL still admits it (checked again: the rules may have changed) */
  statted(requested: string): Statted | undefined {
    const statted = this.stats.get(requested);
    if (statted === undefined || this.ctx.acl.check(statted.resolved, this.reader) === undefined) return undefined;
    return statted;
  }

  /** a STAT of `requested` starts: what an earlier one saw no longer holds */
  forget(requested: string): void {
    const statted = this.stats.get(requested);
    if (statted === undefined) return;
    this.stats.delete(requested);
    this.statsChars -= requested.length + statted.resolved.length;
  }

  /**
   * what STAT resolved and announced, for the MD5/GET of the same path that follow it; a request spelt
   * otherwise than canonically is not remembered (its MD5/GET resolve and check the path again)
   */
  remember(requested: string, statted: Statted): void {
    if (requested.charCodeAt(0) !== 0x2f || NON_CANONICAL.test(requested)) return;
    this.forget(requested);
    this.stats.set(requested, statted);
    this.statsChars += requested.length + statted.resolved.length;
    while (this.stats.size > MAX_REMEMBERED_STATS || this.statsChars > MAX_REMEMBERED_CHARS) {
      const oldest = this.stats.keys().next().value;
      if (oldest === undefined) break;
      this.forget(oldest);
    }
  }

  /** what is remembered now (the connection's closing line) */
  get remembered(): { readonly stats: number; readonly chars: number } {
    return { stats: this.stats.size, chars: this.statsChars };
  }
}
