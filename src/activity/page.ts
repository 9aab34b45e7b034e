// The status page's activity sections: the nodes table (sorted and filtered by the query string, so it
// works without JavaScript) and 24-hour charts drawn as inline SVG from the per-minute series.

import type { ChartData, ClientFailure, LedgerView, NodeView } from './index.js';

export interface ActivityPageInput {
  readonly nodes: readonly NodeView[];
  readonly clientFailures: readonly ClientFailure[];
  readonly charts: ChartData;
  readonly balance: LedgerView['balance'];
  /** the page's query string: sort=…, q=… */
  readonly query: Readonly<Record<string, string | undefined>>;
  /** why there is nothing to show (recording off or failed) */
  readonly unavailable?: string;
  readonly now?: number;
}

function escape(value: unknown): string {
  return String(value ?? '—').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function ago(iso: string | null, now: number): string {
  if (iso === null) return 'never';
  const s = Math.max(0, (now - Date.parse(iso)) / 1000);
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172_800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86_400)} days ago`;
}

const SORTS = ['state', 'id', 'host', 'report', 'policy', 'refusal'] as const;
type Sort = (typeof SORTS)[number];

const MINUTE = 60_000;
const W = 560;
const H = 150;
const PAD = { left: 44, right: 10, top: 10, bottom: 22 };
const COLORS = ['#1f6feb', '#1f7a3a', '#b3261e', '#a15c00', '#8250df', '#0a7ea4', '#6e7781'];

interface Series {
  readonly name: string;
  readonly values: ReadonlyMap<number, number>;
}

/** one SVG line chart over [from, to] with a point per minute (absent minutes are 0, or gaps when `gaps`) */
function lineChart(title: string, unit: string, from: number, to: number, series: readonly Series[], gaps = false): string {
  const start = Math.floor(from / MINUTE) * MINUTE;
  const minutes = Math.round((to - start) / MINUTE);
  let max = 0;
  for (const s of series) for (const v of s.values.values()) max = Math.max(max, v);
  const top = max <= 0 ? 1 : niceCeil(max);
  const x = (m: number) => PAD.left + ((m - start) / MINUTE / minutes) * (W - PAD.left - PAD.right);
  const y = (v: number) => H - PAD.bottom - (v / top) * (H - PAD.top - PAD.bottom);
  const grid = [0, 0.5, 1]
    .map((f) => `<line x1="${PAD.left}" x2="${W - PAD.right}" y1="${y(top * f).toFixed(1)}" y2="${y(top * f).toFixed(1)}" stroke="#d9dee3"/><text x="${PAD.left - 4}" y="${(y(top * f) + 4).toFixed(1)}" text-anchor="end">${formatNumber(top * f)}</text>`)
    .join('');
  const ticks: string[] = [];
  for (let h = 0; h <= 24; h += 6) {
    const m = start + (minutes - (24 - h) * 60) * MINUTE;
    ticks.push(`<text x="${x(m).toFixed(1)}" y="${H - 6}" text-anchor="middle">${h === 24 ? 'now' : `-${24 - h} h`}</text>`);
  }
  const paths = series
    .map((s, i) => {
      const segments: string[] = [];
      /** minutes with a value but no neighbour: a dot, since a path of one point draws nothing */
      const dots: string[] = [];
      let current: string[] = [];
      const close = () => {
        if (current.length === 1) dots.push(current[0]?.slice(1) ?? '');
        else if (current.length > 1) segments.push(current.join(' '));
        current = [];
      };
      for (let k = 0; k <= minutes; k += 1) {
        const m = start + k * MINUTE;
        const v = s.values.get(m);
        if (v === undefined && gaps) {
          close();
          continue;
        }
        current.push(`${current.length === 0 ? 'M' : 'L'}${x(m).toFixed(1)},${y(v ?? 0).toFixed(1)}`);
      }
      close();
      const color = COLORS[i % COLORS.length] ?? '#1f6feb';
      const circles = dots.map((d) => `<circle cx="${d.split(',')[0]}" cy="${d.split(',')[1]}" r="2.5" fill="${color}"/>`).join('');
      return `${segments.length > 0 ? `<path d="${segments.join(' ')}" fill="none" stroke="${color}" stroke-width="1.5"><title>${escape(s.name)}</title></path>` : ''}${circles}`;
    })
    .join('');
  const totals = series.map((s, i) => {
    let sum = 0;
    for (const v of s.values.values()) sum += v;
    return `<span class="key"><i style="background:${COLORS[i % COLORS.length]}"></i>${escape(s.name)}${gaps ? '' : ` <b>${formatNumber(sum)}</b>`}</span>`;
  });
  return `<figure class="chart"><figcaption>${escape(title)} <span class="muted">(${escape(unit)})</span></figcaption>
<svg viewBox="0 0 ${W} ${H}" width="100%" role="img" aria-label="${escape(title)}" font-size="10" fill="#5f6b76">${grid}${ticks.join('')}${paths}</svg>
<div class="legend">${totals.length > 0 ? totals.join(' ') : '<span class="muted">nothing recorded</span>'}</div></figure>`;
}

function niceCeil(v: number): number {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function formatNumber(v: number): string {
  return Number.isInteger(v) ? String(v) : v >= 10 ? v.toFixed(0) : v.toFixed(1);
}

export function renderActivitySections(input: ActivityPageInput): string {
  const now = input.now ?? Date.now();
  if (input.unavailable !== undefined) {
    return `<section id="activity" class="wide"><h2>Nodes</h2><p class="problem">activity recording is not available: ${escape(input.unavailable)}</p></section>`;
  }
  const filter = (input.query['q'] ?? '').trim().toLowerCase();
  const sort: Sort = (SORTS as readonly string[]).includes(input.query['sort'] ?? '') ? (input.query['sort'] as Sort) : 'state';
  let nodes = input.nodes.filter((n) => filter === '' || n.id.toLowerCase().includes(filter) || (n.hostname ?? '').toLowerCase().includes(filter));
  // plain comparisons: localeCompare is slow over thousands of rows, and ids and ISO times sort as bytes
  const text = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
  const newest = (a: string | null, b: string | null) => text(b ?? '', a ?? '');
  const policyAt = (n: (typeof nodes)[number]) => [n.policy.at, n.cfengine.at].filter((v): v is string => v !== null).sort().pop() ?? null;
  if (sort !== 'state') {
    nodes = [...nodes].sort((a, b) => {
      switch (sort) {
        case 'id':
          return text(a.id, b.id);
        case 'host':
          return text(a.hostname ?? '', b.hostname ?? '');
        case 'report':
          return -newest(a.report.ok_at, b.report.ok_at);
        case 'policy':
          return -newest(policyAt(a), policyAt(b));
        case 'refusal':
          return newest(a.refusal?.at ?? null, b.refusal?.at ?? null);
      }
      return 0;
    });
  }
  const shown = nodes.slice(0, 500);
  const link = (key: Sort, label: string) =>
    `<a href="?sort=${key}${filter ? `&amp;q=${encodeURIComponent(filter)}` : ''}"${sort === key ? ' class="sorted"' : ''}>${label}</a>`;
  const rows = shown
    .map((n) => {
      const refusedLast = n.refusal !== null && n.refusal.at > (n.report.ok_at ?? '');
      const state = n.silent ? '<span class="badge bad">silent</span>' : refusedLast ? '<span class="badge warnb">refused</span>' : '<span class="badge ok">ok</span>';
      const policy = policyAt(n);
      const via = policy === null ? '' : policy === n.cfengine.at ? ` <span class="muted">cfengine</span>` : ` <span class="muted">https ${escape(n.policy.outcome)}</span>`;
      return `<tr data-node="${escape(n.id)}"><td>${state}</td><td><code>${escape(n.id)}</code></td><td>${escape(n.hostname)}</td><td>${ago(n.report.ok_at, now)}</td><td>${ago(policy, now)}${via}</td><td>${escape(n.agent_version)}</td><td>${n.refusal === null ? '—' : `${ago(n.refusal.at, now)} <code>${escape(n.refusal.code)}</code> from ${escape(n.refusal.ip)}`}</td><td>${escape(n.last_ip)}</td></tr>`;
    })
    .join('');
  const silent = input.nodes.filter((n) => n.silent).length;
  const failures = input.clientFailures
    .slice(0, 10)
    .map((f) => {
      const reasons = Object.entries(f.reasons);
      // the last reason alone hid the others (a bad password, then a stale certificate): every reason counted when there were several
      const all = reasons.length > 1 ? ` <span class="muted">(${reasons.map(([reason, n]) => `${escape(reason)} ×${n}`).join(', ')})</span>` : '';
      return `<li><code>${escape(f.ip)}</code> ×${f.count}, last ${ago(new Date(f.last_at).toISOString(), now)}: ${escape(f.last_reason)}${all}</li>`;
    })
    .join('');

  const series = (name: string): Map<number, number> => new Map(input.charts.points.filter((p) => p.series === name).map((p) => [p.minute, p.value]));
  const latency = new Map(input.charts.points.filter((p) => p.series === 'latency').map((p) => [p.minute, p.value / Math.max(1, p.n)]));
  const codes = [...new Set(input.charts.points.filter((p) => p.series.startsWith('refusal:')).map((p) => p.series))].sort();
  const { from, to } = input.charts;
  const charts = [
    lineChart('Uploads and forwards per minute', 'files', from, to, [
      { name: 'uploads', values: series('uploads') },
      { name: 'forwarded', values: series('forwards') },
    ]),
    lineChart('Queue depth', 'files waiting, sampled', from, to, [{ name: 'queued', values: series('queue') }], true),
    lineChart('Refusals by code per minute', 'requests', from, to, codes.map((code) => ({ name: code.slice('refusal:'.length), values: series(code) }))),
    lineChart('Upstream latency', 'ms, mean per minute', from, to, [{ name: 'forward', values: latency }], true),
  ].join('');

  return `<section id="activity" class="wide"><h2>Nodes <span class="muted">${input.nodes.length} nodes · ${silent} silent</span></h2>
<form method="get" action="/"><input type="hidden" name="sort" value="${sort}"><input type="search" name="q" value="${escape(filter === '' ? '' : filter)}" placeholder="filter by id or host"> <button>filter</button></form>
<table id="nodes-table"><thead><tr><th>${link('state', 'state')}</th><th>${link('id', 'node')}</th><th>${link('host', 'host')}</th><th>${link('report', 'last report')}</th><th>${link('policy', 'last policy download')}</th><th>agent</th><th>${link('refusal', 'last refusal')}</th><th>seen from</th></tr></thead>
<tbody>${rows || '<tr><td colspan="8">no node matches</td></tr>'}</tbody></table>
${nodes.length > shown.length ? `<p class="muted">${nodes.length - shown.length} more: narrow the filter, or GET /rudder/relay-api/1/nodes</p>` : ''}
${failures ? `<h3>Failed handshakes, no node known</h3><ul>${failures}</ul>` : ''}</section>
<section id="charts" class="wide"><h2>Last 24 hours</h2><div class="charts">${charts}</div>
<p class="muted">delivery ledger: <code>/rudder/relay-api/1/ledger</code> · received ${input.balance.received} = forwarded ${input.balance.forwarded} + failed ${input.balance.failed} + skipped ${input.balance.skipped} + expired ${input.balance.expired} + queued ${input.balance.pending} ${input.balance.balanced ? '<span class="badge ok">balanced</span>' : `<span class="badge warnb">spool holds ${input.balance.queued_now}</span>`}</p></section>`;
}

export const ACTIVITY_STYLE = `.wide{grid-column:1/-1}.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:12px}
figure.chart{margin:0}figcaption{font-weight:600;margin-bottom:2px}.legend{font-size:12px}.key{margin-right:10px}.key i{display:inline-block;width:10px;height:3px;margin:0 4px 3px 0;vertical-align:middle}
#nodes-table a{color:inherit}#nodes-table a.sorted{font-weight:700;text-decoration:none}#activity form{margin:0 0 6px}h3{font-size:13px;margin:10px 0 4px}`;
