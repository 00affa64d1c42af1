// Reserve, then settle, on the node's lease: a request on a route priced by tokens
// reserves the route's max_cost from the lease at access, its log phase reports the
// tokens it used, and once the service counts them the difference is free credit
// again. Real payg-pluginserver processes, driven as Kong drives them, against the
// real control service and the Stripe emulator.
import { expect } from 'chai';
import type { Consumer } from '../../testkit/kong-harness';
import { PAYMENT_BODY, pluginFixture, type PluginNode } from '../support/plugin-fixture';
import { until } from '../support/until';

/** One cent per completion token, at most 10 cents a request; other routes half a cent. */
const PRICES = { default_cost: '0.5', routes: { chat: { completion_tokens: 1, max_cost: 10 } } };
/** Every chat request below uses 4 completion tokens: 4 cents, against a reservation of 10. */
const TOKENS = 4;

describe('reserve, then settle: variable-cost requests on the node\'s lease', function () {
  this.timeout(30_000);
  const fx = pluginFixture({
    prefix: 'payg-reserve-',
    plugin: { cache_ttl_ms: 60_000, timeout_ms: 3000, credit_header: 'X-Credit-Remaining', queue: { max_coalescing_delay: 0.02 } },
  });

  const startControl = (metering: Record<string, unknown>) => fx.startControl({
    metering: { ...metering, settle: { enabled: false } },
    // Recalls get time to finish on a loaded machine: this spec is about exact amounts, not recall latency.
    leases: { expire_interval_ms: 20, recall_wait_ms: 3000 },
  });
  const startNodes = (n: number) => fx.startNodes(n);
  /** One request on `route` through a node: access (Kong answers get_route), then the log phase with the tokens used. */
  const request = (node: PluginNode, consumer: Consumer, route: string) =>
    fx.request(node, consumer, { route, log: route === 'chat' ? { ai: { proxy: { usage: { prompt_tokens: 50, completion_tokens: TOKENS } } } } : {} });
  const customer = (id: string) => fx.customer(id);
  const unsettled = (id: string) => fx.unsettled(id);

  it('50 concurrent token-priced requests on two nodes: overspend 0, each charged its tokens; then the credit is used to the last request its max_cost covers, and the 402 is the rule\'s', async () => {
    const c = fx.stripe.create({ balance: -100 }); // $1.00: at most 10 chat requests reserved at once
    await startControl(PRICES);
    const two = await startNodes(2);
    const consumer = { id: 'k1', custom_id: c.id };

    const burst = (await Promise.all(two.map((n) => Promise.all(Array.from({ length: 25 }, () => request(n, consumer, 'chat')))))).flat();
    const served = burst.filter((r) => r.status === 200).length;
    // At most 10 reservations of max_cost are held at once; a request counted during the burst frees the rest of its own.
    expect(served, 'never more than the credit covers at max_cost: 23').to.be.within(1, 23);
    expect(burst.filter((r) => r.status !== 200).every((r) => r.status === 402 && r.body === PAYMENT_BODY), 'the others get the rule\'s 402').to.equal(true);
    // Charged what the tokens cost, not what was reserved.
    await until(async () => (await unsettled(c.id)) === served * TOKENS, 5000, 'usage of the burst not counted');

    // One at a time now, each counted before the next: served while 100 − 4n ≥ 10, i.e. 23 in all.
    let total = served;
    for (;;) {
      const r = await request(two[total % 2], consumer, 'chat');
      if (r.status !== 200) {
        expect(r.status).to.equal(402);
        expect(r.body).to.equal(PAYMENT_BODY);
        break;
      }
      total++;
      expect(r.credit, 'the credit header never shows more than is left').to.be.at.most(100 - (total - 1) * TOKENS);
      await until(async () => (await unsettled(c.id)) === total * TOKENS, 5000, 'usage not counted');
      expect(total, 'overspend').to.be.at.most(23);
    }
    expect(total, 'the credit is used up to the last request its max_cost covers').to.equal(23);
    expect(await unsettled(c.id), 'charged = tokens used; 8 cents left, less than one max_cost').to.equal(92);
    // The unused part of every reservation came back: nothing stays held.
    await until(async () => (await customer(c.id)).leases.every((l) => l.held_micros === 0), 3000, 'reservations still held');
    // A cheaper route is still served on what is left: 8 cents at half a cent is 16 requests, exactly.
    let cheap = 0;
    for (let i = 0; i < 20; i++) {
      const r = await request(two[0], consumer, 'search');
      if (r.status === 200) cheap++;
      await until(async () => (await unsettled(c.id)) === 92 + cheap * 0.5, 5000, 'cheap usage not counted');
    }
    expect(cheap).to.equal(16);
  });

  it('with fixed prices only, access never reads the route', async () => {
    const c = fx.stripe.create({ balance: -100_000 });
    await startControl({ default_cost: 1, routes: { chat: 3 } });
    const [node] = await startNodes(1);
    const consumer = { id: 'k1', custom_id: c.id };
    for (let i = 0; i < 3; i++) {
      const r = await request(node, consumer, 'chat');
      expect(r.status).to.equal(200);
      expect(r.pdkCalls).to.not.include('kong.router.get_route');
    }
  });

  it('with a variable price, access reads the route (kong.router.get_route) once the first lease has said so', async () => {
    const c = fx.stripe.create({ balance: -100_000 });
    await startControl(PRICES);
    const [node] = await startNodes(1);
    const consumer = { id: 'k1', custom_id: c.id };
    await request(node, consumer, 'chat'); // the first lease says what each route reserves
    const r = await request(node, consumer, 'chat');
    expect(r.status).to.equal(200);
    expect(r.pdkCalls).to.include('kong.router.get_route');
  });
});
