// The console's auto-recharge settings (issue 22 point 1) on a whole service
// against the Stripe emulator (official SDK): a customer's page shows what
// their Stripe metadata says and what the service knows (this month's
// recharges against the cap, failures in a row, the pause, the last one); an
// edit is checked with the trigger's bounds (bad input: 400 naming the field,
// Stripe untouched), needs the session's CSRF token, is written to the
// customer's Stripe metadata and shows at once; switched on while paused, the
// customer is re-armed, and with the credit already below the threshold a
// recharge is planned at once (no crossing is coming).
import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import Stripe from 'stripe';
import { parseConfig } from '../../control-service/src/config';
import { startService, type RunningService } from '../../control-service/src/service';
import { StripeEmulator } from '../../testkit/stripe-emulator';
import { debitIntent } from '../../control-service/src/top-ups/core';
import { freePort } from '../control/top-ups/support';
import { until } from '../support/until';

const ADMIN_TOKEN = 'console-recharge-admin-token';
const CONTROL = 'control-token-for-console-recharge';

describe('console: a customer\'s auto-recharge settings (emulator)', function () {
  this.timeout(60_000);
  let stripe: StripeEmulator;
  let svc: RunningService;
  let dir: string;
  let sdk: Stripe;
  let session: { cookie: string; csrf: string };
  let seq = 0;

  async function start(autoRecharge: Record<string, unknown> = {}): Promise<void> {
    const port = await freePort();
    const config = parseConfig({
      listen: { port }, store: { sqlite: path.join(dir, 'payg.sqlite') },
      stripe: { poll: '0 0 1 1 *', max_requests_per_second: 100, retry: { max_attempts: 3, base_delay_ms: 10, max_delay_ms: 40 }, timeout_ms: 3000 },
      top_up: { checkout: { public_url: `http://127.0.0.1:${port}`, currencies: { usd: { presets: [1000, 2500], min: 500, max: 50_000 } } } },
      auto_recharge: { enabled: true, threshold: 500, amount: 2000, monthly_cap: 10_000, min_amount: 500, max_amount: 50_000, max_threshold: 20_000, max_monthly_cap: 100_000, min_interval: '1ms', max_consecutive_failures: 3, poll_interval: '50ms', ...autoRecharge },
      cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
      rules: [{ id: 'block', cohort: 'no-credit', status: 402, body: '{"error":"payment_required"}' }],
      metering: { default_cost: 100, settle: { schedule: '0 0 1 1 *' } },
      console: { listen: { host: '127.0.0.1', port: 0 } },
    }, {
      STRIPE_SECRET_KEY: stripe.secretKey, STRIPE_API_BASE: stripe.url, PAYG_TOP_UP_SECRET: 'top-up-secret-for-console-recharge-0123456789',
      PAYG_ADMIN_TOKEN: ADMIN_TOKEN, PAYG_CONTROL_TOKEN: CONTROL,
    }, dir);
    svc = await startService(config, { log: pino({ level: 'silent' }), sweepOnStart: false });
    await svc.sync!.sweep();
    const res = await fetch(`${svc.console!.url}api/session`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: ADMIN_TOKEN }) });
    expect(res.status).to.equal(200);
    session = { cookie: res.headers.get('set-cookie')!.split(';')[0], csrf: ((await res.json()) as { csrf: string }).csrf };
  }

  /** A customer with $10.00 of credit and a saved card as default payment method. */
  async function customer(card: string, metadata: Record<string, string> = { payg_auto_recharge: 'on' }): Promise<string> {
    const c = stripe.create({ name: 'Alice Liddell', email: 'alice@example.com', balance: -1000, currency: 'usd' });
    const pm = await sdk.paymentMethods.attach(card, { customer: c.id });
    await sdk.customers.update(c.id, { invoice_settings: { default_payment_method: pm.id }, metadata });
    return c.id;
  }
  const detail = async (id: string) => {
    const res = await fetch(`${svc.console!.url}api/customers/${id}`, { headers: { cookie: session.cookie } });
    expect(res.status).to.equal(200);
    return ((await res.json()) as { auto_recharge: Record<string, any> }).auto_recharge;
  };
  const edit = (id: string, body: unknown, headers: Record<string, string> = { 'x-payg-csrf': session.csrf }) => fetch(`${svc.console!.url}api/customers/${id}/auto-recharge`, {
    method: 'PUT', headers: { 'content-type': 'application/json', cookie: session.cookie, ...headers }, body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const spend = async (consumer: string, requests: number) => {
    const events = Array.from({ length: requests }, () => ({ id: `evt-${++seq}`, consumer, at: new Date().toISOString(), route: 'orders', status: 200 }));
    const res = await fetch(`${svc.url}/v1/usage`, { method: 'POST', body: JSON.stringify({ events }), headers: { 'content-type': 'application/json', authorization: `Bearer ${CONTROL}` } });
    expect(res.status).to.equal(200);
  };
  const credit = (id: string) => -(svc.engine.customer(id)!.estimatedBalance);
  /** Back to $10.00 of credit (an operator's credit in Stripe), then spent down to $`to`/100. */
  const cross = async (id: string, to: number) => {
    stripe.addBalanceTransaction(id, -(Math.max(0, 1000 - credit(id))), 'usd');
    await svc.sync!.refresh(id);
    expect(credit(id)).to.be.at.least(1000);
    await spend(id, Math.ceil((credit(id) - to) / 100));
  };
  const intents = (id: string) => [...stripe.paymentIntents.values()].filter((p: any) => p.customer === id) as Array<Record<string, any>>;

  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-console-recharge-'));
    stripe = await new StripeEmulator().start();
    stripe.autoDeliver = false;
    sdk = new Stripe(stripe.secretKey, { host: '127.0.0.1', port: Number(new URL(stripe.url).port), protocol: 'http', telemetry: false });
  });
  afterEach(async () => {
    try { await svc?.stop(); } finally {
      await stripe.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('shows the settings (own and default) and what the service knows: this month against the cap, failures, the last recharge', async () => {
    const alice = await customer('pm_card_visa', { payg_auto_recharge: 'on', payg_auto_recharge_amount: '3000' });
    await start();
    const before = await detail(alice);
    expect(before).to.deep.include({
      offered: true, enabled: true, amount: 3000, threshold: 500, monthly_cap: 10_000, invalid: null,
      own: { amount: '3000', threshold: null, monthly_cap: null }, defaults: { amount: 2000, threshold: 500, monthly_cap: 10_000 },
      month: new Date().toISOString().slice(0, 7), month_succeeded: 0, month_in_flight: 0, month_counted: 0, cap_left: 10_000,
      failures: 0, max_consecutive_failures: 3, paused: false, last: null,
    });
    await spend(alice, 6); // $10 → $4: crossed
    await until(() => intents(alice).length === 1 && credit(alice) === 3400, 10_000, 'recharged');
    await until(async () => (await detail(alice)).last?.status === 'succeeded', 5000, 'the recharge finished');
    const after = await detail(alice);
    const [pi] = intents(alice);
    expect(after).to.deep.include({ month_succeeded: 3000, month_in_flight: 0, month_counted: 3000, cap_left: 7000, failures: 0, paused: false });
    expect(after.last).to.include({ amount: 3000, currency: 'usd', status: 'succeeded', payment_intent: pi.id, stripe_url: `https://dashboard.stripe.com/test/payments/${pi.id}` });
  });

  it('bad input: 400 naming the field, nothing changed in Stripe; no CSRF token: 403', async () => {
    const alice = await customer('pm_card_visa', { payg_auto_recharge: 'on', payg_auto_recharge_amount: '3000', other: 'kept' });
    await start();
    const stored = () => ({ ...stripe.customers.get(alice)!.metadata });
    const before = stored();
    const refused: Array<[unknown, string, RegExp]> = [
      [{ enabled: true, amount: 100 }, 'amount', /amount: 100 is outside 500\.\.50000/],
      [{ enabled: true, amount: 60_000 }, 'amount', /outside 500\.\.50000/],
      [{ enabled: true, threshold: 25_000 }, 'threshold', /threshold: 25000 is outside 0\.\.20000/],
      [{ enabled: true, amount: 4000, monthly_cap: 3000 }, 'monthly_cap', /monthly_cap: 3000 is outside 4000\.\.100000/],
      [{ enabled: true, monthly_cap: 200_000 }, 'monthly_cap', /outside 3000\.\.100000/],
      [{ enabled: true, amount: 12.5 }, 'amount', /amount: a whole number/],
      [{ enabled: true, amount: '2000' }, 'amount', /amount: a whole number/],
      [{ enabled: true, threshold: -1 }, 'threshold', /threshold: a whole number/],
      [{ amount: 2000 }, 'enabled', /enabled: true or false/],
      [{ enabled: 'yes' }, 'enabled', /enabled: true or false/],
      [{ enabled: true, cap: 5000 }, 'cap', /cap: not a setting/],
      [{ enabled: true, constructor: 5 }, 'constructor', /constructor: not a setting/],
      ['not json', 'body', /body: a JSON object/],
    ];
    for (const [body, field, message] of refused) {
      const res = await edit(alice, body);
      const answer = await res.json() as { error: string; field: string; message: string };
      expect(res.status, JSON.stringify(body)).to.equal(400);
      expect(answer, JSON.stringify(body)).to.include({ error: 'bad_request', field });
      expect(answer.message).to.match(message);
    }
    // Without the session's CSRF token, or from another origin: refused before anything is read.
    expect((await edit(alice, { enabled: false }, {})).status).to.equal(403);
    expect((await edit(alice, { enabled: false }, { 'x-payg-csrf': session.csrf, origin: 'http://evil.example' })).status).to.equal(403);
    expect((await edit(alice, { enabled: false }, { 'x-payg-csrf': 'wrong' })).status).to.equal(403);
    expect(stored()).to.deep.equal(before);
    expect(svc.engine.customer(alice)!.customer.metadata).to.deep.include({ payg_auto_recharge: 'on', payg_auto_recharge_amount: '3000' });
    // An unknown customer: 404.
    expect((await edit('cus_nobody', { enabled: true })).status).to.equal(404);
  });

  it('an edit is written to the customer\'s Stripe metadata, shown at once, and the next crossing uses it', async () => {
    const alice = await customer('pm_card_visa', { payg_auto_recharge: 'off', payg_auto_recharge_monthly_cap: '9000', other: 'kept' });
    await start();
    expect(await detail(alice)).to.deep.include({ enabled: false, monthly_cap: 9000 });
    const res = await edit(alice, { enabled: true, amount: 2500, threshold: 800, monthly_cap: null });
    expect(res.status).to.equal(200);
    const saved = await res.json() as Record<string, any>;
    expect(saved).to.deep.include({ enabled: true, amount: 2500, threshold: 800, monthly_cap: 10_000, refreshed: true, planned: false });
    // Stripe holds them (the cap back on the default: its key removed; other metadata kept).
    expect(stripe.customers.get(alice)!.metadata).to.deep.equal({
      payg_auto_recharge: 'on', payg_auto_recharge_amount: '2500', payg_auto_recharge_threshold: '800', other: 'kept',
    });
    // The page read right after saving shows them, and so does the service's book.
    expect(await detail(alice)).to.deep.include({ enabled: true, amount: 2500, threshold: 800, monthly_cap: 10_000, own: { amount: '2500', threshold: '800', monthly_cap: null } });
    expect(svc.engine.customer(alice)!.customer.metadata).to.include({ payg_auto_recharge: 'on', payg_auto_recharge_threshold: '800' });
    // $10 → $7.00: below the new $8.00 threshold (above the default $5.00), so the new settings charge $25.00.
    await spend(alice, 3);
    await until(() => intents(alice).length === 1 && credit(alice) === 3200, 10_000, 'recharged with the edited settings');
    expect(intents(alice)[0]).to.include({ amount: 2500 });
    // Stripe's answer lost, then a 500: the gateway sends the save again (under the save's one idempotency key) and it
    // is saved; Stripe down for good: 502, nothing changed.
    stripe.loseAnswers(new RegExp(`^/v1/customers/${alice}$`), 1, 'POST');
    stripe.failNextMatching(new RegExp(`^/v1/customers/${alice}$`), 1, 500, { method: 'POST' });
    const retried = await edit(alice, { enabled: true, amount: 3000 });
    expect(retried.status, await retried.clone().text()).to.equal(200);
    expect(await retried.json()).to.deep.include({ amount: 3000 });
    expect(stripe.customers.get(alice)!.metadata).to.include({ payg_auto_recharge_amount: '3000' });
    stripe.failNextMatching(new RegExp(`^/v1/customers/${alice}$`), 3, 503, { method: 'POST' }); // stripe.retry.max_attempts
    const down = await edit(alice, { enabled: true, amount: 4000 });
    expect(down.status).to.equal(502);
    expect((await down.json() as { message: string }).message).to.match(/^Stripe did not save the settings/);
    expect(stripe.customers.get(alice)!.metadata).to.include({ payg_auto_recharge_amount: '3000' });
    expect(await detail(alice)).to.deep.include({ amount: 3000 });
    // Switched off: only the switch is written, and nothing more is charged.
    expect((await edit(alice, { enabled: false })).status).to.equal(200);
    expect(stripe.customers.get(alice)!.metadata).to.include({ payg_auto_recharge: 'off', payg_auto_recharge_amount: '3000' });
    expect(await detail(alice)).to.deep.include({ enabled: false });
    await cross(alice, 400);
    await svc.recharger!.drain();
    await svc.recharger!.pass();
    expect(intents(alice)).to.have.length(1);
  });

  it('switched on while paused: re-armed (failures back to 0) and, below the threshold, charged at once', async () => {
    const alice = await customer('pm_card_chargeDeclined');
    await start({ max_consecutive_failures: 1 });
    await spend(alice, 6);
    await until(async () => (await svc.store.rechargeState(alice)).pausedAt !== null, 10_000, 'paused after one decline');
    const paused = await detail(alice);
    expect(paused).to.deep.include({ enabled: true, paused: true, failures: 1, max_consecutive_failures: 1, month_counted: 0, month_succeeded: 0 });
    expect(paused.paused_at).to.match(/^\d{4}-\d\d-\d\dT/);
    expect(paused.last).to.include({ status: 'failed', failure_code: 'card_declined', amount: 2000 });
    // Paused: a crossing charges nothing.
    await cross(alice, 400);
    await svc.recharger!.drain();
    await svc.recharger!.pass();
    expect(intents(alice).filter((p) => p.status === 'succeeded')).to.have.length(0);
    expect(await svc.store.recharges(alice, 10)).to.have.length(1);
    // The customer's card is replaced; the operator switches it on again.
    const visa = await sdk.paymentMethods.attach('pm_card_visa', { customer: alice });
    await sdk.customers.update(alice, { invoice_settings: { default_payment_method: visa.id } });
    // Its credit ($4.00) is below the threshold: no crossing is coming, so the save plans a recharge at once.
    expect(credit(alice)).to.equal(400);
    const res = await edit(alice, { enabled: true });
    expect(res.status).to.equal(200);
    expect(await res.json()).to.deep.include({ rearmed: true, planned: true, paused: false, failures: 0 });
    await until(() => intents(alice).some((p) => p.status === 'succeeded') && credit(alice) === 2400, 10_000, 'charged again after the re-arm, with no crossing');
    expect(await svc.store.rechargeState(alice)).to.deep.equal({ failures: 0, pausedAt: null });
    await until(async () => (await detail(alice)).last?.status === 'succeeded', 5000, 'shown');
    // Saved again at once: one recharge open or just made, the interval and the cap decide; above the threshold now, nothing is planned.
    expect(await (await edit(alice, { enabled: true })).json()).to.deep.include({ rearmed: false, planned: false });
    await svc.recharger!.drain();
    expect(intents(alice).filter((p) => p.status === 'succeeded')).to.have.length(1);
  });

  it('409 when switching on would undo a pause, refund or dispute that came after the page was read; nothing changes', async () => {
    const alice = await customer('pm_card_visa');
    await start();
    const read = await detail(alice);
    expect(read).to.deep.include({ enabled: true, paused: false });
    // A dispute's debit lands after the page was read (it pauses auto-recharge with its outbox row).
    await svc.store.enqueueDebit(debitIntent('dispute', 'dp_after_read', 'pi_after_read', 'rc_after_read', alice, 0, 'usd'), () => 100, Date.now(), true);
    const refused = await edit(alice, { enabled: true, threshold: 800, as_of: read.as_of });
    expect(refused.status).to.equal(409);
    expect(await refused.json()).to.include({ error: 'changed_since_read' });
    expect((await sdk.customers.retrieve(alice) as Stripe.Customer).metadata.payg_auto_recharge_threshold).to.equal(undefined);
    expect((await svc.store.rechargeState(alice)).pausedAt).to.not.equal(null);
    // Read again, the operator sees the pause and saves knowingly: re-armed.
    const again = await detail(alice);
    expect(again.paused).to.equal(true);
    const saved = await edit(alice, { enabled: true, as_of: again.as_of });
    expect(saved.status).to.equal(200);
    expect(await saved.json()).to.deep.include({ rearmed: true, paused: false });
  });
});
