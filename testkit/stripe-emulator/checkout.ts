// Checkout Sessions: create (payment and setup modes) with Stripe's
// validation, retrieve (expand line_items / payment_intent / …), list, line
// items, update, expire; and what paying on the hosted page does (a
// PaymentIntent, its charge, a one-off invoice when invoice_creation is
// enabled, a SetupIntent in setup mode, the checkout.session.* events). Paying
// never touches the customer's Stripe balance, as in Stripe.
import type { StripeEmulator } from './emulator';
import type { Route } from './routes';
import { bool, en, int, invalid, arr, listPage, meta, missing, obj, params, queryParams, rid, str, type Schema } from './params';
import { customerParam, createCustomer } from './customers';
import { checkAmount, confirm, currency, newPaymentIntent } from './payment-intents';
import { resolvePaymentMethod, attach, succeededSetupIntent, declineMessage, declineErrorCode, TEST_PAYMENT_METHODS } from './payment-methods';
import { paidInvoice } from './invoices';
import { expandObject } from './expand';

type Obj = Record<string, any>;

export type CheckoutOutcome =
  | { kind: 'complete'; session: Obj; paymentStatus: 'paid' | 'unpaid' | 'no_payment_required' }
  | { kind: 'declined'; session: Obj; code: string; message: string };

const SECOND = 1, HOUR = 3600 * SECOND;

const CREATE: Record<string, Schema> = {
  mode: en('payment', 'setup', 'subscription'),
  customer: str(), customer_email: str(), client_reference_id: str({ max: 200 }), currency,
  line_items: arr(obj({
    price: str(), quantity: int({ min: 0, max: 999999 }),
    price_data: obj({
      currency, unit_amount: int({ min: 0 }), unit_amount_decimal: str(), product: str(), tax_behavior: en('exclusive', 'inclusive', 'unspecified'),
      product_data: obj({ name: str({ max: 250 }), description: str(), metadata: meta, images: arr(str()), tax_code: str(), unit_label: str() }, ['name']),
    }, ['currency']),
  })),
  metadata: meta, success_url: str({ url: true, max: 5000 }), cancel_url: str({ url: true, max: 5000 }), return_url: str({ url: true }),
  ui_mode: en('hosted', 'embedded', 'custom'), locale: str(), submit_type: en('auto', 'book', 'donate', 'pay', 'subscribe'),
  invoice_creation: obj({ enabled: bool, invoice_data: obj({ description: str({ max: 1500 }), footer: str({ max: 5000 }), metadata: meta }) }, ['enabled']),
  automatic_tax: obj({ enabled: bool, liability: obj({ type: en('account', 'self'), account: str() }, ['type']) }, ['enabled']),
  payment_intent_data: obj({ setup_future_usage: en('off_session', 'on_session'), metadata: meta, description: str({ max: 1000 }), receipt_email: str(), statement_descriptor_suffix: str({ max: 22 }) }),
  setup_intent_data: obj({ metadata: meta, description: str() }),
  saved_payment_method_options: obj({ payment_method_save: en('enabled', 'disabled'), allow_redisplay_filters: arr(en('always', 'limited', 'unspecified')), payment_method_remove: en('enabled', 'disabled') }),
  allowed_payment_method_types: arr(en('card', 'us_bank_account')), excluded_payment_method_types: arr(str()), expires_at: int(), customer_creation: en('always', 'if_required'),
  customer_update: obj({ address: en('auto', 'never'), name: en('auto', 'never'), shipping: en('auto', 'never') }),
  billing_address_collection: en('auto', 'required'), allow_promotion_codes: bool,
};

function createSession(emu: StripeEmulator, body: Obj): Obj {
  const p = params(body, CREATE, ['mode']);
  if (p.mode === 'subscription') throw invalid('The emulator does not support mode=subscription (only payment and setup).', 'mode');
  if (p.customer && p.customer_email) throw invalid('You may only specify one of these parameters: customer, customer_email.', 'customer_email', 'parameters_exclusive');
  const customer = p.customer ? customerParam(emu, p.customer) : undefined;
  if ((p.ui_mode ?? 'hosted') !== 'hosted') throw invalid(`The emulator serves only ui_mode=hosted, not ${p.ui_mode}.`, 'ui_mode');
  if (p.return_url) throw invalid('You can only use return_url with ui_mode=embedded or ui_mode=custom.', 'return_url');
  if (p.mode === 'setup') {
    for (const k of ['line_items', 'payment_intent_data', 'invoice_creation', 'submit_type'] as const) {
      if (p[k] !== undefined) throw invalid(`You can not pass \`${k}\` in \`setup\` mode.`, k);
    }
  }
  if (p.mode === 'payment' && p.setup_intent_data) throw invalid('You can not pass `setup_intent_data` in `payment` mode.', 'setup_intent_data');
  if (p.customer_update && !customer) throw invalid('`customer_update` can only be used with `customer`.', 'customer_update');
  if (p.saved_payment_method_options && !customer) throw invalid('`saved_payment_method_options` can only be used with `customer`.', 'saved_payment_method_options');
  const created = emu.tick();
  if (p.expires_at !== undefined) {
    if (p.expires_at > created + 24 * HOUR) throw invalid('The `expires_at` timestamp must be less than 24 hours from Checkout Session creation.', 'expires_at');
    if (p.expires_at < created + 30 * 60) throw invalid('The `expires_at` timestamp must be at least 30 minutes from Checkout Session creation.', 'expires_at');
  }
  const id = `cs_test_${rid('x').slice(2)}${rid('x').slice(2, 20)}`;
  const items: Obj[] = [];
  if (p.mode === 'payment') {
    if (!p.line_items || p.line_items.length === 0) throw invalid('Missing required param: line_items.', 'line_items', 'parameter_missing');
    p.line_items.forEach((li: Obj, i: number) => {
      const at = `line_items[${i}]`;
      if (li.price) throw invalid(`No such price: '${li.price}'`, `${at}[price]`, 'resource_missing');
      if (!li.price_data) throw invalid(`You must specify either \`price\` or \`price_data\` in ${at}.`, at, 'parameter_missing');
      if (li.quantity === undefined) throw invalid(`Missing required param: ${at}[quantity].`, `${at}[quantity]`, 'parameter_missing');
      const pd = li.price_data;
      if (!pd.product_data && !pd.product) throw invalid(`You must specify either \`product\` or \`product_data\` when creating a price.`, `${at}[price_data][product_data]`, 'parameter_missing');
      if (pd.product) throw invalid(`No such product: '${pd.product}'`, `${at}[price_data][product]`, 'resource_missing');
      if (pd.unit_amount === undefined && pd.unit_amount_decimal === undefined) throw invalid(`Missing required param: ${at}[price_data][unit_amount].`, `${at}[price_data][unit_amount]`, 'parameter_missing');
      if (pd.unit_amount_decimal !== undefined && !/^\d+$/.test(pd.unit_amount_decimal)) throw invalid(`Invalid decimal: ${pd.unit_amount_decimal}`, `${at}[price_data][unit_amount_decimal]`);
      const unit = pd.unit_amount ?? Number(pd.unit_amount_decimal);
      if (items.length && items[0].currency !== pd.currency) throw invalid('All line items must have the same currency.', `${at}[price_data][currency]`);
      const priceId = rid('price');
      items.push({
        id: rid('li'), object: 'item', adjustable_quantity: null, amount_discount: 0, amount_subtotal: unit * li.quantity, amount_tax: 0, amount_total: unit * li.quantity,
        currency: pd.currency, description: pd.product_data.name, metadata: {},
        price: { id: priceId, object: 'price', active: false, billing_scheme: 'per_unit', created, currency: pd.currency, custom_unit_amount: null, livemode: false, lookup_key: null, metadata: {}, nickname: null, product: rid('prod'), recurring: null, tax_behavior: pd.tax_behavior ?? 'unspecified', tiers_mode: null, transform_quantity: null, type: 'one_time', unit_amount: unit, unit_amount_decimal: String(unit) },
        quantity: li.quantity,
      });
    });
    const total = items.reduce((s, li) => s + li.amount_total, 0);
    try { checkAmount(total, items[0].currency, 'line_items'); } catch {
      throw invalid(`The Checkout Session's total amount due must add up to at least $0.50 ${items[0].currency}`, undefined, 'amount_too_small');
    }
    if (p.currency && p.currency !== items[0].currency) throw invalid('The currency must match the currency of the line items.', 'currency');
  }
  if (p.automatic_tax?.enabled && customer && p.customer_update?.address !== 'auto' && p.customer_update?.shipping !== 'auto') {
    throw invalid("Automatic tax calculation in Checkout requires a valid address on the Customer. Add a valid address to the Customer or set either `customer_update[address]` to 'auto' or `customer_update[shipping]` to 'auto' to save the address entered in Checkout to the Customer.", 'automatic_tax[enabled]', 'customer_tax_location_invalid');
  }
  const subtotal = p.mode === 'payment' ? items.reduce((s, li) => s + li.amount_total, 0) : null;
  const session: Obj = {
    id, object: 'checkout.session', adaptive_pricing: { enabled: false }, after_expiration: null, allow_promotion_codes: p.allow_promotion_codes ?? null,
    allowed_payment_method_types: p.allowed_payment_method_types ?? null,
    amount_subtotal: subtotal, amount_total: subtotal,
    automatic_tax: { enabled: p.automatic_tax?.enabled ?? false, liability: p.automatic_tax?.enabled ? { type: p.automatic_tax.liability?.type ?? 'self' } : null, provider: p.automatic_tax?.enabled ? 'stripe' : null, status: p.automatic_tax?.enabled ? 'requires_location_inputs' : null },
    billing_address_collection: p.billing_address_collection ?? null, cancel_url: p.cancel_url ?? null, client_reference_id: p.client_reference_id ?? null,
    client_secret: null, collected_information: null, consent: null, consent_collection: null, created,
    currency: p.mode === 'payment' ? items[0].currency : p.currency ?? null, currency_conversion: null, custom_fields: [],
    custom_text: { after_submit: null, shipping_address: null, submit: null, terms_of_service_acceptance: null },
    customer: customer?.id ?? null, customer_account: null, customer_creation: customer ? null : p.customer_creation ?? (p.mode === 'payment' ? 'if_required' : null),
    customer_details: customer ? { address: null, business_name: null, email: customer.email, individual_name: null, name: customer.name, phone: null, tax_exempt: 'none', tax_ids: null } : null,
    customer_email: p.customer_email ?? null, discounts: [], expires_at: p.expires_at ?? created + 24 * HOUR, integration_identifier: null, invoice: null,
    invoice_creation: p.mode === 'payment' ? { enabled: p.invoice_creation?.enabled ?? false, invoice_data: { account_tax_ids: null, custom_fields: null, description: p.invoice_creation?.invoice_data?.description ?? null, footer: p.invoice_creation?.invoice_data?.footer ?? null, issuer: null, metadata: p.invoice_creation?.invoice_data?.metadata ?? {}, rendering_options: null } } : null,
    livemode: false, locale: p.locale ?? null, managed_payments: null, metadata: p.metadata ?? {}, mode: p.mode, origin_context: null, payment_intent: null, payment_link: null,
    payment_method_collection: p.mode === 'setup' ? 'always' : 'if_required', payment_method_configuration_details: null, payment_method_options: {},
    ...(p.excluded_payment_method_types ? { excluded_payment_method_types: p.excluded_payment_method_types } : {}),
    payment_method_types: offered(p), payment_status: p.mode === 'setup' ? 'no_payment_required' : 'unpaid', permissions: null,
    phone_number_collection: { enabled: false }, recovered_from: null,
    saved_payment_method_options: customer ? { allow_redisplay_filters: p.saved_payment_method_options?.allow_redisplay_filters ?? ['always'], payment_method_remove: p.saved_payment_method_options?.payment_method_remove ?? null, payment_method_save: p.saved_payment_method_options?.payment_method_save ?? null } : null,
    setup_intent: null, shipping_address_collection: null, shipping_cost: null, shipping_options: [], status: 'open', submit_type: p.submit_type ?? null, subscription: null,
    success_url: p.success_url ?? null, total_details: p.mode === 'payment' ? { amount_discount: 0, amount_shipping: 0, amount_tax: 0 } : null, ui_mode: 'hosted',
    url: `${emu.url}/c/pay/${id}`, wallet_options: null,
  };
  emu.checkoutSessions.set(id, session);
  emu.checkoutLineItems.set(id, items);
  sessionOptions.set(id, { paymentIntentData: p.payment_intent_data ?? {}, setupIntentData: p.setup_intent_data ?? {}, explicitTypes: offered(p) });
  return session;
}

/** The payment method types a session offers: allowed ones, else card and bank debit, less the excluded. */
const offered = (p: Obj): string[] => (p.allowed_payment_method_types ?? ['card', 'us_bank_account']).filter((t: string) => !(p.excluded_payment_method_types ?? []).includes(t));

/** What the session was created with beyond its visible fields. */
const sessionOptions = new Map<string, { paymentIntentData: Obj; setupIntentData: Obj; explicitTypes: string[] }>();

function sessionOr404(emu: StripeEmulator, id: string): Obj {
  const s = emu.checkoutSessions.get(id);
  if (!s) throw missing('checkout.session', id, 'session');
  return s;
}

function lineItemList(emu: StripeEmulator, id: string, query?: URLSearchParams) {
  const items = emu.checkoutLineItems.get(id) ?? [];
  return query ? listPage(items, query, `/v1/checkout/sessions/${id}/line_items`, 'line item') : { object: 'list', data: items, has_more: false, url: `/v1/checkout/sessions/${id}/line_items` };
}

export function expireCheckoutSession(emu: StripeEmulator, id: string): Obj {
  const session = sessionOr404(emu, id);
  if (session.status !== 'open') {
    throw invalid(`Only Checkout Sessions with a status in ["open"] can be expired. This Checkout Session has a status of "${session.status}".`);
  }
  session.status = 'expired';
  session.url = null;
  if (session.payment_intent) {
    const pi = emu.paymentIntents.get(session.payment_intent)!;
    if (pi.status === 'requires_payment_method') { pi.status = 'canceled'; pi.canceled_at = emu.tick(); pi.cancellation_reason = 'abandoned'; emu.emit('payment_intent.canceled', pi); }
  }
  emu.emit('checkout.session.expired', session);
  return session;
}

/** The customer pays on the hosted page (or the test helper does it for them). */
export function completeCheckoutSession(emu: StripeEmulator, id: string, paymentMethod: string, details: { email?: string; name?: string } = {}): CheckoutOutcome {
  const session = emu.checkoutSessions.get(id);
  if (!session) throw new Error(`no Checkout Session ${id}`);
  if (session.status !== 'open') throw new Error(`Checkout Session ${id} is ${session.status}, not open`);
  if (session.expires_at <= Math.floor(Date.now() / 1000)) { expireCheckoutSession(emu, id); throw new Error(`Checkout Session ${id} has expired`); }
  const test = TEST_PAYMENT_METHODS[paymentMethod];
  const opts = sessionOptions.get(id)!;
  if (!test && !emu.paymentMethods.has(paymentMethod)) throw new Error(`unknown payment method ${paymentMethod}`);
  const type = test?.type ?? emu.paymentMethods.get(paymentMethod)!.type;
  if (!opts.explicitTypes.includes(type)) throw new Error(`payment method type ${type} is not offered by session ${id} (payment_method_types: ${opts.explicitTypes.join(', ')})`);
  const customer = session.customer ? emu.customers.get(session.customer) : undefined;
  const email = details.email ?? customer?.email ?? session.customer_email ?? 'customer@example.com';
  const name = details.name ?? customer?.name ?? null;
  const previous = { status: 'open', payment_status: session.payment_status };
  let customerId: string | null = session.customer;
  if (!customerId && session.customer_creation === 'always') customerId = createCustomer(emu, { email, name }).id;
  session.customer = customerId;
  session.customer_details = { address: { city: null, country: 'US', line1: null, line2: null, postal_code: '94103', state: null }, business_name: null, email, individual_name: null, name, phone: null, tax_exempt: 'none', tax_ids: [] };
  if (session.automatic_tax.enabled) session.automatic_tax.status = 'complete';

  if (session.mode === 'setup') {
    const pm = resolvePaymentMethod(emu, paymentMethod, 'payment_method', { email, name: name ?? undefined });
    const state = emu.paymentMethodState.get(pm.id)!;
    if (state.behaviour === 'decline') {
      const code = state.declineCode ?? 'generic_decline';
      return { kind: 'declined', session, code: declineErrorCode(code), message: declineMessage(code) };
    }
    if (customerId) attach(emu, pm, customerId);
    const si = succeededSetupIntent(emu, customerId, pm, 'off_session', opts.setupIntentData.metadata ?? {});
    session.setup_intent = si.id;
    session.status = 'complete';
    session.url = null;
    emu.emit('checkout.session.completed', session, previous);
    return { kind: 'complete', session, paymentStatus: 'no_payment_required' };
  }

  let pi = session.payment_intent ? emu.paymentIntents.get(session.payment_intent)! : undefined;
  if (!pi) {
    const pid = opts.paymentIntentData;
    pi = newPaymentIntent(emu, {
      amount: session.amount_total, currency: session.currency, customer: customerId ?? undefined, metadata: pid.metadata ?? {}, description: pid.description,
      setup_future_usage: pid.setup_future_usage,
      receipt_email: pid.receipt_email, statement_descriptor_suffix: pid.statement_descriptor_suffix, allowed_payment_method_types: session.allowed_payment_method_types ?? undefined, excluded_payment_method_types: session.excluded_payment_method_types,
    });
    session.payment_intent = pi.id;
  }
  const result = confirm(emu, pi, paymentMethod, { offSession: false, authenticated: true, billing: { email, name: name ?? undefined } });
  if (result.kind === 'failed') {
    const err = pi.last_payment_error;
    return { kind: 'declined', session, code: err.code, message: err.message };
  }
  session.status = 'complete';
  session.url = null;
  if (result.kind === 'succeeded') {
    session.payment_status = 'paid';
    if (session.invoice_creation?.enabled) session.invoice = paidInvoice(emu, session, emu.checkoutLineItems.get(id)!, pi).id;
  }
  emu.emit('checkout.session.completed', session, previous);
  return { kind: 'complete', session, paymentStatus: session.payment_status };
}

/** A bank debit paying a completed session settled: async_payment_succeeded / _failed. */
export function checkoutAfterSettle(emu: StripeEmulator, pi: Obj): void {
  const session = [...emu.checkoutSessions.values()].find((s) => s.payment_intent === pi.id);
  if (!session || session.status !== 'complete' || session.payment_status !== 'unpaid') return;
  if (pi.status === 'succeeded') {
    session.payment_status = 'paid';
    if (session.invoice_creation?.enabled) session.invoice = paidInvoice(emu, session, emu.checkoutLineItems.get(session.id)!, pi).id;
    emu.emit('checkout.session.async_payment_succeeded', session, { payment_status: 'unpaid' });
  } else {
    emu.emit('checkout.session.async_payment_failed', session);
  }
}

export const checkoutRoutes: Route[] = [
  { method: 'POST', path: /^\/v1\/checkout\/sessions$/, run: (emu, _m, body) => createSession(emu, body) },
  {
    method: 'GET', path: /^\/v1\/checkout\/sessions\/([^/]+)$/, run(emu, m, _b, query) {
      const q = queryParams(query, {});
      return expandObject(emu, sessionOr404(emu, m[1]), q.expand, { line_items: () => lineItemList(emu, m[1]) });
    },
  },
  {
    method: 'GET', path: /^\/v1\/checkout\/sessions\/([^/]+)\/line_items$/, run(emu, m, _b, query) {
      sessionOr404(emu, m[1]);
      queryParams(query, {});
      return lineItemList(emu, m[1], query);
    },
  },
  {
    method: 'POST', path: /^\/v1\/checkout\/sessions\/([^/]+)\/expire$/, run(emu, m, body) {
      params(body, {});
      return expireCheckoutSession(emu, m[1]);
    },
  },
  {
    method: 'POST', path: /^\/v1\/checkout\/sessions\/([^/]+)$/, run(emu, m, body) {
      const p = params(body, { metadata: meta });
      const session = sessionOr404(emu, m[1]);
      if (p.metadata) {
        const next = { ...session.metadata, ...p.metadata };
        for (const [k, v] of Object.entries(body.metadata ?? {})) if (v === '') delete next[k];
        session.metadata = next;
      }
      return session;
    },
  },
  {
    method: 'GET', path: /^\/v1\/checkout\/sessions$/, run(emu, _m, _b, query) {
      const q = queryParams(query, { customer: str(), payment_intent: str(), status: en('complete', 'expired', 'open'), payment_link: str(), subscription: str(), created: obj({ gt: int(), gte: int(), lt: int(), lte: int() }), customer_details: obj({ email: str() }, ['email']) });
      const all = [...emu.checkoutSessions.values()].filter((s) => (!q.customer || s.customer === q.customer) && (!q.payment_intent || s.payment_intent === q.payment_intent)
        && (!q.status || s.status === q.status) && (!q.customer_details || s.customer_details?.email === q.customer_details.email)).reverse();
      return listPage(all, query, '/v1/checkout/sessions', 'checkout.session');
    },
  },
];
