// Team caps attacked as an independent tester would (issue 23), through real
// plugin servers driven as Kong drives them, with Stripe changed through the
// official SDK against the emulator (webhooks delivered as they happen):
// periods reset at UTC midnight and at the month's start (the service's clock
// injected; the node's cached refusal lives no longer than until the reset), a
// cap edited mid-period (lowered below spend: refused at once on every node;
// raised: served again at once, not after the decision ttl), cap metadata that
// is not a number (reported, the next level applies, nothing else changes), a
// consumer moved from one team to another (its spend this period moves with
// it; one taken off a team is refused there at once), Retry-After and the limit merge tags as a client sees them, the credit
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

describe('caps attacked: real plugin servers, Stripe edits through the SDK', function () {
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

  for (const store of ['SQLite', 'PostgreSQL, two replicas (one node on each)']) it(`${store}: a cap lowered in Stripe below what was spent refuses at once on every node; raised again, every node serves at once (not after the decision ttl), and no more than the new cap`, async () => {
    const team = await sdk.customers.create({ metadata: { kong_consumer: 'app,other', 'payg_cap_daily.app': '20' } });
    await sdk.customers.createBalanceTransaction(team.id, { amount: -100, currency: 'usd' });
    await startControl({}, store === 'SQLite' ? 0 : 2);
    /** The change applied at every replica (the webhook reaches the first; the second reads it from PostgreSQL). */
    const applied = (key: string, value: string) => until(async () => {
      for (const s of svcs) {
        const c = await (await fetch(`${s.url}/admin/customers/${team.id}`, { headers: { authorization: `Bearer ${ADMIN}` } })).json() as any;
        if (c.customer?.metadata?.[key] !== value) return false;
      }
      return true;
    }, 5000, `${key} = ${value} not applied at every replica`);
    const two = await startNodes(2);
    const app = { id: 'k-app', custom_id: 'app' };
    expect(served(await burst(two, app, 4))).to.equal(8);
    await until(async () => (await unsettled(team.id)) === 8, 5000, 'the 8 served not counted');

    // Lowered to 5 (below the 8 spent): the webhook is applied, and no node serves app again.
    await sdk.customers.update(team.id, { metadata: { 'payg_cap_daily.app': '5' } });
    await applied('payg_cap_daily.app', '5');
    const after = await burst(two, app, 3);
    expect(served(after), 'served after the cap was lowered below spend').to.equal(0);
    expect(after.every((a) => a.status === 402 && a.json?.reason === 'consumer_cap')).to.equal(true);
    expect((await request(two[0], { id: 'k-other', custom_id: 'other' })).status, 'the teammate is not capped by app\'s cap').to.equal(200);

    // Raised to 12: both nodes held a cached refusal for up to 60 s; they serve again at once, 4 in all (12 − 8).
    await sdk.customers.update(team.id, { metadata: { 'payg_cap_daily.app': '12' } });
    await applied('payg_cap_daily.app', '12');
    const t0 = Date.now();
    const again = await drain(two, app);
    expect(Date.now() - t0, 'served again without waiting the decision ttl').to.be.below(30_000);
    expect(served(again)).to.equal(4);
    await until(async () => (await unsettled(team.id)) === 13, 5000, 'the 8 + 1 + 4 served not counted');
  });

  it('cap metadata that is not a whole number is reported on the console, the next level applies, and nothing else changes', async () => {
    const team = await sdk.customers.create({ metadata: { kong_consumer: 'app,other' } });
    await sdk.customers.createBalanceTransaction(team.id, { amount: -100, currency: 'usd' });
    await startControl({ caps: { daily: 4 } });
    const [node] = await startNodes(1);
    await sdk.customers.update(team.id, { metadata: { 'payg_cap_daily.app': '2.5', payg_cap_monthly: '$10', 'payg_cap_daily.other': '3' } });
    await until(async () => (await metadataOf(team.id))?.['payg_cap_daily.app'] === '2.5', 5000, 'the metadata not applied');
    const detail = await consoleDetail(team.id);
    const app = detail.consumers.find((c: any) => c.consumer === 'app');
    expect(app.daily.cap, 'the config default applies to app').to.equal(4);
    expect(app.monthly.cap).to.equal(null);
    expect(app.problems.map((p: any) => p.key).sort()).to.deep.equal(['payg_cap_daily.app', 'payg_cap_monthly']);
    expect(app.problems[0].error).to.match(/whole number/);
    // app at the default 4, other at its own 3: nothing else broke.
    expect(served(await drain([node], { id: 'k-app', custom_id: 'app' }))).to.equal(4);
    expect(served(await drain([node], { id: 'k-other', custom_id: 'other' }))).to.equal(3);
    const bal = await fetch(`${svcs[0].url}/v1/balance`, { headers: { authorization: `Bearer ${CONTROL}`, 'x-consumer-custom-id': 'app' } });
    expect(bal.status).to.equal(200);
    expect(await bal.json()).to.include({ limit: 'consumer_cap' });
  });

  it('the daily cap resets at UTC midnight and the monthly one at the month\'s start: a node\'s cached refusal lives no longer than its Retry-After', async () => {
    clock = Date.UTC(2025, 6, 31, 23, 59, 58, 500);
    const team = await sdk.customers.create({ metadata: { kong_consumer: 'app', 'payg_cap_daily.app': '3', 'payg_cap_monthly.app': '5' } });
    await sdk.customers.createBalanceTransaction(team.id, { amount: -100, currency: 'usd' });
    await startControl();
    const two = await startNodes(2);
    const app = { id: 'k-app', custom_id: 'app' };
    const day1 = await drain(two, app);
    expect(served(day1)).to.equal(3);
    const refusal = day1.find((a) => a.status === 402)!;
    expect(refusal.json).to.include({ reason: 'consumer_cap', resets_at: '2025-08-01T00:00:00.000Z' });
    expect(refusal.headers['retry-after']).to.equal('2');

    // Past midnight (also the 1st of the month): both caps start again; the nodes' refusals expire by themselves.
    clock = Date.UTC(2025, 7, 1, 0, 0, 1);
    // Each node serves again once its cached refusal (2 s) is over; every request counts toward the new day's 3.
    let waking = 0;
    const servedAt = async (n: Node) => (await request(n, app)).status === 200 && ++waking > 0;
    const woke = [false, false];
    await until(async () => { for (const i of [0, 1]) woke[i] = woke[i] || (await servedAt(two[i])); return woke[0] && woke[1]; }, 10_000, 'not served after the reset');
    const day2 = await drain(two, app);
    expect(served(day2) + waking, 'served on 1 August').to.equal(3);

    // The next day the daily cap is whole again, but the month's 5 binds: 2 more, then a refusal until September.
    clock = Date.UTC(2025, 7, 2, 0, 0, 1);
    await sdk.customers.update(team.id, { metadata: { note: 'wake the nodes' } }); // the nodes' refusals were cached for 60 s at most
    waking = 0;
    await until(() => servedAt(two[0]), 10_000, 'not served on the next day');
    const day3 = await drain(two, app);
    expect(served(day3) + waking, 'served on 2 August').to.equal(2);
    const monthly = day3.find((a) => a.status === 402)!;
    expect(monthly.json).to.include({ reason: 'consumer_cap', resets_at: '2025-09-01T00:00:00.000Z' });
    expect(Number(monthly.headers['retry-after'])).to.equal(30 * 86_400 - 1);
  });

  it('Retry-After and the limit merge tags reach the client through the plugin; a no-credit refusal is distinct and has no Retry-After', async () => {
    clock = Date.UTC(2025, 11, 31, 23, 59, 30, 250);
    const team = await sdk.customers.create({ name: 'Team "Q"', metadata: { kong_consumer: 'app,web', 'payg_cap_daily.app': '2' } });
    await sdk.customers.createBalanceTransaction(team.id, { amount: -5, currency: 'usd' });
    await startControl({ rules: [
      { id: 'capped', limit: 'consumer_cap', status: 429, headers: { 'Content-Type': 'application/json' }, body: '{"kind":"{{limit.kind}}","at":"{{limit.resets_at}}","in":"{{limit.retry_after}}","who":"{{customer.name}}"}' },
      { id: 'broke', limit: 'no_credit', status: 402, body: '{"kind":"{{limit.kind}}","at":"{{limit.resets_at}}","top":"{{top_up_url}}"}' },
    ] });
    const [node] = await startNodes(1);
    const capped = (await drain([node], { id: 'k-app', custom_id: 'app' })).filter((a) => a.status !== 200);
    expect(capped[0].status).to.equal(429);
    expect(capped[0].json).to.deep.equal({ kind: 'consumer_cap', at: '2026-01-01T00:00:00.000Z', in: '30', who: 'Team "Q"' });
    expect(capped[0].headers['retry-after']).to.equal('30');
    const broke = (await drain([node], { id: 'k-web', custom_id: 'web' })).filter((a) => a.status !== 200);
    expect(broke[0].status).to.equal(402);
    expect(broke[0].json).to.deep.equal({ kind: 'no_credit', at: '', top: `https://billing.example.com/top-up?c=${team.id}` });
    expect(broke[0].headers['retry-after']).to.equal(undefined);
  });

  it('the credit header and GET /v1/balance show the tighter of the team\'s credit and the consumer\'s cap left', async () => {
    const team = await sdk.customers.create({ metadata: { kong_consumer: 'app,web', 'payg_cap_daily.app': '6' } });
    await sdk.customers.createBalanceTransaction(team.id, { amount: -40, currency: 'usd' });
    await startControl();
    const [node] = await startNodes(1, { credit_header: 'X-Credit-Remaining' });
    const app = { id: 'k-app', custom_id: 'app' };
    const shown: string[] = [];
    for (let i = 0; i < 6; i++) {
      const a = await request(node, app);
      expect(a.status).to.equal(200);
      shown.push(a.headers['x-credit-remaining']);
    }
    // The cap left, not the team's 40: 5 after the first, then never above what is truly left (the node's estimate
    // may run low while its usage is in flight at a renewal), never rising, 0 at the cap.
    expect(Number(shown[0]), 'the cap left, not the team\'s 40').to.equal(5);
    shown.forEach((v, i) => expect(Number(v), `after request ${i + 1}: ${shown}`).to.be.within(0, 5 - i));
    shown.forEach((v, i) => i === 0 || expect(Number(v), `rising: ${shown}`).to.be.at.most(Number(shown[i - 1])));
    expect(Number(shown[5])).to.equal(0);
    expect((await request(node, app)).status).to.equal(402);
    await until(async () => (await unsettled(team.id)) === 6, 5000, 'the 6 served not counted');
    const balance = async (consumer: string) => (await fetch(`${svcs[0].url}/v1/balance`, { headers: { authorization: `Bearer ${CONTROL}`, 'x-consumer-custom-id': consumer } })).json() as Promise<any>;
    const b = await balance('app');
    expect(b).to.include({ limit: 'consumer_cap' });
    expect(b.credit.amount).to.equal(0);
    expect(b.team_credit.amount).to.equal(34);
    // The teammate (no cap): the team's credit, in the header too.
    const w = await request(node, { id: 'k-web', custom_id: 'web' });
    expect(Number(w.headers['x-credit-remaining'])).to.equal(33);
    expect(await balance('web')).to.include({ limit: 'no_credit' });
  });

  it('a consumer moved to another team keeps its spend this period (the new team\'s cap counts it) and is billed there', async () => {
    const a = await sdk.customers.create({ metadata: { kong_consumer: 'a1,mover', 'payg_cap_daily.mover': '6' } });
    const b = await sdk.customers.create({ metadata: { kong_consumer: 'b1' } });
    for (const c of [a, b]) await sdk.customers.createBalanceTransaction(c.id, { amount: -100, currency: 'usd' });
    await startControl({ unknown_consumer: 'block' });
    const two = await startNodes(2);
    const mover = { id: 'k-mover', custom_id: 'mover' };
    expect(served(await burst(two, mover, 2))).to.equal(4);
    await until(async () => (await unsettled(a.id)) === 4, 5000, 'the 4 served not counted');

    // Taken off A, then claimed by B with a daily cap of 10: 6 more (10 − the 4 spent today), billed to B.
    await sdk.customers.update(a.id, { metadata: { kong_consumer: 'a1' } });
    await until(async () => (await metadataOf(a.id))?.kong_consumer === 'a1', 5000, 'the change not applied');
    await sdk.customers.update(b.id, { metadata: { kong_consumer: 'b1,mover', 'payg_cap_daily.mover': '10' } });
    await until(async () => (await metadataOf(b.id))?.kong_consumer === 'b1,mover', 5000, 'the change not applied');
    const atB = await drain(two, mover);
    expect(served(atB)).to.equal(6);
    expect(atB.filter((x) => x.status !== 200).every((x) => x.json?.reason === 'consumer_cap')).to.equal(true);
    await until(async () => (await unsettled(b.id)) === 6, 5000, 'the 6 not billed to B');
    expect(await unsettled(a.id)).to.equal(4);
  });

  // The grant counts the consumer's leases under every customer (SQLite once served 9 of a cap of 6 here).
  for (const store of ['SQLite', 'PostgreSQL, two replicas'] as string[]) {
    it(`${store}: a consumer moved while a node still holds its unreported usage is not served past its cap at the new team`, async () => {
      const a = await sdk.customers.create({ metadata: { kong_consumer: 'a1,mover', 'payg_cap_daily.mover': '6' } });
      const b = await sdk.customers.create({ metadata: { kong_consumer: 'b1' } });
      for (const c of [a, b]) await sdk.customers.createBalanceTransaction(c.id, { amount: -100, currency: 'usd' });
      await startControl({}, store === 'SQLite' ? 0 : 2);
      // Node 1 holds its usage for 4 s; node 2 reports at once.
      const [slow] = await startNodes(1, { usage_queue: { max_coalescing_delay: 4 } });
      const [fast] = await startNodes(1);
      const mover = { id: 'k-mover', custom_id: 'mover' };
      let total = 0;
      for (let i = 0; i < 3; i++) total += served([await request(slow, mover)]);
      expect(total).to.equal(3);
      // Moved to B (same cap) before node 1 reported: B's nodes must count what node 1 drew.
      await sdk.customers.update(b.id, { metadata: { kong_consumer: 'b1,mover', 'payg_cap_daily.mover': '6' } });
      await sdk.customers.update(a.id, { metadata: { kong_consumer: 'a1' } });
      await until(async () => (await metadataOf(a.id))?.kong_consumer === 'a1', 5000, 'the change not applied');
      total += served(await burst([fast], mover, 8));
      expect(total, 'served to mover today, at both teams').to.be.at.most(6);
    });
  }

  for (const store of ['SQLite', 'PostgreSQL, two replicas'] as const) {
    it(`${store}: three consumers of one team at high concurrency on three nodes are served no more than min(team credit, each cap), and the credit in full`, async () => {
      const team = await sdk.customers.create({ metadata: { kong_consumer: 'a,b,c', 'payg_cap_daily.a': '15', 'payg_cap_daily.b': '10', 'payg_cap_monthly.b': '8' } });
      await sdk.customers.createBalanceTransaction(team.id, { amount: -40, currency: 'usd' });
      await startControl({}, store === 'SQLite' ? 0 : 2);
      const three = await startNodes(3);
      const who = ['a', 'b', 'c'].map((n) => ({ id: `k-${n}`, custom_id: n }));
      // 20 at once per consumer per node: 180 requests in flight.
      const first = await Promise.all(who.map((c) => burst(three, c, 20)));
      const got = first.map(served);
      expect(got[0], 'a over its cap').to.be.at.most(15);
      expect(got[1], 'b over its monthly cap').to.be.at.most(8);
      expect(got[0] + got[1] + got[2], 'the team over its credit').to.be.at.most(40);
      // Then until every node refuses each: the credit is served in full, no cap is passed.
      for (const [i, c] of who.entries()) got[i] += served(await drain(three, c));
      expect(got[0]).to.be.at.most(15);
      expect(got[1]).to.be.at.most(8);
      expect(got[0] + got[1] + got[2]).to.equal(40);
      await until(async () => (await unsettled(team.id)) === 40, 10_000, 'the 40 served not counted');
    });
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
