// kill -9 between "Stripe charged" and "the service heard it": Stripe carries
// out the settlement's balance transaction but its answer never arrives, and
// the service is killed. On restart the pending settlement is sent again with
// the same idempotency key; Stripe replays its first answer and charges once.
import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startControlProcess, type ControlProcess } from '../../support/control-process';
import { StripeEmulator } from '../../../testkit/stripe-emulator';
import { until } from '../../support/until';

const ADMIN = 'admin-token-for-tests';

describe('metering survives kill -9', function () {
  this.timeout(30_000);
  let dir: string;
  let stripe: StripeEmulator;
  let control: ControlProcess | undefined;
  /** Every process a test started: after() kills each, whichever test left it running or failed. */
  const launched: ControlProcess[] = [];
  const launch = async (configFile: string, env: NodeJS.ProcessEnv) => {
    const started = await startControlProcess(configFile, env);
    launched.push(started);
    return started;
  };

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-settle-crash-'));
    stripe = await new StripeEmulator().start();
    stripe.autoDeliver = false;
  });
  after(async () => {
    try { for (const p of launched) await p.kill('SIGKILL'); } finally {
      await stripe.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('usage answered 200 is still counted after kill -9, and its ids still deduplicated', async () => {
    const c = stripe.create({ name: 'Bob', balance: -500 });
    const configFile = path.join(dir, 'usage.yml');
    fs.writeFileSync(configFile, JSON.stringify({
      listen: { port: 0 }, store: { sqlite: path.join(dir, 'usage.sqlite') }, stripe: { poll: '0 0 1 1 *' },
      cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
      rules: [{ id: 'block', cohort: 'no-credit', body: '{"error":"payment_required"}' }],
      metering: { default_cost: '2.5', settle: { enabled: false } },
    }));
    const env = { STRIPE_SECRET_KEY: stripe.secretKey, STRIPE_API_BASE: stripe.url, PAYG_ADMIN_TOKEN: ADMIN };
    control = await launch(configFile, env);
    await fetch(`${control.url}/admin/sweep`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN}` } });
    const batch = JSON.stringify({ events: Array.from({ length: 200 }, (_, i) => ({ id: `k9-${i}`, consumer: c.id, at: Date.now(), route: null, status: 200 })) });
    const res = await fetch(`${control.url}/v1/usage`, { method: 'POST', body: batch });
    expect(res.status).to.equal(200);
    await control.kill('SIGKILL'); // at once after the 200
    control = await launch(configFile, env);
    const state = await (await fetch(`${control.url}/admin/customers/${c.id}`, { headers: { authorization: `Bearer ${ADMIN}` } })).json() as any;
    expect(state.unsettled_usage).to.equal(500);
    expect(state.cohorts, '$5.00 of credit spent: blocked').to.deep.equal(['no-credit']);
    expect(await (await fetch(`${control.url}/v1/usage`, { method: 'POST', body: batch })).json()).to.deep.equal({ accepted: 0, duplicates: 200, refused: [] });
    await control.kill('SIGKILL');
    control = undefined;
  });

  it('charged by Stripe, killed before hearing it, restarted: one balance transaction, confirmed, estimate right', async () => {
    const c = stripe.create({ name: 'Ada', balance: -1000 });
    const configFile = path.join(dir, 'payg.yml');
    fs.writeFileSync(configFile, JSON.stringify({
      listen: { port: 0 }, store: { sqlite: path.join(dir, 'payg.sqlite') },
      stripe: { poll: '0 0 1 1 *', timeout_ms: 60_000 },
      cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
      rules: [{ id: 'block', cohort: 'no-credit', body: '{"error":"payment_required"}' }],
      metering: { default_cost: 1, settle: { schedule: '0 0 1 1 *' } },
    }));
    const env = { STRIPE_SECRET_KEY: stripe.secretKey, STRIPE_API_BASE: stripe.url, PAYG_ADMIN_TOKEN: ADMIN };
    const admin = (p: string, method = 'GET') => fetch(`${control!.url}/admin/${p}`, { method, headers: { authorization: `Bearer ${ADMIN}` } });
    control = await launch(configFile, env);
    await (await admin('sweep', 'POST')).json();
    const events = Array.from({ length: 42 }, (_, i) => ({ id: `u-${i}`, consumer: c.id, at: Date.now(), route: null, status: 200 }));
    expect((await fetch(`${control.url}/v1/usage`, { method: 'POST', body: JSON.stringify({ events }) })).status).to.equal(200);

    stripe.holdAnswers(/\/balance_transactions$/);
    void admin('settle', 'POST').catch(() => undefined); // never answered: the service dies first
    await until(() => stripe.balanceTransactions.length > 0, 5000, 'the settlement never reached Stripe');
    await control.kill('SIGKILL');
    expect(stripe.customers.get(c.id)!.balance, 'Stripe charged').to.equal(-958);

    stripe.holdAnswers(undefined);
    control = await launch(configFile, env); // settles what is pending at start
    let rows: any[] = [];
    await until(async () => {
      rows = ((await (await admin(`settlements?customer=${c.id}`)).json()) as any).settlements;
      return rows[0]?.status === 'confirmed';
    }, 10_000, 'the pending settlement was never confirmed');
    expect(stripe.balanceTransactions, 'charged once').to.have.length(1);
    expect(stripe.customers.get(c.id)!.balance).to.equal(-958);
    expect(stripe.requests.filter((r) => r.method === 'POST' && r.path.endsWith('/balance_transactions')), 'not sent again: its balance transaction was found first').to.have.length(1);
    expect(rows).to.have.length(1);
    expect(rows[0]).to.include({ amount: 42, status: 'confirmed' });
    const state = await (await admin(`customers/${c.id}`)).json() as any;
    expect(state.estimated_balance, 'no gap, no double count').to.equal(-958);
    expect(state.unsettled_usage).to.equal(0);
  });

  it('killed while a settlement Stripe applied is pending: after restart the start-up sweep reads −40¢ and the estimate is −40¢, allowed', async () => {
    const c = stripe.create({ name: 'Eve', balance: -100 });
    const configFile = path.join(dir, 'restart.yml');
    fs.writeFileSync(configFile, JSON.stringify({
      listen: { port: 0 }, store: { sqlite: path.join(dir, 'restart.sqlite') }, stripe: { poll: '0 0 1 1 *', timeout_ms: 60_000 },
      cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
      rules: [{ id: 'block', cohort: 'no-credit', body: '{"error":"payment_required"}' }],
      metering: { default_cost: 1, settle: { schedule: '0 0 1 1 *' } },
    }));
    const env = { STRIPE_SECRET_KEY: stripe.secretKey, STRIPE_API_BASE: stripe.url, PAYG_ADMIN_TOKEN: ADMIN };
    const admin = (p: string, method = 'GET') => fetch(`${control!.url}/admin/${p}`, { method, headers: { authorization: `Bearer ${ADMIN}` } });
    control = await launch(configFile, env);
    await (await admin('sweep', 'POST')).json();
    const events = Array.from({ length: 60 }, (_, i) => ({ id: `r-${i}`, consumer: c.id, at: Date.now(), route: null, status: 200 }));
    expect((await fetch(`${control.url}/v1/usage`, { method: 'POST', body: JSON.stringify({ events }) })).status).to.equal(200);
    stripe.holdAnswers(/\/balance_transactions$/, 'POST'); // applied, never answered, also after the restart
    void admin('settle', 'POST').catch(() => undefined);
    await until(() => stripe.balanceTransactions.length > 0, 5000, 'the settlement never reached Stripe');
    await control.kill('SIGKILL');
    control = await launch(configFile, env); // start-up sweep beside the (held) resend
    // Joins the start-up sweep and waits for it: its page shows -40 while the settlement is pending here.
    expect(((await (await admin('sweep', 'POST')).json()) as any).ok).to.equal(true);
    const state = await (await admin(`customers/${c.id}`)).json() as any;
    expect(state.estimated_balance).to.equal(-40);
    expect(state.cohorts).to.deep.equal([]);
    expect(state.decision.allow).to.equal(true);
    stripe.holdAnswers(undefined);
    await control.kill('SIGKILL');
    control = undefined;
  });

  it('killed while a webhook is applied: Stripe\'s retry after the restart applies it (not ignored as a duplicate)', async () => {
    const c = stripe.create({ name: 'Fay', balance: -1000 });
    const configFile = path.join(dir, 'webhook.yml');
    fs.writeFileSync(configFile, JSON.stringify({
      listen: { port: 0 }, store: { sqlite: path.join(dir, 'webhook.sqlite') }, stripe: { poll: '0 0 1 1 *', timeout_ms: 60_000 },
      cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
    }));
    const env = { STRIPE_SECRET_KEY: stripe.secretKey, STRIPE_API_BASE: stripe.url, PAYG_ADMIN_TOKEN: ADMIN, STRIPE_WEBHOOK_SECRET: 'whsec_kill' };
    const admin = (p: string, method = 'GET') => fetch(`${control!.url}/admin/${p}`, { method, headers: { authorization: `Bearer ${ADMIN}` } });
    control = await launch(configFile, env);
    await (await admin('sweep', 'POST')).json();
    stripe.webhook = { url: `${control.url}/webhooks/stripe`, secret: 'whsec_kill' };
    stripe.update(c.id, { balance: -300 });
    const event = stripe.events.at(-1)!;
    stripe.holdAnswers(/^\/v1\/customers/, 'GET'); // the re-read (and, after the restart, the sweep) is never answered
    const seen = stripe.requests.length;
    void stripe.deliver(event).catch(() => undefined);
    await until(() => stripe.requests.length > seen || control!.output().length < 0, 5000).catch(() => undefined);
    await new Promise((r) => setTimeout(r, 200));
    await control.kill('SIGKILL');
    control = await launch(configFile, env);
    stripe.webhook = { url: `${control.url}/webhooks/stripe`, secret: 'whsec_kill' };
    stripe.holdAnswers(/^\/v1\/customers$/, 'GET'); // the start-up sweep still hangs; the retry's re-read is answered
    expect(await stripe.deliver(event)).to.equal(200);
    const state = await (await admin(`customers/${c.id}`)).json() as any;
    expect(state.estimated_balance).to.equal(-300);
    stripe.holdAnswers(undefined);
    await control.kill('SIGKILL');
    control = undefined;
  });
});
