// The status page (GET / on the local API, and on the front door for the policy server's networks):
// one self-contained HTML page a person reads at a glance. No external assets, no script: the page
// refreshes itself, so it works from a terminal browser and behind strict proxies.

import type { RecentError } from '../log.js';
import type { SubStatus } from './index.js';

function escape(value: unknown): string {
  return String(value ?? '—').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function age(seconds: number | undefined): string {
  if (seconds === undefined) return '—';
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172_800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86_400)} days`;
}

function since(iso: unknown): string {
  if (typeof iso !== 'string') return 'never';
  return `${age((Date.now() - Date.parse(iso)) / 1000)} ago`;
}

function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}

function badge(status: SubStatus | undefined): string {
  if (status === undefined) return '<span class="badge off">not configured</span>';
  return status.status === 'success' ? '<span class="badge ok">OK</span>' : `<span class="badge bad">ERROR</span>`;
}

function details(status: SubStatus | undefined): string {
  return status?.details ? `<p class="problem">${escape(status.details)}</p>` : '';
}

interface QueueRow {
  queue: string;
  files: number;
  bytes: number;
  oldest_age_s: number;
  in_flight: number;
  paused: boolean;
  full: boolean;
}

export interface StatusPageInput {
  readonly version: string;
  readonly startedAt: Date;
  readonly status: Record<string, SubStatus>;
  readonly failed: ReadonlyArray<{ readonly path: string; readonly files: number }>;
  readonly recentErrors: readonly RecentError[];
  readonly refreshSeconds: number;
  /** sections appended to the grid (node activity and charts), already escaped HTML, and their CSS */
  readonly extraSections?: string;
  readonly extraStyle?: string;
}

export function renderStatusPage(input: StatusPageInput): string {
  const s = input.status;
  const identity = s['identity'];
  const nodes = s['nodes'];
  const upstream = s['upstream'];
  const queues = s['queues'];
  const sync = s['sync'];
  const remote = s['remote_run'];
  const https = s['https'];
  const cfengine = s['cfengine'];
  const ownInventory = s['own_inventory'];
  const ownOutcome = ownInventory?.['last_outcome'] as { ok: boolean; message: string; at: string } | undefined;
  const ownRun = s['own_compliance'];
  const own = s['own_policies'];
  // each applied setting of the relay's own policies, with where its value comes from (toml / policies / default)
  const ownRows = Object.entries((own?.['applied'] as Record<string, { value: unknown; source: string }> | undefined) ?? {})
    .map(([name, setting]) => `<tr><td>${escape(name)}</td><td><code>${escape(Array.isArray(setting.value) ? setting.value.join(', ') : setting.value)}</code></td><td>${escape(setting.source)}</td></tr>`)
    .join('');
  const overall = Object.values(s).every((part) => part.status === 'success');
  const queueRows = ((queues?.['queues'] as QueueRow[] | undefined) ?? [])
    .map(
      (q) => `<tr><td>${escape(q.queue)}</td><td class="n">${q.files}</td><td class="n">${bytes(q.bytes)}</td><td class="n${q.oldest_age_s > 3600 ? ' warn' : ''}">${q.files === 0 ? '—' : age(q.oldest_age_s)}</td><td class="n">${q.in_flight}</td><td>${q.full ? '<span class="badge bad">over budget</span>' : q.paused ? '<span class="badge warnb">paused</span>' : '<span class="badge ok">flowing</span>'}</td></tr>`,
    )
    .join('');
  const failedRows = input.failed.map((f) => `<tr><td>${escape(f.path)}</td><td class="n${f.files > 0 ? ' warn' : ''}">${f.files}</td></tr>`).join('');
  // the same error repeated (a retry loop) is one line with a count, newest time first
  const grouped = new Map<string, { error: RecentError; count: number }>();
  for (const error of input.recentErrors) {
    const key = `${error.level}|${error.module ?? ''}|${error.message}`;
    const group = grouped.get(key);
    if (group) group.count += 1;
    else grouped.set(key, { error, count: 1 });
  }
  const errors = [...grouped.values()]
    .slice(0, 10)
    .map(({ error: e, count }) => `<li><time>${escape(e.at.replace('T', ' ').slice(0, 19))}</time> <b class="${e.level}">${escape(e.level)}</b> ${e.module ? `<i>${escape(e.module)}</i> ` : ''}${escape(e.message)}${count > 1 ? ` <span class="muted">×${count}</span>` : ''}</li>`)
    .join('');
  const remoteErrors = ((remote?.['last_errors'] as Array<{ at: string; message: string }> | undefined) ?? [])
    .slice(0, 5)
    .map((e) => `<li><time>${escape(e.at.replace('T', ' ').slice(0, 19))}</time> ${escape(e.message)}</li>`)
    .join('');
  const lastError = upstream?.['last_error'] as { at: string; reason: string } | undefined;
  const uptime = age((Date.now() - input.startedAt.getTime()) / 1000);
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="${input.refreshSeconds}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>onerelay ${escape(identity?.['node_id'])} — ${overall ? 'OK' : 'attention needed'}</title>
<style>
:root{--ok:#1f7a3a;--bad:#b3261e;--warn:#a15c00;--fg:#1b1f24;--muted:#5f6b76;--line:#d9dee3;--bg:#f6f8fa}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);background:var(--bg)}
header{display:flex;align-items:center;gap:16px;padding:14px 24px;background:#fff;border-bottom:1px solid var(--line)}
header h1{font-size:18px;margin:0}header .state{margin-left:auto;font-weight:600}
main{display:grid;grid-template-columns:repeat(auto-fit,minmax(360px,1fr));gap:16px;padding:16px 24px}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px 16px}
h2{font-size:15px;margin:0 0 8px;display:flex;justify-content:space-between;align-items:center}
table{width:100%;border-collapse:collapse}td,th{padding:3px 6px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{color:var(--muted);font-weight:500}td.n{text-align:right;font-variant-numeric:tabular-nums}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:0}dt{color:var(--muted)}dd{margin:0;word-break:break-all}
code{font:12px ui-monospace,monospace}.badge{font-size:12px;padding:1px 8px;border-radius:10px;color:#fff}
.ok{background:var(--ok)}.bad{background:var(--bad)}.warnb{background:var(--warn)}.off{background:var(--muted)}
.problem{color:var(--bad);margin:6px 0 0}.warn{color:var(--warn);font-weight:600}
ul{margin:0;padding-left:18px}li{margin:2px 0}time{color:var(--muted);font-variant-numeric:tabular-nums}b.error,b.fatal{color:var(--bad)}b.warn{color:var(--warn)}
footer{padding:0 24px 16px;color:var(--muted);font-size:12px}.muted{color:var(--muted)}
${input.extraStyle ?? ''}
</style></head>
<body>
<header><h1>onerelay</h1><code>${escape(identity?.['node_id'])}</code><span>version ${escape(input.version)} · up ${uptime}</span>
<span class="state" style="color:var(${overall ? '--ok' : '--bad'})">${overall ? '● all systems OK' : '● attention needed'}</span></header>
<main>
<section id="identity"><h2>Identity ${badge(identity)}</h2><dl>
<dt>node id</dt><dd><code>${escape(identity?.['node_id'])}</code></dd>
<dt>key hash</dt><dd><code>${escape(identity?.['key_hash'])}</code></dd>
<dt>CFEngine key</dt><dd><code>${escape(identity?.['cfengine_key'])}</code></dd>
<dt>certificate expires</dt><dd>${escape(identity?.['certificate_expires'])}</dd></dl></section>
<section id="upstream"><h2>Upstream ${badge(upstream)}</h2><dl>
<dt>server</dt><dd>${escape(upstream?.['host'])}:${escape(upstream?.['port'])}</dd>
<dt>reachable</dt><dd>${upstream?.['reachable'] === true ? 'yes' : upstream?.['reachable'] === false ? '<span class="warn">no</span>' : 'not tried yet'}</dd>
<dt>last request</dt><dd>${upstream?.['last_request_ms'] === undefined ? '—' : `${escape(upstream['last_request_ms'])} ms`}</dd>
<dt>last success</dt><dd>${since(upstream?.['last_success'])}</dd>
<dt>last error</dt><dd>${lastError ? `${since(lastError.at)}: ${escape(lastError.reason)}` : 'none'}</dd></dl>${details(upstream)}</section>
<section id="queues"><h2>Queues ${badge(queues)}</h2><table><tr><th>queue</th><th>files</th><th>size</th><th>oldest</th><th>sending</th><th></th></tr>${queueRows}</table>
<p>reports: ${escape(queues?.['reporting_output'])} · inventories: ${escape(queues?.['inventory_output'])}</p>${details(queues)}</section>
<section id="failed"><h2>Failed files</h2><table><tr><th>directory</th><th>files</th></tr>${failedRows}</table></section>
<section id="nodes"><h2>Nodes ${badge(nodes)}</h2><dl>
<dt>nodes below</dt><dd>${escape(nodes?.['nodes'])}</dd><dt>managed directly</dt><dd>${escape(nodes?.['managed_nodes'])}</dd>
<dt>certificates</dt><dd>${escape(nodes?.['certificates'])}</dd><dt>loaded</dt><dd>${since(nodes?.['loaded_at'])}</dd></dl>${details(nodes)}</section>
<section id="sync"><h2>Data sync ${badge(sync)}</h2><dl>
<dt>last success</dt><dd>${since(sync?.['last_success'])}</dd><dt>generation</dt><dd><code>${escape(sync?.['generation'])}</code></dd>
<dt>last run</dt><dd>${sync?.['last_duration_ms'] === undefined ? '—' : `${escape(sync['last_duration_ms'])} ms, ${escape(sync['last_files'])} files, ${bytes(Number(sync['last_bytes'] ?? 0))}`}</dd></dl>${details(sync)}</section>
${
  ownInventory
    ? `<section id="own-inventory"><h2>Own inventory ${badge(ownInventory)}</h2><dl>
<dt>policy server</dt><dd><code>${escape(ownInventory['policy_server_id'] ?? '—')}</code> (/${escape(ownInventory['endpoint'] ?? 'inventories')}/)</dd>
<dt>last queued</dt><dd>${since(ownInventory['last_queued'])}</dd><dt>last sent</dt><dd>${since(ownInventory['last_sent'])}</dd>
<dt>outcome</dt><dd>${ownOutcome ? `${since(ownOutcome.at)}: ${escape(ownOutcome.message)}` : 'none yet'}</dd></dl></section>`
    : ''
}
${own ? `<section id="own-policies"><h2>Own policies ${badge(own)}</h2><dl>
<dt>node configuration</dt><dd><code>${escape(own['node_config_id'])}</code></dd><dt>generation</dt><dd><code>${escape(own['generation'])}</code></dd>
<dt>loaded</dt><dd>${since(own['loaded_at'])}</dd><dt>inputs</dt><dd><code>${escape(own['inputs'])}</code></dd></dl>
<table><tr><th>setting</th><th>value</th><th>source</th></tr>${ownRows}</table>${details(own)}</section>` : ''}
<section id="services"><h2>Services</h2><dl>
<dt>HTTPS front-door processes</dt><dd>${escape(https?.['ready'])} of ${escape(https?.['workers'])} ready ${badge(https)}</dd>
<dt>CFEngine server</dt><dd>${cfengine ? `${escape(cfengine['listen'])} ${badge(cfengine)}` : 'not running'}</dd>
<dt>remote run</dt><dd>${remote?.['enabled'] ? `enabled (${escape(remote['mode'])}), ${escape(remote['runs_here'])} runs` : 'disabled'}</dd>
<dt>own run log</dt><dd>${ownRun === undefined ? 'not sent' : ownRun['last_run'] === undefined ? `none yet${ownRun['waiting_for_policies'] ? ' (no own policies)' : ''}` : `${since(ownRun['last_run'])}, config <code>${escape(ownRun['config_id'])}</code>: ${escape(ownRun['success'])} success, ${escape(ownRun['error'])} error, ${escape(ownRun['na'])} n/a`} ${ownRun ? badge(ownRun) : ''}</dd></dl>
${remoteErrors ? `<ul>${remoteErrors}</ul>` : ''}</section>
<section id="errors"><h2>Recent errors</h2>${errors ? `<ul>${errors}</ul>` : '<p>none</p>'}</section>
${input.extraSections ?? ''}
</main>
<footer>Refreshes every ${input.refreshSeconds} s · ${escape(new Date().toISOString().replace('T', ' ').slice(0, 19))} UTC · JSON: <code>/rudder/relay-api/1/system/status</code> · metrics: <code>/metrics</code></footer>
</body></html>`;
}
