// Top-ups at the edges: creates Checkout Sessions, turns Stripe's events into
// credits and debits through the money outbox, sends them with their
// idempotency keys and recovers the ones in flight after a crash. What is
// decided lives in core.ts; this carries it out.

import type Stripe from 'stripe';
import type { Logger } from 'pino';
import type { Engine } from '../engine';
import type { Store } from '../store/store';
import { isPermanentRefusal, type StripeGateway } from '../stripe/gateway';
import type { BalanceSync } from '../stripe/sync';
import type { TopUpSettings } from '../config';
import { creditIntent, debitFor, debitIntent, decideCredit, META_TOP_UP, type CheckoutOptions, type SessionRead } from './core';
import { META_RECHARGE } from '../recharges/service';
import type { MoveRow, TopUpRow } from './store';

export const TOP_UP_EVENTS = new Set(['checkout.session.completed', 'checkout.session.async_payment_succeeded', 'charge.refunded', 'charge.dispute.created']);

export type EventOutcome = 'applied' | 'ignored' | 'refused';

const idOf = (v: string | { id: string } | null | undefined): string | null => (v == null ? null : typeof v === 'string' ? v : v.id);

export function sessionRead(s: Stripe.Checkout.Session): SessionRead {
  return {
    id: s.id, mode: s.mode, status: s.status, paymentStatus: s.payment_status, customer: idOf(s.customer as string | Stripe.Customer | null),
    currency: s.currency, amountSubtotal: s.amount_subtotal, amountTotal: s.amount_total,
    topUpId: s.metadata?.payg_top_up_id, paymentIntent: idOf(s.payment_intent as string | Stripe.PaymentIntent | null),
  };
}

export interface TopUpsDeps {
  settings: TopUpSettings & { checkout: CheckoutOptions };
  secret: string;
  gateway: StripeGateway;
  engine: Engine;
  store: Store;
  sync: BalanceSync;
  log: Logger;
  now?: () => number;
}

/** What a refunded or disputed charge paid for: a top-up, or an auto-recharge (`recharge`); `amount` is what it credited. */
interface Paid { topUpId: string; customerId: string; amount: number; currency: string; ref: string; recharge?: string }

function recharged(metadata: Record<string, string>, recharge: string, paymentIntent: string): Record<string, string> {
  const { [`${META_TOP_UP}_session`]: _session, ...rest } = metadata;
  return { ...rest, [META_RECHARGE]: recharge, payg_recharge_payment_intent: paymentIntent };
}

/**
 * Auto-recharge's part in a refund or dispute (set by the Recharger when
 * auto-recharge is on): whether the customer is armed (then the debit pauses
 * it, in the debit's transaction), and telling them once it is paused.
 */
export interface RechargePauses {
  armed(customerId: string): boolean;
  paused(p: { customerId: string; kind: 'refund' | 'dispute'; id: string; currency: string; amount: number }): Promise<void>;
}

export class TopUps {
  private readonly inFlight = new Set<number>();
  /** Rows sent here whose customer is being read back (the credit after them not known yet). */
  /** Moves confirmed whose customer is being read back from Stripe (the book shows their credit once done). */
  private readonly readingBack = new Map<number, Promise<void>>();
  /** Auto-recharge's hook (recharges/service.ts); none when auto-recharge is off. */
  rechargePauses: RechargePauses | undefined;
  private resending: Promise<number> | undefined;
  readonly now: () => number;

  constructor(readonly deps: TopUpsDeps) {
    this.now = deps.now ?? Date.now;
  }

  get checkout(): CheckoutOptions { return this.deps.settings.checkout; }

  /** Creates (or, asked again for the same top-up, gets back) the Checkout Session of a recorded top-up. */
  async createSession(row: TopUpRow, token: string): Promise<{ id: string; url: string | null }> {
    const c = this.checkout;
    const base = `${c.publicUrl}/top-up/${token}`;
    const params: Stripe.Checkout.SessionCreateParams = {
      mode: 'payment',
      customer: row.customerId,
      line_items: [{ quantity: 1, price_data: { currency: row.currency, unit_amount: row.amount, product_data: { name: c.productName }, ...(c.automaticTax ? { tax_behavior: 'exclusive' as const } : {}) } }],
      success_url: `${base}/done/${row.id}`,
      cancel_url: `${base}/cancel`,
      metadata: { payg_top_up_id: row.id, payg_customer: row.customerId },
      payment_intent_data: { metadata: { payg_top_up_id: row.id } },
      ...(c.invoiceCreation ? { invoice_creation: { enabled: true } } : {}),
      ...(c.automaticTax ? { automatic_tax: { enabled: true }, customer_update: { address: 'auto' as const } } : {}),
    };
    for (let attempt = 1; ; attempt++) {
      try {
        const s = await this.deps.gateway.call((stripe) => stripe.checkout.sessions.create(params, { idempotencyKey: `payg-top-up-session-${row.id}` }));
        await this.deps.store.setTopUpSession(row.id, s.id, s.url);
        return { id: s.id, url: s.url };
      } catch (err) {
        // The same form submitted twice at once: Stripe answers 409 while the first request runs; its answer is replayed after.
        if ((err as { statusCode?: number }).statusCode !== 409 || attempt >= 10) throw err;
        await new Promise((r) => setTimeout(r, 100 * attempt));
        const held = await this.deps.store.topUp(row.id);
        if (held?.sessionId) return { id: held.sessionId, url: held.sessionUrl };
      }
    }
  }

  /** A verified webhook event of ours (TOP_UP_EVENTS): everything in it is read again from Stripe. */
  async applyEvent(event: Stripe.Event): Promise<EventOutcome> {
    const object = event.data.object as { id?: string };
    if (typeof object.id !== 'string') return 'ignored';
    switch (event.type) {
      case 'checkout.session.completed':
      case 'checkout.session.async_payment_succeeded':
        return (await this.creditSession(object.id)).outcome;
      case 'charge.refunded':
        return this.chargeRefunded(object.id);
      case 'charge.dispute.created':
        if (!this.deps.settings.debitDisputes) return 'ignored';
        return this.disputeCreated(object.id);
      default:
        return 'ignored';
    }
  }

  /**
   * Credits a paid session of one of our top-ups, once: the session is read
   * from Stripe, checked against the top-up we recorded, and its credit written
   * to the outbox (unique by session) before it is sent.
   */
  async creditSession(sessionId: string): Promise<{ outcome: EventOutcome; why?: string }> {
    const session = await this.deps.gateway.call((s) => s.checkout.sessions.retrieve(sessionId));
    const read = sessionRead(session);
    const record = read.topUpId ? await this.deps.store.topUp(read.topUpId) : undefined;
    const decision = decideCredit(read, record);
    // A session of the operator's other Checkout flows (no payg metadata) is none of ours: ignored without a warning.
    if (!read.topUpId) return { outcome: 'ignored', why: decision.kind === 'refuse' ? decision.why : undefined };
    if (decision.kind === 'refuse') {
      this.deps.log.warn({ session: sessionId, why: decision.why }, 'top-up refused: nothing credited');
      return { outcome: 'refused', why: decision.why };
    }
    if (decision.kind === 'wait') return { outcome: 'ignored', why: decision.why };
    if (!record!.sessionId) await this.deps.store.setTopUpSession(record!.id, session.id, null);
    if (read.paymentIntent) await this.deps.store.setTopUpPaymentIntent(record!.id, read.paymentIntent);
    const { row, created } = await this.deps.store.enqueueMove(creditIntent(session.id, record!.id, decision.customerId, decision.amount, decision.currency), this.now());
    // Whoever wrote the row sends it; a row left pending by a process that died is sent by the leader's resend pass.
    if (created) await this.send(row);
    return { outcome: 'applied' };
  }

  /**
   * What a charge paid for, if it is ours: a top-up (by the PaymentIntent we
   * recorded, else by asking Stripe for its session), or an auto-recharge (its
   * PaymentIntent's `payg_recharge` metadata naming a recharge of ours, of that
   * customer, for that amount). `ref` names the payment in the debits' metadata.
   */
  private async paidByCharge(charge: Stripe.Charge): Promise<Paid | undefined> {
    const pi = idOf(charge.payment_intent as string | Stripe.PaymentIntent | null);
    if (!pi) return undefined;
    const chargeCustomer = idOf(charge.customer as string | null);
    let topUp = await this.deps.store.topUpByPaymentIntent(pi);
    if (!topUp) {
      // Not a payment we recorded: its PaymentIntent's metadata says whose it is (ours carry payg_top_up_id or payg_recharge).
      const intent = await this.deps.gateway.call((s) => s.paymentIntents.retrieve(pi));
      if (intent.metadata?.[META_RECHARGE]) {
        const recharge = await this.rechargeOfIntent(intent);
        return recharge && (chargeCustomer === null || chargeCustomer === recharge.customerId) ? recharge : undefined;
      }
      if (!intent.metadata?.payg_top_up_id) return undefined;
    }
    if (!topUp || !topUp.sessionId) {
      const list = await this.deps.gateway.call((s) => s.checkout.sessions.list({ payment_intent: pi, limit: 1 }));
      const session = list.data[0];
      const id = session?.metadata?.payg_top_up_id;
      const record = id ? await this.deps.store.topUp(id) : undefined;
      // Only a session of ours, of that top-up's customer, ties a charge to a top-up.
      if (!session || !record || idOf(session.customer as string | null) !== record.customerId || (record.sessionId && record.sessionId !== session.id)) return undefined;
      if (!record.sessionId) await this.deps.store.setTopUpSession(record.id, session.id, null);
      await this.deps.store.setTopUpPaymentIntent(record.id, pi);
      topUp = { ...record, sessionId: session.id, paymentIntent: pi };
    }
    if (chargeCustomer !== null && chargeCustomer !== topUp.customerId) return undefined;
    return { topUpId: topUp.id, customerId: topUp.customerId, amount: topUp.amount, currency: topUp.currency, ref: topUp.sessionId! };
  }

  /**
   * The auto-recharge a PaymentIntent paid, read from Stripe (never from an
   * event's payload): its `payg_recharge` metadata must name a recharge we
   * planned, of the PaymentIntent's customer, amount and currency, and that
   * PaymentIntent when the recharge recorded one.
   */
  private async rechargeOfIntent(intent: Stripe.PaymentIntent): Promise<Paid | undefined> {
    const pi = intent.id;
    const id = intent.metadata?.[META_RECHARGE];
    if (!id) return undefined;
    const row = await this.deps.store.recharge(id);
    const customer = idOf(intent.customer as string | null);
    if (!row || row.customerId !== customer || row.amount !== intent.amount || row.currency !== intent.currency || (row.paymentIntent !== null && row.paymentIntent !== pi)) {
      this.deps.log.warn({ paymentIntent: pi, recharge: id }, 'a payment naming a recharge payg did not make (or of another customer or amount): its refund or dispute is not debited');
      return undefined;
    }
    return { topUpId: row.id, customerId: row.customerId, amount: row.amount, currency: row.currency, ref: pi, recharge: row.id };
  }

  /** Debits what each refund of a top-up's charge took back, once per refund. */
  private async chargeRefunded(chargeId: string): Promise<EventOutcome> {
    const charge = await this.deps.gateway.call((s) => s.charges.retrieve(chargeId));
    const of = await this.paidByCharge(charge);
    if (!of) return 'ignored';
    const refunds: Stripe.Refund[] = [];
    for (let after: string | undefined; ;) {
      const page = await this.deps.gateway.call((s) => s.refunds.list({ charge: chargeId, limit: 100, ...(after ? { starting_after: after } : {}) }));
      refunds.push(...page.data);
      if (!page.has_more || !page.data.length) break;
      after = page.data.at(-1)!.id;
    }
    // Oldest first, so the cap (never more than was credited) falls on the latest.
    refunds.sort((a, b) => a.created - b.created || a.id.localeCompare(b.id));
    let any = false;
    // Each refund's debit is what the running total of refunds comes to, less what earlier ones debited.
    // The total starts from the refunds already debited (in whatever order they came), then adds new ones
    // oldest first: refunds made in one second have no order of their own.
    const counted = refunds.filter((r) => r.status === 'succeeded' || r.status === 'pending');
    const debited = new Set((await this.deps.store.moves({ topUpId: of.topUpId })).map((m) => m.ref));
    let takenSoFar = counted.filter((r) => debited.has(`refund:${r.id}`)).reduce((sum, r) => sum + r.amount, 0);
    for (const refund of counted) {
      if (debited.has(`refund:${refund.id}`)) continue;
      takenSoFar += refund.amount;
      any = (await this.debit('refund', refund.id, takenSoFar, charge.amount, of)) || any;
    }
    return any ? 'applied' : 'ignored';
  }

  private async disputeCreated(disputeId: string): Promise<EventOutcome> {
    const dispute = await this.deps.gateway.call((s) => s.disputes.retrieve(disputeId));
    const chargeId = idOf(dispute.charge as string | Stripe.Charge);
    if (!chargeId) return 'ignored';
    const charge = await this.deps.gateway.call((s) => s.charges.retrieve(chargeId));
    const of = await this.paidByCharge(charge);
    if (!of) return 'ignored';
    // What was refunded before counts in the running total the dispute adds to.
    return (await this.debit('dispute', dispute.id, charge.amount_refunded + dispute.amount, charge.amount, of)) ? 'applied' : 'ignored';
  }

  private async debit(kind: 'refund' | 'dispute', id: string, takenSoFar: number, paidTotal: number, paid: Paid): Promise<boolean> {
    const base = debitIntent(kind, id, paid.ref, paid.topUpId, paid.customerId, 0, paid.currency);
    // A recharge's debit names the recharge (and its PaymentIntent) instead of a Checkout Session.
    const intent = paid.recharge ? { ...base, metadata: recharged(base.metadata, paid.recharge, paid.ref) } : base;
    // A refund or dispute pauses auto-recharge before its debit can be sent (same transaction as its row):
    // the debit's crossing must not charge the card the money just went back to (docs/auto-recharge.md).
    const pauses = this.rechargePauses?.armed(paid.customerId) ? this.rechargePauses : undefined;
    const { row, created } = await this.deps.store.enqueueDebit(intent, (before) => debitFor(takenSoFar, paidTotal, paid.amount, before), this.now(), pauses !== undefined);
    if (row && created) await this.send(row);
    // The email after the send (it shows the credit left), keyed by the refund or dispute: a redelivery after a crash
    // here writes it then, once (failing to write it answers the webhook 503, so Stripe delivers again). A delivery
    // joining one that is still sending the debit here leaves the email to it.
    if (row && pauses && (created || (!this.inFlight.has(row.id) && !this.readingBack.has(row.id)))) await pauses.paused({ customerId: paid.customerId, kind, id, currency: paid.currency, amount: row.amount });
    return row !== undefined;
  }

  /**
   * Sends one outbox row with its idempotency key, then records Stripe's
   * answer and reads the customer again (the normal balance-change path:
   * cohorts, emails, a push to every gateway node).
   */
  async send(row: MoveRow): Promise<void> {
    if (this.inFlight.has(row.id)) return;
    this.inFlight.add(row.id);
    try {
      const txn = await this.deps.gateway.debitBalance(row.customerId, row.amount, row.currency, row.description, row.metadata, row.idempotencyKey);
      await this.deps.store.confirmMove(row.id, txn.id, this.now());
      this.deps.log.info({ customer: row.customerId, ref: row.ref, amount: row.amount, txn: txn.id }, row.kind === 'credit' ? 'top-up credited' : `top-up ${row.kind} debited`);
    } catch (err) {
      const message = (err as Error).message;
      if (isPermanentRefusal(err)) {
        await this.deps.store.failMove(row.id, message, this.now());
        this.deps.log.error({ customer: row.customerId, ref: row.ref, amount: row.amount, err: message }, 'top-up balance transaction refused by Stripe; marked failed');
      } else {
        await this.deps.store.moveAttemptFailed(row.id, message);
        this.deps.log.warn({ customer: row.customerId, ref: row.ref, err: message }, 'top-up balance transaction not confirmed; sent again with the same idempotency key');
      }
      return;
    } finally {
      this.inFlight.delete(row.id);
    }
    const reading = this.deps.sync.refresh(row.customerId).catch((err) => this.deps.log.warn({ customer: row.customerId, err: (err as Error).message }, 'reading the customer after a top-up failed; the next sweep brings it'));
    this.readingBack.set(row.id, reading);
    try {
      await reading;
    } finally {
      this.readingBack.delete(row.id);
    }
  }

  /** Resolves once the customer has been read back after move `id` was confirmed, so the book shows its credit. */
  readBack(id: number): Promise<void> {
    return this.readingBack.get(id) ?? Promise.resolve();
  }

  /**
   * A reconciling read (the sweep, a webhook) listed the customer's balance
   * transactions: those of our pending rows found there are applied, so confirmed.
   */
  async confirmFound(customerId: string, moves: Map<string, string>): Promise<void> {
    for (const row of await this.deps.store.pendingMoves()) {
      const txn = row.customerId === customerId ? moves.get(row.ref) : undefined;
      if (txn && !this.inFlight.has(row.id)) await this.deps.store.confirmMove(row.id, txn, this.now());
    }
  }

  /**
   * The leader's pass over rows still pending (a crash, a replica that died,
   * Stripe down): each is looked up among the customer's balance transactions
   * by its metadata first (applied already: confirmed without sending, even
   * past the idempotency key's 24 hours), else sent again with the same key.
   */
  resendPending(): Promise<number> {
    this.resending ??= this.resendNow().finally(() => { this.resending = undefined; });
    return this.resending;
  }

  private async resendNow(): Promise<number> {
    let done = 0;
    for (const row of await this.deps.store.pendingMoves()) {
      if (this.inFlight.has(row.id)) continue;
      try {
        const read = await this.deps.gateway.balanceLedger(row.customerId, row.createdAt);
        const applied = read.moves.get(row.ref);
        if (applied) {
          await this.deps.store.confirmMove(row.id, applied, this.now());
          await this.deps.sync.refresh(row.customerId);
          this.deps.log.info({ customer: row.customerId, ref: row.ref, txn: applied }, 'top-up found applied in Stripe; confirmed without sending again');
        } else if (read.deleted) {
          await this.deps.store.failMove(row.id, 'customer deleted in Stripe', this.now());
        } else {
          await this.send(row);
        }
        done++;
      } catch (err) {
        this.deps.log.warn({ ref: row.ref, err: (err as Error).message }, 'resending a top-up failed; tried again on the next pass');
      }
    }
    return done;
  }
}
