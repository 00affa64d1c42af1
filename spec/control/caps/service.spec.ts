// Team caps through the control service (issue 23): one Stripe customer whose
// `kong_consumer` names several consumers shares one balance; a consumer with
// a cap is refused with reason consumer_cap and Retry-After once its spend
// this UTC day reaches the cap, while its teammate goes on; GET /v1/balance
// shows the tighter limit; the next UTC day (an injected clock) it is served
// again. A consumer claimed by two customers is reported, never guessed.
import { expect } from 'chai';
import type { RunningService } from '../../../control-service/src/service';
import type { StripeEmulator } from '../../../testkit/stripe-emulator';
import { ADMIN, serviceFixture } from '../../support/fixture';

describe('caps: the control service', function () {
  this.timeout(30_000);
  const fx = serviceFixture({ prefix: 'payg-caps-' });
  let stripe: StripeEmulator;
  let svc: RunningService | undefined;
  let clock = Date.UTC(2025, 11, 2, 23, 59, 0);
  beforeEach(() => { stripe = fx.stripe; });

  async function start(caps: Record<string, unknown> = {}, rules: unknown[] = []) {
    svc = await fx.start({
      rules: [{ id: 'block', cohort: 'no-credit', body: '{"error":"payment_required"}' }, ...rules],
      top_up: { url: 'https://billing.example.com/top-up?c={customer_id}' },
      metering: { default_cost: 1 },
      console: { listen: { host: '127.0.0.1', port: 0 } },
      caps,
    }, { now: () => clock });
    await svc.sync!.sweep();
    return svc;
  }
  let seq = 0;
  const use = async (consumer: string, n: number) => {
    const events = Array.from({ length: n }, () => ({ id: `evt-${++seq}`, consumer, at: new Date(clock).toISOString(), route: 'orders', status: 200 }));
    expect((await fx.control('/v1/usage', { method: 'POST', body: JSON.stringify({ events }) })).status).to.equal(200);
  };
  const decision = async (consumer: string) => (await fx.control(`/v1/decisions/${consumer}`)).body;
  const balance = async (consumer: string) => {
    const { status, body } = await fx.control('/v1/balance', { headers: { 'x-consumer-custom-id': consumer } });
    return { status, body };
  };

  it('two consumers share one balance; the capped one is refused at exactly its cap with reason consumer_cap and Retry-After, the other goes on; the next UTC day it is served again', async () => {
    clock = Date.UTC(2025, 11, 2, 23, 59, 0);
    const team = stripe.create({ balance: -1000, metadata: { kong_consumer: 'app-web, app-batch', 'payg_cap_daily.app-batch': '5' } });
    await start({ monthly: 100000 });
    expect((await decision('app-web')).allow).to.equal(true);
    expect(await decision('app-batch')).to.include({ allow: true, max_requests: 5 });

    await use('app-batch', 4);
    expect(await decision('app-batch')).to.include({ allow: true, max_requests: 1 });
    let b = await balance('app-batch');
    expect(b.body).to.include({ limit: 'consumer_cap' });
    expect(b.body.credit.amount).to.equal(1);
    expect(b.body.team_credit.amount).to.equal(1000 - 4);
    expect(b.body.consumer_cap).to.include({ period: 'daily', resets_at: '2025-12-03T00:00:00.000Z' });

    await use('app-batch', 1);
    const refused = await decision('app-batch');
    expect(refused).to.include({ allow: false, status: 402, reason: 'consumer_cap', resets_at: '2025-12-03T00:00:00.000Z' });
    expect(refused.headers['Retry-After']).to.equal('60');
    expect(JSON.parse(refused.body)).to.include({ error: 'consumer_cap_reached', reason: 'consumer_cap', top_up_url: `https://billing.example.com/top-up?c=${team.id}` });
    expect(refused.ttl_ms).to.be.at.most(60_000);
    b = await balance('app-batch');
    expect(b.body).to.include({ limit: 'consumer_cap' });
    expect(b.body.credit.amount).to.equal(0);

    // The teammate draws on the same balance, uncapped by app-batch's cap.
    const web = await decision('app-web');
    expect(web).to.include({ allow: true, max_requests: 1000 - 5 });
    expect((await balance('app-web')).body).to.include({ limit: 'no_credit' });

    // The console API shows each consumer's spend this period and its caps.
    const consoleUrl = svc!.console!.url.replace(/\/$/, '');
    const signIn = await fetch(`${consoleUrl}/api/session`, { method: 'POST', body: JSON.stringify({ token: ADMIN }), headers: { 'content-type': 'application/json' } });
    const cookie = signIn.headers.get('set-cookie')!.split(';')[0];
    const detail = await (await fetch(`${consoleUrl}/api/customers/${team.id}`, { headers: { cookie } })).json() as any;
    expect(detail.consumers).to.deep.equal([
      { consumer: 'app-web', daily: { spent: 0, cap: null, resets_at: '2025-12-03T00:00:00.000Z' }, monthly: { spent: 0, cap: 100000, resets_at: '2026-01-01T00:00:00.000Z' }, cap_left: 100000, binding_period: 'monthly', problems: [] },
      { consumer: 'app-batch', daily: { spent: 5, cap: 5, resets_at: '2025-12-03T00:00:00.000Z' }, monthly: { spent: 5, cap: 100000, resets_at: '2026-01-01T00:00:00.000Z' }, cap_left: 0, binding_period: 'daily', problems: [] },
    ]);

    // The next UTC day: the daily cap is whole again (the monthly spend stays).
    clock = Date.UTC(2025, 11, 3, 0, 0, 1);
    expect(await decision('app-batch')).to.include({ allow: true, max_requests: 5 });
  });

  it('the spend survives a restart; a rule words the cap refusal with {{limit.kind}} and {{limit.resets_at}}', async () => {
    clock = Date.UTC(2026, 0, 31, 12, 0, 0);
    stripe.create({ balance: -1000, metadata: { kong_consumer: 'a,b' } });
    await start({ monthly: 3 }, [{ id: 'capped', limit: 'consumer_cap', status: 429, body: '{"why":"{{limit.kind}}","until":"{{limit.resets_at}}"}' }]);
    await use('a', 3);
    await fx.stop(); svc = undefined;
    await start({ monthly: 3 }, [{ id: 'capped', limit: 'consumer_cap', status: 429, body: '{"why":"{{limit.kind}}","until":"{{limit.resets_at}}"}' }]);
    const d = await decision('a');
    expect(d).to.include({ allow: false, status: 429, rule: 'capped', reason: 'consumer_cap' });
    expect(JSON.parse(d.body)).to.deep.equal({ why: 'consumer_cap', until: '2026-02-01T00:00:00.000Z' });
    expect(d.headers['Retry-After']).to.equal(String(12 * 3600));
    expect(await decision('b')).to.include({ allow: true, max_requests: 3 });
  });

  it('a consumer claimed in two customers\' lists is a conflict, as before; each customer\'s other consumers still resolve', async () => {
    const one = stripe.create({ balance: -1000, metadata: { kong_consumer: 'shared,only-one' } });
    stripe.create({ balance: -1000, metadata: { kong_consumer: 'two-a, shared' } });
    await start();
    const conflicts = (await fx.admin('/admin/conflicts')).body;
    expect(JSON.stringify(conflicts)).to.contain('shared');
    expect((await balance('only-one')).status).to.equal(200);
    expect((await balance('shared')).status).to.equal(404);
    expect((await balance('two-a')).status).to.equal(200);
    void one;
  });
});
