// A refund or a dispute of a payg payment (a Checkout top-up or an
// auto-recharge) pauses auto-recharge for that customer in the same store
// transaction as its debit's outbox row, so the debit that takes the credit
// below the threshold charges the card nothing (charging again right after a
// refund undoes it; after a dispute card networks see a red flag). The
// customer gets the paused email once, the console shows it paused, and only
// a manual top-up (or the operator) re-arms it; a redelivered event after the
// re-arm pauses nothing again. A fully refunded recharge frees its share of
// the monthly cap; a disputed one does not. Stripe SDK against the emulator,
// signed webhooks, real SMTP on loopback, the real service on SQLite and on
// PostgreSQL.
import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import Stripe from 'stripe';
import { parseConfig } from '../../../control-service/src/config';
import { startService, type RunningService } from '../../../control-service/src/service';
import { StripeEmulator } from '../../../testkit/stripe-emulator';
import { SmtpCapture } from '../../../testkit/smtp-capture';
import { until } from '../../support/until';
import { freshDatabase } from '../../support/postgres';
import { freePort } from '../top-ups/support';

const CONTROL = 'control-token-for-recharge-pause-specs';
const ADMIN = 'admin-token-for-recharge-pause-specs-0123456789';
const WEBHOOK_SECRET = 'whsec_recharge_pauses';

for (const backend of ['sqlite', 'postgres'] as const) describe(`auto-recharge: a refund or dispute pauses it before its debit (emulator, webhooks, SMTP, ${backend})`, function () {
  this.timeout(60_000);
  let stripe: StripeEmulator;
  let smtp: SmtpCapture;
  let svc: RunningService;
  let dir: string;
  let sdk: Stripe;
  let seq = 0;

  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-recharge-pauses-'));
    fs.writeFileSync(path.join(dir, 'paused.txt'), 'Hi {{customer.first_name}}, paused: {{recharge.reason}} ({{recharge.amount}}) Credit: {{credit.formatted}}. Top up: {{top_up_url}}');
    stripe = await new StripeEmulator().start();
    stripe.autoDeliver = false;
    smtp = await new SmtpCapture().start();
    sdk = new Stripe(stripe.secretKey, { host: '127.0.0.1', port: Number(new URL(stripe.url).port), protocol: 'http', telemetry: false });
    const port = await freePort();
    const config = parseConfig({
      listen: { port }, store: backend === 'sqlite' ? { sqlite: path.join(dir, 'payg.sqlite') } : { postgres: { url: await freshDatabase() } },
      stripe: { poll: '0 0 1 1 *', max_requests_per_second: 100, retry: { max_attempts: 4, base_delay_ms: 10, max_delay_ms: 40 }, timeout_ms: 3000 },
      top_up: { checkout: { public_url: `http://127.0.0.1:${port}`, currencies: { usd: { presets: [1000, 2500], min: 500, max: 50_000 } } } },
      auto_recharge: { enabled: true, threshold: 500, amount: 2000, monthly_cap: 10_000, min_interval: '1ms', poll_interval: '50ms' },
      cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
      rules: [{ id: 'block', cohort: 'no-credit', status: 402, body: '{"error":"payment_required"}' }],
      metering: { default_cost: 100, settle: { schedule: '0 0 1 1 *' } },
      emails: [{ id: 'auto-recharge-paused', auto_recharge: 'paused', from: { address: 'billing@example.com' }, subject: 'Auto-recharge paused', text: path.join(dir, 'paused.txt') }],
      email_delivery: { poll_interval_ms: 20 },
      console: { listen: { host: '127.0.0.1', port: 0 } },
    }, {
      STRIPE_SECRET_KEY: stripe.secretKey, STRIPE_API_BASE: stripe.url, STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET, SMTP_URL: smtp.url,
      PAYG_TOP_UP_SECRET: 'top-up-secret-for-recharge-pauses-0123456789', PAYG_CONTROL_TOKEN: CONTROL, PAYG_ADMIN_TOKEN: ADMIN,
    }, dir);
    svc = await startService(config, { log: pino({ level: 'silent' }), sweepOnStart: false });
    stripe.webhook = { url: `${svc.url}/webhooks/stripe`, secret: WEBHOOK_SECRET };
  });
  afterEach(async () => {
    try { await svc?.stop(); } finally {
      await stripe.stop();
      await smtp.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  /** A customer with $10.00 of credit, a saved card as default payment method, opted in. */
  async function customer(metadata: Record<string, string> = {}): Promise<string> {
    const c = stripe.create({ name: 'Alice Liddell', email: 'alice@example.com', balance: -1000, currency: 'usd' });
    const pm = await sdk.paymentMethods.attach('pm_card_visa', { customer: c.id });
    await sdk.customers.update(c.id, { invoice_settings: { default_payment_method: pm.id }, metadata: { payg_auto_recharge: 'on', ...metadata } });
    await svc.sync!.refresh(c.id);
    return c.id;
  }
  const spend = async (consumer: string, requests: number) => {
    const events = Array.from({ length: requests }, () => ({ id: `evt-${++seq}`, consumer, at: new Date().toISOString(), route: 'orders', status: 200 }));
    const res = await fetch(`${svc.url}/v1/usage`, { method: 'POST', body: JSON.stringify({ events }), headers: { 'content-type': 'application/json', authorization: `Bearer ${CONTROL}` } });
    expect(res.status).to.equal(200);
  };
  const meta = (t: { metadata?: unknown }) => (t.metadata ?? {}) as Record<string, string>;
  const debits = (id: string) => stripe.balanceTransactions.filter((t) => t.customer === id && (meta(t).payg_top_up_refund || meta(t).payg_top_up_dispute));
  /** Every PaymentIntent of the customer's recharges, whatever its status: the card charges asked for. */
  const rechargeIntents = (id: string) => [...stripe.paymentIntents.values()].filter((p: any) => p.customer === id && p.metadata?.payg_recharge) as Array<Record<string, any>>;
  const rechargeCredits = (id: string) => stripe.balanceTransactions.filter((t) => t.customer === id && meta(t).payg_recharge && meta(t).payg_top_up);
  const eventsOf = (type: string) => stripe.events.filter((e) => e.type === type);
  const credit = (id: string) => -(svc.engine.customer(id)!.estimatedBalance);
  /** The console's view of the customer's auto-recharge (what the operator sees). */
  async function consoleView(id: string): Promise<Record<string, any>> {
    const login = await fetch(`${svc.console!.url}api/session`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: ADMIN }) });
    expect(login.status).to.equal(200);
    const res = await fetch(`${svc.console!.url}api/customers/${id}`, { headers: { cookie: login.headers.get('set-cookie')!.split(';')[0] } });
    expect(res.status).to.equal(200);
    return ((await res.json()) as { auto_recharge: Record<string, any> }).auto_recharge;
  }
  /** A manual top-up of `amount` through Checkout, credited (the success page's path). */
  async function topUp(id: string, topUpId: string, amount: number): Promise<string> {
    const row = await svc.store.recordTopUp({ id: topUpId, customerId: id, amount, currency: 'usd', createdAt: Date.now() });
    const session = await svc.topUps!.createSession(row, 'token');
    stripe.completeCheckoutSession(session.id, 'pm_card_visa');
    expect((await svc.topUps!.creditSession(session.id)).outcome).to.equal('applied');
    await until(async () => (await svc.store.moves({ topUpId })).some((m) => m.kind === 'credit' && m.status === 'confirmed'), 10_000, `top-up ${topUpId} credited`);
    return (await svc.store.topUp(topUpId))!.paymentIntent!;
  }
  /** Everything the leader would do now: planned recharges charged, pauses re-armed; then nothing left running. */
  async function settle(): Promise<void> {
    await svc.recharger!.pass();
    await svc.recharger!.drain();
  }

  it('a dispute of a recharge is debited once, charges no new PaymentIntent, pauses auto-recharge (console, one email)', async () => {
    const alice = await customer();
    await spend(alice, 6); // $10 → $4: crossed, one recharge of $20
    await until(() => rechargeCredits(alice).length === 1 && credit(alice) === 2400, 10_000, 'recharged and credited');
    const [pi] = rechargeIntents(alice);
    stripe.openDispute(pi.id);
    const [disputed] = eventsOf('charge.dispute.created');
    // Delivered twice at once, then again: one debit.
    expect(await Promise.all([stripe.deliver(disputed), stripe.deliver(disputed)])).to.deep.equal([200, 200]);
    expect(await stripe.deliver(disputed)).to.equal(200);
    // $24 − $20 disputed = $4, below the $5 threshold: without the pause, a crossing that charges the card again.
    await until(() => debits(alice).length === 1 && credit(alice) === 400, 10_000, 'dispute debited and read back');
    expect(debits(alice)[0]).to.include({ amount: 2000 });
    await settle();
    expect(rechargeIntents(alice)).to.have.length(1);
    expect(await svc.store.recharges(alice, 10)).to.have.length(1);
    expect((await svc.store.rechargeState(alice)).pausedAt).to.not.equal(null);
    expect(await consoleView(alice)).to.include({ paused: true });
    const [mail] = await smtp.waitForCount(1, 10_000);
    expect(mail.subject).to.equal('Auto-recharge paused');
    expect(mail.text, mail.text).to.include('disputed').and.include('($20.00) Credit: $4.00.').and.include('/top-up/v1.');
    // Spending further below the threshold, and the event once more: still nothing charged, debited or mailed again.
    await spend(alice, 2);
    expect(await stripe.deliver(disputed)).to.equal(200);
    await settle();
    expect(rechargeIntents(alice)).to.have.length(1);
    expect(debits(alice)).to.have.length(1);
    expect(await svc.store.emailLog({ customerId: alice, limit: 10 })).to.have.length(1);
  });

  it('a refund of a Checkout top-up that crosses the threshold charges no recharge; a manual top-up re-arms, and the refund seen again pauses nothing', async () => {
    const alice = await customer();
    const paid = await topUp(alice, 'tu_refunded', 1000); // $20
    await spend(alice, 6); // $14: above the threshold
    await settle();
    expect(rechargeIntents(alice)).to.have.length(0);
    await sdk.refunds.create({ payment_intent: paid });
    const [refunded] = eventsOf('charge.refunded');
    expect(await stripe.deliver(refunded)).to.equal(200);
    // $14 − $10 refunded = $4: crossed by the refund's debit, and nothing charged.
    await until(() => debits(alice).length === 1 && credit(alice) === 400, 10_000, 'refund debited and read back');
    await settle();
    expect(rechargeIntents(alice)).to.have.length(0);
    expect(await svc.store.recharges(alice, 10)).to.have.length(0);
    expect(await consoleView(alice)).to.include({ paused: true });
    const [mail] = await smtp.waitForCount(1, 10_000);
    expect(mail.text).to.include('refunded');
    // A manual top-up re-arms: $4 + $10 = $14, then spent below the threshold: charged once.
    await topUp(alice, 'tu_manual', 1000);
    await settle();
    expect(await svc.store.rechargeState(alice)).to.deep.equal({ failures: 0, pausedAt: null });
    // The old refund's event again (Stripe redelivers for days): its debit is there, so it pauses nothing.
    expect(await stripe.deliver(refunded)).to.equal(200);
    expect((await svc.store.rechargeState(alice)).pausedAt).to.equal(null);
    await spend(alice, 10); // $14 → $4
    await until(() => rechargeCredits(alice).length === 1 && credit(alice) === 2400, 10_000, 'recharged after the re-arm');
    expect(rechargeIntents(alice)).to.have.length(1);
    expect(await consoleView(alice)).to.include({ paused: false });
  });

  it('a fully refunded recharge frees its share of the monthly cap; a disputed one does not', async () => {
    // Cap $40, amount $20: two recharges a month.
    const alice = await customer({ payg_auto_recharge_monthly_cap: '4000' });
    await spend(alice, 6);
    await until(() => rechargeCredits(alice).length === 1, 10_000, 'first recharge');
    const [first] = rechargeIntents(alice);
    await sdk.refunds.create({ payment_intent: first.id });
    expect(await stripe.deliver(eventsOf('charge.refunded')[0])).to.equal(200);
    await until(() => debits(alice).length === 1 && credit(alice) === 400, 10_000, 'refund debited');
    // Re-armed by a manual top-up of $10 ($14), then crossings: the refunded one is not counted, so two more fit.
    await topUp(alice, 'tu_rearm_1', 1000);
    await settle();
    await spend(alice, 10);
    await until(() => rechargeCredits(alice).length === 2 && credit(alice) === 2400, 10_000, 'second recharge');
    await spend(alice, 20);
    await until(() => rechargeCredits(alice).length === 3 && credit(alice) === 2400, 10_000, 'third recharge: the refunded one freed its share');
    const third = rechargeIntents(alice)[2];
    // The third disputed, re-armed again: $40 succeeded and not refunded this month → the cap holds, nothing charged.
    stripe.openDispute(third.id);
    expect(await stripe.deliver(eventsOf('charge.dispute.created')[0])).to.equal(200);
    await until(() => debits(alice).length === 2 && credit(alice) === 400, 10_000, 'dispute debited');
    await topUp(alice, 'tu_rearm_2', 1000);
    await settle();
    expect((await svc.store.rechargeState(alice)).pausedAt).to.equal(null);
    await spend(alice, 10);
    await until(() => credit(alice) === 400, 10_000, 'spent below the threshold');
    await settle();
    expect(rechargeIntents(alice)).to.have.length(3);
  });

  it('a recharge planned before the pause and not yet sent is dropped: nothing charged', async () => {
    const alice = await customer();
    const paid = await topUp(alice, 'tu_before', 1000);
    // A crossing committed just before the refund, its recharge due later (as after min_interval): planned, not sent.
    await svc.store.saveChanges({ upserts: [], deletes: [], transitions: [], recharges: [{ customerId: alice, currency: 'usd', settings: { threshold: 500, amount: 2000, monthlyCap: 10_000 }, at: Date.now() + 3_600_000, minIntervalMs: 1 }] });
    const [planned] = await svc.store.recharges(alice, 1);
    expect(planned).to.include({ status: 'planned', attempts: 0 });
    await sdk.refunds.create({ payment_intent: paid });
    expect(await stripe.deliver(eventsOf('charge.refunded')[0])).to.equal(200);
    await until(() => debits(alice).length === 1, 10_000, 'refund debited');
    expect(await svc.recharger!.charge(planned)).to.equal(undefined);
    expect(await svc.store.recharge(planned.id)).to.include({ status: 'failed', failureCode: 'paused' });
    expect(rechargeIntents(alice)).to.have.length(0);
  });
});
