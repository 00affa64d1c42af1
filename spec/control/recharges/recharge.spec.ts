// Auto-recharge end to end (SQLite) against the Stripe emulator through the
// official SDK: usage crosses the threshold → one off-session PaymentIntent on
// the saved card → credited through the top-ups outbox → served again; the
// monthly cap; declines, 3-D Secure, pause and re-arm by a manual top-up, with
// the emails that arrive; Stripe's 5xx and lost answers never charge twice.
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
import { freePort } from '../top-ups/support';

const CONTROL = 'control-token-for-recharge-specs';
const TOP_UP_SECRET = 'top-up-secret-for-tests-0123456789abcdef';

describe('auto-recharge (emulator, SQLite)', function () {
  this.timeout(60_000);
  let stripe: StripeEmulator;
  let smtp: SmtpCapture;
  let svc: RunningService;
  let dir: string;
  let sdk: Stripe;
  let seq = 0;

  async function start(autoRecharge: Record<string, unknown> = {}, timeoutMs = 3000): Promise<RunningService> {
    const port = await freePort();
    const config = parseConfig({
      listen: { port }, store: { sqlite: path.join(dir, 'payg.sqlite') },
      stripe: { poll: '0 0 1 1 *', max_requests_per_second: 100, retry: { max_attempts: 4, base_delay_ms: 10, max_delay_ms: 40 }, timeout_ms: timeoutMs },
      top_up: { checkout: { public_url: `http://127.0.0.1:${port}`, currencies: { usd: { presets: [1000, 2500], min: 500, max: 50_000 } } } },
      auto_recharge: { enabled: true, threshold: 500, amount: 2000, monthly_cap: 10_000, min_interval: '1ms', max_consecutive_failures: 3, poll_interval: '50ms', ...autoRecharge },
      cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
      rules: [{ id: 'block', cohort: 'no-credit', status: 402, body: '{"error":"payment_required","top_up_url":"{{top_up_url}}"}' }],
      metering: { default_cost: 100, settle: { schedule: '0 0 1 1 *' } },
      emails: (['failed', 'action_required', 'paused'] as const).map((event) => ({
        id: `auto-recharge-${event.replace('_', '-')}`, auto_recharge: event, from: { address: 'billing@example.com' },
        subject: `Auto-recharge ${event}`, text: path.join(dir, 'recharge.txt'),
      })),
      email_delivery: { poll_interval_ms: 20 },
    }, {
      STRIPE_SECRET_KEY: stripe.secretKey, STRIPE_API_BASE: stripe.url, PAYG_TOP_UP_SECRET: TOP_UP_SECRET, SMTP_URL: smtp.url, PAYG_CONTROL_TOKEN: CONTROL,
    }, dir);
    svc = await startService(config, { log: pino({ level: 'silent' }), sweepOnStart: false });
    await svc.sync!.sweep();
    return svc;
  }

  /** A customer with credit, a saved card as default payment method, opted in. */
  async function customer(card: string, credit = 1000, metadata: Record<string, string> = {}): Promise<string> {
    const c = stripe.create({ name: 'Alice Liddell', email: 'alice@example.com', balance: -credit, currency: 'usd' });
    const pm = await sdk.paymentMethods.attach(card, { customer: c.id });
    await sdk.customers.update(c.id, { invoice_settings: { default_payment_method: pm.id }, metadata: { payg_auto_recharge: 'on', ...metadata } });
    return c.id;
  }
  const spend = async (consumer: string, requests: number) => {
    const events = Array.from({ length: requests }, () => ({ id: `evt-${++seq}`, consumer, at: new Date().toISOString(), route: 'orders', status: 200 }));
    const res = await fetch(`${svc.url}/v1/usage`, { method: 'POST', body: JSON.stringify({ events }), headers: { 'content-type': 'application/json', authorization: `Bearer ${CONTROL}` } });
    expect(res.status).to.equal(200);
  };
  const decision = async (id: string) => (await fetch(`${svc.url}/v1/decisions/${id}`, { headers: { authorization: `Bearer ${CONTROL}` } })).json() as Promise<any>;
  const intents = (customerId: string) => [...stripe.paymentIntents.values()].filter((p: any) => p.customer === customerId) as Array<Record<string, any>>;
  const credits = (customerId: string) => stripe.balanceTransactions.filter((t) => t.customer === customerId && (t.metadata as Record<string, string>)?.payg_recharge);
  const credit = (customerId: string) => -(svc.engine.customer(customerId)!.estimatedBalance);

  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-recharges-'));
    fs.writeFileSync(path.join(dir, 'recharge.txt'), 'Hi {{customer.first_name}}, {{recharge.amount}}: {{recharge.reason}} ({{recharge.failures}}/{{recharge.max_failures}}). Top up: {{top_up_url}}');
    stripe = await new StripeEmulator().start();
    stripe.autoDeliver = false;
    smtp = await new SmtpCapture().start();
    sdk = new Stripe(stripe.secretKey, { host: '127.0.0.1', port: Number(new URL(stripe.url).port), protocol: 'http', telemetry: false });
  });
  afterEach(async () => {
    try { await svc?.stop(); } finally {
      await stripe.stop();
      await smtp.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a crossing charges the saved card once, off-session, and the credit lands through the top-ups outbox', async () => {
    const alice = await customer('pm_card_visa');
    await start();
    await spend(alice, 4); // $10 → $6: above the threshold, nothing
    await svc.recharger!.drain();
    expect(intents(alice)).to.have.length(0);
    await spend(alice, 2); // $6 → $4: crossed
    await until(() => credits(alice).length === 1 && credit(alice) === 2400, 10_000, 'recharged and credited');
    const [pi] = intents(alice);
    expect(pi).to.include({ amount: 2000, currency: 'usd', status: 'succeeded', confirmation_method: 'automatic' });
    expect(pi.metadata.payg_recharge).to.match(/^ar_/);
    expect(credits(alice)[0]).to.include({ amount: -2000 });
    expect((credits(alice)[0].metadata as Record<string, string>).payg_top_up).to.equal(pi.id);
    // Staying below the threshold plans nothing more; the decision is allow.
    await spend(alice, 1);
    await svc.recharger!.drain();
    expect(intents(alice)).to.have.length(1);
    expect((await decision(alice)).allow).to.equal(true);
    const moves = await svc.store.moves({ customerId: alice });
    expect(moves.map((m) => [m.kind, m.status, m.amount])).to.deep.equal([['credit', 'confirmed', -2000]]);
  });

  it('never past the monthly cap: succeeded + in flight stay within it', async () => {
    const alice = await customer('pm_card_visa', 1000, { payg_auto_recharge_monthly_cap: '4000' });
    await start();
    for (let round = 0; round < 4; round++) {
      const before = credits(alice).length;
      await spend(alice, Math.ceil((credit(alice) - 400) / 100)); // down to $4: a crossing each round
      await svc.recharger!.drain();
      if (round < 2) await until(() => credits(alice).length === before + 1, 10_000, `recharge ${round + 1}`);
    }
    await svc.recharger!.drain();
    expect(intents(alice).map((p) => p.amount)).to.deep.equal([2000, 2000]);
    const rows = await svc.store.recharges(alice, 10);
    expect(rows.map((r) => r.status)).to.deep.equal(['succeeded', 'succeeded']);
  });

  it('Stripe 500s and a lost answer: retried with the same key, one payment, one credit', async () => {
    const alice = await customer('pm_card_visa');
    await start();
    // Stripe answers 500 a while, then makes the charge and its answer is lost: the same key each time.
    stripe.loseAnswers(/^\/v1\/payment_intents$/, 1, 'POST');
    stripe.failNextMatching(/^\/v1\/payment_intents$/, 5, 500, { method: 'POST' });
    await spend(alice, 6);
    await until(() => credits(alice).length === 1 && credit(alice) === 2400, 15_000, 'recharged once');
    await new Promise((r) => setTimeout(r, 300));
    await svc.recharger!.drain();
    expect(intents(alice)).to.have.length(1);
    expect(credits(alice)).to.have.length(1);
  });

  it('charged, never answered, past the 24 hours of its idempotency key: found by its metadata, not charged again', async () => {
    const alice = await customer('pm_card_visa');
    await start({}, 400);
    stripe.holdAnswers(/^\/v1\/payment_intents$/, 'POST');
    await spend(alice, 6);
    await until(async () => ((await svc.store.recharges(alice, 1))[0]?.attempts ?? 0) >= 1 && intents(alice).length === 1, 15_000, 'charged, answer held');
    stripe.forgetIdempotencyKeys();
    stripe.holdAnswers(undefined);
    await until(() => credits(alice).length === 1 && credit(alice) === 2400, 15_000, 'credited');
    await svc.recharger!.drain();
    expect(intents(alice), 'one payment').to.have.length(1);
    expect(credits(alice)).to.have.length(1);
  });

  it('declined → the failed email with the top-up link; three in a row → paused and told; a manual top-up re-arms', async () => {
    const alice = await customer('pm_card_chargeDeclined');
    await start();
    const cross = async () => {
      // Back above the threshold (an operator's credit, not a top-up), then below it again.
      stripe.addBalanceTransaction(alice, -(Math.max(0, 1000 - credit(alice))), 'usd');
      await svc.sync!.refresh(alice);
      await spend(alice, Math.ceil((credit(alice) - 400) / 100));
    };
    for (let i = 1; i <= 3; i++) {
      await cross();
      await until(async () => (await svc.store.recharges(alice, 10)).filter((r) => r.status === 'failed').length === i, 10_000, `failure ${i}`);
    }
    const mails = await smtp.waitForCount(4, 10_000);
    const subjects = mails.map((m) => m.subject);
    expect(subjects.filter((s) => s === 'Auto-recharge failed')).to.have.length(3);
    expect(subjects.filter((s) => s === 'Auto-recharge paused')).to.have.length(1);
    expect(mails[0].text).to.include('$20.00').and.include('/top-up/v1.').and.include('(1/3)');
    expect((await svc.store.rechargeState(alice)).pausedAt).to.not.equal(null);
    // Paused: a crossing charges nothing.
    await cross();
    await svc.recharger!.drain();
    expect(await svc.store.recharges(alice, 10)).to.have.length(3);
    // A manual top-up through Checkout (a working card) re-arms it.
    const visa = await sdk.paymentMethods.attach('pm_card_visa', { customer: alice });
    await sdk.customers.update(alice, { invoice_settings: { default_payment_method: visa.id } });
    const row = await svc.store.recordTopUp({ id: 'tu_manual', customerId: alice, amount: 1000, currency: 'usd', createdAt: Date.now() });
    const session = await svc.topUps!.createSession(row, 'token');
    stripe.completeCheckoutSession(session.id, 'pm_card_visa');
    await svc.topUps!.creditSession(session.id);
    await svc.recharger!.pass();
    expect((await svc.store.rechargeState(alice))).to.deep.equal({ failures: 0, pausedAt: null });
    await svc.sync!.refresh(alice);
    await cross();
    await until(() => credits(alice).length === 1, 10_000, 'charged again after the re-arm');
  });

  it('authentication_required → the action-required email, with a link completing it through Checkout', async () => {
    const alice = await customer('pm_card_authenticationRequired');
    await start();
    await spend(alice, 6);
    await until(async () => (await svc.store.recharges(alice, 1))[0]?.status === 'action_required', 10_000, 'action required');
    const [mail] = await smtp.waitForCount(1, 10_000);
    expect(mail.subject).to.equal('Auto-recharge action_required');
    const link = /(http:\/\/127\.0\.0\.1:\d+\/top-up\/\S+)/.exec(mail.text ?? '')![1];
    const page = await fetch(link);
    expect(page.status).to.equal(200);
    expect(await page.text()).to.include('Add API credit');
    expect(credits(alice)).to.have.length(0);
  });

  it('a payment that takes seconds: a customer spending steadily ($5 threshold, $20 amount) is never refused', async () => {
    const alice = await customer('pm_card_visa', 2500);
    await start();
    stripe.paymentDelayMs = 1000;
    const refused: number[] = [];
    // $1 a request, about $2.5/s: each $20 recharge is asked for below $5 and lands a second (and a round trip) later.
    for (let i = 0; i < 50; i++) {
      await spend(alice, 1);
      if ((await decision(alice)).allow !== true) refused.push(i);
      await new Promise((r) => setTimeout(r, 400));
    }
    expect(refused, 'refused at').to.deep.equal([]);
    expect(credits(alice).length).to.be.at.least(2);
  });
});
