// Small building blocks: sortable tables, empty states, charts in plain SVG,
// and a hook that loads from the API.
import type { ComponentChildren, JSX } from 'preact';
import { useCallback, useEffect, useState } from 'preact/hooks';
import { api } from './api';

export function useApi<T>(path: string | null): { data: T | undefined; error: string | undefined; reload: () => void } {
  const [data, setData] = useState<T>();
  const [error, setError] = useState<string>();
  const [tick, setTick] = useState(0);
  useEffect(() => {
    if (path === null) return;
    let live = true;
    api.get<T>(path).then((d) => { if (live) { setData(d); setError(undefined); } }, (e: Error) => { if (live) setError(e.message); });
    return () => { live = false; };
  }, [path, tick]);
  return { data, error, reload: useCallback(() => setTick((t) => t + 1), []) };
}

export function Page(props: { title: string; sub?: ComponentChildren; actions?: ComponentChildren; children: ComponentChildren }) {
  return (
    <section class="page">
      <header class="page-head">
        <div><h1>{props.title}</h1>{props.sub && <p class="sub">{props.sub}</p>}</div>
        {props.actions && <div class="actions">{props.actions}</div>}
      </header>
      {props.children}
    </section>
  );
}

export function Loading(props: { error?: string }) {
  return props.error ? <div class="error" role="alert">{props.error}</div> : <div class="loading">Loading…</div>;
}

export function Empty(props: { title: string; children: ComponentChildren }) {
  return <div class="empty"><strong>{props.title}</strong><p>{props.children}</p></div>;
}

export function Card(props: { title: string; children: ComponentChildren; class?: string }) {
  return <div class={`card ${props.class ?? ''}`}><h2>{props.title}</h2>{props.children}</div>;
}

export function Stat(props: { label: string; value: ComponentChildren; tone?: 'ok' | 'warn' | 'bad'; hint?: string; testid?: string }) {
  return (
    <div class={`stat ${props.tone ?? ''}`} data-testid={props.testid}>
      <span class="stat-label">{props.label}</span>
      <span class="stat-value">{props.value}</span>
      {props.hint && <span class="stat-hint">{props.hint}</span>}
    </div>
  );
}

export function Badge(props: { tone?: 'ok' | 'warn' | 'bad' | 'muted'; children: ComponentChildren }) {
  return <span class={`badge ${props.tone ?? 'muted'}`}>{props.children}</span>;
}

export interface Column<R> {
  key: string;
  label: string;
  render: (row: R) => ComponentChildren;
  /** Sort value; columns without one do not sort. */
  value?: (row: R) => string | number | null;
  align?: 'right';
}

/** A table whose headers sort it (client side), with an empty state. */
export function Table<R>(props: { rows: R[]; columns: Column<R>[]; empty: JSX.Element; initialSort?: string; testid?: string; rowKey: (r: R) => string }) {
  const [sort, setSort] = useState<{ key: string; dir: 1 | -1 } | undefined>(props.initialSort ? { key: props.initialSort, dir: 1 } : undefined);
  if (!props.rows.length) return props.empty;
  const col = props.columns.find((c) => c.key === sort?.key);
  const rows = col?.value ? [...props.rows].sort((a, b) => {
    const x = col.value!(a); const y = col.value!(b);
    if (x === y) return 0;
    if (x === null) return 1;
    if (y === null) return -1;
    return (x < y ? -1 : 1) * sort!.dir;
  }) : props.rows;
  return (
    <div class="table-wrap">
      <table data-testid={props.testid}>
        <thead><tr>{props.columns.map((c) => (
          <th class={`${c.align ?? ''} ${c.value ? 'sortable' : ''}`} aria-sort={sort?.key === c.key ? (sort.dir === 1 ? 'ascending' : 'descending') : undefined}
            onClick={c.value ? () => setSort(sort?.key === c.key ? { key: c.key, dir: sort.dir === 1 ? -1 : 1 } : { key: c.key, dir: 1 }) : undefined}>
            {c.label}{sort?.key === c.key ? (sort.dir === 1 ? ' ▲' : ' ▼') : ''}
          </th>
        ))}</tr></thead>
        <tbody>{rows.map((r) => <tr key={props.rowKey(r)}>{props.columns.map((c) => <td class={c.align}>{c.render(r)}</td>)}</tr>)}</tbody>
      </table>
    </div>
  );
}

const PALETTE = ['#4f46e5', '#db2777', '#059669', '#d97706', '#0891b2', '#7c3aed'];

/** A line chart of one or more series over time, in SVG (no chart library for this much). */
export function LineChart(props: { series: Array<{ name: string; points: Array<[number, number]> }>; format?: (v: number) => string; height?: number; step?: boolean; testid?: string }) {
  const W = 640; const H = props.height ?? 180; const L = 56; const R = 12; const T = 12; const B = 24;
  const all = props.series.flatMap((s) => s.points);
  if (!all.length) return <div class="chart-empty">No data yet.</div>;
  const xs = all.map((p) => p[0]); const ys = all.map((p) => p[1]);
  const x0 = Math.min(...xs); const x1 = Math.max(...xs, x0 + 1);
  let y0 = Math.min(0, ...ys); let y1 = Math.max(...ys);
  if (y1 === y0) { y1 += 1; y0 -= y0 === 0 ? 0 : 1; }
  const sx = (x: number) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y: number) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const fmt = props.format ?? ((v: number) => String(Math.round(v)));
  const ticks = [y0, (y0 + y1) / 2, y1];
  const path = (pts: Array<[number, number]>) => pts.map((p, i) => {
    if (i === 0) return `M${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`;
    return props.step ? `H${sx(p[0]).toFixed(1)}V${sy(p[1]).toFixed(1)}` : `L${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`;
  }).join('');
  const dateFmt = (t: number) => new Date(t).toLocaleString('en-GB', x1 - x0 > 2 * 86_400_000 ? { day: 'numeric', month: 'short' } : { hour: '2-digit', minute: '2-digit' });
  return (
    <figure class="chart" data-testid={props.testid}>
      <svg viewBox={`0 0 ${W} ${H}`} role="img" aria-label={props.series.map((s) => s.name).join(', ')}>
        {ticks.map((t) => <g><line x1={L} x2={W - R} y1={sy(t)} y2={sy(t)} class="grid" /><text x={L - 6} y={sy(t) + 4} class="tick" text-anchor="end">{fmt(t)}</text></g>)}
        <text x={L} y={H - 6} class="tick">{dateFmt(x0)}</text>
        <text x={W - R} y={H - 6} class="tick" text-anchor="end">{dateFmt(x1)}</text>
        {props.series.map((s, i) => (
          <g>
            <path d={path(s.points)} fill="none" stroke={PALETTE[i % PALETTE.length]} stroke-width="2" />
            {s.points.length <= 40 && s.points.map((p) => <circle cx={sx(p[0])} cy={sy(p[1])} r="2.5" fill={PALETTE[i % PALETTE.length]} />)}
          </g>
        ))}
      </svg>
      {props.series.length > 1 && <figcaption class="legend">{props.series.map((s, i) => <span><i class={`swatch c${i % PALETTE.length}`} />{s.name}</span>)}</figcaption>}
    </figure>
  );
}

/** Tiny bars for per-minute counts. */
export function Bars(props: { values: number[]; label: string }) {
  const max = Math.max(1, ...props.values);
  const W = 240; const H = 36; const w = W / props.values.length;
  return (
    <svg class="bars" viewBox={`0 0 ${W} ${H}`} role="img" aria-label={props.label}>
      {props.values.map((v, i) => <rect x={i * w + 0.5} width={Math.max(1, w - 1)} y={H - (v / max) * H} height={(v / max) * H} />)}
    </svg>
  );
}
