// The pause a dispute makes survives kill -9: the real process is killed after
// Stripe applied the dispute's debit and before the process heard it; when it
// comes back, the debit is found applied, the customer read again below the
// threshold, and still nothing is charged (the pause was committed with the
// debit's outbox row, before it was sent). One debit, no recharge.
import { expect } from 'chai';
import path from 'node:path';
import Database from 'better-sqlite3';
import Stripe from 'stripe';
import type { ControlProcess } from '../../support/control-process';
import { serviceFixture } from '../../support/fixture';
import { until } from '../../support/until';
import { formOf, freePort, topUpProcessConfig } from '../top-ups/support';

const WEBHOOK_SECRET = 'whsec_recharge_pause_crash';
const TOP_UP_SECRET = 'top-up-secret-for-pause-crash-0123456789';

describe('auto-recharge: the pause of a dispute survives kill -9', function () {
  this.timeout(90_000);
  const fx = serviceFixture({ prefix: 'payg-pause-crash-' });
  const launch = (configFile: string) =>
    fx.launch(configFile, { STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET, PAYG_TOP_UP_SECRET: TOP_UP_SECRET, PAYG_CONTROL_TOKEN: undefined }, 20_000);
  const meta = (t: { metadata?: unknown }) => (t.metadata ?? {}) as Record<string, string>;
  const decision = async (r: ControlProcess, id: string) => (await fetch(`${r.url}/v1/decisions/${id}`)).json() as Promise<any>;
  const sweep = async (r: ControlProcess) => (await fx.adminAt(r.url, '/admin/sweep', { method: 'POST' })).body;
  const read = <T>(file: string, sql: string, ...args: unknown[]): T[] => {
    const db = new Database(file, { readonly: true });
    try { return db.prepare(sql).all(...args) as T[]; } finally { db.close(); }
  };

  it('killed after Stripe applied the dispute debit, before hearing it: restarted, read below the threshold, nothing charged', async () => {
    const sdk = new Stripe(fx.stripe.secretKey, { host: '127.0.0.1', port: Number(new URL(fx.stripe.url).port), protocol: 'http', telemetry: false });
    // No credit (blocked: the 402 carries the top-up link), a saved card, auto-recharge on below $15.
    const alice = fx.stripe.create({ name: 'Alice', email: 'alice@example.com', balance: 0, currency: 'usd' });
    const pm = await sdk.paymentMethods.attach('pm_card_visa', { customer: alice.id });
    await sdk.customers.update(alice.id, { invoice_settings: { default_payment_method: pm.id }, metadata: { payg_auto_recharge: 'on', payg_auto_recharge_threshold: '1500' } });
    const port = await freePort();
    const sqlite = path.join(fx.dir, 'payg.sqlite');
    const configFile = fx.writeConfig('payg.yml', topUpProcessConfig(port, { sqlite }, {
      stripe: { timeout_ms: 60_000 },
      auto_recharge: { enabled: true, threshold: 500, amount: 2000, monthly_cap: 10_000, min_interval: '1ms', poll_interval: '50ms' },
    }));
    let control = await launch(configFile);
    fx.stripe.webhook = { url: `${control.url}/webhooks/stripe`, secret: WEBHOOK_SECRET };
    await sweep(control);

    // A $25 Checkout top-up: $25 of credit.
    const link = JSON.parse((await decision(control, alice.id)).body).top_up_url as string;
    const { nonce, action } = formOf(await (await fetch(link)).text());
    const res = await fetch(new URL(action, link), { method: 'POST', redirect: 'manual', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams({ nonce, preset: '2500' }).toString() });
    expect(res.status).to.equal(303);
    const session = [...fx.stripe.checkoutSessions.values()].find((s) => s.url === res.headers.get('location')) as Record<string, any>;
    fx.stripe.completeCheckoutSession(session.id, 'pm_card_visa');
    for (const e of fx.stripe.events.filter((x) => x.type === 'checkout.session.completed')) expect(await fx.stripe.deliver(e)).to.equal(200);
    await until(() => fx.stripe.customers.get(alice.id)!.balance === -2500, 10_000, 'top-up credited');

    // Disputed: Stripe applies the $25 debit ($0 left, below $15), its answer never comes back, the process dies.
    const pi = fx.stripe.checkoutSessions.get(session.id)!.payment_intent as string;
    fx.stripe.openDispute(pi);
    const disputed = fx.stripe.events.find((e) => e.type === 'charge.dispute.created')!;
    fx.stripe.holdAnswers(/\/balance_transactions$/, 'POST');
    void fx.stripe.deliver(disputed).catch(() => undefined);
    await until(() => fx.stripe.customers.get(alice.id)!.balance === 0, 10_000, 'Stripe never applied the dispute debit');
    await control.kill('SIGKILL');
    fx.stripe.holdAnswers(undefined);

    // Back: the debit found applied (resend pass) or re-heard (redelivery), the customer read below the threshold.
    control = await launch(configFile);
    fx.stripe.webhook = { url: `${control.url}/webhooks/stripe`, secret: WEBHOOK_SECRET };
    expect(await fx.stripe.deliver(disputed)).to.equal(200);
    await until(() => read<{ status: string }>(sqlite, `SELECT status FROM top_up_moves WHERE kind = 'dispute'`)[0]?.status === 'confirmed', 20_000, 'the dispute debit never confirmed');
    await sweep(control);
    // A crossing's recharge is written in the same commit as the balance that crossed: none.
    expect(read(sqlite, 'SELECT id FROM recharges')).to.have.length(0);
    expect(read<{ paused_at: number | null }>(sqlite, 'SELECT paused_at FROM recharge_state WHERE customer_id = ?', alice.id)[0]?.paused_at).to.be.a('number');
    expect(fx.stripe.balanceTransactions.filter((t) => t.customer === alice.id && meta(t).payg_top_up_dispute)).to.have.length(1);
    expect([...fx.stripe.paymentIntents.values()].filter((p: any) => p.customer === alice.id && p.metadata?.payg_recharge)).to.have.length(0);
    expect(fx.stripe.customers.get(alice.id)!.balance).to.equal(0);
  });
});
