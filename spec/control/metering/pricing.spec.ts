// Pricing by what a request measured (issue 15): LLM tokens from Kong's AI
// log entry, units the upstream reports in a header, bytes; capped at max_cost.
// Charged amounts are read back as a user sees them: the admin API's unsettled usage.
import { expect } from 'chai';
import { parseConfig } from '../../../control-service/src/config';
import { costOf, fixedPrice } from '../../../control-service/src/pricing';
import { KongHarness, accessPdk, logPdk } from '../../../testkit/kong-harness';
import { startPluginServer } from '../../../testkit/pluginserver-process';
import { CONTROL, serviceFixture } from '../../support/fixture';
import { until } from '../../support/until';

describe('pricing by measured units', function () {
  this.timeout(30_000);
  const fx = serviceFixture({ prefix: 'payg-pricing-' });
  const doc = (metering: Record<string, unknown>) => fx.baseConfig({ metering });
  async function start(metering: Record<string, unknown>) {
    const svc = await fx.start({ metering });
    await svc.sync!.sweep();
    return svc;
  }
  const unsettled = async (id: string) => (await fx.admin(`/admin/customers/${id}`)).body.unsettled_usage as number;
  const post = (events: unknown[]) => fx.control('/v1/usage', { method: 'POST', body: JSON.stringify({ events }) });
  let seq = 0;
  const event = (consumer: string, route: string, units?: Record<string, unknown>) => ({ id: `p-${++seq}`, consumer, at: new Date().toISOString(), route, status: 200, ...(units ? { units } : {}) });

  const PRICES = {
    default_cost: 1,
    routes: {
      chat: { request: '0.1', prompt_tokens: '0.000015', completion_tokens: '0.00006', max_cost: 50 },
      render: { header_units: '0.5', max_cost: 20 },
      files: { request_bytes: '0.000001', response_bytes: '0.000002', max_cost: 10 },
    },
  };

  it('config: unit prices need a max_cost above the fee; a fixed price takes none; an unknown unit is named', () => {
    const bad: Array<[unknown, RegExp]> = [
      [{ routes: { chat: { prompt_tokens: '0.00001' } } }, /metering\.routes\."chat"\.max_cost: is required with unit prices/],
      [{ routes: { chat: { request: 2, prompt_tokens: 1, max_cost: 2 } } }, /metering\.routes\."chat"\.max_cost: must be more than the request fee/],
      [{ routes: { chat: { request: 2, max_cost: 5 } } }, /max_cost: applies to prices with unit prices only/],
      [{ routes: { chat: { tokens: 1, max_cost: 5 } } }, /metering\.routes\.chat\.tokens: unknown key/],
      [{ default_cost: { prompt_tokens: '0.0000001', max_cost: 1 } }, /metering\.default_cost/],
      [{ routes: { chat: {} } }, /an empty price/],
    ];
    for (const [metering, message] of bad) expect(() => parseConfig(doc(metering as Record<string, unknown>), fx.env(), fx.dir), JSON.stringify(metering)).to.throw(message);
    const ok = parseConfig(doc(PRICES), fx.env(), fx.dir).metering.pricing;
    expect(ok.routeCostMicros.get('chat'), 'a variable route reserves its max_cost').to.equal(50_000_000);
    expect(ok.defaultCostMicros).to.equal(1_000_000);
  });

  it('a token-priced route charges exactly: fee + prompt and completion priced apart, capped at max_cost; events without units pay the fee', async () => {
    const c = fx.stripe.create({ balance: -100000 });
    await start(PRICES);
    // 0.1 + 1000 × 0.000015 + 500 × 0.00006 = 0.1 + 0.015 + 0.03 = 0.145 cents
    const r = await post([event(c.id, 'chat', { prompt_tokens: 1000, completion_tokens: 500, request_bytes: 300, response_bytes: 2000 })]);
    expect(r.body).to.deep.equal({ accepted: 1, duplicates: 0, refused: [] });
    expect(await unsettled(c.id)).to.equal(0.145);
    // 3 million events' worth of tokens in one: capped at max_cost (50 cents), never more than was reserved.
    await post([event(c.id, 'chat', { prompt_tokens: 2_000_000, completion_tokens: 2_000_000 })]);
    expect(await unsettled(c.id)).to.equal(50.145);
    // An older plugin sends no units: the fee alone, as before.
    await post([event(c.id, 'chat')]);
    expect(await unsettled(c.id)).to.equal(50.245);
    // 7 tokens at 0.000015: 105 micros, summed exactly over 1000 events (0.105 cents), no float drift.
    await post(Array.from({ length: 1000 }, () => event(c.id, 'chat', { prompt_tokens: 7 })));
    expect(await unsettled(c.id)).to.equal(50.245 + 100 + 0.105);
  });

  it('a header-priced route and a byte-priced route', async () => {
    const c = fx.stripe.create({ balance: -100000 });
    await start(PRICES);
    await post([event(c.id, 'render', { header_units: 3 }), event(c.id, 'render', { header_units: 0 }), event(c.id, 'render', { header_units: 1000 })]);
    expect(await unsettled(c.id), '1.5 + 0 + capped 20').to.equal(21.5);
    await post([event(c.id, 'files', { request_bytes: 1_000_000, response_bytes: 250_000 })]);
    expect(await unsettled(c.id), '+ 1 + 0.5').to.equal(23);
  });

  it('units are checked per event: a bad one is refused by index, naming the field', async () => {
    const c = fx.stripe.create({ balance: -100000 });
    await start(PRICES);
    const r = await post([
      event(c.id, 'chat', { prompt_tokens: 10 }),
      event(c.id, 'chat', { prompt_tokens: -1 }),
      event(c.id, 'chat', { prompt_tokens: 1.5 }),
      event(c.id, 'chat', { tokens: 3 }),
    ]);
    expect(r.body.accepted).to.equal(1);
    expect(r.body.refused.map((x: any) => x.index)).to.deep.equal([1, 2, 3]);
    expect(r.body.refused[0].error).to.match(/^units\.prompt_tokens: /);
    expect(r.body.refused[2].error).to.match(/^units: Unrecognized key/);
  });

  it('through the plugin server: AI token counts and the units header from the log entry are billed', async () => {
    const c = fx.stripe.create({ balance: -100000 });
    await start(PRICES);
    const ps = await startPluginServer();
    const kong = new KongHarness(ps.socketPath);
    try {
      const id = await kong.startInstance('payg', {
        control_service_url: fx.url, control_service_token: CONTROL, usage_units_header: 'X-Usage-Units',
        queue: { max_batch_size: 1, max_coalescing_delay: 0 },
      });
      const consumer = { id: 'k1', custom_id: c.id };
      const serialized = (route: string, extra: Record<string, unknown>) => ({
        ...logPdk({ consumer, status: 200 }),
        'kong.log.serialize': () => JSON.stringify({
          consumer, route: { id: `r-${route}`, name: route }, started_at: Date.now(),
          request: { size: 0 }, response: { status: 200, size: 0, ...(extra.headers ? { headers: extra.headers } : {}) },
          ...(extra.ai ? { ai: extra.ai } : {}),
        }),
      });
      await kong.handleEvent(id, 'access', accessPdk(consumer));
      // Two AI plugins on one request (Kong writes ai.<plugin>.usage): their tokens add up.
      await kong.handleEvent(id, 'log', serialized('chat', { ai: {
        proxy: { usage: { prompt_tokens: 1000, completion_tokens: 500, total_tokens: 1500, cost: 0.01 }, meta: { provider_name: 'openai' } },
        'ai-request-transformer': { usage: { prompt_tokens: 200, completion_tokens: 0 } },
      } }));
      await kong.handleEvent(id, 'access', accessPdk(consumer));
      await kong.handleEvent(id, 'log', serialized('render', { headers: { 'x-usage-units': '4' } }));
      // 0.1 + 1200 × 0.000015 + 500 × 0.00006 = 0.148; 4 × 0.5 = 2
      await until(async () => (await unsettled(c.id)) === 2.148, 5000);
    } finally {
      kong.close();
      await ps.stop();
    }
  });

  it('GET /v1/balance answers only for the consumer in the header Kong sets, never one named by the client', async () => {
    const alice = fx.stripe.create({ balance: -1234, metadata: { kong_consumer: 'alice' } });
    fx.stripe.create({ balance: -999999, metadata: { kong_consumer: 'bob' } });
    await start({ default_cost: '0.5' });
    await post([event(alice.id, 'x')]);
    const get = (headers: Record<string, string>, query = '') => fetch(`${fx.url}/v1/balance${query}`, { headers });
    expect((await get({ 'x-consumer-custom-id': 'alice' })).status, 'without the control token').to.equal(401);
    const res = await get({ authorization: `Bearer ${CONTROL}`, 'x-consumer-custom-id': 'alice' }, '?consumer=bob');
    expect(res.status).to.equal(200);
    expect(res.headers.get('cache-control')).to.equal('no-store');
    const body = await res.json() as any;
    expect(body.credit).to.deep.equal({ amount: 1233.5, formatted: '$12.33' });
    expect(body.currency).to.equal('USD');
    expect((await fetch(`${fx.url}/v1/balance/bob`, { headers: { authorization: `Bearer ${CONTROL}` } })).status, 'no path form').to.equal(404);
    expect((await get({ authorization: `Bearer ${CONTROL}` })).status, 'no consumer header').to.equal(400);
    expect((await get({ authorization: `Bearer ${CONTROL}`, 'x-consumer-custom-id': 'nobody' })).status).to.equal(404);
  });
});

describe('what a request costs (pure)', () => {
  it('count_upstream_5xx: an upstream 5xx costs nothing unless it is set', () => {
    const pricing = {
      defaultCostMicros: 1_000_000, routeCostMicros: new Map([['search', 2_500_000]]),
      defaultPrice: fixedPrice(1_000_000), routePrices: new Map([['search', fixedPrice(2_500_000)]]), countUpstream5xx: false,
    };
    expect([costOf(pricing, null, 200), costOf(pricing, null, 404), costOf(pricing, null, 502), costOf(pricing, 'search', 500)]).to.deep.equal([1_000_000, 1_000_000, 0, 0]);
    const counted = { ...pricing, countUpstream5xx: true };
    expect([costOf(counted, null, 502), costOf(counted, 'search', 500)]).to.deep.equal([1_000_000, 2_500_000]);
  });
});
