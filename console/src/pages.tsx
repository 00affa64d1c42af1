// The console's pages: overview, cohorts, customers, one customer, rules,
// email templates and settlements.
import type { ComponentChildren, JSX } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { ago, api, credit, creditAxis, money, when } from './api';
import { Badge, BarChart, Card, Empty, LineChart, Loading, Page, Stat, Table, useApi } from './ui';

type Sums = Record<string, number[]>;
interface Overview {
  customers: number; conflicts: number;
  owing: { customers: number; amounts: Record<string, number> };
  cohorts: Array<{ id: string; size: number }>;
  cohort_history: Array<{ cohort: string; points: Array<[number, number]> }>;
  blocks_per_minute: { minutes: number[]; rules: Sums };
  would_blocks_per_minute: { minutes: number[]; rules: Sums };
  emails: Record<string, number>;
  settlements: SettlementCounts;
  today: { day: string; top_ups: DayTotal; refunds: DayTotal; disputes: DayTotal };
  last_sweep: { configured: boolean; at: string | null; age_seconds: number | null };
  stripe_errors: Record<string, number>;
}
interface DayTotal { count: number; amounts: Record<string, number> }
interface CustomerRow { id: string; name: string | null; email: string | null; currency: string | null; consumer: string | null; balance: number; estimated_balance: number; unsettled_usage: number; cohorts: string[]; blocked: boolean }
interface EmailRow { id: number; template: string; customer: string; to: string; status: string; attempts: number; created_at: string; delivered_at: string | null; last_error: string | null; message_id: string | null }
interface SettlementCounts { pending: number; retrying: number; failed: number; confirmed: number }
interface SettlementRow { id: number; customer: string; customer_name: string | null; amount: number; currency: string; formatted: string; mode: string; status: string; attempts: number; stripe_ref: string | null; idempotency_key: string; last_error: string | null; created_at: string; confirmed_at: string | null }

const link = (href: string, text: string) => <a href={href}>{text}</a>;
const customerLink = (id: string) => link(`#/customers/${encodeURIComponent(id)}`, id);
/** Credit left, or what the customer owes (in red). */
const Credit = (props: { balance: number; currency: string | null }) => <span class={props.balance > 0 ? 'bad-text' : undefined}>{credit(props.balance, props.currency)}</span>;
/** The same for a stat's big figure: "owes" smaller, so the amount keeps one line. */
const creditFigure = (balance: number, currency: string | null) => (balance > 0 ? <><span class="owes">owes </span>{money(balance, currency)}</> : credit(balance, currency));
const perMinute = (m: Sums) => Object.entries(m).map(([rule, v]) => ({ rule, v, total: v.reduce((a, b) => a + b, 0), last: v[v.length - 1] }));
/** "$20.00 · €5.00", or `none` when nothing moved. */
const amounts = (a: Record<string, number>, none: string) => Object.entries(a).map(([cur, v]) => money(v, cur)).join(' · ') || none;
/** A link to a page of the Stripe Dashboard, opened apart from the console. */
const stripeA = (href: string | null, text: ComponentChildren) => (href ? <a href={href} target="_blank" rel="noreferrer noopener">{text}</a> : text);
const statusTone = (s: string) => (s === 'delivered' || s === 'confirmed' ? 'ok' : s === 'failed' ? 'bad' : s === 'cancelled' || s === 'stale' ? 'muted' : 'warn');

export function OverviewPage() {
  const { data, error, reload } = useApi<Overview>('overview');
  useEffect(() => { const t = setInterval(reload, 10_000); return () => clearInterval(t); }, [reload]);
  if (!data) return <Page title="Overview"><Loading error={error} /></Page>;
  const sweepAge = data.last_sweep.age_seconds;
  const stripeErrors = Object.values(data.stripe_errors).reduce((a, b) => a + b, 0);
  const blocks = perMinute(data.blocks_per_minute.rules);
  const would = perMinute(data.would_blocks_per_minute.rules);
  return (
    <Page title="Overview" sub="What to check first. Refreshes every 10 seconds.">
      <div class="stats">
        <Stat label="Customers" value={data.customers.toLocaleString()} testid="stat-customers" />
        <Stat label="Last sweep" value={!data.last_sweep.configured ? 'off' : sweepAge === null ? 'never' : ago(data.last_sweep.at)} tone={sweepAge === null || sweepAge > 300 ? 'bad' : 'ok'} hint={data.last_sweep.configured ? 'Stripe balances' : 'STRIPE_SECRET_KEY is not set'} />
        <Stat label="Stripe errors" value={stripeErrors} tone={stripeErrors ? 'warn' : 'ok'} hint={Object.entries(data.stripe_errors).map(([s, n]) => `${s}: ${n}`).join(' · ') || 'since start'} />
        <Stat label="Emails pending" value={data.emails.pending + data.emails.sending} tone={data.emails.pending > 50 ? 'warn' : 'ok'} testid="stat-emails-pending" />
        <Stat label="Emails failed" value={data.emails.failed} tone={data.emails.failed ? 'bad' : 'ok'} hint={`${data.emails.stale ?? 0} stale: no longer true, not sent`} testid="stat-emails-failed" />
        <Stat label="Settlements pending" value={data.settlements.pending + data.settlements.retrying} tone={data.settlements.retrying ? 'warn' : 'ok'} hint={`${data.settlements.retrying} retrying · ${data.settlements.confirmed} confirmed`} testid="stat-settlements-pending" />
        <Stat label="Settlements failed" value={data.settlements.failed} tone={data.settlements.failed ? 'bad' : 'ok'} hint="refused by Stripe for good" testid="stat-settlements-failed" />
        <Stat label="Top-ups today" value={data.today.top_ups.count.toLocaleString()} testid="stat-top-ups-today"
          hint={`${amounts(data.today.top_ups.amounts, 'none yet')} · since 00:00 UTC`} />
        <Stat label="Refunds · disputes" value={<>{data.today.refunds.count} · {data.today.disputes.count}</>} tone={data.today.disputes.count ? 'bad' : data.today.refunds.count ? 'warn' : 'ok'} testid="stat-refunds-today"
          hint={`today: ${data.today.refunds.count + data.today.disputes.count ? `${amounts(data.today.refunds.amounts, '$0')} refunded · ${amounts(data.today.disputes.amounts, '$0')} disputed` : 'none'}`} />
        <Stat label="Customers who owe" value={data.owing.customers.toLocaleString()} tone={data.owing.customers ? 'warn' : 'ok'} testid="stat-owing"
          hint={Object.entries(data.owing.amounts).map(([cur, v]) => credit(v, cur)).join(' · ') || 'nobody owes'} />
        <Stat label="Consumer conflicts" value={data.conflicts} tone={data.conflicts ? 'warn' : 'ok'} />
      </div>
      <div class="grid2">
        <Card title="Cohort sizes, last 14 days">
          <LineChart step integer series={data.cohort_history.map((h) => ({ name: h.cohort, points: h.points }))} testid="cohort-chart" />
          <Table rowKey={(r) => r.id} rows={data.cohorts} initialSort="id" empty={<Empty title="No cohorts">Add <code>cohorts:</code> to the config file.</Empty>} columns={[
            { key: 'id', label: 'Cohort', render: (r) => link(`#/customers?cohort=${encodeURIComponent(r.id)}`, r.id), value: (r) => r.id },
            { key: 'size', label: 'Members now', render: (r) => r.size.toLocaleString(), value: (r) => r.size, align: 'right' },
          ]} />
        </Card>
        <Card title="Blocks per minute, last hour">
          <RuleBars rules={blocks} minutes={data.blocks_per_minute.minutes} unit="blocked" testid="blocks-chart"
            empty={<Empty title="Nothing blocked in the last hour">Blocked calls show here per rule as they happen.</Empty>} />
          <h3>Would-blocks of log-only rules</h3>
          <RuleBars rules={would} minutes={data.would_blocks_per_minute.minutes} unit="would have been blocked" testid="would-blocks-chart"
            empty={<Empty title="No would-blocks">A <code>log_only</code> rule counts here the calls it would have refused.</Empty>} />
        </Card>
      </div>
    </Page>
  );
}

function RuleBars(props: { rules: ReturnType<typeof perMinute>; minutes: number[]; unit: string; testid: string; empty: JSX.Element }) {
  if (!props.rules.length) return props.empty;
  return (
    <div data-testid={props.testid}>{[...props.rules].sort((a, b) => (a.rule < b.rule ? -1 : 1)).map((r) => (
      <figure class="rule-bars">
        <figcaption><b>{r.rule}</b> <span class="muted">{r.total.toLocaleString()} in the last hour · peak {Math.max(...r.v)} a minute</span></figcaption>
        <BarChart values={r.v} minutes={props.minutes} unit={props.unit} label={`${r.rule}: calls ${props.unit} per minute over the last hour, ${r.total} in all`} />
      </figure>
    ))}</div>
  );
}

export function CohortsPage() {
  const { data, error } = useApi<{ cohorts: Array<{ id: string; size: number; filter: unknown }> }>('cohorts');
  if (!data) return <Page title="Cohorts"><Loading error={error} /></Page>;
  return (
    <Page title="Cohorts" sub="Who is in which cohort, by the estimated balance (Stripe balance + unsettled usage).">
      <Card title="All cohorts">
        <Table rowKey={(r) => r.id} rows={data.cohorts} testid="cohorts-table" empty={<Empty title="No cohorts configured">Add a cohort under <code>cohorts:</code> in the config file, e.g. <code>{'{ id: no-credit, filter: { balance: { gte: 0 } } }'}</code>, and restart.</Empty>} columns={[
          { key: 'id', label: 'Cohort', render: (r) => link(`#/customers?cohort=${encodeURIComponent(r.id)}`, r.id), value: (r) => r.id },
          { key: 'filter', label: 'Filter', render: (r) => <code>{JSON.stringify(r.filter)}</code> },
          { key: 'size', label: 'Members', render: (r) => r.size.toLocaleString(), value: (r) => r.size, align: 'right' },
        ]} />
      </Card>
    </Page>
  );
}

export function CustomersPage(props: { query: URLSearchParams }) {
  const cohort = props.query.get('cohort') ?? '';
  const [q, setQ] = useState('');
  const [search, setSearch] = useState('');
  const [page, setPage] = useState(1);
  const [sort, setSort] = useState<{ key: string; dir: 'asc' | 'desc' }>({ key: 'estimated_balance', dir: 'asc' });
  useEffect(() => { const t = setTimeout(() => { setSearch(q); setPage(1); }, 200); return () => clearTimeout(t); }, [q]);
  useEffect(() => setPage(1), [cohort]);
  const params = new URLSearchParams({ q: search, page: String(page), per_page: '50', sort: sort.key, dir: sort.dir, ...(cohort ? { cohort } : {}) });
  const { data, error } = useApi<{ total: number; page: number; per_page: number; customers: CustomerRow[] }>(`customers?${params}`);
  const pages = data ? Math.max(1, Math.ceil(data.total / data.per_page)) : 1;
  const th = (key: string, label: string, cls = '') => (
    <th class={`sortable ${cls}`} aria-sort={sort.key === key ? (sort.dir === 'asc' ? 'ascending' : 'descending') : undefined}
      onClick={() => { setSort({ key, dir: sort.key === key && sort.dir === 'asc' ? 'desc' : 'asc' }); setPage(1); }}>
      {label}{sort.key === key ? (sort.dir === 'asc' ? ' ▲' : ' ▼') : ''}
    </th>
  );
  return (
    <Page title={cohort ? `Cohort ${cohort}` : 'Customers'} sub={cohort ? <>Members of <b>{cohort}</b>. <a href="#/customers">All customers</a></> : 'Every customer known from Stripe.'}>
      <div class="toolbar">
        <input type="search" placeholder="Search id, name, email or consumer…" value={q} onInput={(e) => setQ((e.target as HTMLInputElement).value)} aria-label="Search customers" />
        {data && <span class="muted">{data.total.toLocaleString()} customers</span>}
      </div>
      {!data ? <Loading error={error} /> : !data.customers.length ? (
        <Empty title={search ? 'No customer matches' : cohort ? 'This cohort is empty' : 'No customers yet'}>
          {search ? 'Try part of an id (cus_…), a name or an email.' : cohort ? 'Nobody matches its filter right now.' : 'Customers appear after the first Stripe sweep; check the overview for the last sweep.'}
        </Empty>
      ) : (
        <>
          <div class="table-wrap"><table data-testid="customers-table">
            <thead><tr>{th('id', 'Customer')}{th('name', 'Name')}<th>Consumer</th><th>Cohorts</th>{th('estimated_balance', 'Estimated credit', 'right')}<th class="right">Unsettled</th><th>Access</th></tr></thead>
            <tbody>{data.customers.map((c) => (
              <tr key={c.id}>
                <td>{customerLink(c.id)}</td><td>{c.name ?? '—'}<div class="muted small">{c.email}</div></td><td>{c.consumer ?? '—'}</td>
                <td>{c.cohorts.map((x) => <Badge>{x}</Badge>)}</td>
                <td class="right num"><Credit balance={c.estimated_balance} currency={c.currency} /></td><td class="right num">{money(c.unsettled_usage, c.currency)}</td>
                <td>{c.blocked ? <Badge tone="bad">blocked</Badge> : <Badge tone="ok">allowed</Badge>}</td>
              </tr>
            ))}</tbody>
          </table></div>
          <div class="pager">
            <button disabled={page <= 1} onClick={() => setPage(page - 1)}>← Previous</button>
            <span>Page {page} of {pages}</span>
            <button disabled={page >= pages} onClick={() => setPage(page + 1)}>Next →</button>
          </div>
        </>
      )}
    </Page>
  );
}

interface CustomerDetail extends CustomerRow {
  metadata: Record<string, string>; updated_at: string; decision: Record<string, unknown>; decision_outcome: string; stripe_dashboard_url: string;
  balance_history: Array<[number, number]>;
  transitions: Array<{ cohort: string; kind: string; at: string; balance: number }>;
  recent_decisions: Array<{ at: string; consumer: string; outcome: string; rule: string | null; would_block: string[] }>;
  usage_by_route: Array<{ route: string | null; requests: number; cost: number }>;
  settlements: SettlementRow[]; emails: EmailRow[];
  top_ups: TopUpRow[]; top_up_debits: DebitRow[];
  auto_recharge: AutoRecharge;
  consumers: ConsumerCaps[];
}
interface PeriodSpend { spent: number; cap: number | null; resets_at: string }
interface ConsumerCaps { consumer: string; daily: PeriodSpend; monthly: PeriodSpend; cap_left: number | null; binding_period: string | null; problems: Array<{ key: string; value: string; error: string }> }
interface RechargeRow { id: string; amount: number; currency: string; status: string; due_at: string; finished_at: string | null; payment_intent: string | null; failure_code: string | null; last_error: string | null; attempts: number; stripe_url: string | null }
type RechargeField = 'threshold' | 'amount' | 'monthly_cap';
interface AutoRecharge {
  offered: boolean; enabled: boolean; threshold: number | null; amount: number | null; monthly_cap: number | null;
  own: Record<RechargeField, string | null>; invalid: { field: string; key: string; why: string } | null;
  defaults: Record<RechargeField, number>; bounds: { min_amount: number; max_amount: number; max_threshold: number; max_monthly_cap: number };
  month: string; month_succeeded: number; month_in_flight: number; month_counted: number; cap_left: number | null;
  failures: number; max_consecutive_failures: number; paused: boolean; paused_at: string | null;
  last: RechargeRow | null; recent: RechargeRow[]; as_of: number;
}
interface TopUpRow { id: string; amount: number; currency: string; formatted: string; status: string; refunded: number; disputed: number; created_at: string; credited_at: string | null; session_id: string | null; payment_intent: string | null; balance_transaction: string | null; last_error: string | null; stripe_url: string | null }
interface DebitRow { id: number; kind: 'refund' | 'dispute'; stripe_id: string; top_up: string; amount: number; currency: string; formatted: string; status: string; attempts: number; balance_transaction: string | null; last_error: string | null; created_at: string; confirmed_at: string | null; stripe_url: string }
const topUpTone = (s: string) => (s === 'credited' ? 'ok' : s === 'failed' ? 'bad' : s === 'crediting' ? 'warn' : 'muted');


export function CustomerPage(props: { id: string }) {
  const { data: c, error, reload } = useApi<CustomerDetail>(`customers/${encodeURIComponent(props.id)}`);
  if (!c) return <Page title={props.id}><Loading error={error} /></Page>;
  return (
    <Page title={c.name ?? c.id} sub={<>{c.id}{c.email && <> · {c.email}</>}{c.consumer && <> · consumer <code>{c.consumer}</code></>}</>}
      actions={<a class="button" href={c.stripe_dashboard_url} target="_blank" rel="noreferrer noopener">Open in Stripe ↗</a>}>
      <div class="stats">
        <Stat label="Stripe balance (credit)" value={creditFigure(c.balance, c.currency)} tone={c.balance > 0 ? 'bad' : undefined} testid="stat-stripe-balance" />
        <Stat label="Unsettled usage" value={money(c.unsettled_usage, c.currency)} />
        <Stat label="Estimated credit" value={creditFigure(c.estimated_balance, c.currency)} tone={c.estimated_balance >= 0 ? 'bad' : 'ok'} testid="stat-estimated" />
        <Stat label="Access now" value={c.blocked ? 'blocked' : 'allowed'} tone={c.blocked ? 'bad' : 'ok'} hint={c.blocked ? `rule ${String(c.decision.rule)}` : c.decision_outcome === 'would_block' ? 'a log-only rule would block' : undefined} testid="stat-access" />
      </div>
      <div class="grid2">
        <Card title="Estimated credit over time">
          <LineChart step series={[{ name: 'credit', points: c.balance_history.map(([t, b]) => [t, -b]) }]} format={(v) => creditAxis(v, c.currency)} testid="balance-chart" />
          <p class="muted small">From cohort transitions and the balances seen at recent decisions.</p>
        </Card>
        <Card title="Cohort transitions">
          <Table rowKey={(r) => `${r.at}${r.cohort}${r.kind}`} rows={c.transitions} empty={<Empty title="No transitions">This customer has not entered or left a cohort.</Empty>} columns={[
            { key: 'at', label: 'When', render: (r) => when(r.at), value: (r) => r.at },
            { key: 'kind', label: '', render: (r) => <Badge tone={r.kind === 'enter' ? 'warn' : 'ok'}>{r.kind}</Badge> },
            { key: 'cohort', label: 'Cohort', render: (r) => r.cohort, value: (r) => r.cohort },
            { key: 'balance', label: 'Credit then', render: (r) => <Credit balance={r.balance} currency={c.currency} />, value: (r) => -r.balance, align: 'right' },
          ]} />
        </Card>
      </div>
      <Card title="Recent decisions">
        <Table rowKey={(r) => r.at + r.outcome} rows={c.recent_decisions} testid="decisions-table" empty={<Empty title="No decisions seen since the service started">Decisions show here as Kong asks for them.</Empty>} columns={[
          { key: 'at', label: 'When', render: (r) => when(r.at), value: (r) => r.at },
          { key: 'outcome', label: 'Outcome', render: (r) => <Badge tone={r.outcome === 'block' ? 'bad' : r.outcome === 'would_block' ? 'warn' : 'ok'}>{r.outcome}</Badge>, value: (r) => r.outcome },
          { key: 'rule', label: 'Rule', render: (r) => r.rule ?? (r.would_block.length ? `would: ${r.would_block.join(', ')}` : '—') },
          { key: 'consumer', label: 'Consumer', render: (r) => r.consumer },
        ]} />
      </Card>
      <Card title="Usage by route">
          <Table rowKey={(r) => String(r.route)} rows={c.usage_by_route} initialSort="route" empty={<Empty title="No usage recorded">Calls through Kong are metered here once the plugin reports them.</Empty>} columns={[
            { key: 'route', label: 'Route', render: (r) => r.route ?? '(none)', value: (r) => r.route ?? '' },
            { key: 'requests', label: 'Requests', render: (r) => r.requests.toLocaleString(), value: (r) => r.requests, align: 'right' },
            { key: 'cost', label: 'Cost', render: (r) => money(r.cost, c.currency), value: (r) => r.cost, align: 'right' },
          ]} />
      </Card>
      <Card title="Consumers and their caps">
        <ConsumerCapsTable rows={c.consumers} currency={c.currency} />
      </Card>
      <Card title="Auto-recharge">
        <AutoRechargeCard id={c.id} currency={c.currency} a={c.auto_recharge} onSaved={reload} />
      </Card>
      <Card title="Top-ups">
        <Table rowKey={(r) => r.id} rows={c.top_ups} testid="top-ups-table" empty={<Empty title="No top-ups">Top-ups bought on payg's page through Stripe Checkout show here.</Empty>} columns={[
          { key: 'created', label: 'Started', render: (r) => <span class="nowrap">{when(r.created_at)}</span>, value: (r) => r.created_at },
          { key: 'amount', label: 'Amount', render: (r) => r.formatted, value: (r) => r.amount, align: 'right' },
          { key: 'status', label: 'Status', render: (r) => <span title={r.last_error ?? ''}><Badge tone={topUpTone(r.status)}>{r.status}</Badge></span>, value: (r) => r.status },
          { key: 'back', label: 'Taken back', render: (r) => (r.refunded || r.disputed
            ? <span class="bad-text">{[r.refunded && `refunded ${money(r.refunded, r.currency)}`, r.disputed && `disputed ${money(r.disputed, r.currency)}`].filter(Boolean).join(' · ')}</span>
            : <span class="muted">—</span>), value: (r) => r.refunded + r.disputed, align: 'right' },
          { key: 'stripe', label: 'In Stripe', render: (r) => (r.stripe_url
            ? stripeA(r.stripe_url, <>{r.payment_intent ? 'payment' : 'Checkout Session'} <code class="ref">{r.payment_intent ?? r.session_id}</code> ↗</>)
            : <span class="muted small">no session yet</span>) },
        ]} />
        <h3>Refunds and disputes</h3>
        <Table rowKey={(r) => String(r.id)} rows={c.top_up_debits} testid="top-up-debits-table" empty={<Empty title="No refunds or disputes">A refund or dispute of a top-up in Stripe is debited from the customer's credit, and shows here.</Empty>} columns={[
          { key: 'created', label: 'Seen', render: (r) => <span class="nowrap">{when(r.created_at)}</span>, value: (r) => r.created_at },
          { key: 'kind', label: 'Kind', render: (r) => <Badge tone={r.kind === 'dispute' ? 'bad' : 'warn'}>{r.kind}</Badge>, value: (r) => r.kind },
          { key: 'amount', label: 'Debited', render: (r) => r.formatted, value: (r) => r.amount, align: 'right' },
          { key: 'status', label: 'Status', render: (r) => <span title={r.last_error ?? ''}><Badge tone={statusTone(r.status)}>{r.status}</Badge></span>, value: (r) => r.status },
          { key: 'stripe', label: 'In Stripe', render: (r) => stripeA(r.stripe_url, <><code class="ref">{r.stripe_id}</code> ↗</>) },
        ]} />
      </Card>
      <Card title="Settlements">
        <SettlementTable rows={c.settlements} showCustomer={false} />
      </Card>
      <Card title="Emails"><EmailLogTable rows={c.emails} /></Card>
    </Page>
  );
}

/** Each consumer's spend this period (UTC day and month) against its caps, what is left and when it resets. */
function ConsumerCapsTable(props: { rows: ConsumerCaps[]; currency: string | null }) {
  const cur = props.currency;
  const period = (p: PeriodSpend) => (p.cap === null
    ? <><span class="num">{money(p.spent, cur)}</span><div class="muted small">no cap</div></>
    : <><span class="num">{money(p.spent, cur)}</span> <span class="muted">of</span> <span class="num">{money(p.cap, cur)}</span>
      <div class={`small ${p.spent >= p.cap ? 'bad-text' : 'muted'}`}>{money(Math.max(0, p.cap - p.spent), cur)} left · resets {when(p.resets_at)}</div></>);
  return <Table rowKey={(r) => r.consumer} rows={props.rows} testid="consumer-caps-table" empty={<Empty title="No consumers">This customer's <code>kong_consumer</code> names no consumer.</Empty>} columns={[
    { key: 'consumer', label: 'Consumer', render: (r) => <code>{r.consumer}</code>, value: (r) => r.consumer },
    { key: 'daily', label: 'Today (UTC)', render: (r) => period(r.daily), value: (r) => r.daily.spent },
    { key: 'monthly', label: 'This month (UTC)', render: (r) => period(r.monthly), value: (r) => r.monthly.spent },
    { key: 'left', label: 'May still spend', render: (r) => (r.cap_left === null ? <span class="muted">up to the team's credit</span>
      : <span class={r.cap_left === 0 ? 'bad-text' : undefined}>{money(r.cap_left, cur)} <span class="muted small">({r.binding_period} cap)</span></span>), value: (r) => r.cap_left ?? Infinity, align: 'right' },
    { key: 'problems', label: 'Metadata problems', render: (r) => (r.problems.length
      ? <span class="bad-text small">{r.problems.map((p) => `${p.key}=${p.value}: ${p.error}`).join('; ')}</span> : <span class="muted">—</span>) },
  ]} />;
}

/** Digits after the point in a currency ("usd" 2, "jpy" 0), as the money formatter has them. */
function digitsOf(currency: string | null): number {
  try { return new Intl.NumberFormat('en-US', { style: 'currency', currency: (currency ?? 'usd').toUpperCase() }).resolvedOptions().maximumFractionDigits ?? 2; } catch { return 2; }
}
const RECHARGE_LABELS: Record<RechargeField, string> = { amount: 'Top up by', threshold: 'When credit falls below', monthly_cap: 'At most per month' };
const rechargeTone = (s: string) => (s === 'succeeded' ? 'ok' : s === 'failed' || s === 'action_required' ? 'bad' : 'warn');

/** A customer's auto-recharge: what the service knows, and the settings (in their Stripe metadata) to edit. */
function AutoRechargeCard(props: { id: string; currency: string | null; a: AutoRecharge; onSaved: () => void }) {
  const { a, currency } = props;
  const d = digitsOf(currency);
  const major = (minor: number) => (minor / 10 ** d).toFixed(d);
  const initial = (f: RechargeField) => major(a[f] ?? a.defaults[f]);
  const [enabled, setEnabled] = useState(a.enabled);
  const [values, setValues] = useState<Record<RechargeField, string>>({ amount: initial('amount'), threshold: initial('threshold'), monthly_cap: initial('monthly_cap') });
  const [busy, setBusy] = useState(false);
  const [problem, setProblem] = useState<string>();
  const [note, setNote] = useState<string>();
  // Read again after a save (or a reload): the form shows what is stored now.
  const stored = JSON.stringify(a);
  useEffect(() => {
    setEnabled(a.enabled);
    setValues({ amount: initial('amount'), threshold: initial('threshold'), monthly_cap: initial('monthly_cap') });
  }, [stored]);
  const toMinor = (f: RechargeField): number | string => {
    const m = /^(\d{1,12})(?:\.(\d*))?$/.exec(values[f].trim());
    if (!m || (m[2] ?? '').length > d) return `${RECHARGE_LABELS[f]}: an amount in ${(currency ?? 'usd').toUpperCase()} with at most ${d} decimals`;
    return Number(m[1]) * 10 ** d + Number((m[2] ?? '').padEnd(d, '0') || 0);
  };
  const save = async (e: Event) => {
    e.preventDefault();
    setProblem(undefined); setNote(undefined);
    // as_of: what this form was read at, so a pause (a refund, a dispute) that came since is not undone unseen.
    const body: Record<string, unknown> = { enabled, as_of: a.as_of };
    for (const f of ['amount', 'threshold', 'monthly_cap'] as RechargeField[]) {
      const v = toMinor(f);
      if (typeof v === 'string') { setProblem(v); return; }
      // Unchanged from the config's default, for a customer on the default: stays on the default.
      body[f] = a.own[f] === null && v === a.defaults[f] ? null : v;
    }
    setBusy(true);
    try {
      const saved = await api.put<{ rearmed: boolean; planned: boolean }>(`customers/${encodeURIComponent(props.id)}/auto-recharge`, body);
      setNote(`Saved to the customer's Stripe metadata${saved.rearmed ? '; re-armed (failures in a row back to 0)' : ''}${saved.planned ? '; the credit is below the threshold, so a recharge is being charged now' : ''}.`);
      props.onSaved();
    } catch (err) { setProblem((err as Error).message); } finally { setBusy(false); }
  };
  const field = (f: RechargeField) => (
    <label>{RECHARGE_LABELS[f]} ({(currency ?? 'usd').toUpperCase()})
      <input type="text" inputMode="decimal" value={values[f]} data-testid={`recharge-${f}`} 
        onInput={(e) => setValues({ ...values, [f]: (e.target as HTMLInputElement).value })} />
      <span class="small muted">{a.own[f] === null ? `default ${money(a.defaults[f], currency)}` : `own value; default ${money(a.defaults[f], currency)}`}</span>
    </label>);
  // Not offered: a line saying so (nothing is charged, nothing to edit).
  if (!a.offered) {
    return <p class="muted" data-testid="auto-recharge">Off in the config (<code>auto_recharge.enabled</code>): nothing is charged{a.enabled ? ', although this customer\'s Stripe metadata switches it on' : ''}.</p>;
  }
  const state = a.paused ? <Badge tone="bad">paused</Badge> : a.enabled ? (a.invalid ? <Badge tone="bad">invalid settings</Badge> : <Badge tone="ok">on</Badge>) : <Badge>off</Badge>;
  return (
    <div data-testid="auto-recharge">
      <p data-testid="recharge-status">
        {state}
        {a.enabled && !a.invalid && <> Tops up <b>{money(a.amount, currency)}</b> when credit falls below <b>{money(a.threshold, currency)}</b>, at most <b>{money(a.monthly_cap, currency)}</b> a month.</>}
        {a.invalid && <span class="bad-text"> {a.invalid.key}: {a.invalid.why}; nothing is charged until it is fixed.</span>}
      </p>
      <div class="stats">
        <Stat label={`This month (${a.month}, UTC)`} value={<>{money(a.month_counted, currency)}{a.monthly_cap !== null && <span class="of"> of {money(a.monthly_cap, currency)}</span>}</>}
          hint={`${a.cap_left !== null ? `${money(a.cap_left, currency)} left · ` : ''}succeeded ${money(a.month_succeeded, currency)} · in flight ${money(a.month_in_flight, currency)}`} testid="stat-recharge-month" />
        <Stat label="Failures in a row" value={`${a.failures} of ${a.max_consecutive_failures}`} tone={a.paused ? 'bad' : a.failures ? 'warn' : undefined}
          hint={a.paused ? `paused ${when(a.paused_at)}` : 'pauses at the limit'} testid="stat-recharge-failures" />
        <Stat label="Last recharge" value={a.last ? money(a.last.amount, a.last.currency) : '—'} tone={a.last ? (rechargeTone(a.last.status) === 'warn' ? 'warn' : rechargeTone(a.last.status)) as 'ok' | 'bad' | 'warn' : undefined}
          hint={a.last ? `${a.last.status}${a.last.failure_code ? ` (${a.last.failure_code})` : ''} · ${when(a.last.finished_at ?? a.last.due_at)}` : 'none yet'} testid="stat-recharge-last" />
      </div>
      {a.last?.stripe_url && <p class="small">Last payment in Stripe: {stripeA(a.last.stripe_url, <><code class="ref">{a.last.payment_intent}</code> ↗</>)}</p>}
      <form onSubmit={(e) => void save(e)} data-testid="recharge-form">
        <div class="row">
          <label class="switch"><input type="checkbox" checked={enabled} onChange={() => setEnabled(!enabled)} data-testid="recharge-enabled" aria-label="auto-recharge on" /><span>{enabled ? 'on' : 'off'}</span></label>
          {field('amount')}{field('threshold')}{field('monthly_cap')}
          <button type="submit" disabled={busy} data-testid="recharge-save">{a.paused && enabled ? 'Save and re-arm' : 'Save'}</button>
        </div>
        <p class="muted small">
          Bounds: recharges of {money(a.bounds.min_amount, currency)} to {money(a.bounds.max_amount, currency)}; threshold up to {money(a.bounds.max_threshold, currency)};
          monthly cap from the top-up amount to {money(a.bounds.max_monthly_cap, currency)}. Saved in the customer's Stripe metadata. Saving with auto-recharge on re-arms a paused customer and, if the credit is already below the threshold, charges a recharge now (within the monthly cap).
        </p>
      </form>
      {problem && <div class="error" role="alert" data-testid="recharge-error">{problem}</div>}
      {note && <div class="notice" role="status" data-testid="recharge-note">{note}</div>}
    </div>
  );
}

/** On a customer's page (showCustomer false) the customer column is left out: the page names them. */
function SettlementTable(props: { rows: SettlementRow[]; showCustomer?: boolean }) {
  return <Table rowKey={(r) => String(r.id)} rows={props.rows} testid="settlements-table" empty={<Empty title="No settlements">Usage is settled to Stripe on the <code>metering.settle.schedule</code>; nothing has been charged yet.</Empty>} columns={[
    { key: 'id', label: '#', render: (r) => r.id, value: (r) => r.id },
    ...(props.showCustomer === false ? [] : [{ key: 'customer', label: 'Customer', render: (r: SettlementRow) => (
      <>{link(`#/customers/${encodeURIComponent(r.customer)}`, r.customer_name ?? r.customer)}{r.customer_name !== null && <div class="muted small"><code>{r.customer}</code></div>}</>
    ), value: (r: SettlementRow) => r.customer_name ?? r.customer }]),
    { key: 'amount', label: 'Amount', render: (r) => r.formatted, value: (r) => r.amount, align: 'right' },
    { key: 'status', label: 'Status', render: (r) => <span title={r.last_error ?? ''}><Badge tone={statusTone(r.status)}>{r.status}</Badge></span>, value: (r) => r.status },
    { key: 'ref', label: 'Stripe reference', render: (r) => (r.stripe_ref ? <code class="ref">{r.stripe_ref}</code> : <span class="muted small" title={r.idempotency_key}>{r.last_error ?? 'not confirmed yet'}</span>) },
    { key: 'created', label: 'Created', render: (r) => <span class="nowrap">{when(r.created_at)}</span>, value: (r) => r.created_at },
  ]} />;
}

function EmailLogTable(props: { rows: EmailRow[] }) {
  return <Table rowKey={(r) => String(r.id)} rows={props.rows} testid="email-log" empty={<Empty title="No emails sent">Emails go out when customers enter or leave the cohorts of active templates.</Empty>} columns={[
    { key: 'created', label: 'When', render: (r) => when(r.created_at), value: (r) => r.created_at },
    { key: 'template', label: 'Template', render: (r) => r.template, value: (r) => r.template },
    { key: 'to', label: 'To', render: (r) => <>{r.to}<div class="small">{customerLink(r.customer)}</div></>, value: (r) => r.to },
    { key: 'status', label: 'Status', render: (r) => <Badge tone={statusTone(r.status)}>{r.status}</Badge>, value: (r) => r.status },
    { key: 'attempts', label: 'Tries', render: (r) => r.attempts, value: (r) => r.attempts, align: 'right' },
    { key: 'mid', label: 'Message-ID / why', render: (r) => <span class="small">{r.message_id ? <code>{r.message_id}</code> : null}{r.last_error && <div class={r.status === 'stale' || r.status === 'cancelled' ? 'muted' : 'bad-text'}>{r.status === 'stale' ? `not sent: ${r.last_error}` : r.last_error}</div>}</span> },
  ]} />;
}

interface RuleRow { id: string; cohort: string; enabled: boolean; log_only: boolean; status: number; cohort_size: number; blocking_now: number }
interface Preview { rule: string; would_block: number; newly_blocked: number; log_only: boolean; customers: CustomerRow[] }

export function RulesPage() {
  const { data, error, reload } = useApi<{ rules: RuleRow[] }>('rules');
  const [preview, setPreview] = useState<Preview>();
  const [busy, setBusy] = useState<string>();
  const [problem, setProblem] = useState<string>();
  const toggle = async (r: RuleRow) => {
    setBusy(r.id); setProblem(undefined);
    try { await api.put(`rules/${encodeURIComponent(r.id)}`, { enabled: !r.enabled }); reload(); } catch (e) { setProblem((e as Error).message); } finally { setBusy(undefined); }
  };
  const show = async (r: RuleRow) => {
    try { setPreview(await api.get<Preview>(`rules/${encodeURIComponent(r.id)}/preview`)); } catch (e) { setProblem((e as Error).message); }
  };
  if (!data) return <Page title="Rules"><Loading error={error} /></Page>;
  return (
    <Page title="Rules" sub="Checked in config order; the first enabled blocking rule whose cohort holds the customer decides. Switches are saved and apply at once.">
      {problem && <div class="error" role="alert">{problem}</div>}
      <Card title="All rules">
        <Table rowKey={(r) => r.id} rows={data.rules} testid="rules-table" empty={<Empty title="No rules configured">Add a rule under <code>rules:</code> in the config file to block a cohort.</Empty>} columns={[
          { key: 'id', label: 'Rule', render: (r) => <b>{r.id}</b>, value: (r) => r.id },
          { key: 'cohort', label: 'Cohort', render: (r) => link(`#/customers?cohort=${encodeURIComponent(r.cohort)}`, `${r.cohort} (${r.cohort_size})`), value: (r) => r.cohort },
          { key: 'kind', label: 'Kind', render: (r) => (r.log_only ? <Badge>log only</Badge> : <Badge tone="warn">blocks with {r.status}</Badge>) },
          { key: 'now', label: 'Blocking now', render: (r) => r.blocking_now, value: (r) => r.blocking_now, align: 'right' },
          { key: 'enabled', label: 'State', render: (r) => (
            <label class="switch"><input type="checkbox" checked={r.enabled} disabled={busy === r.id} onChange={() => void toggle(r)} aria-label={`rule ${r.id} enabled`} data-testid={`toggle-${r.id}`} /><span>{r.enabled ? 'on' : 'off'}</span></label>
          ), value: (r) => (r.enabled ? 1 : 0) },
          { key: 'preview', label: '', render: (r) => <button class="ghost" onClick={() => void show(r)} data-testid={`preview-${r.id}`}>Dry run</button> },
        ]} />
      </Card>
      {preview && (
        <Card title={`Dry run: ${preview.rule}`} class="preview">
          <p data-testid="preview-summary">
            {preview.log_only ? <>If on, this log-only rule would report <b>{preview.would_block}</b> customers now (and block none).</>
              : <>If on, this rule would block <b>{preview.would_block}</b> customers now, <b>{preview.newly_blocked}</b> of whom are allowed today.</>}
          </p>
          <Table rowKey={(r) => r.id} rows={preview.customers} empty={<Empty title="Nobody would be blocked">No customer is in this rule's cohort (or an earlier rule already decides for them).</Empty>} columns={[
            { key: 'id', label: 'Customer', render: (r) => customerLink(r.id), value: (r) => r.id },
            { key: 'name', label: 'Name', render: (r) => r.name ?? '—', value: (r) => r.name },
            { key: 'credit', label: 'Estimated credit', render: (r) => <Credit balance={r.estimated_balance} currency={r.currency} />, value: (r) => -r.estimated_balance, align: 'right' },
            { key: 'now', label: 'Now', render: (r) => (r.blocked ? <Badge tone="bad">blocked</Badge> : <Badge tone="ok">allowed</Badge>) },
          ]} />
        </Card>
      )}
    </Page>
  );
}

interface Template { id: string; active: boolean; trigger: string; from: { address: string; name?: string }; has_html: boolean; has_text: boolean; reenroll_after_ms: number | null }
interface EmailPreview { subject: string; html: string | null; text: string | null; sample: boolean }

const EMAIL_FILTERS = ['', 'pending', 'delivered', 'failed', 'stale', 'cancelled'];

export function EmailsPage() {
  const { data, error, reload } = useApi<{ smtp: boolean; templates: Template[] }>('emails');
  const [logStatus, setLogStatus] = useState('');
  const log = useApi<{ emails: EmailRow[] }>(`emails/log${logStatus ? `?status=${logStatus}` : ''}`);
  const [selected, setSelected] = useState<string>();
  const [customer, setCustomer] = useState('');
  const [to, setTo] = useState('');
  const [preview, setPreview] = useState<EmailPreview>();
  const [note, setNote] = useState<{ tone: 'ok' | 'bad'; text: string }>();
  const current = selected ?? data?.templates[0]?.id;
  const query = new URLSearchParams(customer.trim() ? { customer: customer.trim() } : {}).toString();
  useEffect(() => {
    if (!current) return;
    api.get<EmailPreview>(`emails/${encodeURIComponent(current)}/preview?${query}`).then((p) => { setPreview(p); setNote(undefined); }, (e: Error) => { setPreview(undefined); setNote({ tone: 'bad', text: e.message }); });
  }, [current, query]);
  if (!data) return <Page title="Email templates"><Loading error={error} /></Page>;
  const toggle = async (t: Template) => { await api.put(`emails/${encodeURIComponent(t.id)}`, { active: !t.active }).catch((e: Error) => setNote({ tone: 'bad', text: e.message })); reload(); };
  const send = async (e: Event) => {
    e.preventDefault();
    setNote(undefined);
    try {
      const r = await api.post<{ message_id: string }>(`emails/${encodeURIComponent(current!)}/test`, { to, ...(customer.trim() ? { customer_id: customer.trim() } : {}) });
      setNote({ tone: 'ok', text: `Sent to ${to} (Message-ID ${r.message_id}).` });
      log.reload();
    } catch (err) { setNote({ tone: 'bad', text: (err as Error).message }); }
  };
  return (
    <Page title="Email templates" sub={data.smtp ? 'Behavioural emails, sent through the outbox.' : 'SMTP_URL is not set: emails wait in the outbox and test sends are off.'}>
      <Card title="Templates">
        <Table rowKey={(r) => r.id} rows={data.templates} testid="templates-table" empty={<Empty title="No email templates">Add one under <code>emails:</code> in the config file, with an html or text template file.</Empty>} columns={[
          { key: 'id', label: 'Template', render: (r) => <button class={`linklike ${r.id === current ? 'current' : ''}`} onClick={() => setSelected(r.id)} data-testid={`select-${r.id}`}>{r.id}</button>, value: (r) => r.id },
          { key: 'trigger', label: 'Sent when', render: (r) => r.trigger + (r.reenroll_after_ms ? `, again every ${Math.round(r.reenroll_after_ms / 3_600_000)}h` : ''), value: (r) => r.trigger },
          { key: 'from', label: 'From', render: (r) => r.from.address },
          { key: 'active', label: 'State', render: (r) => <label class="switch"><input type="checkbox" checked={r.active} onChange={() => void toggle(r)} aria-label={`template ${r.id} active`} /><span>{r.active ? 'on' : 'off'}</span></label>, value: (r) => (r.active ? 1 : 0) },
        ]} />
      </Card>
      {current && (
        <Card title={`Preview: ${current}`} class="preview">
          <form class="row" onSubmit={send}>
            <label>Merge tags from customer <input value={customer} placeholder="cus_… (empty: sample data)" onInput={(e) => setCustomer((e.target as HTMLInputElement).value)} data-testid="preview-customer" /></label>
            <label>Send a test to <input type="email" required value={to} placeholder="you@example.com" onInput={(e) => setTo((e.target as HTMLInputElement).value)} data-testid="test-to" /></label>
            <button type="submit" disabled={!data.smtp} data-testid="test-send">Send test</button>
          </form>
          {note && <div class={note.tone === 'ok' ? 'notice' : 'error'} role="status" data-testid="email-note">{note.text}</div>}
          {preview && (
            <div class="email-preview">
              <div class="email-subject" data-testid="preview-subject"><span class="muted">Subject</span> {preview.subject} {preview.sample && <Badge>sample data</Badge>}</div>
              <div class="grid2">
                <div class="part"><h3>HTML</h3><PreviewFrame src={`/console/api/emails/${encodeURIComponent(current)}/preview.html?${query}`} /></div>
                <div class="part"><h3>Text</h3><pre data-testid="preview-text">{preview.text ?? '(no text part)'}</pre></div>
              </div>
            </div>
          )}
        </Card>
      )}
      <Card title="Email log">
        <div class="toolbar tabs" data-testid="email-log-filter">{EMAIL_FILTERS.map((s) => <button class={logStatus === s ? 'current' : 'ghost'} onClick={() => setLogStatus(s)}>{s || 'all'}</button>)}</div>
        {log.data ? <EmailLogTable rows={log.data.emails} /> : <Loading error={log.error} />}
      </Card>
    </Page>
  );
}

/**
 * The email's HTML in a frame without scripts, as tall as what it holds: its
 * height is read from the frame's document once loaded, when the frame may be
 * read (sandboxed without scripts, same origin only so that the console can
 * measure it). A frame the console cannot read (the preview answers with a CSP
 * sandbox of an opaque origin) is as tall as the text part beside it, which
 * holds the same words.
 */
function PreviewFrame(props: { src: string }) {
  const [height, setHeight] = useState<number>();
  const measure = (e: Event) => {
    const doc = (e.currentTarget as HTMLIFrameElement).contentDocument;
    const body = doc?.body;
    if (!doc || !body || !doc.defaultView) return setHeight(undefined);
    // Where the content ends (an email without a doctype lays out in quirks mode, whose <html> fills the frame).
    const range = doc.createRange();
    range.selectNodeContents(body);
    const style = doc.defaultView.getComputedStyle(body);
    const bottom = range.getBoundingClientRect().bottom + parseFloat(style.paddingBottom) + parseFloat(style.marginBottom) + 16;
    setHeight(Math.min(2000, Math.max(60, Math.ceil(bottom))));
  };
  return <iframe sandbox="allow-same-origin" title="HTML preview" src={props.src} class={height ? undefined : 'fill'} height={height} onLoad={measure} data-testid="preview-html" />;
}

export function SettlementsPage() {
  const [status, setStatus] = useState('');
  const { data, error } = useApi<{ counts: SettlementCounts; settlements: SettlementRow[] }>(`settlements${status ? `?status=${status}` : ''}`);
  return (
    <Page title="Settlements" sub="Usage charged to Stripe, each with an idempotency key. An attempt Stripe did not answer is resent with the same key (retrying); one Stripe refused for good is failed and stays counted against the customer's credit.">
      {data && <div class="stats">
        <Stat label="Pending" value={data.counts.pending} tone="ok" hint="waiting for Stripe's answer" testid="settlements-pending" />
        <Stat label="Retrying" value={data.counts.retrying} tone={data.counts.retrying ? 'warn' : 'ok'} hint="resent with the same key" testid="settlements-retrying" />
        <Stat label="Failed" value={data.counts.failed} tone={data.counts.failed ? 'bad' : 'ok'} hint="refused by Stripe for good" testid="settlements-failed" />
        <Stat label="Confirmed" value={data.counts.confirmed} tone="ok" testid="settlements-confirmed" />
      </div>}
      <div class="toolbar tabs">{['', 'pending', 'retrying', 'failed', 'confirmed'].map((s) => <button class={status === s ? 'current' : 'ghost'} onClick={() => setStatus(s)}>{s || 'all'}</button>)}</div>
      <Card title="Settlements">{data ? <SettlementTable rows={data.settlements} /> : <Loading error={error} />}</Card>
    </Page>
  );
}
