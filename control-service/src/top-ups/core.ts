// The decisions of a top-up, pure: which amount a form asks for, whether a
// Checkout Session read back from Stripe may be credited and for how much, and
// how much a refund or dispute debits. The edges (Stripe, store, HTTP) only
// carry out what these answer.

import { createHash } from 'node:crypto';

/** Amounts in the smallest unit of one currency. */
export interface CurrencyAmounts { presets: number[]; min: number; max: number }

export interface CheckoutOptions {
  /** Where the public page is reached (through Kong): links are `${publicUrl}/top-up/<token>`. */
  publicUrl: string;
  linkTtlMs: number;
  /** Lower-case ISO codes → amounts offered. */
  currencies: Map<string, CurrencyAmounts>;
  /** For a customer Stripe has no currency for yet. */
  defaultCurrency: string;
  productName: string;
  invoiceCreation: boolean;
  automaticTax: boolean;
  /** Origins a top-up form may lead to (Stripe Checkout): the page's CSP form-action. */
  checkoutOrigins: string[];
  /** How often pending credits and debits are sent again (the leader). */
  resendIntervalMs: number;
}

/** Stripe's zero-decimal and three-decimal currencies; every other has two decimals. */
const ZERO_DECIMAL = new Set(['bif', 'clp', 'djf', 'gnf', 'jpy', 'kmf', 'krw', 'mga', 'pyg', 'rwf', 'ugx', 'vnd', 'vuv', 'xaf', 'xof', 'xpf']);
const THREE_DECIMAL = new Set(['bhd', 'jod', 'kwd', 'omr', 'tnd']);
export function decimalsOf(currency: string): number {
  const c = currency.toLowerCase();
  return ZERO_DECIMAL.has(c) ? 0 : THREE_DECIMAL.has(c) ? 3 : 2;
}

export type AmountChoice =
  | { kind: 'ok'; amount: number }
  | { kind: 'refused'; reason: 'missing' | 'not_a_number' | 'not_whole' | 'below_min' | 'above_max' | 'currency' };

/**
 * The amount a submitted form asks for: a preset (`preset`, in the smallest
 * unit, one of those offered) or a custom amount typed in major units
 * ("25", "25.50"). Anything finer than the currency's smallest unit, or
 * outside min/max, is refused.
 */
export function chooseAmount(form: { preset?: string; custom?: string }, currency: string, amounts: CurrencyAmounts | undefined): AmountChoice {
  if (!amounts) return { kind: 'refused', reason: 'currency' };
  const custom = form.custom?.trim();
  let amount: number;
  if (custom) {
    const decimals = decimalsOf(currency);
    const m = /^(\d{1,12})(?:[.,](\d+))?$/.exec(custom);
    if (!m) return { kind: 'refused', reason: /^-?[\d.,]+$/.test(custom) && !custom.startsWith('-') ? 'not_whole' : 'not_a_number' };
    const frac = (m[2] ?? '').replace(/0+$/, '');
    if (frac.length > decimals) return { kind: 'refused', reason: 'not_whole' };
    amount = Number(m[1]) * 10 ** decimals + (frac ? Number(frac.padEnd(decimals, '0')) : 0);
  } else if (form.preset) {
    if (!/^\d{1,15}$/.test(form.preset)) return { kind: 'refused', reason: 'not_a_number' };
    amount = Number(form.preset);
    // A preset must be one offered: anything else is a custom amount in disguise and goes through its bounds.
    if (!amounts.presets.includes(amount)) return amount < amounts.min ? { kind: 'refused', reason: 'below_min' } : amount > amounts.max ? { kind: 'refused', reason: 'above_max' } : { kind: 'ok', amount };
  } else {
    return { kind: 'refused', reason: 'missing' };
  }
  if (!Number.isSafeInteger(amount)) return { kind: 'refused', reason: 'above_max' };
  if (amount < amounts.min) return { kind: 'refused', reason: 'below_min' };
  if (amount > amounts.max) return { kind: 'refused', reason: 'above_max' };
  return { kind: 'ok', amount };
}

/**
 * Our id for a top-up: derived from the customer, the form's nonce and what it
 * asks for, so a form submitted twice (or by two tabs at once) names one
 * top-up, hence one Checkout Session (its idempotency key comes from this id).
 * Keyed by the secret: ids cannot be guessed or made up from outside.
 */
export function topUpId(secret: string, customerId: string, nonce: string, amount: number, currency: string): string {
  return `tu_${createHash('sha256').update(`${secret}|${customerId}|${nonce}|${amount}|${currency}`).digest('base64url').slice(0, 27)}`;
}

/** A top-up as we recorded it when we created its Checkout Session. */
export interface TopUpRecord { id: string; customerId: string; amount: number; currency: string; sessionId: string | null }

/** The fields of a Checkout Session read back from Stripe that crediting depends on. */
export interface SessionRead {
  id: string;
  mode: string;
  status: string | null;
  paymentStatus: string;
  customer: string | null;
  currency: string | null;
  amountSubtotal: number | null;
  amountTotal: number | null;
  topUpId: string | undefined;
  paymentIntent: string | null;
}

export type CreditDecision =
  | { kind: 'credit'; customerId: string; amount: number; currency: string }
  | { kind: 'wait'; why: string }
  | { kind: 'refuse'; why: string };

/**
 * Whether a session read from Stripe is paid for one of our top-ups and how
 * much it credits: the amount we recorded (before tax), in its currency, to
 * the customer we created it for. Anything else is refused: a session we did
 * not create, of another customer, another currency or amount, another mode.
 */
export function decideCredit(session: SessionRead, record: TopUpRecord | undefined): CreditDecision {
  if (!session.topUpId) return { kind: 'refuse', why: `session ${session.id} was not created by payg (no payg_top_up_id metadata)` };
  if (!record) return { kind: 'refuse', why: `session ${session.id} names top-up ${session.topUpId}, which payg did not create` };
  if (record.sessionId !== null && record.sessionId !== session.id) return { kind: 'refuse', why: `top-up ${record.id} belongs to session ${record.sessionId}, not ${session.id}` };
  if (session.mode !== 'payment') return { kind: 'refuse', why: `session ${session.id} is in mode ${session.mode}, not payment` };
  if (session.customer !== record.customerId) return { kind: 'refuse', why: `session ${session.id} is of customer ${session.customer ?? '(none)'}, top-up ${record.id} of ${record.customerId}` };
  if ((session.currency ?? '').toLowerCase() !== record.currency) return { kind: 'refuse', why: `session ${session.id} is in ${session.currency ?? '(none)'}, top-up ${record.id} in ${record.currency}` };
  if (session.amountSubtotal !== record.amount) return { kind: 'refuse', why: `session ${session.id} is for ${session.amountSubtotal ?? '(none)'}, top-up ${record.id} for ${record.amount}` };
  if (session.paymentStatus !== 'paid') return { kind: 'wait', why: `session ${session.id} is ${session.paymentStatus}` };
  return { kind: 'credit', customerId: record.customerId, amount: record.amount, currency: record.currency };
}

/**
 * What a refund or dispute takes back of a top-up that credited `credited`, when
 * `takenSoFar` of its payment (`paidTotal`, tax included) has been taken back in
 * all, this one included, and `debitedBefore` was debited for the earlier ones:
 * the share of the credit the running total comes to, less what was debited
 * before, never more than is left. Working from the running total keeps repeated
 * partial refunds from rounding each on its own (1-cent refunds of half the
 * payment take back half the credit, not every cent rounded up).
 */
export function debitFor(takenSoFar: number, paidTotal: number, credited: number, debitedBefore: number): number {
  if (takenSoFar <= 0 || paidTotal <= 0 || credited <= 0) return 0;
  const due = takenSoFar >= paidTotal ? credited : Math.round((takenSoFar * credited) / paidTotal);
  return Math.max(0, Math.min(due, credited) - debitedBefore);
}

/** Metadata and idempotency keys of our balance transactions: the sweep and recovery know them by these. */
export const META_TOP_UP = 'payg_top_up';
export const META_REFUND = 'payg_top_up_refund';
export const META_DISPUTE = 'payg_top_up_dispute';

export type MoveKind = 'credit' | 'refund' | 'dispute';

/** A credit or debit decided on: written to the outbox before it is sent. */
export interface MoveIntent {
  /** Unique: `credit:<session>`, `refund:<refund id>`, `dispute:<dispute id>`. */
  ref: string;
  kind: MoveKind;
  topUpId: string;
  customerId: string;
  /** Stripe's sign: negative credits, positive debits. */
  amount: number;
  currency: string;
  idempotencyKey: string;
  description: string;
  metadata: Record<string, string>;
}

export function creditIntent(sessionId: string, topUpId: string, customerId: string, amount: number, currency: string): MoveIntent {
  return {
    ref: `credit:${sessionId}`, kind: 'credit', topUpId, customerId, amount: -amount, currency,
    idempotencyKey: `payg-top-up-${sessionId}`, description: 'API credit top-up',
    metadata: { [META_TOP_UP]: sessionId, payg_top_up_id: topUpId },
  };
}

export function debitIntent(kind: 'refund' | 'dispute', id: string, sessionId: string, topUpId: string, customerId: string, amount: number, currency: string): MoveIntent {
  return {
    ref: `${kind}:${id}`, kind, topUpId, customerId, amount, currency,
    idempotencyKey: `payg-top-up-${kind}-${id}`, description: kind === 'refund' ? 'API credit refunded' : 'API credit disputed',
    metadata: { [kind === 'refund' ? META_REFUND : META_DISPUTE]: id, payg_top_up_id: topUpId, [`${META_TOP_UP}_session`]: sessionId },
  };
}

/** The ref of one of our balance transactions, from its metadata; undefined for any other. */
export function moveRefOf(metadata: Record<string, string> | null | undefined): string | undefined {
  if (!metadata) return undefined;
  if (metadata[META_REFUND]) return `refund:${metadata[META_REFUND]}`;
  if (metadata[META_DISPUTE]) return `dispute:${metadata[META_DISPUTE]}`;
  if (metadata[META_TOP_UP]) return `credit:${metadata[META_TOP_UP]}`;
  return undefined;
}
