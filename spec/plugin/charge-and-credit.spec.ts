// What a customer pays and what the credit header shows, through real payg-pluginserver
// processes driven as Kong drives them, against the real control service and the Stripe emulator:
// - a units header the plugin cannot read (or too large) is charged the route's max_cost;
// - the credit header never shows more than this node can know is left, and never rises
//   except after a top-up.
import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { parseConfig } from '../../control-service/src/config';
import { startService, type RunningService } from '../../control-service/src/service';
import { StripeEmulator } from '../../testkit/stripe-emulator';
import { KongHarness, accessPdk, logPdk, requestCtx, type Consumer, type PdkHandlers } from '../../testkit/kong-harness';
import { startPluginServer, type PluginServerProcess } from '../../testkit/pluginserver-process';
import { until } from '../support/until';

const ADMIN = 'admin-token-for-tests';
const CONTROL = 'control-token-for-tests';
const WEBHOOK_SECRET = 'whsec_credit';
const PAYMENT_BODY = '{"error":"payment_required"}';

interface Node { ps: PluginServerProcess; kong: KongHarness }
interface Served { status: number; credit: number | undefined }

describe('what is charged, and the credit header', function () {
  this.timeout(60_000);
  let stripe: StripeEmulator;
  let svc: RunningService;
  let dir: string;
  let nodes: Node[] = [];

  async function startControl(metering: Record<string, unknown>, leases: Record<string, unknown> = {}): Promise<void> {
    const config = parseConfig({
      listen: { port: 0 }, store: { sqlite: path.join(dir, 'payg.sqlite') },
      stripe: { poll: '0 0 1 1 *', max_requests_per_second: 100, retry: { max_attempts: 2, base_delay_ms: 10, max_delay_ms: 20 } },
      decision_ttl_ms: 60_000,
      cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
      rules: [{ id: 'block', cohort: 'no-credit', body: PAYMENT_BODY }],
      metering,
      leases: { expire_interval_ms: 20, recall_wait_ms: 3000, ...leases },
    }, { STRIPE_SECRET_KEY: stripe.secretKey, STRIPE_API_BASE: stripe.url, PAYG_ADMIN_TOKEN: ADMIN, PAYG_CONTROL_TOKEN: CONTROL, STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET }, dir);
    svc = await startService(config, { log: pino({ level: 'silent' }), sweepOnStart: false });
    stripe.webhook = { url: `${svc.url}/webhooks/stripe`, secret: WEBHOOK_SECRET };
    await svc.sync!.sweep();
  }

  async function startNode(): Promise<Node> {
    const ps = await startPluginServer();
    const node = { ps, kong: new KongHarness(ps.socketPath) };
    nodes.push(node);
    return node;
  }

  const plugin = (node: Node, config: Record<string, unknown> = {}, id = 'plugin-1') => node.kong.startInstance('payg', {
    control_service_url: svc.url, control_service_token: CONTROL, cache_ttl_ms: 60_000, timeout_ms: 3000, fail_open: false,
    credit_header: 'X-Credit-Remaining', usage_units_header: 'X-Usage-Units', queue: { max_coalescing_delay: 0.02 }, ...config,
  }, id);

  /** One request on `route`: access (Kong answers get_route), then its log phase with what the upstream reported. */
  async function request(node: Node, plugin: string, consumer: Consumer, route: string, log: Record<string, unknown> = {}): Promise<Served> {
    const ctx = requestCtx();
    const kongRoute = { id: `r-${route}`, name: route };
    let credit: number | undefined;
    const access: PdkHandlers = {
      ...accessPdk(consumer, ctx),
      'kong.router.get_route': () => kongRoute,
      'kong.response.set_header': (name: unknown, value: unknown) => { if (name === 'X-Credit-Remaining') credit = Number(value); return null; },
    };
    const res = await node.kong.handleEvent(plugin, 'access', access);
    const status = res.exit?.status ?? 200;
    if (status === 200) {
      await node.kong.handleEvent(plugin, 'log', {
        ...logPdk({ consumer, status }, ctx),
        'kong.log.serialize': () => JSON.stringify({ consumer, route: kongRoute, started_at: Date.now(), request: { size: 10 }, ...log, response: { status, size: 10, ...(log.response as object) } }),
      });
    }
    return { status, credit };
  }

  const customer = async (id: string) => (await (await fetch(`${svc.url}/admin/customers/${id}`, { headers: { authorization: `Bearer ${ADMIN}` } })).json()) as {
    unsettled_usage: number; leases: Array<{ held_micros: number }>;
  };
  const unsettled = async (id: string) => (await customer(id)).unsettled_usage;

  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-charge-'));
    stripe = await new StripeEmulator().start();
  });
  afterEach(async () => {
    for (const n of nodes) { n.kong.close(); await n.ps.stop(); }
    nodes = [];
    await svc?.stop();
    await stripe.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('X-Usage-Units too large to read, on a route with max_cost 20: each request is charged 20, so credit 50 buys 40 of service, and Stripe is charged 40', async () => {
    const c = stripe.create({ balance: -50 });
    await startControl({ default_cost: 1, routes: { render: { request: 1, header_units: '0.5', max_cost: 20 } }, settle: { schedule: '0 0 1 1 *' } });
    const node = await startNode();
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
    const d = stripe.create({ balance: -100 });
    const other = { id: 'k2', custom_id: d.id };
    for (const text of ['12.5', '-3', 'many']) {
      expect((await request(node, id, other, 'render', { response: { headers: { 'x-usage-units': text } } })).status).to.equal(200);
    }
    expect((await request(node, id, other, 'render', { response: { headers: { 'x-usage-units': '6' } } })).status).to.equal(200);
    await until(async () => (await unsettled(d.id)) === 3 * 20 + 4, 5000, 'unreadable units not charged max_cost (readable: 1 + 6 × 0.5)');
    // Settled to Stripe: the amounts charged are the whole cents used.
    await svc.settler!.settle();
    const charged = (cus: string) => stripe.balanceTransactions.filter((t) => t.customer === cus).reduce((sum, t) => sum + (t.amount as number), 0);
    expect(charged(c.id)).to.equal(40);
    expect(charged(d.id)).to.equal(64);
  });

  it('the credit header never rises at a lease renewal (reservations of 10 settled at a real cost of 4), rises after a top-up, and never shows more than is left', async () => {
    const c = stripe.create({ balance: -100 });
    await startControl({ default_cost: '0.5', routes: { chat: { completion_tokens: 1, max_cost: 10 } }, settle: { enabled: false } });
    const node = await startNode();
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
    stripe.addBalanceTransaction(c.id, -1000);
    let after: Served | undefined;
    await until(async () => { after = await request(node, id, consumer, 'chat', tokens); return after.status === 200; }, 5000, 'the top-up did not reach the node');
    expect(after!.credit!).to.be.above(before);
    expect(after!.credit!).to.be.at.most(before + 1000);
    expect(after!.credit!).to.be.at.most(1000 + 100 - total * 4);
  });

  it('two payg entities on one node, one request at a time: neither shows credit the other has spent', async () => {
    const c = stripe.create({ balance: -100 });
    await startControl({ default_cost: 5, settle: { enabled: false } });
    const node = await startNode();
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
    const c = stripe.create({ balance: -100 });
    // Leases of 100 ms: renewed while the node still holds the usage (sent only after 30 s).
    await startControl({ default_cost: 5, settle: { enabled: false } }, { ttl_ms: 100 });
    const node = await startNode();
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
