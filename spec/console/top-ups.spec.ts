// The console's API on a whole service (Stripe emulator through the official
// SDK, webhooks, the top-up page): a customer buys two top-ups, one is refunded
// in two parts, the other disputed, a third form is left at Checkout. The
// customer's page lists each with its amount, status and a link to the
// payment, the refund or the dispute in the Stripe Dashboard (built from
// console.stripe_dashboard_url), and the overview counts today's.
import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import Stripe from 'stripe';
import { parseConfig } from '../../control-service/src/config';
import { startService, type RunningService } from '../../control-service/src/service';
import { StripeEmulator } from '../../testkit/stripe-emulator';
import { formOf, freePort } from '../control/top-ups/support';
import { until } from '../support/until';

const WEBHOOK_SECRET = 'whsec_console_top_ups';
const ADMIN_TOKEN = 'console-top-ups-admin-token';

describe('console: top-ups, refunds and disputes (emulator, webhooks)', function () {
  this.timeout(30_000);
  let stripe: StripeEmulator;
  let svc: RunningService;
  let dir: string;
  let sdk: Stripe;
  let cookie: string;

  const sessions = () => [...stripe.checkoutSessions.values()] as Array<Record<string, any>>;
  const deliverAll = async (type: string) => { for (const e of stripe.events.filter((x) => x.type === type)) expect(await stripe.deliver(e), type).to.equal(200); };
  const consoleGet = async (p: string) => {
    const res = await fetch(`${svc.console!.url}api/${p}`, { headers: { cookie } });
    expect(res.status, p).to.equal(200);
    return res.json() as Promise<any>;
  };

  /** Through the 402's link and the page: a session for `preset`. */
  async function buy(customer: string, preset: string): Promise<Record<string, any>> {
    const decision = await (await fetch(`${svc.url}/v1/decisions/${customer}`)).json() as { body: string };
    const link = JSON.parse(decision.body).top_up_url as string;
    const { nonce, action } = formOf(await (await fetch(link)).text());
    const res = await fetch(new URL(action, link), { method: 'POST', redirect: 'manual', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams({ nonce, preset }).toString() });
    expect(res.status).to.equal(303);
    return sessions().find((s) => s.url === res.headers.get('location'))!;
  }

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-console-top-ups-'));
    stripe = await new StripeEmulator().start();
    stripe.autoDeliver = false;
    sdk = new Stripe(stripe.secretKey, { host: '127.0.0.1', port: Number(new URL(stripe.url).port), protocol: 'http', telemetry: false });
    const port = await freePort();
    const config = parseConfig({
      listen: { port }, store: { sqlite: path.join(dir, 'payg.sqlite') },
      stripe: { poll: '0 0 1 1 *', max_requests_per_second: 100, retry: { max_attempts: 3, base_delay_ms: 20, max_delay_ms: 50 }, timeout_ms: 3000 },
      top_up: { checkout: { public_url: `http://127.0.0.1:${port}`, currencies: { usd: { presets: [1000, 2500], min: 500, max: 50_000 } } } },
      cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
      rules: [{ id: 'block', cohort: 'no-credit', status: 402, body: '{"error":"payment_required","top_up_url":"{{top_up_url}}"}' }],
      // A trailing slash is dropped: links read https://stripe.example.test/test/….
      console: { listen: { host: '127.0.0.1', port: 0 }, stripe_dashboard_url: 'https://stripe.example.test/' },
    }, {
      STRIPE_SECRET_KEY: stripe.secretKey, STRIPE_API_BASE: stripe.url, STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET,
      PAYG_TOP_UP_SECRET: 'top-up-secret-for-console-specs-0123456789', PAYG_ADMIN_TOKEN: ADMIN_TOKEN,
    }, dir);
    svc = await startService(config, { log: pino({ level: 'silent' }), sweepOnStart: false });
    stripe.webhook = { url: `${svc.url}/webhooks/stripe`, secret: WEBHOOK_SECRET };
    const signIn = await fetch(`${svc.console!.url}api/session`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: ADMIN_TOKEN }) });
    expect(signIn.status).to.equal(200);
    cookie = signIn.headers.get('set-cookie')!.split(';')[0];
  });
  after(async () => {
    try { await svc?.stop(); } finally {
      await stripe?.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('before any top-up: empty lists, and today counts nothing', async () => {
    const dora = stripe.create({ name: 'Dora', balance: 0, currency: 'usd' });
    await svc.sync!.sweep();
    const page = await consoleGet(`customers/${dora.id}`);
    expect(page).to.deep.include({ top_ups: [], top_up_debits: [] });
    const { today } = await consoleGet('overview');
    expect(today).to.deep.equal({
      day: new Date().toISOString().slice(0, 10), top_ups: { count: 0, amounts: {} }, refunds: { count: 0, amounts: {} }, disputes: { count: 0, amounts: {} },
    });
  });

  it('a customer\'s top-ups with status and payment links; refunds and disputes with theirs; today\'s counts', async () => {
    const carol = stripe.create({ name: 'Carol', balance: 0, currency: 'usd' });
    await svc.sync!.sweep();
    // $25.00, paid, then refunded in two parts, $10.00 and $15.00 (so Carol is blocked again and can top up through the 402's link).
    const first = await buy(carol.id, '2500');
    stripe.completeCheckoutSession(first.id, 'pm_card_visa');
    await deliverAll('checkout.session.completed');
    await until(() => stripe.customers.get(carol.id)!.balance === -2500, 5000, 'first top-up credited');
    const pi1 = stripe.checkoutSessions.get(first.id)!.payment_intent as string;
    const r1 = await sdk.refunds.create({ payment_intent: pi1, amount: 1000 });
    await deliverAll('charge.refunded');
    await until(() => stripe.customers.get(carol.id)!.balance === -1500, 5000, 'first refund debited');
    const r2 = await sdk.refunds.create({ payment_intent: pi1, amount: 1500 });
    await deliverAll('charge.refunded');
    await until(() => stripe.customers.get(carol.id)!.balance === 0, 5000, 'second refund debited');
    // $10.00, paid, then disputed.
    const second = await buy(carol.id, '1000');
    stripe.completeCheckoutSession(second.id, 'pm_card_visa');
    await deliverAll('checkout.session.completed');
    await until(() => stripe.customers.get(carol.id)!.balance === -1000, 5000, 'second top-up credited');
    const pi2 = stripe.checkoutSessions.get(second.id)!.payment_intent as string;
    const dispute = stripe.openDispute(pi2) as { id: string };
    await deliverAll('charge.dispute.created');
    await until(() => stripe.customers.get(carol.id)!.balance === 0, 5000, 'dispute debited');
    // Nothing paid yet: a session still open at Checkout.
    const third = await buy(carol.id, '1000');

    const page = await consoleGet(`customers/${carol.id}`);
    const base = 'https://stripe.example.test/test';
    expect(page.top_ups.map((t: any) => [t.formatted, t.status, t.refunded, t.disputed, t.stripe_url])).to.deep.equal([
      ['$10.00', 'open', 0, 0, `${base}/checkout/sessions/${third.id}`],
      ['$10.00', 'credited', 0, 1000, `${base}/payments/${pi2}`],
      ['$25.00', 'credited', 2500, 0, `${base}/payments/${pi1}`],
    ]);
    expect(page.top_ups[2]).to.include({ session_id: first.id, payment_intent: pi1, currency: 'usd', amount: 2500 });
    expect(page.top_ups[2].balance_transaction).to.match(/^cbtxn_/);
    expect(page.top_ups[2].credited_at).to.match(/^\d{4}-\d\d-\d\dT/);
    expect(page.top_up_debits.map((d: any) => [d.kind, d.stripe_id, d.formatted, d.status, d.stripe_url])).to.deep.equal([
      ['dispute', dispute.id, '$10.00', 'confirmed', `${base}/disputes/${dispute.id}`],
      ['refund', r2.id, '$15.00', 'confirmed', `${base}/refunds/${r2.id}`],
      ['refund', r1.id, '$10.00', 'confirmed', `${base}/refunds/${r1.id}`],
    ]);
    // Each debit names the balance transaction Stripe wrote for it.
    const ours = stripe.balanceTransactions.filter((t) => t.customer === carol.id).map((t) => t.id);
    for (const d of page.top_up_debits) expect(ours).to.include(d.balance_transaction);
    expect(page.top_up_debits.map((d: any) => d.top_up)).to.deep.equal([page.top_ups[1].id, page.top_ups[2].id, page.top_ups[2].id]);
    // The customer's "Open in Stripe" link comes from the same setting.
    expect(page.stripe_dashboard_url).to.equal(`${base}/customers/${carol.id}`);

    const { today } = await consoleGet('overview');
    expect(today).to.deep.include({
      top_ups: { count: 2, amounts: { usd: 3500 } }, refunds: { count: 2, amounts: { usd: 2500 } }, disputes: { count: 1, amounts: { usd: 1000 } },
    });
  });
});
