// kill -9 between "Stripe charged" and "the service heard it": Stripe carries
// out the settlement's balance transaction but its answer never arrives, and
// the service is killed. On restart the pending settlement is sent again with
// the same idempotency key; Stripe replays its first answer and charges once.
import { expect } from 'chai';
import path from 'node:path';
import type { ControlProcess } from '../../support/control-process';
import { NEVER, merge, serviceFixture, type Doc } from '../../support/fixture';
import { until } from '../../support/until';

describe('metering survives kill -9', function () {
  this.timeout(30_000);
  const fx = serviceFixture({ prefix: 'payg-settle-crash-', scope: 'suite' });
  let control: ControlProcess | undefined;
  /** The real process, with no control token (usage is posted without one); killed at the end of the suite whatever happened. */
  const launch = (configFile: string, env: Record<string, string> = {}) => fx.launch(configFile, { PAYG_CONTROL_TOKEN: undefined, ...env });
  const admin = (p: string, method = 'GET') => fx.adminAt(control!.url, `/admin/${p}`, { method });
  const postUsage = (events: unknown[]) => fetch(`${control!.url}/v1/usage`, { method: 'POST', body: JSON.stringify({ events }) });
  /**
   * Writes `name`.yml (its own store `name`.sqlite, no-credit blocked, one cent a request, never
   * settled by schedule; deep-merged with `overrides`), launches it and sweeps once. Answers the
   * config file, to launch again after the kill.
   */
  async function launchFirst(name: string, overrides: Doc = {}, env: Record<string, string> = {}): Promise<string> {
    const configFile = fx.writeConfig(`${name}.yml`, merge({
      listen: { port: 0 }, store: { sqlite: path.join(fx.dir, `${name}.sqlite`) }, stripe: { poll: NEVER, timeout_ms: 60_000 },
      cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
      rules: [{ id: 'block', cohort: 'no-credit', body: '{"error":"payment_required"}' }],
      metering: { default_cost: 1, settle: { schedule: NEVER } },
    }, overrides));
    control = await launch(configFile, env);
    expect((await admin('sweep', 'POST')).status).to.equal(200);
    return configFile;
  }
  /** Stripe applies the settlement's balance transaction and its answer never comes back; the process is killed. */
  async function killedMidSettlement(method?: string): Promise<void> {
    fx.stripe.holdAnswers(/\/balance_transactions$/, method);
    void admin('settle', 'POST').catch(() => undefined); // never answered: the service dies first
    await until(() => fx.stripe.balanceTransactions.length > 0, 5000, 'the settlement never reached Stripe');
    await control!.kill('SIGKILL');
  }

  it('usage answered 200 is still counted after kill -9, and its ids still deduplicated', async () => {
    const c = fx.stripe.create({ name: 'Bob', balance: -500 });
    const configFile = await launchFirst('usage', { stripe: { timeout_ms: undefined }, metering: { default_cost: '2.5', settle: { enabled: false } } });
    const events = Array.from({ length: 200 }, (_, i) => ({ id: `k9-${i}`, consumer: c.id, at: Date.now(), route: null, status: 200 }));
    expect((await postUsage(events)).status).to.equal(200);
    await control!.kill('SIGKILL'); // at once after the 200
    control = await launch(configFile);
    const state = (await admin(`customers/${c.id}`)).body;
    expect(state.unsettled_usage).to.equal(500);
    expect(state.cohorts, '$5.00 of credit spent: blocked').to.deep.equal(['no-credit']);
    expect(await (await postUsage(events)).json()).to.deep.equal({ accepted: 0, duplicates: 200, refused: [] });
    await control.kill('SIGKILL');
    control = undefined;
  });

  it('charged by Stripe, killed before hearing it, restarted: one balance transaction, confirmed, estimate right', async () => {
    const c = fx.stripe.create({ name: 'Ada', balance: -1000 });
    const configFile = await launchFirst('payg');
    expect((await postUsage(Array.from({ length: 42 }, (_, i) => ({ id: `u-${i}`, consumer: c.id, at: Date.now(), route: null, status: 200 })))).status).to.equal(200);
    await killedMidSettlement();
    expect(fx.stripe.customers.get(c.id)!.balance, 'Stripe charged').to.equal(-958);

    fx.stripe.holdAnswers(undefined);
    control = await launch(configFile); // settles what is pending at start
    let rows: any[] = [];
    await until(async () => {
      rows = (await admin(`settlements?customer=${c.id}`)).body.settlements;
      return rows[0]?.status === 'confirmed';
    }, 10_000, 'the pending settlement was never confirmed');
    expect(fx.stripe.balanceTransactions, 'charged once').to.have.length(1);
    expect(fx.stripe.customers.get(c.id)!.balance).to.equal(-958);
    expect(fx.stripe.requests.filter((r) => r.method === 'POST' && r.path.endsWith('/balance_transactions')), 'not sent again: its balance transaction was found first').to.have.length(1);
    expect(rows).to.have.length(1);
    expect(rows[0]).to.include({ amount: 42, status: 'confirmed' });
    const state = (await admin(`customers/${c.id}`)).body;
    expect(state.estimated_balance, 'no gap, no double count').to.equal(-958);
    expect(state.unsettled_usage).to.equal(0);
  });

  it('killed while a settlement Stripe applied is pending: after restart the start-up sweep reads −40¢ and the estimate is −40¢, allowed', async () => {
    const c = fx.stripe.create({ name: 'Eve', balance: -100 });
    const configFile = await launchFirst('restart');
    expect((await postUsage(Array.from({ length: 60 }, (_, i) => ({ id: `r-${i}`, consumer: c.id, at: Date.now(), route: null, status: 200 })))).status).to.equal(200);
    await killedMidSettlement('POST'); // applied, never answered, also after the restart
    control = await launch(configFile); // start-up sweep beside the (held) resend
    // Joins the start-up sweep and waits for it: its page shows -40 while the settlement is pending here.
    expect((await admin('sweep', 'POST')).body.ok).to.equal(true);
    const state = (await admin(`customers/${c.id}`)).body;
    expect(state.estimated_balance).to.equal(-40);
    expect(state.cohorts).to.deep.equal([]);
    expect(state.decision.allow).to.equal(true);
    fx.stripe.holdAnswers(undefined);
    await control.kill('SIGKILL');
    control = undefined;
  });

  it('killed while a webhook is applied: Stripe\'s retry after the restart applies it (not ignored as a duplicate)', async () => {
    const stripe = fx.stripe;
    const c = stripe.create({ name: 'Fay', balance: -1000 });
    const env = { STRIPE_WEBHOOK_SECRET: 'whsec_kill' };
    const configFile = await launchFirst('webhook', { rules: undefined, metering: undefined }, env);
    stripe.webhook = { url: `${control!.url}/webhooks/stripe`, secret: 'whsec_kill' };
    stripe.update(c.id, { balance: -300 });
    const event = stripe.events.at(-1)!;
    stripe.holdAnswers(/^\/v1\/customers/, 'GET'); // the re-read (and, after the restart, the sweep) is never answered
    const seen = stripe.requests.length;
    void stripe.deliver(event).catch(() => undefined);
    await until(() => stripe.requests.length > seen || control!.output().length < 0, 5000).catch(() => undefined);
    await new Promise((r) => setTimeout(r, 200));
    await control!.kill('SIGKILL');
    control = await launch(configFile, env);
    stripe.webhook = { url: `${control.url}/webhooks/stripe`, secret: 'whsec_kill' };
    stripe.holdAnswers(/^\/v1\/customers$/, 'GET'); // the start-up sweep still hangs; the retry's re-read is answered
    expect(await stripe.deliver(event)).to.equal(200);
    const state = (await admin(`customers/${c.id}`)).body;
    expect(state.estimated_balance).to.equal(-300);
    stripe.holdAnswers(undefined);
    await control.kill('SIGKILL');
    control = undefined;
  });
});
