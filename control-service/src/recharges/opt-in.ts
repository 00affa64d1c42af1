// Opting in on the top-up page: "top up X automatically when my credit falls
// below Y". The first top-up of X is paid on Checkout with the card saved for
// off-session use (payment_intent_data.setup_future_usage: off_session); once
// its credit is confirmed, the leader makes that card the customer's default
// payment method and writes the settings to the customer's Stripe metadata
// (Stripe stays the source of truth). The choice is kept in the store until
// then, so a customer who closes the tab is opted in all the same.

import type Stripe from 'stripe';
import type { Logger } from 'pino';
import type { StripeGateway } from '../stripe/gateway';
import type { Store } from '../store/store';
import type { CheckoutOptions } from '../top-ups/core';
import { chooseAmount, decimalsOf } from '../top-ups/core';
import type { TopUpRow } from '../top-ups/store';
import { metadataFor, type RechargeOptions, type RechargeSettings } from './core';

export type OptInChoice =
  | { kind: 'none' }
  | { kind: 'ok'; settings: RechargeSettings }
  | { kind: 'refused'; message: string };

/** Major units ("5", "5.00") → the smallest unit, or undefined. */
function minor(text: string | undefined, currency: string): number | undefined {
  const t = text?.trim();
  if (!t) return undefined;
  const d = decimalsOf(currency);
  const m = /^(\d{1,9})(?:[.,](\d+))?$/.exec(t);
  if (!m) return undefined;
  const frac = (m[2] ?? '').replace(/0+$/, '');
  if (frac.length > d) return undefined;
  return Number(m[1]) * 10 ** d + (frac ? Number(frac.padEnd(d, '0')) : 0);
}

/**
 * The opt-in fields of a top-up form (`auto=on`, `auto_threshold`, `auto_cap`
 * in major units), for a top-up of `amount`: within the operator's bounds,
 * else refused with what to change. The amount of the recharge is the amount
 * of this top-up.
 */
export function chooseOptIn(form: URLSearchParams, amount: number, currency: string, o: RechargeOptions, fmt: (n: number) => string): OptInChoice {
  if (!o.enabled || form.get('auto') !== 'on') return { kind: 'none' };
  if (amount < o.minAmount || amount > o.maxAmount) return { kind: 'refused', message: `Automatic top-ups are from ${fmt(o.minAmount)} to ${fmt(o.maxAmount)}.` };
  const threshold = form.get('auto_threshold')?.trim() ? minor(form.get('auto_threshold')!, currency) : o.threshold;
  if (threshold === undefined || threshold > o.maxThreshold) return { kind: 'refused', message: `Choose when to top up: a credit between ${fmt(0)} and ${fmt(o.maxThreshold)}.` };
  const cap = form.get('auto_cap')?.trim() ? minor(form.get('auto_cap')!, currency) : Math.max(o.monthlyCap, amount);
  if (cap === undefined || cap < amount || cap > o.maxMonthlyCap) return { kind: 'refused', message: `The monthly limit must be between ${fmt(amount)} and ${fmt(o.maxMonthlyCap)}.` };
  return { kind: 'ok', settings: { threshold, amount, monthlyCap: cap } };
}

export { chooseAmount };

const idOf = (v: string | { id: string } | null | undefined): string | null => (v == null ? null : typeof v === 'string' ? v : v.id);

/** Metadata on the session and its PaymentIntent naming the opt-in (read back when it completes). */
export const META_OPT_IN = 'payg_auto_recharge_opt_in';

/**
 * The Checkout Session of an opt-in top-up: as a plain top-up's, and the card
 * saved for off-session use. Its idempotency key is the top-up's.
 */
export function optInSessionParams(row: TopUpRow, c: CheckoutOptions, base: string, settings: RechargeSettings): Stripe.Checkout.SessionCreateParams {
  const chosen = JSON.stringify(settings);
  return {
    mode: 'payment',
    customer: row.customerId,
    line_items: [{ quantity: 1, price_data: { currency: row.currency, unit_amount: row.amount, product_data: { name: c.productName }, ...(c.automaticTax ? { tax_behavior: 'exclusive' as const } : {}) } }],
    success_url: `${base}/done/${row.id}`,
    cancel_url: `${base}/cancel`,
    metadata: { payg_top_up_id: row.id, payg_customer: row.customerId, [META_OPT_IN]: chosen },
    payment_intent_data: { metadata: { payg_top_up_id: row.id, [META_OPT_IN]: chosen }, setup_future_usage: 'off_session' },
    ...(c.invoiceCreation ? { invoice_creation: { enabled: true } } : {}),
    ...(c.automaticTax ? { automatic_tax: { enabled: true }, customer_update: { address: 'auto' as const } } : {}),
  };
}

export async function createOptInSession(gateway: StripeGateway, store: Store, row: TopUpRow, c: CheckoutOptions, base: string, settings: RechargeSettings): Promise<{ id: string; url: string | null }> {
  const params = optInSessionParams(row, c, base, settings);
  for (let attempt = 1; ; attempt++) {
    try {
      const s = await gateway.call((stripe) => stripe.checkout.sessions.create(params, { idempotencyKey: `payg-top-up-session-${row.id}` }));
      await store.setTopUpSession(row.id, s.id, s.url);
      await store.recordOptIn({ topUpId: row.id, customerId: row.customerId, sessionId: s.id, settings }, Date.now());
      return { id: s.id, url: s.url };
    } catch (err) {
      if ((err as { statusCode?: number }).statusCode !== 409 || attempt >= 10) throw err;
      await new Promise((r) => setTimeout(r, 100 * attempt));
      const held = await store.topUp(row.id);
      if (held?.sessionId) return { id: held.sessionId, url: held.sessionUrl };
    }
  }
}

/**
 * Once an opt-in top-up's credit is confirmed: its card becomes the
 * customer's default payment method and the settings go to the customer's
 * metadata. Idempotent (the same update twice is the same state); the pending
 * choice is forgotten only after Stripe answered.
 */
export async function completeOptIns(gateway: StripeGateway, store: Store, log: Logger): Promise<number> {
  let done = 0;
  for (const p of await store.pendingOptIns()) {
    const credited = (await store.moves({ topUpId: p.topUpId })).some((m) => m.kind === 'credit' && m.status === 'confirmed');
    if (!credited) continue;
    const session = await gateway.call((s) => s.checkout.sessions.retrieve(p.sessionId, { expand: ['payment_intent'] }));
    const pi = session.payment_intent as Stripe.PaymentIntent | string | null;
    const pm = pi && typeof pi !== 'string' ? idOf(pi.payment_method as string | null) : null;
    if (idOf(session.customer as string | null) !== p.customerId) { log.warn({ topUp: p.topUpId }, 'opt-in session of another customer: ignored'); await store.optInDone(p.topUpId, Date.now()); continue; }
    await gateway.call((s) => s.customers.update(p.customerId, {
      ...(pm ? { invoice_settings: { default_payment_method: pm } } : {}),
      metadata: metadataFor(p.settings),
    }, { idempotencyKey: `payg-auto-recharge-opt-in-${p.topUpId}` }));
    await store.optInDone(p.topUpId, Date.now());
    log.info({ customer: p.customerId, topUp: p.topUpId, paymentMethod: pm }, 'auto-recharge opted in: card saved as default, settings in Stripe metadata');
    done++;
  }
  return done;
}
