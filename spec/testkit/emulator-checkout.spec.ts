// The Stripe emulator's Checkout Sessions through the official SDK: create,
// retrieve with expand, list, expire, paying with test methods (sync and bank
// debit), setup mode, invoices, events — and Stripe's validation errors.
import { expect } from 'chai';
import type Stripe from 'stripe';
import http from 'node:http';
import { StripeEmulator } from '../../testkit/stripe-emulator';
import { sdkFor, stripeError } from './sdk';

describe('Stripe emulator: Checkout Sessions', () => {
  let emu: StripeEmulator;
  let stripe: Stripe;
  let customer: string;
  beforeEach(async () => {
    emu = await new StripeEmulator().start();
    stripe = sdkFor(emu);
    customer = emu.create({ email: 'ada@example.com', name: 'Ada' }).id;
  });
  afterEach(() => emu.stop());

  const topUp = (extra: Partial<Stripe.Checkout.SessionCreateParams> = {}) => stripe.checkout.sessions.create({
    mode: 'payment', customer,
    line_items: [{ quantity: 1, price_data: { currency: 'usd', unit_amount: 2000, product_data: { name: 'API credit' } } }],
    metadata: { top_up: 'tu_1' }, success_url: 'http://127.0.0.1:9/done?s={CHECKOUT_SESSION_ID}', cancel_url: 'http://127.0.0.1:9/cancel',
    client_reference_id: 'tu_1', ...extra,
  });

  it('creates an open session with a url on loopback, retrieves it with line_items and lists it by customer', async () => {
    const s = await topUp({ invoice_creation: { enabled: true }, payment_intent_data: { setup_future_usage: 'off_session', metadata: { top_up: 'tu_1' } } });
    expect(s).to.include({ object: 'checkout.session', mode: 'payment', status: 'open', payment_status: 'unpaid', amount_total: 2000, currency: 'usd', customer, payment_intent: null, client_reference_id: 'tu_1' });
    expect(s.id).to.match(/^cs_test_/);
    expect(new URL(s.url!).hostname).to.equal('127.0.0.1');
    expect(s.metadata).to.deep.equal({ top_up: 'tu_1' });
    expect(s.invoice_creation?.enabled).to.equal(true);
    const again = await stripe.checkout.sessions.retrieve(s.id, { expand: ['line_items'] });
    expect(again.line_items!.data[0]).to.include({ object: 'item', amount_total: 2000, quantity: 1, description: 'API credit' });
    expect(again.line_items!.data[0].price!.unit_amount).to.equal(2000);
    const items = await stripe.checkout.sessions.listLineItems(s.id);
    expect(items.data).to.have.length(1);
    const list = await stripe.checkout.sessions.list({ customer });
    expect(list.data.map((x) => x.id)).to.deep.equal([s.id]);
  });

  it('paid with pm_card_visa: complete/paid, a succeeded PaymentIntent and charge, an invoice, the events — and no balance change', async () => {
    const s = await topUp({ invoice_creation: { enabled: true }, payment_intent_data: { metadata: { top_up: 'tu_1' } } });
    const outcome = emu.completeCheckoutSession(s.id, 'pm_card_visa');
    expect(outcome.kind).to.equal('complete');
    const done = await stripe.checkout.sessions.retrieve(s.id, { expand: ['payment_intent'] });
    expect(done).to.include({ status: 'complete', payment_status: 'paid', url: null });
    const pi = done.payment_intent as Stripe.PaymentIntent;
    expect(pi).to.include({ status: 'succeeded', amount: 2000, amount_received: 2000, customer });
    expect(pi.metadata).to.deep.equal({ top_up: 'tu_1' });
    const charge = await stripe.charges.retrieve(pi.latest_charge as string);
    expect(charge).to.include({ status: 'succeeded', paid: true, amount: 2000, amount_refunded: 0, refunded: false, payment_intent: pi.id });
    expect(charge.balance_transaction).to.match(/^txn_/);
    const invoice = await stripe.invoices.retrieve(done.invoice as string);
    expect(invoice).to.include({ status: 'paid', amount_paid: 2000, customer });
    expect((await stripe.checkout.sessions.list({ payment_intent: pi.id })).data.map((x) => x.id)).to.deep.equal([s.id]);
    const types = emu.events.map((e) => e.type);
    expect(types).to.include.members(['payment_intent.succeeded', 'charge.succeeded', 'checkout.session.completed', 'invoice.paid']);
    const completed = (await stripe.events.list({ type: 'checkout.session.completed' })).data[0];
    expect(completed).to.include({ object: 'event', livemode: false, api_version: '2026-10-28.endive', type: 'checkout.session.completed' });
    expect((completed.data.object as Stripe.Checkout.Session).payment_status).to.equal('paid');
    expect(await stripe.events.retrieve(completed.id)).to.deep.equal(completed);
    expect((await stripe.customers.retrieve(customer) as Stripe.Customer).balance, 'Checkout never credits the balance').to.equal(0);
    expect(types).not.to.include('customer.updated');
  });

  it('a declined card leaves the session open with the error; a second card then pays the same PaymentIntent', async () => {
    const s = await topUp();
    const declined = emu.completeCheckoutSession(s.id, 'pm_card_chargeDeclinedInsufficientFunds');
    expect(declined).to.include({ kind: 'declined', code: 'card_declined', message: 'Your card has insufficient funds.' });
    expect((await stripe.checkout.sessions.retrieve(s.id)).status).to.equal('open');
    expect(emu.completeCheckoutSession(s.id, 'pm_card_mastercard').kind).to.equal('complete');
    const done = await stripe.checkout.sessions.retrieve(s.id);
    expect(done.payment_status).to.equal('paid');
    expect(emu.eventsOfType('checkout.session.completed')).to.have.length(1);
  });

  it('a bank debit completes unpaid, then async_payment_succeeded (or _failed) when it settles', async () => {
    const a = await topUp({ invoice_creation: { enabled: true } });
    emu.completeCheckoutSession(a.id, 'pm_usBankAccount');
    let s = await stripe.checkout.sessions.retrieve(a.id, { expand: ['payment_intent'] });
    expect(s).to.include({ status: 'complete', payment_status: 'unpaid', invoice: null });
    expect((s.payment_intent as Stripe.PaymentIntent).status).to.equal('processing');
    emu.settlePaymentIntent((s.payment_intent as Stripe.PaymentIntent).id, 'succeeded');
    s = await stripe.checkout.sessions.retrieve(a.id);
    expect(s.payment_status).to.equal('paid');
    expect(s.invoice).to.match(/^in_/);
    const ok = emu.eventsOfType('checkout.session.async_payment_succeeded');
    expect(ok).to.have.length(1);
    expect((ok[0].data.object as Stripe.Checkout.Session).payment_status).to.equal('paid');

    const b = await topUp();
    emu.completeCheckoutSession(b.id, 'pm_usBankAccount_insufficientFunds');
    const pi = (await stripe.checkout.sessions.retrieve(b.id)).payment_intent as string;
    emu.settlePaymentIntent(pi, 'failed');
    expect(emu.eventsOfType('checkout.session.async_payment_failed').map((e) => (e.data.object as Stripe.Checkout.Session).id)).to.deep.equal([b.id]);
    expect((await stripe.paymentIntents.retrieve(pi)).status).to.equal('requires_payment_method');
  });

  it('setup mode saves the card on the customer through a SetupIntent', async () => {
    const s = await stripe.checkout.sessions.create({ mode: 'setup', customer, currency: 'usd', success_url: 'http://127.0.0.1:9/ok', setup_intent_data: { metadata: { why: 'auto-recharge' } } });
    expect(s).to.include({ payment_status: 'no_payment_required', amount_total: null });
    emu.completeCheckoutSession(s.id, 'pm_card_visa');
    const done = await stripe.checkout.sessions.retrieve(s.id, { expand: ['setup_intent'] });
    const si = done.setup_intent as Stripe.SetupIntent;
    expect(si).to.include({ status: 'succeeded', customer, usage: 'off_session' });
    const methods = await stripe.customers.listPaymentMethods(customer);
    expect(methods.data.map((m) => m.id)).to.deep.equal([si.payment_method]);
    expect(methods.data[0].card).to.include({ brand: 'visa', last4: '4242' });
  });

  it('setup_future_usage saves the paying card; it can become the default and pay off-session later', async () => {
    const s = await topUp({ payment_intent_data: { setup_future_usage: 'off_session' }, saved_payment_method_options: { payment_method_save: 'enabled' } });
    emu.completeCheckoutSession(s.id, 'pm_card_visa');
    const pi = await stripe.paymentIntents.retrieve((await stripe.checkout.sessions.retrieve(s.id)).payment_intent as string);
    expect(pi.setup_future_usage).to.equal('off_session');
    const pm = pi.payment_method as string;
    const c = await stripe.customers.update(customer, { invoice_settings: { default_payment_method: pm } });
    expect(c.invoice_settings.default_payment_method).to.equal(pm);
    const again = await stripe.paymentIntents.create({ amount: 2000, currency: 'usd', customer, payment_method: pm, off_session: true, confirm: true });
    expect(again.status).to.equal('succeeded');
  });

  it('expire: status expired, checkout.session.expired; an expired or paid session cannot be expired again', async () => {
    const s = await topUp();
    const expired = await stripe.checkout.sessions.expire(s.id);
    expect(expired).to.include({ status: 'expired', url: null });
    expect(emu.eventsOfType('checkout.session.expired')).to.have.length(1);
    const err = await stripeError(stripe.checkout.sessions.expire(s.id));
    expect(err).to.include({ type: 'StripeInvalidRequestError', statusCode: 400 });
    expect(() => emu.completeCheckoutSession(s.id, 'pm_card_visa')).to.throw(/expired/);
  });

  describe('validation, as Stripe answers it', () => {
    const base = { mode: 'payment' as const, success_url: 'http://127.0.0.1:9/ok' };
    it('missing line_items in payment mode → parameter_missing', async () => {
      const err = await stripeError(stripe.checkout.sessions.create({ ...base, customer }));
      expect(err).to.include({ type: 'StripeInvalidRequestError', statusCode: 400, code: 'parameter_missing', param: 'line_items' });
    });
    it('unit_amount not an integer → parameter_invalid_integer naming the nested param', async () => {
      const err = await stripeError(stripe.checkout.sessions.create({ ...base, line_items: [{ quantity: 1, price_data: { currency: 'usd', unit_amount: 12.5, product_data: { name: 'x' } } }] }));
      expect(err).to.include({ code: 'parameter_invalid_integer', param: 'line_items[0][price_data][unit_amount]', message: 'Invalid integer: 12.5' });
    });
    it('an unknown parameter → parameter_unknown', async () => {
      const err = await stripeError(stripe.checkout.sessions.create({ ...base, customer, bogus: 1 } as any));
      expect(err).to.include({ code: 'parameter_unknown', param: 'bogus', message: 'Received unknown parameter: bogus' });
      const nested = await stripeError(stripe.checkout.sessions.create({ ...base, line_items: [{ quantity: 1, price_data: { currency: 'usd', unit_amount: 100, product_data: { name: 'x', colour: 'red' } } }] } as any));
      expect(nested).to.include({ code: 'parameter_unknown', param: 'line_items[0][price_data][product_data][colour]' });
    });
    it('missing mode, quantity or product name; a bad enum, URL or currency; an unknown customer; a total under $0.50', async () => {
      const li = (pd: object, q: number | null = 1) => [{ quantity: q ?? undefined, price_data: { currency: 'usd', unit_amount: 100, product_data: { name: 'x' }, ...pd } }] as any;
      expect(await stripeError(stripe.checkout.sessions.create({ success_url: base.success_url, line_items: li({}) } as any))).to.include({ code: 'parameter_missing', param: 'mode' });
      expect(await stripeError(stripe.checkout.sessions.create({ ...base, line_items: li({}, null) }))).to.include({ code: 'parameter_missing', param: 'line_items[0][quantity]' });
      expect(await stripeError(stripe.checkout.sessions.create({ ...base, line_items: li({ product_data: { description: 'no name' } }) }))).to.include({ code: 'parameter_missing', param: 'line_items[0][price_data][product_data][name]' });
      expect(await stripeError(stripe.checkout.sessions.create({ ...base, mode: 'pay' as any, line_items: li({}) }))).to.include({ param: 'mode', message: 'Invalid mode: must be one of payment, setup, or subscription' });
      expect(await stripeError(stripe.checkout.sessions.create({ ...base, success_url: 'not a url', line_items: li({}) }))).to.include({ param: 'success_url', code: 'url_invalid' });
      expect(await stripeError(stripe.checkout.sessions.create({ ...base, line_items: li({ currency: 'usdx' }) }))).to.include({ param: 'line_items[0][price_data][currency]' });
      expect(await stripeError(stripe.checkout.sessions.create({ ...base, customer: 'cus_nope', line_items: li({}) }))).to.include({ code: 'resource_missing', param: 'customer' });
      expect(await stripeError(stripe.checkout.sessions.create({ ...base, line_items: li({ unit_amount: 10 }) }))).to.include({ code: 'amount_too_small' });
      expect(await stripeError(stripe.checkout.sessions.create({ mode: 'setup', customer, currency: 'usd', line_items: li({}) }))).to.include({ param: 'line_items' });
      expect(await stripeError(stripe.checkout.sessions.create({ ...base, line_items: li({}), customer_update: { address: 'auto' } }))).to.include({ param: 'customer_update' });
      expect(await stripeError(stripe.checkout.sessions.create({ ...base, customer, line_items: li({}), payment_method_types: ['card'] } as any))).to.include({ code: 'parameter_unknown', param: 'payment_method_types' });
    });
    it('automatic_tax needs the customer address collected (customer_update[address]=auto), as in Stripe', async () => {
      const err = await stripeError(topUp({ automatic_tax: { enabled: true } }));
      expect(err).to.include({ statusCode: 400, param: 'automatic_tax[enabled]' });
      const ok = await topUp({ automatic_tax: { enabled: true }, customer_update: { address: 'auto' } });
      expect(ok.automatic_tax.enabled).to.equal(true);
      emu.completeCheckoutSession(ok.id, 'pm_card_visa');
      expect((await stripe.checkout.sessions.retrieve(ok.id)).automatic_tax.status).to.equal('complete');
    });
    it('retrieving an unknown session → 404 resource_missing', async () => {
      const err = await stripeError(stripe.checkout.sessions.retrieve('cs_test_nope'));
      expect(err).to.include({ statusCode: 404, code: 'resource_missing' });
    });
  });

  it('the hosted page answers a plain form post: declined re-renders with the error, paid redirects to success_url', async () => {
    const s = await topUp();
    const post = (pm: string) => new Promise<{ status: number; location?: string; body: string }>((resolve, reject) => {
      const u = new URL(s.url!);
      const req = http.request({ host: u.hostname, port: u.port, path: u.pathname, method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' } }, (res) => {
        let body = ''; res.on('data', (c) => { body += c; }); res.on('end', () => resolve({ status: res.statusCode!, location: res.headers.location, body }));
      });
      req.on('error', reject); req.end(`email=a%40example.com&payment_method=${pm}`);
    });
    const declined = await post('pm_card_chargeDeclined');
    expect(declined.status).to.equal(402);
    expect(declined.body).to.contain('Your card was declined.');
    const paid = await post('pm_card_visa');
    expect(paid.status).to.equal(303);
    expect(paid.location).to.equal(`http://127.0.0.1:9/done?s=${s.id}`);
    expect((await stripe.checkout.sessions.retrieve(s.id)).customer_details?.email).to.equal('a@example.com');
  });
});
