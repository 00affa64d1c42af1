// PaymentIntents: create (confirm, off_session, a saved or test payment
// method), confirm, cancel, retrieve, list; each test method's outcome as
// Stripe answers it (succeeded; 402 card_error card_declined with the
// PaymentIntent; authentication_required off-session; requires_action
// on-session; processing for bank debits until settled).
import type { StripeEmulator } from './emulator';
import type { Route } from './routes';
import { StripeApiError, bool, en, int, invalid, listPage, meta, missing, obj, params, queryParams, rid, str, arr, type Schema } from './params';
import { customerParam } from './customers';
import { attach, declineErrorCode, declineMessage, resolvePaymentMethod } from './payment-methods';
import { createCharge, finishCharge } from './charges';
import { expandObject } from './expand';

type Obj = Record<string, any>;

export const currency: Schema = en('usd', 'eur', 'gbp', 'cad', 'aud', 'chf', 'jpy', 'sek', 'nok', 'dkk', 'nzd', 'sgd', 'hkd', 'mxn', 'brl', 'inr', 'pln', 'czk');
export const ZERO_DECIMAL = new Set(['jpy']);

/** Stripe's minimum charge (50 cents and the like) and maximum (99999999). */
export function checkAmount(amount: number, cur: string, param: string): void {
  if (amount < 50) throw invalid(`Amount must be at least ${ZERO_DECIMAL.has(cur) ? '¥50' : '$0.50'} ${cur}`, param, 'amount_too_small');
  if (amount > 99999999) throw invalid('Amount must be no more than $999,999.99', param, 'amount_too_large');
}

export function newPaymentIntent(emu: StripeEmulator, p: Obj): Obj {
  const id = rid('pi');
  const pi: Obj = {
    id, object: 'payment_intent', allowed_payment_method_types: p.allowed_payment_method_types ?? null, amount: p.amount, amount_capturable: 0, amount_details: { tip: {} }, amount_received: 0, application: null,
    application_fee_amount: null, automatic_payment_methods: p.automatic_payment_methods ?? null, canceled_at: null, cancellation_reason: null,
    capture_method: 'automatic_async', client_secret: `${id}_secret_${rid('x').slice(2, 27)}`, confirmation_method: 'automatic', created: emu.tick(),
    currency: p.currency, customer: p.customer ?? null, customer_account: null, description: p.description ?? null, excluded_payment_method_types: p.excluded_payment_method_types ?? null, last_payment_error: null, latest_charge: null,
    livemode: false, metadata: p.metadata ?? {}, next_action: null, on_behalf_of: null, payment_method: null, payment_method_configuration_details: null,
    payment_method_options: {}, payment_method_types: p.allowed_payment_method_types ?? ['card', 'us_bank_account'].filter((t) => !(p.excluded_payment_method_types ?? []).includes(t)), processing: null, receipt_email: p.receipt_email ?? null, review: null,
    setup_future_usage: p.setup_future_usage ?? null, shipping: null, source: null, statement_descriptor: null, statement_descriptor_suffix: p.statement_descriptor_suffix ?? null,
    status: 'requires_payment_method', transfer_data: null, transfer_group: null,
  };
  emu.paymentIntents.set(id, pi);
  emu.emit('payment_intent.created', pi);
  return pi;
}

export type ConfirmResult = { kind: 'succeeded' | 'processing' | 'requires_action'; pi: Obj } | { kind: 'failed'; pi: Obj; error: StripeApiError };

/**
 * Confirms `pi` with a payment method. Outcomes are values (the HTTP layer
 * throws a `failed` one as Stripe's 402); `authenticated` is a customer who
 * passed 3-D Secure on a page (Checkout).
 */
export function confirm(emu: StripeEmulator, pi: Obj, pmId: string, opts: { offSession: boolean; authenticated?: boolean; returnUrl?: string; param?: string; billing?: { email?: string; name?: string } }): ConfirmResult {
  if (!['requires_payment_method', 'requires_confirmation', 'requires_action'].includes(pi.status)) {
    throw invalid(`You cannot confirm this PaymentIntent because it has a status of ${pi.status}. Only a PaymentIntent with one of the following statuses may be confirmed: requires_confirmation, requires_action, requires_payment_method.`, undefined, 'payment_intent_unexpected_state', { payment_intent: pi });
  }
  const pm = resolvePaymentMethod(emu, pmId, opts.param ?? 'payment_method', opts.billing);
  if (pm.customer && !pi.customer) {
    throw invalid(`The provided PaymentMethod was previously used with a PaymentIntent without Customer attachment, shared with a connected account without Customer attachment, or was detached from a Customer. It may not be used again. To use a PaymentMethod multiple times, you must attach it to a Customer first.`, 'payment_method');
  }
  if (pm.customer && pm.customer !== pi.customer) {
    throw invalid(`The provided PaymentMethod belongs to a different Customer (${pm.customer}) than this PaymentIntent (${pi.customer}).`, 'payment_method');
  }
  if (!pi.payment_method_types.includes(pm.type)) {
    throw invalid(`The PaymentMethod provided (${pm.type}) is not allowed for this PaymentIntent. Please attach a PaymentMethod of one of the following types: ${pi.payment_method_types.join(', ')}.`, 'payment_method', 'payment_intent_incompatible_payment_method');
  }
  pi.payment_method = pm.id;
  pi.last_payment_error = null;
  const state = emu.paymentMethodState.get(pm.id)!;
  const saveForLater = () => { if (pi.setup_future_usage && pi.customer) attach(emu, pm, pi.customer); };
  if (state.behaviour === 'authenticate' && !opts.authenticated) {
    if (opts.offSession) return fail(emu, pi, pm, 'authentication_required', 'authentication_required', 'Your card was declined. This transaction requires authentication.');
    pi.status = 'requires_action';
    pi.next_action = opts.returnUrl
      ? { type: 'redirect_to_url', redirect_to_url: { return_url: opts.returnUrl, url: `${emu.url}/c/authenticate/${pi.id}` } }
      : { type: 'use_stripe_sdk', use_stripe_sdk: { type: 'three_d_secure_redirect', stripe_js: `${emu.url}/c/authenticate/${pi.id}`, source: rid('src') } };
    emu.emit('payment_intent.requires_action', pi);
    return { kind: 'requires_action', pi };
  }
  if (state.behaviour === 'decline') {
    const code = state.declineCode ?? 'generic_decline';
    return fail(emu, pi, pm, declineErrorCode(code), code, declineMessage(code));
  }
  if (state.behaviour === 'async_succeed' || state.behaviour === 'async_fail') {
    const charge = createCharge(emu, pi, pm, 'pending');
    pi.latest_charge = charge.id;
    pi.status = 'processing';
    pi.next_action = null;
    saveForLater();
    emu.emit('charge.pending', charge);
    emu.emit('payment_intent.processing', pi);
    return { kind: 'processing', pi };
  }
  const charge = createCharge(emu, pi, pm, 'succeeded');
  pi.latest_charge = charge.id;
  pi.status = 'succeeded';
  pi.amount_received = pi.amount;
  pi.next_action = null;
  saveForLater();
  emu.emit('charge.succeeded', charge);
  emu.emit('payment_intent.succeeded', pi);
  return { kind: 'succeeded', pi };
}

function fail(emu: StripeEmulator, pi: Obj, pm: Obj, code: string, declineCode: string, message: string): ConfirmResult {
  const charge = createCharge(emu, pi, pm, 'failed', { code, message, declineCode });
  pi.latest_charge = charge.id;
  pi.status = 'requires_payment_method';
  pi.next_action = null;
  pi.last_payment_error = {
    advice_code: declineCode === 'authentication_required' ? 'try_again_later' : 'do_not_try_again', charge: charge.id, code, decline_code: declineCode,
    doc_url: `https://stripe.com/docs/error-codes/${code.replace(/_/g, '-')}`, message, payment_method: JSON.parse(JSON.stringify(pm)), type: 'card_error',
  };
  emu.emit('charge.failed', charge);
  emu.emit('payment_intent.payment_failed', pi);
  const error = new StripeApiError(402, 'card_error', message, {
    code, decline_code: declineCode, advice_code: pi.last_payment_error.advice_code, charge: charge.id, doc_url: pi.last_payment_error.doc_url,
    payment_intent: JSON.parse(JSON.stringify(pi)), payment_method: JSON.parse(JSON.stringify(pm)),
  });
  return { kind: 'failed', pi, error };
}

/** A bank debit in processing clears ('succeeded') or bounces ('failed'). */
export function settlePaymentIntent(emu: StripeEmulator, id: string, outcome: 'succeeded' | 'failed'): Obj {
  const pi = emu.paymentIntents.get(id);
  if (!pi) throw new Error(`no PaymentIntent ${id}`);
  if (pi.status !== 'processing') throw new Error(`PaymentIntent ${id} is ${pi.status}, not processing`);
  const charge = emu.charges.get(pi.latest_charge)!;
  if (outcome === 'succeeded') {
    finishCharge(emu, charge, 'succeeded');
    pi.status = 'succeeded';
    pi.amount_received = pi.amount;
    emu.emit('charge.succeeded', charge);
    emu.emit('payment_intent.succeeded', pi);
  } else {
    const message = "The customer's bank account has insufficient funds to cover this payment.";
    finishCharge(emu, charge, 'failed', { code: 'insufficient_funds', message });
    pi.status = 'requires_payment_method';
    pi.last_payment_error = { charge: charge.id, code: 'insufficient_funds', doc_url: 'https://stripe.com/docs/error-codes/insufficient-funds', message, payment_method: emu.paymentMethods.get(pi.payment_method), type: 'invalid_request_error' };
    emu.emit('charge.failed', charge);
    emu.emit('payment_intent.payment_failed', pi);
  }
  return pi;
}

/** The customer's 3-D Secure challenge on a PaymentIntent in requires_action. */
export function authenticatePaymentIntent(emu: StripeEmulator, id: string, passed: boolean): Obj {
  const pi = emu.paymentIntents.get(id);
  if (!pi) throw new Error(`no PaymentIntent ${id}`);
  if (pi.status !== 'requires_action') throw new Error(`PaymentIntent ${id} is ${pi.status}, not requires_action`);
  if (passed) return confirm(emu, pi, pi.payment_method, { offSession: false, authenticated: true }).pi;
  pi.status = 'requires_payment_method';
  pi.next_action = null;
  pi.last_payment_error = {
    code: 'payment_intent_authentication_failure', doc_url: 'https://stripe.com/docs/error-codes/payment-intent-authentication-failure',
    message: 'The provided PaymentMethod has failed authentication. You can provide payment_method_data or a new PaymentMethod to attempt to fulfill this PaymentIntent again.',
    payment_method: emu.paymentMethods.get(pi.payment_method), type: 'invalid_request_error',
  };
  emu.emit('payment_intent.payment_failed', pi);
  return pi;
}

const offSession: Schema = { t: 'oneOf', options: [bool, en('one_off', 'recurring')] };
const CREATE: Record<string, Schema> = {
  amount: int(), currency, customer: str(), payment_method: str(), off_session: offSession, confirm: bool, metadata: meta,
  description: str({ max: 1000 }), setup_future_usage: en('off_session', 'on_session'), allowed_payment_method_types: arr(en('card', 'us_bank_account')), excluded_payment_method_types: arr(str()),
  automatic_payment_methods: obj({ enabled: bool, allow_redirects: en('always', 'never') }, ['enabled']), receipt_email: str(),
  return_url: str({ url: true }), error_on_requires_action: bool, statement_descriptor_suffix: str({ max: 22 }), use_stripe_sdk: bool,
};

function pathOf(emu: StripeEmulator, id: string): Obj {
  const pi = emu.paymentIntents.get(id);
  if (!pi) throw missing('payment_intent', id, 'intent');
  return pi;
}

function settleConfirm(emu: StripeEmulator, result: ConfirmResult, errorOnRequiresAction: boolean | undefined): Obj {
  if (result.kind === 'failed') throw result.error;
  if (result.kind === 'requires_action' && errorOnRequiresAction) {
    // error_on_requires_action: fail at once instead of asking for authentication.
    const pm = emu.paymentMethods.get(result.pi.payment_method)!;
    const failed = fail(emu, result.pi, pm, 'authentication_required', 'authentication_required', 'Your card was declined. This transaction requires authentication.');
    if (failed.kind === 'failed') throw failed.error;
  }
  return result.pi;
}

export const paymentIntentRoutes: Route[] = [
  {
    method: 'POST', path: /^\/v1\/payment_intents$/, confirms: (b) => b.confirm === 'true', run(emu, _m, body) {
      const p = params(body, CREATE, ['amount', 'currency']);
      checkAmount(p.amount, p.currency, 'amount');
      if (p.customer) customerParam(emu, p.customer);
      if (p.off_session !== undefined && !p.confirm) throw invalid('off_session can only be used when confirm=true', 'off_session');
      if (p.payment_method && !p.confirm) resolvePaymentMethod(emu, p.payment_method, 'payment_method');
      if (p.confirm && !p.payment_method) {
        throw invalid("You cannot confirm this PaymentIntent because it's missing a payment method. To confirm the PaymentIntent with cus_..., specify a payment method attached to this customer along with the customer ID.", 'payment_method', 'payment_intent_unexpected_state');
      }
      const pi = newPaymentIntent(emu, p);
      if (p.payment_method && !p.confirm) { pi.payment_method = resolvePaymentMethod(emu, p.payment_method, 'payment_method').id; pi.status = 'requires_confirmation'; }
      if (!p.confirm) return pi;
      return settleConfirm(emu, confirm(emu, pi, p.payment_method, { offSession: Boolean(p.off_session), returnUrl: p.return_url }), p.error_on_requires_action);
    },
  },
  {
    method: 'POST', path: /^\/v1\/payment_intents\/([^/]+)\/confirm$/, confirms: () => true, run(emu, m, body) {
      const p = params(body, { payment_method: str(), off_session: offSession, return_url: str({ url: true }), error_on_requires_action: bool, setup_future_usage: en('off_session', 'on_session'), use_stripe_sdk: bool });
      const pi = pathOf(emu, m[1]);
      const pm = p.payment_method ?? pi.payment_method;
      if (!pm) throw invalid("You cannot confirm this PaymentIntent because it's missing a payment method.", 'payment_method', 'payment_intent_unexpected_state');
      if (p.setup_future_usage) pi.setup_future_usage = p.setup_future_usage;
      return settleConfirm(emu, confirm(emu, pi, pm, { offSession: Boolean(p.off_session), returnUrl: p.return_url }), p.error_on_requires_action);
    },
  },
  {
    method: 'POST', path: /^\/v1\/payment_intents\/([^/]+)\/cancel$/, run(emu, m, body) {
      const p = params(body, { cancellation_reason: en('abandoned', 'duplicate', 'fraudulent', 'requested_by_customer') });
      const pi = pathOf(emu, m[1]);
      if (!['requires_payment_method', 'requires_capture', 'requires_confirmation', 'requires_action'].includes(pi.status)) {
        throw invalid(`You cannot cancel this PaymentIntent because it has a status of ${pi.status}. Only a PaymentIntent with one of the following statuses may be canceled: requires_payment_method, requires_capture, requires_confirmation, requires_action, processing.`, undefined, 'payment_intent_unexpected_state', { payment_intent: JSON.parse(JSON.stringify(pi)) });
      }
      pi.status = 'canceled';
      pi.canceled_at = emu.tick();
      pi.cancellation_reason = p.cancellation_reason ?? null;
      pi.next_action = null;
      emu.emit('payment_intent.canceled', pi);
      return pi;
    },
  },
  {
    method: 'POST', path: /^\/v1\/payment_intents\/([^/]+)$/, run(emu, m, body) {
      const p = params(body, { metadata: meta, description: str({ max: 1000 }), receipt_email: str(), setup_future_usage: en('off_session', 'on_session') });
      const pi = pathOf(emu, m[1]);
      const previous: Obj = {};
      if (p.metadata) {
        previous.metadata = { ...pi.metadata };
        const next = { ...pi.metadata, ...p.metadata };
        for (const [k, v] of Object.entries(body.metadata ?? {})) if (v === '') delete next[k];
        pi.metadata = next;
      }
      for (const k of ['description', 'receipt_email', 'setup_future_usage'] as const) if (p[k] !== undefined) { previous[k] = pi[k]; pi[k] = p[k]; }
      return pi;
    },
  },
  {
    method: 'GET', path: /^\/v1\/payment_intents\/([^/]+)$/, run(emu, m, _b, query) {
      const q = queryParams(query, { client_secret: str() });
      return expandObject(emu, pathOf(emu, m[1]), q.expand);
    },
  },
  {
    method: 'GET', path: /^\/v1\/payment_intents$/, run(emu, _m, _b, query) {
      const q = queryParams(query, { customer: str(), created: obj({ gt: int(), gte: int(), lt: int(), lte: int() }) });
      const all = [...emu.paymentIntents.values()].filter((pi) => !q.customer || pi.customer === q.customer).reverse();
      return listPage(all, query, '/v1/payment_intents', 'payment_intent');
    },
  },
];
