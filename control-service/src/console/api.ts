// The console's JSON API (/console/api/…), behind a session. Reads come from
// the engine's memory, the store and the read-model queries; writes reuse the
// engine's switches and the email sender's test send, as the admin API does.

import { randomUUID } from 'node:crypto';
import type { Config } from '../config';
import { formatMoney } from '../customer';
import type { EmailSender } from '../emails/sender';
import type { DecisionAnswer, Engine } from '../engine';
import { mergeContext, SAMPLE_CUSTOMER, type EmailMergeContext, SAMPLE_RECHARGE } from '../merge-tags';
import type { Metrics } from '../metrics';
import { estimatedBalance } from '../ledger';
import { MICROS_PER_UNIT } from '../pricing';
import { verdict } from '../rules';
import { SETTLEMENT_VIEWS, settlementView, type ConsoleQueries, type SettlementView } from '../store/console-queries';
import type { EmailStatus, Store } from '../store/store';
import type { MoveRow, TopUpRow } from '../top-ups/store';
import type { BalanceSync } from '../stripe/sync';
import type { StripeGateway } from '../stripe/gateway';
import type { ActivityRecorder } from './activity';
import { decideEdit, rechargeView } from './auto-recharge';
import { META, settingsOf } from '../recharges/core';
import { pageOrder } from './page-order';

export interface ConsoleDeps {
  config: Config;
  engine: Engine;
  store: Store;
  sync: BalanceSync | undefined;
  emails: EmailSender | undefined;
  metrics: Metrics;
  activity: ActivityRecorder;
  queries: ConsoleQueries;
  /** On a follower replica: the last sweep is the leader's, read from the store (as /health does). */
  followsStoredSweep?: () => boolean;
  /** Stripe, for the console's writes to a customer (auto-recharge settings); absent without STRIPE_SECRET_KEY. */
  gateway?: StripeGateway;
  now?: () => number;
}

export type ApiResult = { status: number; body: unknown } | { status: number; html: string };

const DAY = 86_400_000;
const iso = (t: number | null | undefined) => (t ? new Date(t).toISOString() : null);
const ok = (body: unknown): ApiResult => ({ status: 200, body });
const fail = (status: number, error: string, message: string): ApiResult => ({ status, body: { error, message } });
const EMAIL_STATUSES: EmailStatus[] = ['pending', 'sending', 'delivered', 'failed', 'cancelled', 'stale'];

export function createConsoleApi(deps: ConsoleDeps) {
  const { config, engine, store, activity, queries } = deps;
  const now = deps.now ?? Date.now;
  const testMode = /^(sk|rk)_test_/.test(config.secrets.stripeSecretKey ?? 'sk_test_');
  /** A page of the Stripe Dashboard (test mode's under /test), as "Open in Stripe" links a customer. */
  const dashboard = (kind: string, id: string) => `${config.console?.stripeDashboardUrl ?? 'https://dashboard.stripe.com'}${testMode ? '/test' : ''}/${kind}/${encodeURIComponent(id)}`;
  const stripeLink = (id: string) => dashboard('customers', id);

  /** A top-up with what became of it: its credit's state, what refunds and disputes took back, its payment in Stripe. */
  const topUpJson = (t: TopUpRow, moves: MoveRow[]) => {
    const own = moves.filter((m) => m.topUpId === t.id);
    const credit = own.find((m) => m.kind === 'credit');
    const taken = (kind: MoveRow['kind']) => own.filter((m) => m.kind === kind && m.status !== 'failed').reduce((a, m) => a + m.amount, 0);
    return {
      id: t.id, amount: t.amount, currency: t.currency, formatted: formatMoney(t.amount, t.currency), status: topUpStatus(t, credit),
      refunded: taken('refund'), disputed: taken('dispute'), created_at: iso(t.createdAt), credited_at: iso(credit?.status === 'confirmed' ? credit.confirmedAt : null),
      session_id: t.sessionId, payment_intent: t.paymentIntent, balance_transaction: credit?.stripeRef ?? null, last_error: credit?.lastError ?? null,
      // The payment once Stripe has one (refunds and disputes hang off it there), else the Checkout Session.
      stripe_url: t.paymentIntent ? dashboard('payments', t.paymentIntent) : t.sessionId ? dashboard('checkout/sessions', t.sessionId) : null,
    };
  };
  /** A refund or dispute payg debited (or is debiting) from the customer's balance. */
  const debitJson = (m: MoveRow) => {
    const stripeId = m.ref.slice(m.ref.indexOf(':') + 1);
    return {
      id: m.id, kind: m.kind, stripe_id: stripeId, top_up: m.topUpId, amount: m.amount, currency: m.currency, formatted: formatMoney(m.amount, m.currency),
      status: m.status === 'pending' && m.lastError ? 'retrying' : m.status, attempts: m.attempts, balance_transaction: m.stripeRef, last_error: m.lastError,
      created_at: iso(m.createdAt), confirmed_at: iso(m.confirmedAt), stripe_url: dashboard(m.kind === 'refund' ? 'refunds' : 'disputes', stripeId),
    };
  };

  /** A consumer's spend in one period against its cap (smallest currency unit; cap null: no cap). */
  const periodJson = (p: { spentMicros: number; resetsAt: number }, cap: number | undefined) => ({
    spent: p.spentMicros / MICROS_PER_UNIT, cap: cap ?? null, resets_at: iso(p.resetsAt),
  });

  const summary = (id: string) => {
    const s = engine.customer(id)!;
    return {
      id, name: s.customer.name, email: s.customer.email, currency: s.customer.currency, consumer: s.customer.metadata[config.stripe.consumerMetadataKey] ?? null,
      balance: s.customer.balance, estimated_balance: s.estimatedBalance, unsettled_usage: s.unsettledMicros / MICROS_PER_UNIT,
      cohorts: s.cohorts, blocked: s.decision.outcome === 'block',
    };
  };

  async function overview(): Promise<ApiResult> {
    const sizes = engine.cohortSizes();
    // Sizes per day, rebuilt backwards from now with the recorded transitions.
    const days = 14;
    const today = Math.floor(Date.now() / DAY);
    const [net, emails, settlementCounts, totals] = await Promise.all([queries.cohortNetByDay((today - days + 1) * DAY), queries.emailCounts(), queries.settlementCounts(),
      queries.topUpTotals(today * DAY, (today + 1) * DAY)]);
    // Today (UTC): top-ups credited (or being credited), refunds and disputes debited, with their amounts per currency.
    const topUpsToday = Object.fromEntries((['credit', 'refund', 'dispute'] as const).map((kind) => {
      const rows = totals.filter((r) => r.kind === kind);
      return [kind === 'credit' ? 'top_ups' : `${kind}s`, { count: rows.reduce((a, r) => a + r.count, 0), amounts: Object.fromEntries(rows.map((r) => [r.currency, Math.abs(r.amount)])) }];
    }));
    const history = config.cohorts.map((c) => {
      const byDay = new Map(net.filter((r) => r.cohort === c.id).map((r) => [r.day, r.net]));
      const points: Array<[number, number]> = [];
      let size = sizes.get(c.id) ?? 0;
      for (let d = today; d > today - days; d--) {
        points.unshift([d * DAY, size]); // size at the end of day d (now, for today)
        size -= byDay.get(d) ?? 0;
      }
      return { cohort: c.id, points };
    });
    const stripeErrors = (await deps.metrics.stripeErrors.get()).values.reduce((acc, v) => ({ ...acc, [String(v.labels.status)]: v.value }), {} as Record<string, number>);
    if (deps.followsStoredSweep?.()) await deps.sync?.readStored().catch(() => undefined);
    const lastSweep = deps.sync?.lastSuccessAt;
    // Customers whose estimated balance is positive owe (Stripe balances are negative for credit): how many, and how much per currency.
    let owing = 0;
    const owed: Record<string, number> = {};
    engine.forEachCustomer((c, _cohorts, ledger) => {
      const b = estimatedBalance(ledger);
      if (b <= 0) return;
      owing += 1;
      const cur = c.currency ?? 'usd';
      owed[cur] = (owed[cur] ?? 0) + b;
    });
    return ok({
      customers: engine.size,
      owing: { customers: owing, amounts: owed },
      cohorts: config.cohorts.map((c) => ({ id: c.id, size: sizes.get(c.id) ?? 0 })),
      cohort_history: history,
      blocks_per_minute: activity.perMinute('blocks'),
      would_blocks_per_minute: activity.perMinute('would_blocks'),
      emails,
      settlements: settlementCounts,
      today: { day: iso(today * DAY)!.slice(0, 10), ...topUpsToday },
      last_sweep: { configured: Boolean(deps.sync), at: iso(lastSweep), age_seconds: lastSweep ? Math.round((Date.now() - lastSweep) / 1000) : null },
      stripe_errors: stripeErrors,
      conflicts: engine.conflicts().length,
    });
  }

  function customers(q: URLSearchParams): ApiResult {
    const cohort = q.get('cohort') || undefined;
    if (cohort && !config.cohorts.some((c) => c.id === cohort)) return fail(404, 'not_found', `no cohort ${cohort}`);
    const search = (q.get('q') ?? '').trim().toLowerCase();
    const perPage = Math.min(200, Math.max(1, Number(q.get('per_page')) || 50));
    const page = Math.max(1, Number(q.get('page')) || 1);
    const sort = ['id', 'name', 'estimated_balance'].includes(q.get('sort') ?? '') ? q.get('sort')! : 'estimated_balance';
    const dir = q.get('dir') === 'desc' ? -1 : 1;
    const key = config.stripe.consumerMetadataKey;
    // One pass over memory, reading the engine's entries in place; only the page's rows become objects.
    const match = search ? new RegExp(search.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'), 'i') : undefined;
    const ids: string[] = [];
    const names: string[] = [];
    const balances: number[] = [];
    engine.forEachCustomer((c, cohorts, ledger) => {
      if (cohort && !cohorts.includes(cohort)) return;
      if (match && !(match.test(c.id) || (c.name !== null && match.test(c.name)) || (c.email !== null && match.test(c.email)) || (c.metadata[key] !== undefined && match.test(c.metadata[key])))) return;
      ids.push(c.id); names.push(c.name ?? ''); balances.push(estimatedBalance(ledger));
    });
    const byId = (a: number, b: number) => (ids[a] < ids[b] ? -1 : ids[a] > ids[b] ? 1 : 0);
    const compare = sort === 'id' ? (a: number, b: number) => dir * byId(a, b)
      : sort === 'name' ? (a: number, b: number) => dir * (names[a] < names[b] ? -1 : names[a] > names[b] ? 1 : 0) || byId(a, b)
        : (a: number, b: number) => dir * (balances[a] - balances[b]) || byId(a, b);
    const order = pageOrder(ids.length, compare, (page - 1) * perPage, page * perPage);
    return ok({ cohort: cohort ?? null, total: ids.length, page, per_page: perPage, sort, dir: dir === 1 ? 'asc' : 'desc', customers: order.map((i) => summary(ids[i])) });
  }

  async function customer(id: string): Promise<ApiResult> {
    const s = engine.customer(id);
    if (!s) return fail(404, 'not_found', `no customer ${id} is known; it may not exist in Stripe yet, or the first sweep has not run`);
    const [history, usage, settlementRows, emailRows, topUpRows, moves] = await Promise.all([
      store.history(id), queries.usageByRoute(id, Date.now() - config.metering.keepEventsMs),
      queries.settlements({ customerId: id, limit: 100 }), store.emailLog({ customerId: id, limit: 100 }),
      queries.topUps(id, 100), queries.topUpMoves(id, 1000)]);
    const autoRecharge = await rechargeJson(id, s.customer.metadata);
    const consumer = s.customer.metadata[config.stripe.consumerMetadataKey];
    // The estimated balance over time: cohort transitions (persisted) and samples taken at decisions (in memory), then now.
    const points = [...history.map((t) => [t.at, t.balance] as [number, number]), ...activity.balanceSamples(id)]
      .sort((a, b) => a[0] - b[0]);
    points.push([Date.now(), s.estimatedBalance]);
    return ok({
      ...summary(id),
      metadata: s.customer.metadata,
      updated_at: iso(s.customer.version),
      decision: JSON.parse(s.decision.json),
      decision_outcome: s.decision.outcome,
      stripe_dashboard_url: stripeLink(id),
      balance_history: points,
      transitions: history.slice().reverse().map((t) => ({ cohort: t.cohort, kind: t.kind, at: iso(t.at), balance: t.balance })),
      recent_decisions: activity.recent((d) => d.customerId === id || (consumer !== undefined && d.consumer === consumer), 50)
        .map((d) => ({ at: iso(d.at), consumer: d.consumer, outcome: d.outcome, rule: d.rule, would_block: d.wouldBlock })),
      usage_by_route: usage.map((u) => ({ route: u.route, requests: u.requests, cost: u.costMicros / MICROS_PER_UNIT })),
      settlements: settlementRows.map((r) => settlementJson(r, s.customer.name)),
      emails: emailRows.map(emailJson),
      // Issue 23: each consumer of this customer, its spend this period and its caps (smallest currency unit; null: no cap).
      consumers: engine.consumerCaps(id).map((c) => ({
        consumer: c.consumer,
        daily: periodJson(c.daily, c.limits.daily),
        monthly: periodJson(c.monthly, c.limits.monthly),
        cap_left: c.left.leftMicros === undefined ? null : c.left.leftMicros / MICROS_PER_UNIT,
        binding_period: c.left.period ?? null,
        problems: c.problems,
      })),
      auto_recharge: autoRecharge,
      top_ups: topUpRows.map((t) => topUpJson(t, moves)),
      top_up_debits: moves.filter((m) => m.kind !== 'credit').map(debitJson),
    });
  }

  /** A month's recharges are at most cap / min_amount (a few hundred with the default bounds): all of them are read. */
  const RECHARGE_ROWS = 1000;
  async function rechargeJson(id: string, metadata: Readonly<Record<string, string>>) {
    const [rows, state, moves] = await Promise.all([store.recharges(id, RECHARGE_ROWS), store.rechargeState(id), queries.topUpMoves(id, 1000)]);
    return rechargeView(metadata, config.autoRecharge, rows, state, now(), (pi) => dashboard('payments', pi), moves);
  }

  /**
   * An operator's edit of a customer's auto-recharge: checked with the
   * trigger's bounds, written to the customer's Stripe metadata (nothing is
   * written on bad input), read back into the book at once (as a webhook
   * would), and, switched on while paused, re-armed (as a manual top-up does).
   */
  async function editRecharge(id: string, body: Record<string, unknown> | undefined): Promise<ApiResult> {
    const s = engine.customer(id);
    if (!s) return fail(404, 'not_found', `no customer ${id} is known`);
    if (!config.autoRecharge.enabled) return fail(409, 'auto_recharge_off', 'auto_recharge.enabled is false in the config: nothing would be charged; switch it on there first');
    if (!deps.gateway) return fail(503, 'stripe_not_configured', 'STRIPE_SECRET_KEY is not set: the settings live in Stripe customer metadata and cannot be written');
    const decision = decideEdit(body, s.customer.metadata, config.autoRecharge);
    if (decision.kind === 'refused') return { status: 400, body: { error: 'bad_request', field: decision.field, message: decision.message } };
    // Switching on re-arms: not over a pause, refund or dispute that came after the operator's view was read.
    const asOf = body?.as_of;
    if (decision.enabled && typeof asOf === 'number') {
      const pausedAt = (await store.rechargeState(id)).pausedAt;
      const moneyBack = (await store.moves({ customerId: id })).some((m) => m.kind !== 'credit' && m.createdAt >= asOf);
      if ((pausedAt !== null && pausedAt >= asOf) || moneyBack) {
        return fail(409, 'changed_since_read', 'auto-recharge was paused, or a payment refunded or disputed, after this page was read: reload it and save again if it should still be on');
      }
    }
    let metadata: Record<string, string>;
    try {
      // One key for this save: the gateway's retries of it are answered with the first result.
      const idempotencyKey = `payg-console-recharge-${id}-${randomUUID()}`;
      const updated = await deps.gateway.call((stripe) => stripe.customers.update(id, { metadata: decision.metadata }, { idempotencyKey }));
      metadata = { ...(updated.metadata ?? {}) };
    } catch (err) {
      const status = (err as { statusCode?: number }).statusCode;
      return fail(status === 404 ? 404 : 502, status === 404 ? 'not_found' : 'stripe_error', `Stripe did not save the settings: ${(err as Error).message}`);
    }
    // The change reaches the book as any Stripe customer change does; read now, so the page shows it at once.
    let refreshed = true;
    await deps.sync?.refresh(id).catch(() => { refreshed = false; });
    // Switched on while paused (or anew, from off): armed again with no failures in a row, as after a manual top-up.
    let rearmed = false;
    const wasOn = s.customer.metadata[META.enabled] === 'on';
    if (decision.enabled && (!wasOn || (await store.rechargeState(id)).pausedAt !== null)) rearmed = await store.rearmRecharges(id, now());
    // On, with the credit already below the threshold: no crossing is coming, so the save plans one now, decided
    // in the store's transaction as a crossing is (never past the cap, the interval, while paused or one is open).
    let planned = false;
    if (decision.enabled) planned = await planIfBelow(id, metadata);
    return ok({ ...(await rechargeJson(id, metadata)), rearmed, planned, refreshed: Boolean(deps.sync) && refreshed });
  }

  async function planIfBelow(id: string, metadata: Readonly<Record<string, string>>): Promise<boolean> {
    const held = engine.customer(id);
    const read = settingsOf(metadata, config.autoRecharge);
    const currency = (held?.customer.currency ?? config.topUp.checkout?.defaultCurrency)?.toLowerCase();
    if (!held || read.kind !== 'on' || !currency || -held.estimatedBalance >= read.settings.threshold) return false;
    const at = now();
    await store.saveChanges({ upserts: [], deletes: [], transitions: [], recharges: [{ customerId: id, currency, settings: read.settings, at, minIntervalMs: config.autoRecharge.minIntervalMs }] });
    const [latest] = await store.recharges(id, 1);
    const planned = latest !== undefined && latest.status === 'planned' && latest.createdAt >= at;
    if (planned) engine.onRechargeCrossings();
    return planned;
  }

  function rules(): ApiResult {
    const sizes = engine.cohortSizes();
    const blocked = new Map<string, number>();
    // Block answers are shared per rendered body, so each distinct answer is parsed once.
    const ruleOf = new Map<DecisionAnswer, string>();
    engine.forEachCustomer((_c, _cohorts, _ledger, d) => {
      if (d.outcome !== 'block') return;
      let rule = ruleOf.get(d);
      if (rule === undefined) { rule = JSON.parse(d.json).rule as string; ruleOf.set(d, rule); }
      blocked.set(rule, (blocked.get(rule) ?? 0) + 1);
    });
    return ok({ rules: engine.rules().map(({ rule, enabled }) => ({
      id: rule.id, cohort: rule.cohort ?? null, limit: rule.limit ?? null, enabled, log_only: rule.logOnly, status: rule.status,
      cohort_size: rule.cohort === undefined ? 0 : sizes.get(rule.cohort) ?? 0, blocking_now: blocked.get(rule.id) ?? 0,
    })) });
  }

  /** Who the rule would block now if it were on (and, for a log-only rule, who it reports). */
  function rulePreview(ruleId: string, q: URLSearchParams): ApiResult {
    const current = engine.rules();
    const target = current.find((r) => r.rule.id === ruleId);
    if (!target) return fail(404, 'not_found', `no rule ${ruleId}`);
    const enabled = new Map(current.map(({ rule, enabled: on }) => [rule.id, on]));
    const limit = Math.min(500, Math.max(1, Number(q.get('limit')) || 50));
    const hit: string[] = [];
    let newly = 0;
    for (const id of engine.knownIds()) {
      const s = engine.customer(id)!;
      if (target.rule.cohort === undefined || !s.cohorts.includes(target.rule.cohort)) continue;
      const v = verdict(config.rules, s.cohorts, (r) => (r.id === ruleId ? true : enabled.get(r.id) ?? r.enabled));
      const caught = target.rule.logOnly ? v.wouldBlock.includes(ruleId) : v.outcome === 'BLOCK' && v.rule.id === ruleId;
      if (!caught) continue;
      hit.push(id);
      if (s.decision.outcome !== 'block') newly++;
    }
    return ok({
      rule: ruleId, enabled: target.enabled, log_only: target.rule.logOnly, would_block: hit.length, newly_blocked: target.rule.logOnly ? 0 : newly,
      customers: hit.slice(0, limit).map(summary),
    });
  }

  async function emailTemplates(): Promise<ApiResult> {
    return ok({ smtp: Boolean(deps.emails), templates: config.emails.map((t) => ({
      id: t.id, active: engine.isTemplateActive(t.id), from: t.from, has_html: Boolean(t.html), has_text: Boolean(t.text),
      trigger: t.trigger.kind === 'cohort' ? `${t.trigger.on === 'enter' ? 'enters' : 'leaves'} ${t.trigger.cohort}` : t.trigger.kind === 'auto_recharge' ? `auto-recharge ${t.trigger.event.replace('_', ' ')}` : `credit below ${t.trigger.belowCents.map((c) => formatMoney(c, 'usd')).join(', ')}`,
      reenroll_after_ms: t.reenrollAfterMs ?? null,
    })) });
  }

  /** Merge-tag values: the chosen customer's real ones (as the workflow sees them), else sample data. */
  function contextFor(templateId: string, customerId: string | null): EmailMergeContext | ApiResult {
    const t = config.emails.find((e) => e.id === templateId)!;
    let c = SAMPLE_CUSTOMER;
    if (customerId) {
      const s = engine.customer(customerId);
      if (!s) return fail(404, 'not_found', `no customer ${customerId}`);
      c = { ...s.customer, balance: s.estimatedBalance };
    }
    const cents = t.trigger.kind === 'low_balance' ? t.trigger.belowCents[t.trigger.belowCents.length - 1] : 1000;
    return { ...mergeContext(c, config.topUp), threshold: { cents, formatted: formatMoney(cents, c.currency) }, recharge: SAMPLE_RECHARGE };
  }

  function emailPreview(id: string, q: URLSearchParams, asHtml: boolean): ApiResult {
    const t = config.emails.find((e) => e.id === id);
    if (!t) return fail(404, 'not_found', `no email template ${id}`);
    const ctx = contextFor(id, q.get('customer') || null);
    if ('status' in ctx) return ctx;
    if (asHtml) return { status: 200, html: t.html ? t.html(ctx) : '<p style="font-family:sans-serif;color:#666">This template has no HTML part; see the text part.</p>' };
    return ok({ subject: t.subject(ctx), html: t.html ? t.html(ctx) : null, text: t.text ? t.text(ctx) : null, from: t.from, sample: !q.get('customer') });
  }

  async function testSend(id: string, body: Record<string, unknown> | undefined): Promise<ApiResult> {
    if (!config.emails.some((e) => e.id === id)) return fail(404, 'not_found', `no email template ${id}`);
    if (!deps.emails) return fail(503, 'smtp_not_configured', 'SMTP_URL is not set, so test emails cannot be sent');
    const to = body?.to;
    if (typeof to !== 'string' || !/^[^@\s]+@[^@\s]+$/.test(to)) return fail(400, 'bad_request', 'to: enter an email address');
    const customerId = typeof body?.customer_id === 'string' && body.customer_id ? body.customer_id : null;
    const ctx = contextFor(id, customerId);
    if ('status' in ctx) return ctx;
    try {
      const sent = await deps.emails.sendTest(id, to, ctx);
      return ok({ sent: true, message_id: sent.messageId, smtp_response: sent.response });
    } catch (err) {
      return fail(502, 'smtp_error', (err as Error).message);
    }
  }

  async function emailLog(q: URLSearchParams): Promise<ApiResult> {
    const status = q.get('status') || undefined;
    if (status && !EMAIL_STATUSES.includes(status as EmailStatus)) return fail(400, 'bad_request', `status: one of ${EMAIL_STATUSES.join(', ')}`);
    const rows = await store.emailLog({ templateId: q.get('template') || undefined, customerId: q.get('customer') || undefined, status: status as EmailStatus | undefined, limit: 200 });
    return ok({ emails: rows.map(emailJson) });
  }

  async function settlements(q: URLSearchParams): Promise<ApiResult> {
    const status = q.get('status') || undefined;
    if (status && !(SETTLEMENT_VIEWS as readonly string[]).includes(status)) return fail(400, 'bad_request', `status: one of ${SETTLEMENT_VIEWS.join(', ')}`);
    const [rows, counts] = await Promise.all([
      queries.settlements({ status: status as SettlementView | undefined, customerId: q.get('customer') || undefined, limit: 500 }), queries.settlementCounts()]);
    return ok({ counts, settlements: rows.map((r) => settlementJson(r, engine.customer(r.customerId)?.customer.name ?? null)) });
  }

  /** Routes one API call; `parts` is the path after /console/api/. */
  return async function handle(method: string, parts: string[], query: URLSearchParams, body: () => Promise<Record<string, unknown> | undefined>): Promise<ApiResult> {
    const [resource, id, sub] = parts;
    if (method === 'GET') {
      if (resource === 'overview' && !id) return overview();
      if (resource === 'cohorts' && !id) return ok({ cohorts: config.cohorts.map((c) => ({ id: c.id, filter: c.filter, size: engine.cohortSizes().get(c.id) ?? 0 })) });
      if (resource === 'customers' && !id) return customers(query);
      if (resource === 'customers' && id && !sub) return customer(id);
      if (resource === 'rules' && !id) return rules();
      if (resource === 'rules' && id && sub === 'preview') return rulePreview(id, query);
      if (resource === 'emails' && !id) return emailTemplates();
      if (resource === 'emails' && id === 'log') return emailLog(query);
      if (resource === 'emails' && id && sub === 'preview') return emailPreview(id, query, false);
      if (resource === 'emails' && id && sub === 'preview.html') return emailPreview(id, query, true);
      if (resource === 'settlements' && !id) return settlements(query);
    }
    if (method === 'PUT' && resource === 'rules' && id && !sub) {
      const enabled = (await body())?.enabled;
      if (typeof enabled !== 'boolean') return fail(400, 'bad_request', 'enabled: true or false');
      if (!(await engine.setRuleEnabled(id, enabled))) return fail(404, 'not_found', `no rule ${id}`);
      return ok({ id, enabled });
    }
    if (method === 'PUT' && resource === 'emails' && id && !sub) {
      const active = (await body())?.active;
      if (typeof active !== 'boolean') return fail(400, 'bad_request', 'active: true or false');
      if (!(await engine.setTemplateActive(id, active))) return fail(404, 'not_found', `no email template ${id}`);
      return ok({ id, active });
    }
    if (method === 'POST' && resource === 'emails' && id && sub === 'test') return testSend(id, await body());
    if (method === 'PUT' && resource === 'customers' && id && sub === 'auto-recharge' && parts.length === 3) return editRecharge(id, await body());
    return fail(404, 'not_found', 'no such console API');
  };
}

/**
 * Where a top-up stands: `credited` (Stripe confirmed the credit), `crediting` (paid, the credit
 * written and being sent), `failed` (Stripe refused the credit for good), `open` (a Checkout
 * Session, no payment seen: unpaid, abandoned or expired) or `not_started` (no session yet).
 */
function topUpStatus(t: TopUpRow, credit: MoveRow | undefined): string {
  if (credit) return credit.status === 'confirmed' ? 'credited' : credit.status === 'failed' ? 'failed' : 'crediting';
  return t.sessionId ? 'open' : 'not_started';
}

function settlementJson(r: Awaited<ReturnType<Store['settlements']>>[number], customerName: string | null) {
  return {
    id: r.id, customer: r.customerId, customer_name: customerName, amount: r.amount, currency: r.currency, formatted: formatMoney(r.amount, r.currency), mode: r.mode,
    status: settlementView(r), attempts: r.attempts, stripe_ref: r.stripeRef, idempotency_key: r.idempotencyKey,
    last_error: r.lastError, created_at: iso(r.createdAt), confirmed_at: iso(r.confirmedAt),
  };
}

function emailJson(r: Awaited<ReturnType<Store['emailLog']>>[number]) {
  return {
    id: r.id, template: r.templateId, customer: r.customerId, to: r.to, status: r.status, attempts: r.attempts,
    created_at: iso(r.createdAt), delivered_at: iso(r.deliveredAt), last_error: r.lastError, message_id: r.messageId,
  };
}

export type ConsoleApi = ReturnType<typeof createConsoleApi>;
