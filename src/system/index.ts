// Face of the system module: relayd's system API (spec-relayd.md §4.2–4.4) — info, a status of
// every subsystem, and reload — with relayd's JSON envelopes.

import type { Logger } from 'pino';
import { messageOf } from '../errors.js';
import type { Identity } from '../identity/index.js';
import type { NodesRegistry } from '../nodes/index.js';
import type { Spool } from '../spool/index.js';
import { VERSION } from '../version.js';
import { recentErrors } from '../log.js';
import { renderStatusPage } from './status-page.js';

export interface SubStatus {
  readonly status: 'success' | 'error';
  readonly details?: string;
  readonly [extra: string]: unknown;
}

export interface SystemDeps {
  readonly identity: Identity;
  readonly nodes: NodesRegistry;
  readonly spool: Spool;
  /** re-runs the configuration check on the files as they are now on disk; resolves to problems */
  readonly checkConfiguration: () => Promise<string[]>;
  /** applies what a reload changes besides the nodes list (log level, workers) */
  readonly reloadOthers: () => Promise<void>;
  readonly frontDoor: () => { readonly workers: number; readonly ready: number };
  /** sub-statuses of the pipelines (upstream, queues) */
  readonly extraStatus: () => Record<string, SubStatus>;
  /** more sections of the status page (node activity, charts) and their style, for the page's query string */
  readonly extraSections?: (query: Readonly<Record<string, string | undefined>>) => { html: string; style: string };
  readonly log: Logger;
}

export interface System {
  info(): { 'major-version': string; 'full-version': string };
  status(): Promise<Record<string, SubStatus>>;
  reload(): Promise<void>;
  /** the HTML status page */
  statusPage(query?: Readonly<Record<string, string | undefined>>): Promise<string>;
}

export function envelope(action: string, data?: unknown): string {
  return JSON.stringify(data === undefined ? { result: 'success', action } : { data, result: 'success', action });
}

export function errorEnvelope(action: string, details: string): string {
  return JSON.stringify({ result: 'error', action, errorDetails: details });
}

export function createSystem(deps: SystemDeps): System {
  const log = deps.log.child({ module: 'system' });
  const [major = '0', minor = '0'] = VERSION.split('.');
  const startedAt = new Date();
  return {
    async statusPage(query = {}) {
      const status = await this.status();
      const failed = (await deps.spool.inspect()).filter((d) => d.path.endsWith('/failed'));
      const extra = deps.extraSections?.(query);
      return renderStatusPage({ version: VERSION, startedAt, status, failed, recentErrors: recentErrors(), refreshSeconds: 10, ...(extra ? { extraSections: extra.html, extraStyle: extra.style } : {}) });
    },
    info: () => ({ 'major-version': `${major}.${minor}`, 'full-version': VERSION }),

    async status() {
      const problems = await deps.checkConfiguration().catch((error: unknown) => [messageOf(error)]);
      const nodes = deps.nodes.status();
      const spool = await deps.spool.inspect();
      const brokenSpool = spool.filter((d) => !d.writable);
      const workers = deps.frontDoor();
      return {
        configuration: problems.length === 0 ? { status: 'success' } : { status: 'error', details: problems.join('; ') },
        identity: {
          status: 'success',
          node_id: deps.identity.nodeId,
          key_hash: deps.identity.digests.sha256Pin,
          cfengine_key: deps.identity.digests.cfengineSha,
          certificate_expires: deps.identity.certificate.validTo,
        },
        nodes: {
          ...(nodes.ok ? { status: 'success' } : { status: 'error', details: nodes.error ?? 'nodes list not loaded' }),
          nodes: nodes.nodes,
          managed_nodes: nodes.managedNodes,
          certificates: nodes.certificates,
          loaded_at: nodes.loadedAt,
        },
        spool: {
          ...(brokenSpool.length === 0
            ? { status: 'success' }
            : { status: 'error', details: brokenSpool.map((d) => `${d.path}: ${d.error ?? 'not writable'}`).join('; ') }),
          directories: spool.map((d) => ({ path: d.path, files: d.files })),
        },
        https: {
          ...(workers.ready === workers.workers ? { status: 'success' } : { status: 'error', details: `${workers.ready} of ${workers.workers} front-door processes ready` }),
          workers: workers.workers,
          ready: workers.ready,
        },
        ...deps.extraStatus(),
      };
    },

    async reload() {
      log.info({ event: 'reload' }, 'Configuration reload requested');
      let failure: unknown;
      // both steps run even if one fails; the first error is reported (relayd stops at the first)
      await deps.reloadOthers().catch((error: unknown) => {
        failure ??= error;
      });
      await deps.nodes.reload().catch((error: unknown) => {
        failure ??= error;
      });
      if (failure !== undefined) {
        log.error({ event: 'reload_failed', error: messageOf(failure) }, 'reload error');
        throw failure;
      }
    },
  };
}
