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
/** Series that coincide stay apart: each has its own dash, marker and width (earlier ones wider, drawn underneath). */
const DASHES = ['', '7 4', '2 3', '10 3 2 3', '4 4', '1 2'];
const MARKERS = ['circle', 'square', 'triangle', 'diamond', 'circle', 'square'] as const;

function Marker(props: { shape: typeof MARKERS[number]; x: number; y: number; r: number; color: string }) {
  const { x, y, r, color } = props;
  if (props.shape === 'circle') return <circle cx={x} cy={y} r={r} fill={color} />;
  if (props.shape === 'square') return <rect x={x - r} y={y - r} width={2 * r} height={2 * r} fill={color} />;
  if (props.shape === 'triangle') return <path d={`M${x},${y - r * 1.3}L${x + r * 1.2},${y + r}L${x - r * 1.2},${y + r}Z`} fill={color} />;
  return <path d={`M${x},${y - r * 1.4}L${x + r * 1.4},${y}L${x},${y + r * 1.4}L${x - r * 1.4},${y}Z`} fill={color} />;
}

/** A line chart of one or more series over time, in SVG (no chart library for this much), with a legend giving each series' latest value. */
export function LineChart(props: { series: Array<{ name: string; points: Array<[number, number]> }>; format?: (v: number) => string; height?: number; step?: boolean; integer?: boolean; testid?: string }) {
  const W = 640; const H = props.height ?? 180; const L = 78; const R = 14; const T = 14; const B = 24;
  const all = props.series.flatMap((s) => s.points);
  if (!all.length) return <div class="chart-empty">No data yet.</div>;
  const xs = all.map((p) => p[0]); const ys = all.map((p) => p[1]);
  const x0 = Math.min(...xs); const x1 = Math.max(...xs, x0 + 1);
  let y0 = Math.min(0, ...ys); let y1 = Math.max(0, ...ys);
  if (y1 === y0) y1 += 1;
  const sx = (x: number) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y: number) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const fmt = props.format ?? ((v: number) => String(Math.round(v)));
  // Three ticks, whole numbers on a count axis, none repeated.
  const ticks = [...new Set([y0, (y0 + y1) / 2, y1].map((t) => (props.integer ? Math.round(t) : t)))];
  // Series drawn over each other are moved a few pixels apart (diagonally, so steps separate too).
  const shift = (i: number) => (i - (props.series.length - 1) / 2) * 3;
  const path = (pts: Array<[number, number]>, d: number) => pts.map((p, i) => {
    const x = (sx(p[0]) + d).toFixed(1); const y = (sy(p[1]) - d).toFixed(1);
    if (i === 0) return `M${x},${y}`;
    return props.step ? `H${x}V${y}` : `L${x},${y}`;
  }).join('');
  const dateFmt = (t: number) => new Date(t).toLocaleString('en-GB', x1 - x0 > 2 * 86_400_000 ? { day: 'numeric', month: 'short' } : { hour: '2-digit', minute: '2-digit' });
  const n = props.series.length;
  const last = (s: { points: Array<[number, number]> }) => s.points[s.points.length - 1]?.[1];
  const summary = props.series.map((s) => `${s.name}: ${last(s) === undefined ? 'no data' : fmt(last(s)!)} now`).join('; ');
  return (
    <figure class="chart" data-testid={props.testid}>
      <svg viewBox={`0 0 ${W} ${H}`} role="img" aria-label={summary}>
        {ticks.map((t) => <g><line x1={L} x2={W - R} y1={sy(t)} y2={sy(t)} class="grid" /><text x={L - 6} y={sy(t) + 4} class="tick" text-anchor="end">{fmt(t)}</text></g>)}
        <text x={L} y={H - 6} class="tick">{dateFmt(x0)}</text>
        <text x={W - R} y={H - 6} class="tick" text-anchor="end">{dateFmt(x1)}</text>
        {props.series.map((s, i) => {
          const color = PALETTE[i % PALETTE.length];
          const width = 2 + (n - 1 - i) * 2;
          return (
            <g data-series={s.name}>
              <title>{s.name}</title>
              <path d={path(s.points, n > 1 ? shift(i) : 0)} fill="none" stroke={color} stroke-width={width} stroke-dasharray={DASHES[i % DASHES.length] || undefined} stroke-linejoin="round" />
              {s.points.length <= 40 && s.points.map((p) => <Marker shape={MARKERS[i % MARKERS.length]} x={sx(p[0]) + (n > 1 ? shift(i) : 0)} y={sy(p[1]) - (n > 1 ? shift(i) : 0)} r={2.5 + (n - 1 - i) * 1.5} color={color} />)}
            </g>
          );
        })}
      </svg>
      {n > 1 && <figcaption class="legend">{props.series.map((s, i) => (
        <span data-testid={`legend-${s.name}`}>
          <svg class="key" viewBox="0 0 30 12" aria-hidden="true">
            <line x1="1" x2="29" y1="6" y2="6" stroke={PALETTE[i % PALETTE.length]} stroke-width="2" stroke-dasharray={DASHES[i % DASHES.length] || undefined} />
            <Marker shape={MARKERS[i % MARKERS.length]} x={15} y={6} r={3} color={PALETTE[i % PALETTE.length]} />
          </svg>
          {s.name} <b class="num">{last(s) === undefined ? '—' : fmt(last(s)!)}</b>
        </span>
      ))}</figcaption>}
    </figure>
  );
}

/** Counts per minute as a bar chart with its axes: a whole card wide, one bar a minute, the peak and the times labelled. */
export function BarChart(props: { values: number[]; minutes: number[]; label: string; unit: string; testid?: string }) {
  const W = 480; const H = 110; const L = 30; const R = 6; const T = 10; const B = 20;
  const max = Math.max(1, ...props.values);
  const slot = (W - L - R) / Math.max(1, props.values.length);
  const sy = (v: number) => T + (1 - v / max) * (H - T - B);
  const clock = (t: number | undefined) => (t === undefined ? '' : new Date(t).toLocaleTimeString('en-GB', { hour: '2-digit', minute: '2-digit' }));
  const ticks = [...new Set([0, Math.round(max / 2), max])];
  const mid = Math.floor(props.values.length / 2);
  return (
    <svg class="barchart" viewBox={`0 0 ${W} ${H}`} role="img" aria-label={props.label} data-testid={props.testid}>
      {ticks.map((t) => <g><line x1={L} x2={W - R} y1={sy(t)} y2={sy(t)} class="grid" /><text x={L - 5} y={sy(t) + 4} class="tick" text-anchor="end">{t}</text></g>)}
      {props.values.map((v, i) => v > 0 && (
        <rect class="bar" x={L + i * slot + 1} width={Math.max(2, slot - 2)} y={Math.min(sy(v), H - B - 2)} height={Math.max(2, H - B - sy(v))}>
          <title>{`${clock(props.minutes[i])}: ${v} ${props.unit}`}</title>
        </rect>
      ))}
      <line x1={L} x2={W - R} y1={H - B} y2={H - B} class="axis" />
      <text x={L} y={H - 5} class="tick">{clock(props.minutes[0])}</text>
      <text x={L + mid * slot} y={H - 5} class="tick" text-anchor="middle">{clock(props.minutes[mid])}</text>
      <text x={W - R} y={H - 5} class="tick" text-anchor="end">now</text>
    </svg>
  );
}
