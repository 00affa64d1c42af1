// The control service against the Stripe emulator, through the official SDK.
import { expect } from 'chai';
import type { RunningService } from '../../../control-service/src/service';
import type { StripeEmulator } from '../../../testkit/stripe-emulator';
import { ADMIN, serviceFixture } from '../../support/fixture';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const WEBHOOK_SECRET = 'whsec_test_secret';

const CONFIG = {
  listen: { port: 0 },
  stripe: { max_requests_per_second: 100, retry: { max_attempts: 4, base_delay_ms: 20, max_delay_ms: 100 }, timeout_ms: 2000 },
  top_up: { url: 'https://pay.example.com/top-up?c={customer_id}' },
  cohorts: [
    { id: 'no-credit', filter: { balance: { gte: 0 } } },
    { id: 'under-10', filter: { balance: { gt: -1000 } } },
  ],
  rules: [
    { id: 'block-no-credit', cohort: 'no-credit', status: 402, headers: { 'Content-Type': 'application/json' },
      body: '{"error":"payment_required","message":"{{customer.first_name}}, your credit is used up.","name":"{{customer.name}}","balance":"{{credit.formatted}}","top_up":"{{top_up_url}}"}' },
    { id: 'warn-under-10', cohort: 'under-10', log_only: true, body: '{"error":"low_credit"}' },
  ],
};

describe('control service with the Stripe emulator', function () {
  this.timeout(20_000);
  const fx = serviceFixture({ prefix: 'payg-cs-' });
  let stripe: StripeEmulator;
  let svc: RunningService;
  const stopSvc = () => fx.stop();

  async function start(overrides: Record<string, unknown> = {}): Promise<RunningService> {
    // This spec's own document (default poll, no metering), not the fixture's base.
    svc = await fx.start({ ...CONFIG, stripe: { poll: undefined, ...CONFIG.stripe }, metering: undefined, ...overrides },
      { env: { STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET, PAYG_CONTROL_TOKEN: undefined } });
    stripe.webhook = { url: `${svc.url}/webhooks/stripe`, secret: WEBHOOK_SECRET };
    return svc;
  }
  const decision = async (consumer: string) => (await fetch(`${svc.url}/v1/decisions/${encodeURIComponent(consumer)}`)).json() as Promise<any>;
  const admin = (p: string, init: RequestInit = {}): Promise<{ status: number; json(): Promise<any> }> => fetch(`${svc.url}/admin/${p}`, { ...init, headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' } });
  async function until<T>(probe: () => Promise<T>, ok: (v: T) => boolean, ms = 3000): Promise<{ value: T; elapsed: number }> {
    const t0 = Date.now();
    for (;;) {
      const value = await probe();
      if (ok(value)) return { value, elapsed: Date.now() - t0 };
      if (Date.now() - t0 > ms) throw new Error(`timed out; last: ${JSON.stringify(value)}`);
      await sleep(20);
    }
  }

  beforeEach(() => { stripe = fx.stripe; });

  it('sweeps 250 customers across pages of 100', async () => {
    for (let i = 0; i < 250; i++) stripe.create({ balance: -500 });
    await start();
    const result = await svc.sync!.sweep();
    expect(result).to.include({ ok: true, customers: 250, pages: 3 });
    expect(stripe.requests.filter((r) => r.path === '/v1/customers')).to.have.length(3);
  });

  it('credit → allow; deduct to 0 → 402 within one sweep; restore → allow', async () => {
    const c = stripe.create({ name: 'Ada Lovelace', balance: -10000 });
    await start();
    await svc.sync!.sweep();
    expect(await decision(c.id)).to.deep.equal({ allow: true, ttl_ms: 5000 });

    stripe.addBalanceTransaction(c.id, 10000);
    await svc.sync!.sweep();
    const blocked = await decision(c.id);
    expect(blocked).to.include({ allow: false, status: 402, rule: 'block-no-credit' });
    expect(JSON.parse(blocked.body)).to.deep.equal({
      error: 'payment_required', message: 'Ada, your credit is used up.', name: 'Ada Lovelace', balance: '$0.00',
      top_up: `https://pay.example.com/top-up?c=${c.id}`,
    });

    stripe.addBalanceTransaction(c.id, -2500);
    await svc.sync!.sweep();
    expect(await decision(c.id)).to.deep.equal({ allow: true, ttl_ms: 5000 });
  });

  it('deduct to 0 → 402 within one second by webhook', async () => {
    const c = stripe.create({ balance: -300 });
    await start();
    await svc.sync!.sweep();
    stripe.autoDeliver = true;
    stripe.addBalanceTransaction(c.id, 300);
    const { elapsed } = await until(() => decision(c.id), (d) => d.allow === false, 1000);
    expect(elapsed).to.be.below(1000);
  });

  it('the $10 threshold is one cohort filter (balance > -1000), and a log-only rule allows', async () => {
    const rich = stripe.create({ balance: -1001 });
    const poor = stripe.create({ balance: -999 });
    await start();
    await svc.sync!.sweep();
    expect((await (await admin('cohorts/under-10/members')).json()).members).to.deep.equal([poor.id]);
    expect((await decision(poor.id)).allow, 'log-only rule never blocks').to.equal(true);
    expect((await decision(rich.id)).allow).to.equal(true);
    const metrics = await (await fetch(`${svc.url}/metrics`)).text();
    expect(metrics).to.match(/payg_decisions_total\{outcome="would_block"\} 1/);
  });

  it('merge-tag values keep a JSON body valid whatever the name holds', async () => {
    const name = 'Zoë "Q" O\'Brien\\ </script>\n\t🚀';
    const c = stripe.create({ name, balance: 0 });
    await start();
    await svc.sync!.sweep();
    const d = await decision(c.id);
    expect(d.body).to.not.include('</script>');
    expect(JSON.parse(d.body).name).to.equal(name);
  });

  it('a 429 storm is waited out (Retry-After honoured) and the sweep completes', async () => {
    for (let i = 0; i < 120; i++) stripe.create({ balance: -100 });
    await start();
    stripe.failNext(2, 429, 0);
    stripe.failNext(1, 429);
    const result = await svc.sync!.sweep();
    expect(result).to.include({ ok: true, customers: 120 });
    expect(stripe.requests.filter((r) => r.status === 429)).to.have.length(3);
  });

  it('Stripe down: the sweep fails, the last state is kept and /health shows it stale; then recovers', async () => {
    const c = stripe.create({ balance: 0 });
    await start();
    await svc.sync!.sweep();
    stripe.setDown(true);
    const failed = await svc.sync!.sweep();
    expect(failed.ok).to.equal(false);
    expect((await decision(c.id)).allow, 'last known state still served').to.equal(false);
    const health = await (await fetch(`${svc.url}/health`)).json() as any;
    expect(health).to.include({ stale: true, status: 'degraded', store: 'ok' });
    expect(health.last_successful_sweep_age_seconds).to.be.a('number');
    stripe.setDown(false);
    stripe.addBalanceTransaction(c.id, -500);
    expect((await svc.sync!.sweep()).ok).to.equal(true);
    expect((await decision(c.id)).allow).to.equal(true);
  });

  it('webhooks: forged and stale signatures get 400 and change nothing; a replay is ignored', async () => {
    const c = stripe.create({ balance: -500 });
    await start();
    await svc.sync!.sweep();
    stripe.customers.get(c.id)!.balance = 0; // Stripe changed, the event tells us
    const event = { id: 'evt_1', object: 'event' as const, type: 'customer.updated', created: Math.floor(Date.now() / 1000), livemode: false as const, api_version: '2024-06-20', data: { object: { ...stripe.customers.get(c.id)! }, previous_attributes: { balance: -500 } } };
    expect(await stripe.deliver(event, { secret: 'whsec_forged' })).to.equal(400);
    expect(await stripe.deliver(event, { timestamp: Math.floor(Date.now() / 1000) - 3600 })).to.equal(400);
    expect((await decision(c.id)).allow, 'unchanged after bad signatures').to.equal(true);
    expect(await stripe.deliver(event)).to.equal(200);
    expect((await decision(c.id)).allow).to.equal(false);
    stripe.customers.get(c.id)!.balance = -800;
    expect(await stripe.deliver(event)).to.equal(200); // same id: ignored
    expect((await decision(c.id)).allow, 'the replay changed nothing').to.equal(false);
  });

  it('out-of-order events never roll back a newer balance', async () => {
    const c = stripe.create({ balance: -500 });
    await start();
    await svc.sync!.sweep();
    stripe.addBalanceTransaction(c.id, 500);   // older: credit used up
    stripe.addBalanceTransaction(c.id, -2000); // newer: topped up
    const [, older, newer] = stripe.events.slice(-3);
    expect(await stripe.deliver(newer)).to.equal(200);
    expect(await stripe.deliver(older)).to.equal(200);
    expect((await decision(c.id)).allow).to.equal(true);
    expect(svc.engine.customer(c.id)!.customer.balance).to.equal(-2000);
  });

  it('deleted customers disappear (webhook and sweep)', async () => {
    const a = stripe.create({ balance: 0 });
    const b = stripe.create({ balance: 0 });
    await start({ unknown_consumer: 'allow' });
    await svc.sync!.sweep();
    stripe.autoDeliver = true;
    stripe.remove(a.id);
    await until(() => decision(a.id), (d) => d.allow === true);
    stripe.autoDeliver = false;
    stripe.remove(b.id);
    await svc.sync!.sweep();
    expect(svc.engine.customer(b.id)).to.equal(undefined);
    expect(svc.engine.size).to.equal(0);
  });

  it('maps consumers by metadata key; a consumer claimed twice is reported; unknown_consumer=block', async () => {
    const a = stripe.create({ balance: 0, metadata: { kong_consumer: 'alice' } });
    stripe.create({ balance: -100, metadata: { kong_consumer: 'shared' } });
    stripe.create({ balance: -100, metadata: { kong_consumer: 'shared' } });
    await start({ unknown_consumer: 'block' });
    await svc.sync!.sweep();
    expect(await decision('alice')).to.include({ allow: false, status: 402 });
    expect(await decision(a.id)).to.include({ allow: false, status: 402 });
    expect(await decision('nobody')).to.include({ allow: false, status: 403, rule: 'unknown_consumer' });
    expect(await decision('shared')).to.include({ allow: false, rule: 'unknown_consumer' });
    const conflicts = (await (await admin('conflicts')).json()).conflicts;
    expect(conflicts).to.have.length(1);
    expect(conflicts[0].consumer).to.equal('shared');
  });

  it('admin API: 401 without the token; rule switch persists across a restart; history is recorded', async () => {
    const c = stripe.create({ balance: 0 });
    await start();
    await svc.sync!.sweep();
    expect((await fetch(`${svc.url}/admin/rules`)).status).to.equal(401);
    expect((await fetch(`${svc.url}/admin/rules`, { headers: { authorization: 'Bearer wrong' } })).status).to.equal(401);
    expect((await admin('rules/block-no-credit', { method: 'PUT', body: JSON.stringify({ enabled: false }) })).status).to.equal(200);
    expect((await decision(c.id)).allow).to.equal(true);
    await stopSvc();
    await start();
    expect((await decision(c.id)).allow, 'after restart, without a sweep').to.equal(true);
    await admin('rules/block-no-credit', { method: 'PUT', body: JSON.stringify({ enabled: true }) });
    expect((await decision(c.id)).allow).to.equal(false);
    const state = await (await admin(`customers/${c.id}`)).json();
    expect(state.cohorts).to.deep.equal(['no-credit', 'under-10']);
    expect(state.history.map((h: any) => `${h.kind}:${h.cohort}`)).to.deep.equal(['enter:no-credit', 'enter:under-10']);
    const sweep = await (await admin('sweep', { method: 'POST' })).json();
    expect(sweep).to.include({ ok: true, customers: 1 });
  });

  it('restart keeps every customer and membership (no Stripe call needed)', async () => {
    const c = stripe.create({ balance: 0 });
    await start();
    await svc.sync!.sweep();
    await stopSvc();
    stripe.setDown(true);
    await start();
    expect((await decision(c.id)).allow).to.equal(false);
  });
});
