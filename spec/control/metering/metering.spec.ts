// Metering: usage spends credit in near real time, and is settled to Stripe
// exactly once. The service runs against the Stripe emulator through the SDK;
// the $1.00 / 100 requests case goes through the real plugin server.
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import Stripe from 'stripe';
import type { RunningService } from '../../../control-service/src/service';
import { SqliteStore } from '../../../control-service/src/store/sqlite';
import type { StoreChanges } from '../../../control-service/src/store/store';
import type { StripeEmulator } from '../../../testkit/stripe-emulator';
import { KongHarness, accessPdk, logPdk } from '../../../testkit/kong-harness';
import { startPluginServer } from '../../../testkit/pluginserver-process';
import { ADMIN, CONTROL, serviceFixture } from '../../support/fixture';

describe('metering', function () {
  this.timeout(30_000);
  const fx = serviceFixture({ prefix: 'payg-meter-' });
  let stripe: StripeEmulator;
  let svc: RunningService;
  const stopSvc = () => fx.stop();

  async function start(metering: Record<string, unknown> = {}, store?: SqliteStore): Promise<RunningService> {
    svc = await fx.start({ metering: { default_cost: 1, ...metering } }, { store });
    return svc;
  }
  const post = async (events: unknown, token: string | null = CONTROL) => {
    const res = await fetch(`${svc.url}/v1/usage`, {
      method: 'POST', body: typeof events === 'string' ? events : JSON.stringify({ events }),
      headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
    });
    return { status: res.status, body: await res.json() as any };
  };
  const decision = async (consumer: string) => (await fx.control(`/v1/decisions/${consumer}`)).body;
  const customerState = async (id: string) => (await fx.admin(`/admin/customers/${id}`)).body;
  let seq = 0;
  const event = (consumer: string, extra: Record<string, unknown> = {}) => ({ id: `evt-${++seq}`, consumer, at: new Date().toISOString(), route: 'orders', status: 200, ...extra });

  beforeEach(() => { stripe = fx.stripe; });

  describe('POST /v1/usage', () => {
    it('401 without the control token; a bad event is refused by index and the rest stored; 413 past max_batch_events', async () => {
      const c = stripe.create({ balance: -1000 });
      await start({ max_batch_events: 50 });
      await svc.sync!.sweep();
      expect((await post([event(c.id)], null)).status).to.equal(401);
      expect((await post([event(c.id)], 'wrong')).status).to.equal(401);
      const bad = await post([event(c.id), event(c.id), event(c.id, { status: 'ok' })]);
      expect(bad).to.deep.equal({ status: 200, body: { accepted: 2, duplicates: 0, refused: [{ index: 2, error: 'status: Expected number, received string' }] } });
      expect((await post([event(c.id, { at: 'yesterday' })])).body.refused[0].error).to.match(/^at: /);
      expect((await post('not json')).body).to.deep.equal({ error: 'bad_request', message: 'body is not JSON' });
      expect((await post(JSON.stringify({ usage: [] }))).body.message).to.equal('events: Required');
      expect((await post(Array.from({ length: 51 }, () => event(c.id)))).status).to.equal(413);
      expect((await customerState(c.id)).unsettled_usage, 'only the two valid events are stored').to.equal(2);
    });

    it('idempotent on event id: a replayed batch and repeats inside a batch count once', async () => {
      const c = stripe.create({ balance: -1000 });
      await start();
      await svc.sync!.sweep();
      const batch = [event(c.id), event(c.id), event(c.id)];
      expect((await post(batch)).body).to.deep.equal({ accepted: 3, duplicates: 0, refused: [] });
      expect((await post(batch)).body).to.deep.equal({ accepted: 0, duplicates: 3, refused: [] });
      expect((await post([batch[0], event(c.id), batch[1]])).body).to.deep.equal({ accepted: 1, duplicates: 2, refused: [] });
      const state = await customerState(c.id);
      expect(state.unsettled_usage).to.equal(4);
      expect(state.estimated_balance).to.equal(-996);
    });

    it('a usage id repeated inside one batch is counted once', async () => {
      const c = stripe.create({ balance: -1000 });
      await start();
      await svc.sync!.sweep();
      const e = event(c.id);
      expect((await post([e, e, event(c.id), e])).body).to.include({ accepted: 2, duplicates: 2 });
      expect(await customerState(c.id)).to.include({ unsettled_usage: 2, estimated_balance: -998 });
    });

    it('stored before the 2xx: a restart keeps the usage and the estimate', async () => {
      const c = stripe.create({ balance: -5 });
      await start();
      await svc.sync!.sweep();
      expect((await post(Array.from({ length: 5 }, () => event(c.id)))).status).to.equal(200);
      expect((await decision(c.id)).allow).to.equal(false);
      await stopSvc();
      await start();
      expect((await decision(c.id)).allow, 'still blocked after the restart').to.equal(false);
      expect((await customerState(c.id)).estimated_balance).to.equal(0);
    });

    it('prices per route and skips upstream 5xx by default', async () => {
      const c = stripe.create({ balance: -100000 });
      await start({ default_cost: '0.5', routes: { search: '2.25' } });
      await svc.sync!.sweep();
      await post([event(c.id), event(c.id, { route: 'search' }), event(c.id, { status: 503 }), event(c.id, { route: null, status: 404 })]);
      expect((await customerState(c.id)).unsettled_usage).to.equal(0.5 + 2.25 + 0 + 0.5);
    });

    it('count_upstream_5xx: true charges a request the upstream answered 5xx', async () => {
      const c = stripe.create({ balance: -1000 });
      await start({ count_upstream_5xx: true });
      await svc.sync!.sweep();
      await post([event(c.id, { status: 502 }), event(c.id, { status: 200 })]);
      expect(await customerState(c.id)).to.include({ unsettled_usage: 2 });
    });
  });

  it('$1.00 at $0.01 a request through the plugin server, back to back: requests 1–100 pass, 101 gets 402 with the rule\'s body, before any sweep', async () => {
    const c = stripe.create({ name: 'Ada', balance: -100 });
    await start({ default_cost: 1 });
    await svc.sync!.sweep();
    const ps = await startPluginServer();
    const kong = new KongHarness(ps.socketPath);
    try {
      const id = await kong.startInstance('payg', {
        control_service_url: svc.url, control_service_token: CONTROL, usage_queue: { max_batch_size: 1, max_coalescing_delay: 0 },
      });
      const consumer = { id: 'k-ada', custom_id: c.id };
      const statuses: number[] = [];
      for (let i = 1; i <= 101; i++) {
        const res = await kong.handleEvent(id, 'access', accessPdk(consumer));
        const status = res.exit?.status ?? 200;
        statuses.push(status);
        if (status !== 200) break;
        // Back to back: the usage of earlier requests may still be queued in the plugin.
        await kong.handleEvent(id, 'log', logPdk({ consumer, route: { id: 'r1', name: 'orders' }, status: 200 }));
      }
      expect(statuses.slice(0, 100).every((s) => s === 200), 'the 100 affordable requests pass').to.equal(true);
      expect(statuses).to.have.length(101);
      expect(statuses[100], 'request 101').to.equal(402);
      expect((await customerState(c.id)).unsettled_usage, 'every served request was counted before the 402').to.equal(100);
      expect(stripe.requests.filter((r) => r.path === '/v1/customers').length, 'no sweep ran after the first').to.equal(1);
    } finally {
      kong.close();
      await ps.stop();
    }
  });

  it('GET /v1/decisions (read-only) carries max_requests (the requests the credit buys), and near zero a shrinking ttl_ms (low_credit_requests, min_ttl_ms)', async () => {
    const rich = stripe.create({ balance: -100000 });
    const near = stripe.create({ balance: -25 });
    const broke = stripe.create({ balance: -1 });
    await start({ default_cost: 1, low_credit_requests: 100, min_ttl_ms: 50 });
    await svc.sync!.sweep();
    expect(await decision(rich.id)).to.deep.equal({ allow: true, ttl_ms: 5000, max_requests: 100000, credit: 100000 });
    expect(await decision(near.id)).to.deep.equal({ allow: true, ttl_ms: 1200, max_requests: 25, credit: 25 }); // ttl: (25 - 1) / 100 of 5000
    expect(await decision(broke.id)).to.deep.equal({ allow: true, ttl_ms: 50, max_requests: 1, credit: 1 }); // ttl floored at min_ttl_ms
  });

  it('refuses metering.gateway_nodes at start-up, saying why', async () => {
    let error: Error | undefined;
    svc = undefined as unknown as RunningService; // nothing to stop after this test
    try { await start({ default_cost: 1, gateway_nodes: 3 }); } catch (err) { error = err as Error; }
    expect(error?.message).to.match(/metering\.gateway_nodes: is no longer used: each plugin server identifies itself/);
  });

  it('10,000 events over 50 customers at fractional prices settle to exactly the expected sums, with no gap or double count', async () => {
    const customers = Array.from({ length: 50 }, () => stripe.create({ balance: -1_000_000 }));
    await start({ default_cost: '0.3', routes: { search: '1.7', bulk: '0.000001' } });
    await svc.sync!.sweep();
    const routes = ['orders', 'search', 'bulk', 'orders'];
    const micros = new Map<string, number>(customers.map((c) => [c.id, 0]));
    const price: Record<string, number> = { orders: 300_000, search: 1_700_000, bulk: 1 };
    const batches: unknown[][] = [];
    for (let i = 0; i < 10_000; i++) {
      const c = customers[(i * 7) % 50];
      const route = routes[i % 4];
      const status = i % 97 === 0 ? 502 : 200;
      if (status < 500) micros.set(c.id, micros.get(c.id)! + price[route]);
      if (i % 500 === 0) batches.push([]);
      batches.at(-1)!.push(event(c.id, { route, status }));
    }
    for (const b of batches) expect((await post(b)).status).to.equal(200);
    const before = new Map(await Promise.all(customers.map(async (c) => [c.id, (await customerState(c.id)).estimated_balance] as const)));

    const result = await (await fetch(`${svc.url}/admin/settle`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN}` } })).json() as any;
    expect(result).to.include({ confirmed: 50, failed: 0 });
    for (const c of customers) {
      const charged = stripe.balanceTransactions.filter((t) => t.customer === c.id).reduce((sum, t) => sum + (t.amount as number), 0);
      expect(charged, c.id).to.equal(Math.floor(micros.get(c.id)! / 1_000_000));
      const state = await customerState(c.id);
      expect(state.estimated_balance, 'the estimate does not move when usage is settled').to.be.closeTo(before.get(c.id)!, 1e-9);
      expect(state.customer.balance, 'balance as Stripe reported it after the debit').to.equal(stripe.customers.get(c.id)!.balance);
    }
    // The next sweep reads the debited balances: still no double count.
    await svc.sync!.sweep();
    for (const c of customers) expect((await customerState(c.id)).estimated_balance).to.be.closeTo(before.get(c.id)!, 1e-9);
    // Nothing left worth a cent: a second pass charges nothing.
    expect(await svc.settler!.settle()).to.include({ confirmed: 0 });
  });

  it('a crash between "sent to Stripe" and "marked settled": the restart finds it applied in Stripe and charges once', async () => {
    const c = stripe.create({ balance: -1000 });
    // A store that dies when it would record Stripe's confirmation, as a kill -9 at that moment would.
    class CrashingStore extends SqliteStore {
      override async saveChanges(changes: StoreChanges): Promise<void> {
        if (changes.confirmSettlements?.length) throw new Error('killed before the confirmation was written');
        return super.saveChanges(changes);
      }
    }
    await start({}, new CrashingStore(path.join(fx.dir, 'payg.sqlite')));
    await svc.sync!.sweep();
    await post(Array.from({ length: 42 }, () => event(c.id)));
    expect(await svc.settler!.settle()).to.include({ confirmed: 0, failed: 0, retrying: 1 });
    expect(stripe.balanceTransactions).to.have.length(1);
    await stopSvc();

    await start();
    const settled = await svc.settler!.settle();
    expect(settled).to.include({ confirmed: 1, amount: 42 });
    expect(stripe.balanceTransactions, 'charged once').to.have.length(1);
    expect(stripe.customers.get(c.id)!.balance).to.equal(-958);
    // Sent once: before a resend, the customer's balance transactions showed it applied (keys expire after 24 h).
    const posts = stripe.requests.filter((r) => r.method === 'POST' && r.path.endsWith('/balance_transactions'));
    expect(posts.map((r) => r.status)).to.deep.equal([200]);
    expect((await customerState(c.id)).estimated_balance).to.equal(-958);
    const rows = await (await fetch(`${svc.url}/admin/settlements?customer=${c.id}`, { headers: { authorization: `Bearer ${ADMIN}` } })).json() as any;
    expect(rows.settlements).to.have.length(1);
    expect(rows.settlements[0]).to.include({ status: 'confirmed', amount: 42, attempts: 2 });
  });

  it('pruning forgets settled events received before the cutoff, keeps the totals and the dedupe of recent ones', async () => {
    const c = stripe.create({ balance: -1000 });
    await start();
    await svc.sync!.sweep();
    const old = [event(c.id, { at: Date.now() - 10 * 86_400_000 }), event(c.id, { at: Date.now() - 9 * 86_400_000 })];
    await post(old);
    await svc.settler!.settle(); // settles the 2 cents
    // Pruning goes by when events were received, not by the time they claim.
    await new Promise((r) => setTimeout(r, 5));
    const cutoff = Date.now();
    await new Promise((r) => setTimeout(r, 5));
    const recent = [event(c.id)];
    await post(recent);
    const pruned = await svc.store.prune({ usageBefore: cutoff, webhooksBefore: 0 });
    expect(pruned.usageEvents).to.equal(2);
    expect((await customerState(c.id)).estimated_balance, 'the estimate does not move').to.equal(-997);
    expect((await post(recent)).body, 'recent ids still deduplicated').to.deep.equal({ accepted: 0, duplicates: 1, refused: [] });
    await stopSvc();
    await start();
    expect((await customerState(c.id)).estimated_balance, 'nor after a restart').to.equal(-997);
  });

  it('meter_events mode: one meter event per settlement, identified by its key, value in the smallest unit', async () => {
    const c = stripe.create({ balance: -1000 });
    await start({ default_cost: '0.5', settle: { mode: 'meter_events', meter_event_name: 'api_requests', schedule: '0 0 1 1 *' } });
    await svc.sync!.sweep();
    await post(Array.from({ length: 9 }, () => event(c.id)));
    expect(await svc.settler!.settle()).to.include({ confirmed: 1, amount: 4 });
    expect(stripe.meterEvents).to.have.length(1);
    expect(stripe.meterEvents[0]).to.deep.include({ event_name: 'api_requests', payload: { stripe_customer_id: c.id, value: '4' } });
    expect(stripe.meterEvents[0].identifier).to.match(/^payg-settle-[0-9a-f]{40}$/);
    expect(stripe.balanceTransactions).to.have.length(0);
    await post([event(c.id)]); // 5.0 cents used, 4 settled: 1 more
    expect(await svc.settler!.settle()).to.include({ confirmed: 1, amount: 1 });
  });

  it('the emulator honours idempotency keys as Stripe does: same body replays, another body is a 400', async () => {
    const c = stripe.create({ balance: -1000 });
    const sdk = new Stripe(stripe.secretKey, { host: '127.0.0.1', port: Number(new URL(stripe.url).port), protocol: 'http', maxNetworkRetries: 0 });
    const a = await sdk.customers.createBalanceTransaction(c.id, { amount: 10, currency: 'usd' }, { idempotencyKey: 'k1' });
    const b = await sdk.customers.createBalanceTransaction(c.id, { amount: 10, currency: 'usd' }, { idempotencyKey: 'k1' });
    expect(b.id).to.equal(a.id);
    expect(stripe.customers.get(c.id)!.balance).to.equal(-990);
    let err: any;
    try { await sdk.customers.createBalanceTransaction(c.id, { amount: 11, currency: 'usd' }, { idempotencyKey: 'k1' }); } catch (e) { err = e; }
    expect(err?.statusCode).to.equal(400);
    expect(err?.type).to.equal('StripeIdempotencyError');
  });
});
