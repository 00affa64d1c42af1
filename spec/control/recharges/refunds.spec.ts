// Refunds and disputes of auto-recharge payments (issue 22, as issue 21 point
// 4 for Checkout top-ups), against the Stripe emulator through the official
// SDK and signed webhooks: a recharge is charged and credited, then partly
// refunded → the customer's credit is debited what was refunded, once, through
// the same money outbox, however often (and concurrently) Stripe delivers the
// event; a second refund takes the rest; a dispute of another recharge debits
// it (each pausing auto-recharge: no new recharge); a payment naming a recharge
// payg did not make debits nothing.
import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import Stripe from 'stripe';
import { parseConfig } from '../../../control-service/src/config';
import { startService, type RunningService } from '../../../control-service/src/service';
import { StripeEmulator } from '../../../testkit/stripe-emulator';
import { until } from '../../support/until';
import { freePort } from '../top-ups/support';

const CONTROL = 'control-token-for-recharge-refund-specs';
const WEBHOOK_SECRET = 'whsec_recharge_refunds';

describe('auto-recharge: refunds and disputes of its payments are debited once (emulator, webhooks)', function () {
  this.timeout(60_000);
  let stripe: StripeEmulator;
  let svc: RunningService;
  let dir: string;
  let sdk: Stripe;
  let seq = 0;

  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-recharge-refunds-'));
    stripe = await new StripeEmulator().start();
    stripe.autoDeliver = false;
    sdk = new Stripe(stripe.secretKey, { host: '127.0.0.1', port: Number(new URL(stripe.url).port), protocol: 'http', telemetry: false });
    const port = await freePort();
    const config = parseConfig({
      listen: { port }, store: { sqlite: path.join(dir, 'payg.sqlite') },
      stripe: { poll: '0 0 1 1 *', max_requests_per_second: 100, retry: { max_attempts: 4, base_delay_ms: 10, max_delay_ms: 40 }, timeout_ms: 3000 },
      top_up: { checkout: { public_url: `http://127.0.0.1:${port}`, currencies: { usd: { presets: [1000, 2500], min: 500, max: 50_000 } } } },
      auto_recharge: { enabled: true, threshold: 500, amount: 2000, monthly_cap: 10_000, min_interval: '1ms', poll_interval: '50ms' },
      cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
      rules: [{ id: 'block', cohort: 'no-credit', status: 402, body: '{"error":"payment_required"}' }],
      metering: { default_cost: 100, settle: { schedule: '0 0 1 1 *' } },
    }, {
      STRIPE_SECRET_KEY: stripe.secretKey, STRIPE_API_BASE: stripe.url, STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET,
      PAYG_TOP_UP_SECRET: 'top-up-secret-for-recharge-refunds-0123456789', PAYG_CONTROL_TOKEN: CONTROL,
    }, dir);
    svc = await startService(config, { log: pino({ level: 'silent' }), sweepOnStart: false });
    stripe.webhook = { url: `${svc.url}/webhooks/stripe`, secret: WEBHOOK_SECRET };
  });
  afterEach(async () => {
    try { await svc?.stop(); } finally {
      await stripe.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  /** A customer with $10.00 of credit, a saved card as default payment method, opted in. */
  async function customer(): Promise<string> {
    const c = stripe.create({ name: 'Alice Liddell', email: 'alice@example.com', balance: -1000, currency: 'usd' });
    const pm = await sdk.paymentMethods.attach('pm_card_visa', { customer: c.id });
    await sdk.customers.update(c.id, { invoice_settings: { default_payment_method: pm.id }, metadata: { payg_auto_recharge: 'on' } });
    await svc.sync!.refresh(c.id);
    return c.id;
  }
  const spend = async (consumer: string, requests: number) => {
    const events = Array.from({ length: requests }, () => ({ id: `evt-${++seq}`, consumer, at: new Date().toISOString(), route: 'orders', status: 200 }));
    const res = await fetch(`${svc.url}/v1/usage`, { method: 'POST', body: JSON.stringify({ events }), headers: { 'content-type': 'application/json', authorization: `Bearer ${CONTROL}` } });
    expect(res.status).to.equal(200);
  };
  const balance = (id: string) => stripe.customers.get(id)!.balance as number;
  const meta = (t: { metadata?: unknown }) => (t.metadata ?? {}) as Record<string, string>;
  const debits = (id: string) => stripe.balanceTransactions.filter((t) => t.customer === id && (meta(t).payg_top_up_refund || meta(t).payg_top_up_dispute));
  const intents = (id: string) => [...stripe.paymentIntents.values()].filter((p: any) => p.customer === id && p.status === 'succeeded') as Array<Record<string, any>>;
  const eventsOf = (type: string) => stripe.events.filter((e) => e.type === type);
  /** Waits for the n-th recharge of $20.00 to be charged and credited (`spendFirst`: spent down from $10.00 to $4.00 first, a crossing). */
  async function recharged(id: string, n: number, spendFirst = n === 1): Promise<Record<string, any>> {
    if (spendFirst) await spend(id, 6);
    await until(() => intents(id).length === n && stripe.balanceTransactions.filter((t) => t.customer === id && meta(t).payg_recharge && meta(t).payg_top_up).length === n, 10_000, `recharge ${n} credited`);
    return intents(id)[n - 1];
  }

  it('a partial refund of a recharge is debited once, however often its event arrives; a second takes the rest', async () => {
    const alice = await customer();
    const pi = await recharged(alice, 1);
    // $10.00 − $6.00 of usage (settled later, not in Stripe's balance) + $20.00 recharge: Stripe holds −$30.00.
    expect(balance(alice)).to.equal(-3000);
    const r1 = await sdk.refunds.create({ payment_intent: pi.id, amount: 500 });
    const first = eventsOf('charge.refunded');
    expect(first).to.have.length(1);
    // Delivered three times, two at once: one debit.
    const statuses = await Promise.all([stripe.deliver(first[0]), stripe.deliver(first[0])]);
    expect(statuses).to.deep.equal([200, 200]);
    expect(await stripe.deliver(first[0])).to.equal(200);
    await until(() => debits(alice).length === 1, 5000, 'refund debited');
    expect(balance(alice)).to.equal(-2500);
    expect(debits(alice)[0]).to.include({ amount: 500 });
    expect(meta(debits(alice)[0])).to.deep.include({ payg_top_up_refund: r1.id, payg_recharge: pi.metadata.payg_recharge, payg_recharge_payment_intent: pi.id });
    const moves = await svc.store.moves({ customerId: alice });
    expect(moves.map((m) => [m.kind, m.status, m.amount, m.topUpId])).to.deep.equal([
      ['credit', 'confirmed', -2000, pi.metadata.payg_recharge], ['refund', 'confirmed', 500, pi.metadata.payg_recharge]]);
    // The rest refunded: both events delivered again, in any order; the second debit takes what is left, once.
    await sdk.refunds.create({ payment_intent: pi.id, amount: 1500 });
    const all = eventsOf('charge.refunded');
    await Promise.all([...all, ...all].reverse().map((e) => stripe.deliver(e)));
    await until(() => debits(alice).length === 2, 5000, 'second refund debited');
    for (const e of all) expect(await stripe.deliver(e)).to.equal(200);
    expect(debits(alice).map((t) => t.amount)).to.deep.equal([500, 1500]);
    // Back at $4.00 of credit, below the $5.00 threshold: the refund paused auto-recharge with its debit, so no new recharge
    // (spec/control/recharges/pause-on-refund).
    await svc.recharger!.pass();
    await svc.recharger!.drain();
    expect(intents(alice)).to.have.length(1);
    expect(balance(alice)).to.equal(-1000);
    expect(debits(alice)).to.have.length(2);
  });

  it('a dispute of a recharge is debited once', async () => {
    const alice = await customer();
    const pi = await recharged(alice, 1);
    stripe.openDispute(pi.id);
    for (const e of [...eventsOf('charge.dispute.created'), ...eventsOf('charge.dispute.created')]) expect(await stripe.deliver(e)).to.equal(200);
    await until(() => debits(alice).length === 1, 5000, 'dispute debited');
    expect(debits(alice)[0]).to.include({ amount: 2000 });
    // The dispute paused auto-recharge with its debit: the crossing it made charges nothing (spec/control/recharges/pause-on-refund).
    await svc.recharger!.pass();
    await svc.recharger!.drain();
    expect(intents(alice)).to.have.length(1);
    expect(balance(alice)).to.equal(-1000);
    for (const e of eventsOf('charge.dispute.created')) expect(await stripe.deliver(e)).to.equal(200);
    expect(debits(alice)).to.have.length(1);
  });

  it('a payment naming a recharge payg did not make, or another customer\'s, debits nothing', async () => {
    const alice = await customer();
    const pi = await recharged(alice, 1);
    const mallory = stripe.create({ name: 'Mallory', balance: -5000, currency: 'usd' });
    // Mallory's own payment, made to look like Alice's recharge and like one that never was.
    for (const recharge of [pi.metadata.payg_recharge, 'ar_not_one_of_ours']) {
      const forged = await sdk.paymentIntents.create({
        amount: 2000, currency: 'usd', customer: mallory.id, payment_method: 'pm_card_visa', confirm: true, off_session: true, metadata: { payg_recharge: recharge },
      });
      await sdk.refunds.create({ payment_intent: forged.id, amount: 2000 });
    }
    for (const e of eventsOf('charge.refunded')) expect(await stripe.deliver(e)).to.equal(200);
    expect(debits(alice)).to.have.length(0);
    expect(debits(mallory.id)).to.have.length(0);
    expect(balance(mallory.id)).to.equal(-5000);
  });
});
