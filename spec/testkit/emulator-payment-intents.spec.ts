// Off-session PaymentIntents against the emulator through the official SDK:
// saved payment methods and defaults, each test method's outcome and error
// shape, idempotency keys, and the injectable delay / 500 / 429 / lost answer.
import { expect } from 'chai';
import Stripe from 'stripe';
import { StripeEmulator } from '../../testkit/stripe-emulator';
import { sdkFor, stripeError } from './sdk';

describe('Stripe emulator: payment methods and off-session PaymentIntents', () => {
  let emu: StripeEmulator;
  let stripe: Stripe;
  let customer: string;
  beforeEach(async () => {
    emu = await new StripeEmulator().start();
    stripe = sdkFor(emu);
    customer = emu.create({ email: 'ada@example.com' }).id;
  });
  afterEach(() => emu.stop());

  const saved = async (testId: string) => {
    const pm = await stripe.paymentMethods.attach(testId, { customer });
    await stripe.customers.update(customer, { invoice_settings: { default_payment_method: pm.id } });
    return pm.id;
  };
  const charge = (pm: string, extra: Partial<Stripe.PaymentIntentCreateParams> = {}, opts?: Stripe.RequestOptions) =>
    stripe.paymentIntents.create({ amount: 2000, currency: 'usd', customer, payment_method: pm, off_session: true, confirm: true, metadata: { recharge: 'r1' }, ...extra }, opts);

  it('attaches test methods, lists them, sets and refuses defaults as Stripe does', async () => {
    const visa = await saved('pm_card_visa');
    expect(visa).to.match(/^pm_/).and.not.equal('pm_card_visa');
    const mc = (await stripe.paymentMethods.attach('pm_card_mastercard', { customer })).id;
    const list = await stripe.paymentMethods.list({ customer, type: 'card' });
    expect(list.data.map((m) => m.id)).to.deep.equal([mc, visa]);
    expect((await stripe.customers.retrieve(customer) as Stripe.Customer).invoice_settings.default_payment_method).to.equal(visa);
    const expanded = await stripe.customers.retrieve(customer, { expand: ['invoice_settings.default_payment_method'] }) as Stripe.Customer;
    expect((expanded.invoice_settings.default_payment_method as Stripe.PaymentMethod).card?.last4).to.equal('4242');
    const other = emu.create().id;
    const foreign = (await stripe.paymentMethods.attach('pm_card_visa', { customer: other })).id;
    const err = await stripeError(stripe.customers.update(customer, { invoice_settings: { default_payment_method: foreign } }));
    expect(err).to.include({ statusCode: 400, param: 'invoice_settings[default_payment_method]' });
    expect(await stripeError(stripe.paymentMethods.attach('pm_card_visa', { customer: 'cus_nope' }))).to.include({ code: 'resource_missing', param: 'customer' });
    await stripe.paymentMethods.detach(visa);
    expect((await stripe.customers.retrieve(customer) as Stripe.Customer).invoice_settings.default_payment_method).to.equal(null);
  });

  it('pm_card_visa off-session: succeeded, a charge with its balance transaction, the events', async () => {
    const pi = await charge(await saved('pm_card_visa'));
    expect(pi).to.include({ object: 'payment_intent', status: 'succeeded', amount_received: 2000, customer });
    expect(pi.metadata).to.deep.equal({ recharge: 'r1' });
    const ch = await stripe.charges.retrieve(pi.latest_charge as string);
    expect(ch).to.include({ payment_intent: pi.id, status: 'succeeded', amount: 2000 });
    const txn = await stripe.balanceTransactions.retrieve(ch.balance_transaction as string);
    expect(txn).to.include({ amount: 2000, source: ch.id });
    expect(emu.events.map((e) => e.type)).to.include.members(['payment_intent.created', 'charge.succeeded', 'payment_intent.succeeded']);
    expect((await stripe.paymentIntents.list({ customer })).data.map((p) => p.id)).to.deep.equal([pi.id]);
    expect((await stripe.customers.retrieve(customer) as Stripe.Customer).balance).to.equal(0);
  });

  for (const [testId, decline, message] of [
    ['pm_card_chargeDeclined', 'generic_decline', 'Your card was declined.'],
    ['pm_card_chargeDeclinedInsufficientFunds', 'insufficient_funds', 'Your card has insufficient funds.'],
  ] as const) {
    it(`${testId}: 402 card_error card_declined (${decline}) carrying the PaymentIntent; payment_intent.payment_failed`, async () => {
      const err = await stripeError(charge(await saved(testId)));
      expect(err).to.include({ type: 'StripeCardError', statusCode: 402, code: 'card_declined', decline_code: decline, message });
      expect(err.raw.payment_intent).to.include({ status: 'requires_payment_method' });
      expect(err.raw.payment_intent.last_payment_error).to.include({ code: 'card_declined', decline_code: decline, type: 'card_error' });
      const pi = await stripe.paymentIntents.retrieve(err.raw.payment_intent.id);
      expect(pi.status).to.equal('requires_payment_method');
      expect((await stripe.charges.retrieve(err.raw.charge)).status).to.equal('failed');
      expect(emu.eventsOfType('payment_intent.payment_failed')).to.have.length(1);
    });
  }

  it('pm_card_authenticationRequired: off-session 402 authentication_required; on-session requires_action until the customer authenticates', async () => {
    const pm = await saved('pm_card_authenticationRequired');
    const err = await stripeError(charge(pm));
    expect(err).to.include({ type: 'StripeCardError', statusCode: 402, code: 'authentication_required', decline_code: 'authentication_required' });
    expect(err.raw.payment_intent.status).to.equal('requires_payment_method');
    const onSession = await stripe.paymentIntents.create({ amount: 2000, currency: 'usd', customer, payment_method: pm, confirm: true, return_url: 'http://127.0.0.1:9/back' });
    expect(onSession.status).to.equal('requires_action');
    expect(onSession.next_action?.type).to.equal('redirect_to_url');
    expect(emu.eventsOfType('payment_intent.requires_action')).to.have.length(1);
    emu.authenticatePaymentIntent(onSession.id);
    expect((await stripe.paymentIntents.retrieve(onSession.id)).status).to.equal('succeeded');
  });

  it('a bank debit is processing until it settles', async () => {
    const pi = await charge(await saved('pm_usBankAccount'), { allowed_payment_method_types: ['us_bank_account'] });
    expect(pi.status).to.equal('processing');
    emu.settlePaymentIntent(pi.id);
    expect((await stripe.paymentIntents.retrieve(pi.id)).status).to.equal('succeeded');
  });

  it('validation: amount not an integer, too small, missing currency, unknown param, off_session without confirm, unknown method', async () => {
    const pm = await saved('pm_card_visa');
    expect(await stripeError(charge(pm, { amount: 20.5 }))).to.include({ code: 'parameter_invalid_integer', param: 'amount' });
    expect(await stripeError(charge(pm, { amount: 10 }))).to.include({ code: 'amount_too_small', param: 'amount' });
    expect(await stripeError(stripe.paymentIntents.create({ amount: 2000 } as any))).to.include({ code: 'parameter_missing', param: 'currency' });
    expect(await stripeError(charge(pm, { colour: 'red' } as any))).to.include({ code: 'parameter_unknown', param: 'colour' });
    expect(await stripeError(stripe.paymentIntents.create({ amount: 2000, currency: 'usd', customer, payment_method: pm, off_session: true }))).to.include({ param: 'off_session' });
    expect(await stripeError(charge('pm_nope'))).to.include({ code: 'resource_missing', param: 'payment_method' });
    expect(await stripeError(stripe.paymentIntents.retrieve('pi_nope'))).to.include({ statusCode: 404, code: 'resource_missing' });
  });

  it('an idempotency key replays the first answer (also a decline) and refuses other parameters', async () => {
    const pm = await saved('pm_card_visa');
    const a = await charge(pm, {}, { idempotencyKey: 'recharge-1' });
    const b = await charge(pm, {}, { idempotencyKey: 'recharge-1' });
    expect(b.id).to.equal(a.id);
    expect(emu.paymentIntents.size).to.equal(1);
    const err = await stripeError(charge(pm, { amount: 3000 }, { idempotencyKey: 'recharge-1' }));
    expect(err).to.include({ type: 'StripeIdempotencyError', statusCode: 400 });
    const bad = await saved('pm_card_chargeDeclined');
    const d1 = await stripeError(charge(bad, {}, { idempotencyKey: 'recharge-2' }));
    const d2 = await stripeError(charge(bad, {}, { idempotencyKey: 'recharge-2' }));
    expect(d2.raw.payment_intent.id).to.equal(d1.raw.payment_intent.id);
    expect(emu.paymentIntents.size).to.equal(2);
    const event = emu.eventsOfType('payment_intent.succeeded')[0];
    expect(event.request).to.deep.include({ idempotency_key: 'recharge-1' });
  });

  it('injected faults: a delayed confirmation, a 500 before anything is done, an answer lost after the charge', async () => {
    const pm = await saved('pm_card_visa');
    emu.paymentDelayMs = 300;
    const t0 = Date.now();
    await charge(pm);
    expect(Date.now() - t0).to.be.at.least(290);
    emu.paymentDelayMs = 0;
    emu.failNextMatching(/^\/v1\/payment_intents$/, 1, 500);
    expect(await stripeError(charge(pm, {}, { idempotencyKey: 'k5' }))).to.include({ statusCode: 500 });
    expect(emu.paymentIntents.size).to.equal(1);
    emu.loseAnswers(/^\/v1\/payment_intents$/, 1, 'POST');
    const before = emu.requests.length;
    await charge(pm, {}, { idempotencyKey: 'k5' }).catch(() => undefined); // the SDK may retry a cut connection itself
    expect(emu.requests.length - before, 'the first answer was cut').to.be.at.least(1);
    expect(emu.paymentIntents.size, 'Stripe did it').to.equal(2);
    const retried = await charge(pm, {}, { idempotencyKey: 'k5' });
    expect(emu.paymentIntents.size, 'the retry with the same key charged nothing more').to.equal(2);
    expect(retried.status).to.equal('succeeded');
  });
});
