// Auto-recharge at the edges (the leader only, like settlement and emails):
// charges each planned recharge with an off-session, confirmed PaymentIntent
// on the customer's saved default payment method, under the recharge's
// idempotency key; credits a success through the top-ups money outbox
// (idempotent by PaymentIntent id); mails failures and pauses; re-arms a
// paused customer after a manual top-up. What is decided lives in core.ts.

import type Stripe from 'stripe';
import type { Logger } from 'pino';
import type { Engine } from '../engine';
import type { Store, OutboxRecord } from '../store/store';
import type { StripeGateway } from '../stripe/gateway';
import type { TopUps } from '../top-ups/service';
import type { EmailTemplate } from '../emails/templates';
import { mergeContext, type EmailMergeContext, type TopUpConfig } from '../merge-tags';
import { formatMoney } from '../customer';
import { META_TOP_UP, type MoveIntent } from '../top-ups/core';
import { failuresReason, outcomeOfError, outcomeOfIntent, pauseReason, rechargeKey, settingsOf, type ChargeOutcome, type RechargeOptions } from './core';
import type { RechargeRow } from './store';
import { completeOptIns } from './opt-in';

export interface RechargerDeps {
  options: RechargeOptions;
  store: Store;
  gateway: StripeGateway;
  topUps: TopUps;
  engine: Engine;
  emails: readonly EmailTemplate[];
  topUp: TopUpConfig;
  log: Logger;
  isLeader: () => boolean;
  now?: () => number;
}

export const META_RECHARGE = 'payg_recharge';

/** The credit of a succeeded recharge: the top-ups outbox row, unique by PaymentIntent (`credit:<pi>`). */
export function rechargeCreditIntent(row: RechargeRow, paymentIntent: string): MoveIntent {
  return {
    ref: `credit:${paymentIntent}`, kind: 'credit', topUpId: row.id, customerId: row.customerId, amount: -row.amount, currency: row.currency,
    idempotencyKey: `payg-top-up-${paymentIntent}`, description: 'API credit auto-recharge',
    metadata: { [META_TOP_UP]: paymentIntent, payg_top_up_id: row.id, [META_RECHARGE]: row.id },
  };
}

const idOf = (v: string | { id: string } | null | undefined): string | null => (v == null ? null : typeof v === 'string' ? v : v.id);

export class Recharger {
  private running: Promise<void> | undefined;
  private again = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly now: () => number;
  /** Called with each credited recharge (bench:recharges): the recharge and when its credit was confirmed. */
  onCredited: (row: RechargeRow, at: number) => void = () => undefined;

  constructor(private readonly deps: RechargerDeps) {
    this.now = deps.now ?? Date.now;
    // Refunds and disputes pause auto-recharge with their debit (top-ups/service.ts): on for the customer → paused, told.
    deps.topUps.rechargePauses = {
      armed: (customerId) => {
        const held = deps.engine.customer(customerId);
        // On, or on with a value out of bounds (nothing charged until the operator fixes it, and then it must stay paused).
        return held !== undefined && settingsOf(held.customer.metadata, deps.options).kind !== 'off';
      },
      paused: (p) => this.pausedBy(p),
    };
  }

  /** The `paused` email of a pause by a refund or dispute, keyed by it (once however often its event comes), if paused indeed. */
  private async pausedBy(p: { customerId: string; kind: 'refund' | 'dispute'; id: string; currency: string; amount: number }): Promise<void> {
    const state = await this.deps.store.rechargeState(p.customerId);
    if (state.pausedAt === null) return;
    this.deps.log.warn({ customer: p.customerId, [p.kind]: p.id }, `auto-recharge paused by a ${p.kind}: a manual top-up or the operator switching it on re-arms it`);
    await this.mailTo(p.customerId, 'paused', `${p.kind}:${p.id}`, { amount: p.amount, currency: p.currency }, pauseReason(p.kind), state.failures);
  }

  start(): void {
    this.timer ??= setInterval(() => this.wake(), this.deps.options.pollIntervalMs);
    this.timer.unref();
    this.wake();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** A crossing was committed, or the poll ticked: one pass at a time, another right after if asked meanwhile. */
  wake(): void {
    if (!this.deps.isLeader()) return;
    if (this.running) { this.again = true; return; }
    this.running = this.pass().catch((err) => this.deps.log.error({ err: (err as Error).message }, 'auto-recharge pass failed')).finally(() => {
      this.running = undefined;
      if (this.again) { this.again = false; this.wake(); }
    });
  }

  /** Runs passes until nothing is left due now (for tests and the bench). */
  async drain(): Promise<void> {
    while (this.running) await this.running;
  }

  async pass(): Promise<void> {
    await completeOptIns(this.deps.gateway, this.deps.store, this.deps.log).catch((err) => this.deps.log.warn({ err: (err as Error).message }, 'applying auto-recharge opt-ins failed; tried again on the next pass'));
    await this.rearmPass();
    const due = await this.deps.store.dueRecharges(this.now());
    // Customers are independent: a few at a time, each customer's one open recharge in turn.
    const queue = [...due];
    const worker = async () => { for (let row = queue.shift(); row; row = queue.shift()) await this.charge(row); };
    await Promise.all(Array.from({ length: Math.min(8, queue.length) }, worker));
  }

  /** A paused customer whose manual top-up was credited after the pause is armed again. */
  private async rearmPass(): Promise<void> {
    for (const p of await this.deps.store.pausedRecharges()) {
      const moves = await this.deps.store.moves({ customerId: p.customerId });
      const manual = moves.find((m) => m.kind === 'credit' && m.status === 'confirmed' && !m.topUpId.startsWith('ar_') && (m.confirmedAt ?? 0) >= p.pausedAt);
      if (manual && await this.deps.store.rearmRecharges(p.customerId, this.now())) {
        this.deps.log.info({ customer: p.customerId, topUp: manual.topUpId }, 'auto-recharge re-armed by a manual top-up');
      }
    }
  }

  /** One attempt at one recharge; whatever Stripe answers (or not) leaves the row in a state the next pass carries on from. */
  async charge(row: RechargeRow): Promise<ChargeOutcome | undefined> {
    // Planned before a pause (a refund or dispute committed since) and never sent: dropped, nothing charged.
    // One already sent (attempts > 0) goes on under its key: it may have been charged, and must then be credited.
    if (row.status === 'planned' && row.attempts === 0 && (await this.deps.store.rechargeState(row.customerId)).pausedAt !== null) {
      await this.deps.store.finishRecharge(row.id, { status: 'failed', paymentIntent: null, failureCode: 'paused', error: 'auto-recharge paused before it was charged', at: this.now() }, this.deps.options.maxConsecutiveFailures);
      this.deps.log.info({ customer: row.customerId, recharge: row.id }, 'auto-recharge paused: a planned recharge dropped, nothing charged');
      return undefined;
    }
    let outcome: ChargeOutcome;
    try {
      outcome = row.status === 'processing' && row.paymentIntent ? await this.poll(row.paymentIntent) : await this.confirm(row);
    } catch (err) {
      outcome = outcomeOfError(err as Parameters<typeof outcomeOfError>[0]);
    }
    await this.settle(row, outcome);
    return outcome;
  }

  private async poll(paymentIntent: string): Promise<ChargeOutcome> {
    return outcomeOfIntent(await this.deps.gateway.call((s) => s.paymentIntents.retrieve(paymentIntent)) as Stripe.PaymentIntent & { last_payment_error: { code?: string; message?: string } | null });
  }

  /**
   * A PaymentIntent an earlier attempt made for this recharge, found by its
   * metadata among the customer's: an answer lost, then a wait past the 24
   * hours Stripe keeps an idempotency key, must not charge a second time.
   */
  private async findIntent(row: RechargeRow): Promise<Stripe.PaymentIntent | undefined> {
    const since = Math.floor(row.createdAt / 1000) - 300;
    let after: string | undefined;
    for (let page = 0; page < 10; page++) {
      const list = await this.deps.gateway.call((s) => s.paymentIntents.list({ customer: row.customerId, created: { gte: since }, limit: 100, ...(after ? { starting_after: after } : {}) }));
      const found = list.data.find((p) => p.metadata?.[META_RECHARGE] === row.id);
      if (found) return found;
      if (!list.has_more || !list.data.length) return undefined;
      after = list.data.at(-1)!.id;
    }
    return undefined;
  }

  private async confirm(row: RechargeRow): Promise<ChargeOutcome> {
    if (row.attempts > 0) {
      const earlier = await this.findIntent(row);
      if (earlier) return outcomeOfIntent(earlier as Stripe.PaymentIntent & { last_payment_error: { code?: string; message?: string } | null });
    }
    let pm = row.paymentMethod;
    if (!pm) {
      const customer = await this.deps.gateway.call((s) => s.customers.retrieve(row.customerId));
      const saved = 'deleted' in customer && customer.deleted ? null : idOf((customer as Stripe.Customer).invoice_settings?.default_payment_method as string | null);
      if (!saved) return { kind: 'declined', code: 'no_payment_method', message: 'No saved payment method: the card to charge is not on file.', paymentIntent: null };
      // Fixed before the first request: every retry under the key sends the same parameters.
      pm = await this.deps.store.fixRechargePaymentMethod(row.id, saved);
    }
    const pi = await this.deps.gateway.call((s) => s.paymentIntents.create({
      amount: row.amount, currency: row.currency, customer: row.customerId, payment_method: pm!, off_session: true, confirm: true,
      description: 'API credit auto-recharge', metadata: { [META_RECHARGE]: row.id, payg_customer: row.customerId },
    }, { idempotencyKey: rechargeKey(row.id) }));
    return outcomeOfIntent(pi as Stripe.PaymentIntent & { last_payment_error: { code?: string; message?: string } | null });
  }

  private async settle(row: RechargeRow, outcome: ChargeOutcome): Promise<void> {
    const { store, log, options } = this.deps;
    const at = this.now();
    switch (outcome.kind) {
      case 'retry':
        await store.rechargeAttemptFailed(row.id, outcome.why);
        log.warn({ customer: row.customerId, recharge: row.id, err: outcome.why }, 'auto-recharge not answered; sent again with the same idempotency key');
        return;
      case 'processing':
        await store.rechargeProcessing(row.id, outcome.paymentIntent);
        return;
      case 'succeeded': {
        // The credit first (unique by PaymentIntent): a crash after it charges nothing twice, the replay finds it.
        const { row: move, created } = await store.enqueueMove(rechargeCreditIntent(row, outcome.paymentIntent), at);
        await store.finishRecharge(row.id, { status: 'succeeded', paymentIntent: outcome.paymentIntent, at }, options.maxConsecutiveFailures);
        if (created || move.status === 'pending') await this.deps.topUps.send(move);
        const after = (await store.moves({ customerId: row.customerId })).find((m) => m.id === move.id);
        if (after?.status === 'confirmed') this.onCredited(row, this.now());
        log.info({ customer: row.customerId, recharge: row.id, amount: row.amount, paymentIntent: outcome.paymentIntent }, 'auto-recharge charged and credited');
        return;
      }
      case 'declined':
      case 'action_required': {
        const state = await store.rechargeState(row.customerId);
        const failures = state.failures + 1;
        const pauses = state.pausedAt === null && failures >= options.maxConsecutiveFailures;
        const reason = outcome.kind === 'action_required' ? 'Your bank asks you to confirm this payment.' : outcome.message;
        // The emails first, keyed by the recharge: a crash before the row is finished sends them once all the same.
        await this.mail(row, outcome.kind === 'action_required' ? 'action_required' : 'failed', reason, failures);
        if (pauses) await this.mail(row, 'paused', failuresReason(failures, reason), failures);
        await store.finishRecharge(row.id, {
          status: outcome.kind === 'action_required' ? 'action_required' : 'failed', paymentIntent: outcome.paymentIntent,
          failureCode: outcome.code, error: outcome.kind === 'declined' ? outcome.message : undefined, at,
        }, options.maxConsecutiveFailures);
        log.warn({ customer: row.customerId, recharge: row.id, code: outcome.code, failures, paused: pauses }, 'auto-recharge failed');
      }
    }
  }

  private mail(row: RechargeRow, event: 'failed' | 'action_required' | 'paused', reason: string, failures: number): Promise<void> {
    return this.mailTo(row.customerId, event, `recharge:${row.id}`, row, reason, failures);
  }

  /** Writes the customer's `auto_recharge: <event>` emails to the outbox, keyed by `key` (each goes out once). */
  private async mailTo(customerId: string, event: 'failed' | 'action_required' | 'paused', key: string, money: { amount: number; currency: string }, reason: string, failures: number): Promise<void> {
    const held = this.deps.engine.customer(customerId);
    if (!held?.customer.email) return;
    const templates = this.deps.emails.filter((t) => t.trigger.kind === 'auto_recharge' && t.trigger.event === event && this.deps.engine.isTemplateActive(t.id));
    if (!templates.length) return;
    const view = { ...held.customer, balance: held.estimatedBalance };
    const context: EmailMergeContext = {
      ...mergeContext(view, this.deps.topUp),
      recharge: { amount: formatMoney(money.amount, money.currency), cents: money.amount, reason, failures, max_failures: this.deps.options.maxConsecutiveFailures },
    };
    const records: OutboxRecord[] = templates.map((t) => ({
      dedupeKey: `${t.id}|${customerId}|${key}`, templateId: t.id, customerId, to: held.customer.email!,
      context: JSON.stringify(context), createdAt: this.now(),
    }));
    if (await this.deps.store.enqueueEmails(records)) this.deps.engine.onEmailsEnqueued();
  }
}
