// Opting in on the top-up page: "top up X automatically when my credit falls
// below Y" pays X on Checkout with the card saved off-session; once credited,
// the card is the customer's default and the settings are in Stripe metadata;
// the next crossing charges it. Out-of-bounds choices are refused, nothing created.
import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { parseConfig } from '../../../control-service/src/config';
import { startService, type RunningService } from '../../../control-service/src/service';
import { signToken } from '../../../control-service/src/top-ups/token';
import { StripeEmulator } from '../../../testkit/stripe-emulator';
import { until } from '../../support/until';
import { formOf, freePort } from '../top-ups/support';

const CONTROL = 'control-token-for-opt-in-specs';
const TOP_UP_SECRET = 'top-up-secret-for-opt-in-0123456789abcdef';

describe('auto-recharge: opting in on the top-up page', function () {
  this.timeout(30_000);
  let stripe: StripeEmulator;
  let svc: RunningService;
  let dir: string;

  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-opt-in-'));
    stripe = await new StripeEmulator().start();
    stripe.autoDeliver = false;
    const port = await freePort();
    const config = parseConfig({
      listen: { port }, store: { sqlite: path.join(dir, 'payg.sqlite') },
      stripe: { poll: '0 0 1 1 *', max_requests_per_second: 100, retry: { max_attempts: 3, base_delay_ms: 10, max_delay_ms: 40 } },
      top_up: { checkout: { public_url: `http://127.0.0.1:${port}`, currencies: { usd: { presets: [1000, 2500], min: 500, max: 50_000 } } } },
      auto_recharge: { enabled: true, threshold: 500, amount: 2000, monthly_cap: 10_000, min_interval: '1ms', poll_interval: '50ms' },
      cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
      rules: [{ id: 'block', cohort: 'no-credit', body: '{"error":"payment_required","top_up_url":"{{top_up_url}}"}' }],
      metering: { default_cost: 100, settle: { schedule: '0 0 1 1 *' } },
    }, { STRIPE_SECRET_KEY: stripe.secretKey, STRIPE_API_BASE: stripe.url, PAYG_TOP_UP_SECRET: TOP_UP_SECRET, PAYG_CONTROL_TOKEN: CONTROL }, dir);
    svc = await startService(config, { log: pino({ level: 'silent' }), sweepOnStart: false });
  });
  afterEach(async () => {
    try { await svc?.stop(); } finally {
      await stripe.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  const post = (url: string, form: Record<string, string>) => fetch(url, { method: 'POST', redirect: 'manual', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(form).toString() });

  it('pays X now with the card saved off-session; then the card is the default, the settings are in Stripe metadata, and a crossing charges it', async () => {
    const alice = stripe.create({ name: 'Alice', email: 'alice@example.com', balance: 0, currency: 'usd' });
    await svc.sync!.sweep();
    const link = `${svc.url}/top-up/${signToken(TOP_UP_SECRET, alice.id, Date.now() + 3_600_000)}`;
    const html = await (await fetch(link)).text();
    expect(html).to.include('Top up automatically').and.include('name="auto_threshold"').and.include('value="5.00"').and.include('value="100.00"');
    const { nonce, action } = formOf(html);
    // Out of bounds: refused, nothing created.
    const refused = await post(new URL(action, link).toString(), { nonce, auto: 'on', custom: '20', auto_threshold: '5', auto_cap: '10' });
    expect(refused.status).to.equal(422);
    expect(await refused.text()).to.include('monthly limit');
    expect(stripe.checkoutSessions.size).to.equal(0);

    const res = await post(new URL(action, link).toString(), { nonce, auto: 'on', custom: '20', auto_threshold: '7.50', auto_cap: '60' });
    expect(res.status, await res.clone().text()).to.equal(303);
    const session = [...stripe.checkoutSessions.values()].find((s: any) => s.url === res.headers.get('location')) as Record<string, any>;
    expect(session).to.include({ mode: 'payment', customer: alice.id, amount_subtotal: 2000 });
    stripe.completeCheckoutSession(session.id, 'pm_card_visa');
    const pi = stripe.paymentIntents.get(session.payment_intent) as Record<string, any>;
    expect(pi.setup_future_usage).to.equal('off_session');
    await svc.topUps!.creditSession(session.id);
    await svc.recharger!.pass();
    const customer = stripe.customers.get(alice.id) as Record<string, any>;
    expect(customer.invoice_settings.default_payment_method).to.equal(pi.payment_method);
    expect(customer.metadata).to.include({ payg_auto_recharge: 'on', payg_auto_recharge_threshold: '750', payg_auto_recharge_amount: '2000', payg_auto_recharge_monthly_cap: '6000' });
    await svc.sync!.refresh(alice.id);

    // $20 → $7 crosses $7.50: the saved card is charged $20 off-session.
    const events = Array.from({ length: 13 }, (_, i) => ({ id: `e-${i}`, consumer: alice.id, at: new Date().toISOString(), route: 'api', status: 200 }));
    await fetch(`${svc.url}/v1/usage`, { method: 'POST', body: JSON.stringify({ events }), headers: { 'content-type': 'application/json', authorization: `Bearer ${CONTROL}` } });
    await until(() => stripe.balanceTransactions.some((t) => t.customer === alice.id && (t.metadata as Record<string, string>)?.payg_recharge), 10_000, 'recharged');
    const charged = [...stripe.paymentIntents.values()].filter((p: any) => p.customer === alice.id && p.metadata?.payg_recharge) as Array<Record<string, any>>;
    expect(charged).to.have.length(1);
    expect(charged[0]).to.include({ amount: 2000, status: 'succeeded', payment_method: pi.payment_method });
  });
});
