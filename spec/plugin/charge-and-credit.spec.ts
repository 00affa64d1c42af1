// What a customer pays and what the credit header shows, through real payg-pluginserver
// processes driven as Kong drives them, against the real control service and the Stripe emulator:
// - a units header the plugin cannot read (or too large) is charged the route's max_cost;
// - the credit header never shows more than this node can know is left, and never rises
//   except after a top-up.
import { expect } from 'chai';
import type { Consumer } from '../../testkit/kong-harness';
import { pluginFixture, type PluginNode, type Served } from '../support/plugin-fixture';
import { until } from '../support/until';

describe('what is charged, and the credit header', function () {
  this.timeout(60_000);
  const fx = pluginFixture({
    prefix: 'payg-charge-',
    plugin: { cache_ttl_ms: 60_000, timeout_ms: 3000, fail_open: false, credit_header: 'X-Credit-Remaining', usage_units_header: 'X-Usage-Units', queue: { max_coalescing_delay: 0.02 } },
  });

  const startControl = (metering: Record<string, unknown>, leases: Record<string, unknown> = {}) =>
    fx.startControl({ metering, leases: { expire_interval_ms: 20, recall_wait_ms: 3000, ...leases } });
  const plugin = (node: PluginNode, config: Record<string, unknown> = {}, id = 'plugin-1') => fx.instance(node, config, id);
  /** One request on `route`: access (Kong answers get_route), then its log phase with what the upstream reported. */
  const request = (node: PluginNode, instance: string, consumer: Consumer, route: string, log: Record<string, unknown> = {}) => fx.request(node, consumer, { plugin: instance, route, log });
  const unsettled = (id: string) => fx.unsettled(id);

  it('X-Usage-Units too large to read, on a route with max_cost 20: each request is charged 20, so credit 50 buys 40 of service, and Stripe is charged 40', async () => {
    const c = fx.stripe.create({ balance: -50 });
    await startControl({ default_cost: 1, routes: { render: { request: 1, header_units: '0.5', max_cost: 20 } }, settle: { schedule: '0 0 1 1 *' } });
    const node = await fx.startNode();
    const id = await plugin(node);
    const consumer = { id: 'k1', custom_id: c.id };
    const huge = { response: { headers: { 'x-usage-units': '100000000000000000' } } };
    const served: number[] = [];
    for (let i = 0; i < 6; i++) {
      const r = await request(node, id, consumer, 'render', huge);
      served.push(r.status);
      if (r.status === 200) await until(async () => (await unsettled(c.id)) === 20 * served.filter((s) => s === 200).length, 5000, 'usage not counted');
    }
    expect(served.filter((s) => s === 200), 'two requests at max_cost 20 fit in 50; a third would not').to.have.length(2);
    expect(served.slice(2).every((s) => s === 402)).to.equal(true);
    expect(await unsettled(c.id), 'each charged its max_cost').to.equal(40);
    // Whatever else the upstream sends that is not a count is charged the same.
    const d = fx.stripe.create({ balance: -100 });
    const other = { id: 'k2', custom_id: d.id };
    for (const text of ['12.5', '-3', 'many']) {
      expect((await request(node, id, other, 'render', { response: { headers: { 'x-usage-units': text } } })).status).to.equal(200);
    }
    expect((await request(node, id, other, 'render', { response: { headers: { 'x-usage-units': '6' } } })).status).to.equal(200);
    await until(async () => (await unsettled(d.id)) === 3 * 20 + 4, 5000, 'unreadable units not charged max_cost (readable: 1 + 6 × 0.5)');
    // Settled to Stripe: the amounts charged are the whole cents used.
    await fx.svc.settler!.settle();
    const charged = (cus: string) => fx.stripe.balanceTransactions.filter((t) => t.customer === cus).reduce((sum, t) => sum + (t.amount as number), 0);
    expect(charged(c.id)).to.equal(40);
    expect(charged(d.id)).to.equal(64);
  });

  it('the credit header never rises at a lease renewal (reservations of 10 settled at a real cost of 4), rises after a top-up, and never shows more than is left', async () => {
    const c = fx.stripe.create({ balance: -100 });
    await startControl({ default_cost: '0.5', routes: { chat: { completion_tokens: 1, max_cost: 10 } }, settle: { enabled: false } });
    const node = await fx.startNode();
    const id = await plugin(node);
    const consumer = { id: 'k1', custom_id: c.id };
    const tokens = { ai: { proxy: { usage: { prompt_tokens: 50, completion_tokens: 4 } } } };
    const shown: number[] = [];
    let total = 0;
    for (;;) {
      const r = await request(node, id, consumer, 'chat', tokens);
      if (r.status !== 200) break;
      total++;
      expect(r.credit, 'the header is set').to.be.a('number');
      // Left before this request: 100 − 4 per request counted so far.
      expect(r.credit!, `request ${total}: more than is left`).to.be.at.most(100 - (total - 1) * 4);
      if (shown.length) expect(r.credit!, `request ${total}: the header rose from ${shown[shown.length - 1]} with no top-up (${shown.join(', ')})`).to.be.at.most(shown[shown.length - 1]);
      shown.push(r.credit!);
      await until(async () => (await unsettled(c.id)) === total * 4, 5000, 'usage not counted');
    }
    expect(total, 'the credit is still used to the last request its max_cost covers').to.equal(23);

    // A top-up of $10.00: the header rises, by no more than the top-up, and still not above what is left.
    const before = shown[shown.length - 1];
    fx.stripe.addBalanceTransaction(c.id, -1000);
    let after: Served | undefined;
    await until(async () => { after = await request(node, id, consumer, 'chat', tokens); return after.status === 200; }, 5000, 'the top-up did not reach the node');
    expect(after!.credit!).to.be.above(before);
    expect(after!.credit!).to.be.at.most(before + 1000);
    expect(after!.credit!).to.be.at.most(1000 + 100 - total * 4);
  });

  it('two payg entities on one node, one request at a time: neither shows credit the other has spent', async () => {
    const c = fx.stripe.create({ balance: -100 });
    await startControl({ default_cost: 5, settle: { enabled: false } });
    const node = await fx.startNode();
    const api = await plugin(node, {}, 'plugin-api');
    const chat = await plugin(node, { queue: { max_coalescing_delay: 0.05 } }, 'plugin-chat');
    const consumer = { id: 'k1', custom_id: c.id };
    const shown: number[] = [];
    for (let i = 0; i < 16; i++) {
      const r = await request(node, i % 2 ? chat : api, consumer, i % 2 ? 'chat' : 'orders');
      expect(r.status).to.equal(200);
      // Left after this request: 100 − 5 per request, this one's included (counted or not yet).
      expect(r.credit!, `request ${i + 1}: shown ${r.credit} (${shown.join(', ')})`).to.be.at.most(100 - (i + 1) * 5);
      shown.push(r.credit!);
    }
    await until(async () => (await unsettled(c.id)) === 16 * 5, 5000, 'usage not counted');
  });

  it('usage the node still holds when its lease is renewed is not shown as credit', async () => {
    const c = fx.stripe.create({ balance: -100 });
    // Leases of 100 ms: renewed while the node still holds the usage (sent only after 30 s).
    await startControl({ default_cost: 5, settle: { enabled: false } }, { ttl_ms: 100 });
    const node = await fx.startNode();
    const id = await plugin(node, { queue: { max_coalescing_delay: 30 } });
    const consumer = { id: 'k1', custom_id: c.id };
    for (let i = 0; i < 6; i++) {
      const r = await request(node, id, consumer, 'orders');
      expect(r.status).to.equal(200);
      expect(r.credit!, `request ${i + 1}`).to.be.at.most(100 - (i + 1) * 5);
      await new Promise((resolve) => setTimeout(resolve, 150)); // the lease is over: the next request renews it
    }
  });
});
