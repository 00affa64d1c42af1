// PaymentMethods and SetupIntents. Stripe's test payment methods are magic ids
// (`pm_card_visa`, …): each use makes a new PaymentMethod (pm_…) that behaves
// like that test card; attached to a customer it can be used again off-session.
import type { StripeEmulator } from './emulator';
import type { Route } from './routes';
import { en, invalid, listPage, meta, missing, params, queryParams, rid, str } from './params';
import { customerOr404, customerParam } from './customers';

export type Behaviour = 'succeed' | 'decline' | 'authenticate' | 'async_succeed' | 'async_fail';
export interface PaymentMethodState { behaviour: Behaviour; declineCode?: string; testId: string }

interface TestMethod { type: 'card' | 'us_bank_account'; brand?: string; last4: string; behaviour: Behaviour; declineCode?: string; funding?: string }

/** Stripe's test payment methods this emulator knows (plus two bank debits of its own, see docs/stripe-emulator.md). */
export const TEST_PAYMENT_METHODS: Record<string, TestMethod> = {
  pm_card_visa: { type: 'card', brand: 'visa', last4: '4242', behaviour: 'succeed', funding: 'credit' },
  pm_card_visa_debit: { type: 'card', brand: 'visa', last4: '5556', behaviour: 'succeed', funding: 'debit' },
  pm_card_mastercard: { type: 'card', brand: 'mastercard', last4: '4444', behaviour: 'succeed', funding: 'credit' },
  pm_card_amex: { type: 'card', brand: 'amex', last4: '8431', behaviour: 'succeed', funding: 'credit' },
  pm_card_chargeDeclined: { type: 'card', brand: 'visa', last4: '0002', behaviour: 'decline', declineCode: 'generic_decline', funding: 'credit' },
  pm_card_chargeDeclinedInsufficientFunds: { type: 'card', brand: 'visa', last4: '9995', behaviour: 'decline', declineCode: 'insufficient_funds', funding: 'credit' },
  pm_card_chargeDeclinedExpiredCard: { type: 'card', brand: 'visa', last4: '0069', behaviour: 'decline', declineCode: 'expired_card', funding: 'credit' },
  pm_card_authenticationRequired: { type: 'card', brand: 'visa', last4: '3184', behaviour: 'authenticate', funding: 'credit' },
  pm_usBankAccount: { type: 'us_bank_account', last4: '6789', behaviour: 'async_succeed' },
  pm_usBankAccount_insufficientFunds: { type: 'us_bank_account', last4: '1116', behaviour: 'async_fail' },
};

const DECLINE_MESSAGES: Record<string, string> = {
  generic_decline: 'Your card was declined.',
  insufficient_funds: 'Your card has insufficient funds.',
  expired_card: 'Your card has expired.',
};
export const declineMessage = (code: string) => DECLINE_MESSAGES[code] ?? 'Your card was declined.';
export const declineErrorCode = (code: string) => (code === 'expired_card' ? 'expired_card' : 'card_declined');

function newPaymentMethod(emu: StripeEmulator, testId: string, test: TestMethod, extra: { email?: string; name?: string } = {}) {
  const id = rid('pm');
  const pm: Record<string, any> = {
    id, object: 'payment_method', allow_redisplay: 'unspecified',
    billing_details: { address: { city: null, country: null, line1: null, line2: null, postal_code: null, state: null }, email: extra.email ?? null, name: extra.name ?? null, phone: null, tax_id: null },
    created: emu.tick(), customer: null, customer_account: null, livemode: false, metadata: {}, type: test.type,
  };
  if (test.type === 'card') {
    pm.card = {
      brand: test.brand, checks: { address_line1_check: null, address_postal_code_check: null, cvc_check: 'pass' }, country: 'US', display_brand: test.brand,
      exp_month: 12, exp_year: new Date().getUTCFullYear() + 3, fingerprint: testId.slice(3, 19), funding: test.funding, generated_from: null, last4: test.last4,
      networks: { available: [test.brand], preferred: null }, regulated_status: 'unregulated', three_d_secure_usage: { supported: true }, wallet: null,
    };
  } else {
    pm.us_bank_account = { account_holder_type: 'individual', account_type: 'checking', bank_name: 'STRIPE TEST BANK', financial_connections_account: null, fingerprint: testId.slice(3, 19), last4: test.last4, networks: { preferred: 'ach', supported: ['ach'] }, routing_number: '110000000', status_details: {} };
  }
  emu.paymentMethods.set(id, pm);
  emu.paymentMethodState.set(id, { behaviour: test.behaviour, declineCode: test.declineCode, testId });
  return pm;
}

/**
 * The PaymentMethod an id names: a new one for a test id, the stored one
 * otherwise; Stripe's 400 naming `param` when there is none.
 */
export function resolvePaymentMethod(emu: StripeEmulator, id: string, param: string, extra: { email?: string; name?: string } = {}): Record<string, any> {
  const test = TEST_PAYMENT_METHODS[id];
  if (test) return newPaymentMethod(emu, id, test, extra);
  const pm = emu.paymentMethods.get(id);
  if (!pm) throw invalid(`No such PaymentMethod: '${id}'`, param, 'resource_missing');
  return pm;
}

export function attach(emu: StripeEmulator, pm: Record<string, any>, customerId: string): void {
  if (pm.customer === customerId) return;
  if (pm.customer) throw invalid('The payment method you provided has already been attached to a customer.', 'payment_method', 'payment_method_unexpected_state');
  pm.customer = customerId;
  emu.emit('payment_method.attached', pm);
}

/** A succeeded SetupIntent (Checkout `setup` mode, or setup_future_usage) saving `pm` for the customer. */
export function succeededSetupIntent(emu: StripeEmulator, customer: string | null, pm: Record<string, any>, usage: string, metadata: Record<string, string>): Record<string, any> {
  const si = {
    id: rid('seti'), object: 'setup_intent', application: null, automatic_payment_methods: null, cancellation_reason: null,
    client_secret: `seti_secret_${rid('x').slice(2)}`, created: emu.tick(), customer, description: null, flow_directions: null,
    last_setup_error: null, latest_attempt: rid('setatt'), livemode: false, mandate: null, metadata, next_action: null, on_behalf_of: null,
    payment_method: pm.id, payment_method_configuration_details: null, payment_method_options: {}, payment_method_types: [pm.type],
    single_use_mandate: null, status: 'succeeded', usage,
  };
  si.id = si.id.replace(/^seti_/, 'seti_');
  emu.setupIntents.set(si.id, si);
  emu.emit('setup_intent.created', si);
  emu.emit('setup_intent.succeeded', si);
  return si;
}

function listFor(emu: StripeEmulator, customer: string, type: string | undefined, query: URLSearchParams, url: string) {
  const all = [...emu.paymentMethods.values()].filter((pm) => pm.customer === customer && (!type || pm.type === type)).reverse();
  return listPage(all, query, url, 'payment method');
}

export const paymentMethodRoutes: Route[] = [
  {
    method: 'GET', path: /^\/v1\/payment_methods\/([^/]+)$/, run(emu, m) {
      const test = TEST_PAYMENT_METHODS[m[1]];
      if (test) return newPaymentMethod(emu, m[1], test);
      const pm = emu.paymentMethods.get(m[1]);
      if (!pm) throw missing('PaymentMethod', m[1], 'payment_method');
      return pm;
    },
  },
  {
    method: 'POST', path: /^\/v1\/payment_methods\/([^/]+)\/attach$/, run(emu, m, body) {
      const p = params(body, { customer: str() }, ['customer']);
      customerParam(emu, p.customer);
      const pm = TEST_PAYMENT_METHODS[m[1]] ? resolvePaymentMethod(emu, m[1], 'payment_method') : emu.paymentMethods.get(m[1]);
      if (!pm) throw missing('PaymentMethod', m[1], 'payment_method');
      attach(emu, pm, p.customer);
      return pm;
    },
  },
  {
    method: 'POST', path: /^\/v1\/payment_methods\/([^/]+)\/detach$/, run(emu, m, body) {
      params(body, {});
      const pm = emu.paymentMethods.get(m[1]);
      if (!pm) throw missing('PaymentMethod', m[1], 'payment_method');
      if (!pm.customer) throw invalid('The payment method you provided is not attached to a customer so detachment is impossible.', undefined, 'payment_method_unexpected_state');
      const owner = emu.customers.get(pm.customer);
      const previous = { customer: pm.customer };
      pm.customer = null;
      emu.emit('payment_method.detached', pm, previous);
      if (owner?.invoice_settings && owner.invoice_settings.default_payment_method === pm.id) {
        emu.update(owner.id, { invoice_settings: { ...owner.invoice_settings, default_payment_method: null } });
      }
      return pm;
    },
  },
  {
    method: 'POST', path: /^\/v1\/payment_methods\/([^/]+)$/, run(emu, m, body) {
      const p = params(body, { metadata: meta, allow_redisplay: en('always', 'limited', 'unspecified') });
      const pm = emu.paymentMethods.get(m[1]);
      if (!pm) throw missing('PaymentMethod', m[1], 'payment_method');
      if (p.metadata) pm.metadata = { ...pm.metadata, ...p.metadata };
      for (const [k, v] of Object.entries(body.metadata ?? {})) if (v === '') delete pm.metadata[k];
      if (p.allow_redisplay) pm.allow_redisplay = p.allow_redisplay;
      emu.emit('payment_method.updated', pm);
      return pm;
    },
  },
  {
    method: 'GET', path: /^\/v1\/payment_methods$/, run(emu, _m, _b, query) {
      const p = queryParams(query, { customer: str(), type: en('card', 'us_bank_account') });
      if (!p.customer) return listPage([], query, '/v1/payment_methods', 'payment method');
      customerParam(emu, p.customer);
      return listFor(emu, p.customer, p.type, query, '/v1/payment_methods');
    },
  },
  {
    method: 'GET', path: /^\/v1\/customers\/([^/]+)\/payment_methods$/, run(emu, m, _b, query) {
      const p = queryParams(query, { type: en('card', 'us_bank_account'), allow_redisplay: en('always', 'limited', 'unspecified') });
      customerOr404(emu, m[1]);
      return listFor(emu, m[1], p.type, query, `/v1/customers/${m[1]}/payment_methods`);
    },
  },
  {
    method: 'GET', path: /^\/v1\/setup_intents\/([^/]+)$/, run(emu, m) {
      const si = emu.setupIntents.get(m[1]);
      if (!si) throw missing('setupintent', m[1], 'intent');
      return si;
    },
  },
];
