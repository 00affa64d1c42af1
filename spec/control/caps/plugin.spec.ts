// Team caps through real plugin servers (issue 23): two consumers of one
// customer on two nodes. The capped consumer is served exactly its cap, then
// gets 402 with reason consumer_cap and Retry-After until the UTC reset; its
// teammate goes on until the team's credit ends, then gets 402 with reason
// no_credit. The next UTC day (an injected clock) the capped consumer is served
// again, from what credit is left.
import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { parseConfig } from '../../../control-service/src/config';
import { startService, type RunningService } from '../../../control-service/src/service';
import { StripeEmulator } from '../../../testkit/stripe-emulator';
import { KongHarness, accessPdk, logPdk, requestCtx, type Consumer } from '../../../testkit/kong-harness';
import { startPluginServer, type PluginServerProcess } from '../../../testkit/pluginserver-process';
import { until } from '../../support/until';
import { freshDatabase } from '../../support/postgres';

const ADMIN = 'admin-token-for-tests';
const CONTROL = 'control-token-for-tests';

interface Node { ps: PluginServerProcess; kong: KongHarness; plugin: string }
interface Answer { status: number; body: string; headers: Record<string, unknown> }

describe('caps: real plugin servers, two consumers of one customer on two nodes', function () {
  this.timeout(60_000);
  let stripe: StripeEmulator;
  let svc: RunningService | undefined;
  /** With PostgreSQL: a second replica on the same database (node 2 leases from it). */
  let svc2: RunningService | undefined;
  let dir: string;
  let nodes: Node[] = [];
  // In the past: the service refuses usage dated ahead of its own clock.
  let clock = Date.UTC(2025, 5, 30, 23, 50, 0);

  async function startControl(postgres = false): Promise<void> {
    const doc = {
      listen: { port: 0 }, store: postgres ? { postgres: {} } : { sqlite: path.join(dir, 'payg.sqlite') },
      stripe: { poll: '0 0 1 1 *', max_requests_per_second: 100, retry: { max_attempts: 2, base_delay_ms: 10, max_delay_ms: 20 } },
      decision_ttl_ms: 60_000,
      cohorts: [],
      rules: [{ id: 'no-credit', limit: 'no_credit' }],
      top_up: { url: 'https://billing.example.com/top-up?c={customer_id}' },
      metering: { default_cost: 1, settle: { enabled: false } },
      leases: { initial_requests: 3 },
      caps: { daily: 10 },
    };
    const env = { STRIPE_SECRET_KEY: stripe.secretKey, STRIPE_API_BASE: stripe.url, PAYG_ADMIN_TOKEN: ADMIN, PAYG_CONTROL_TOKEN: CONTROL, ...(postgres ? { PAYG_DATABASE_URL: await freshDatabase() } : {}) };
    svc = await startService(parseConfig(doc, env, dir), { log: pino({ level: 'silent' }), sweepOnStart: false, now: () => clock });
    await svc.sync!.sweep();
    if (postgres) svc2 = await startService(parseConfig(doc, env, dir), { log: pino({ level: 'silent' }), sweepOnStart: false, now: () => clock });
  }

  async function startNodes(n: number): Promise<Node[]> {
    const started = await Promise.all(Array.from({ length: n }, async (_, i) => {
      const ps = await startPluginServer();
      const kong = new KongHarness(ps.socketPath);
      const plugin = await kong.startInstance('payg', {
        control_service_url: (i === 1 && svc2 ? svc2 : svc!).url, control_service_token: CONTROL, cache_ttl_ms: 60_000, timeout_ms: 3000,
        usage_queue: { max_coalescing_delay: 0.02 },
      });
      return { ps, kong, plugin };
    }));
    nodes.push(...started);
    return started;
  }

  async function request(node: Node, consumer: Consumer): Promise<Answer> {
    const ctx = requestCtx();
    const res = await node.kong.handleEvent(node.plugin, 'access', accessPdk(consumer, ctx));
    const status = res.exit?.status ?? 200;
    if (status === 200) await node.kong.handleEvent(node.plugin, 'log', logPdk({ consumer, route: { id: 'r1', name: 'orders' }, status }, ctx));
    return { status, body: String(res.exit?.body ?? ''), headers: (res.exit?.headers ?? {}) as Record<string, unknown> };
  }
  const unsettled = async (id: string) => ((await (await fetch(`${svc!.url}/admin/customers/${id}`, { headers: { authorization: `Bearer ${ADMIN}` } })).json()) as { unsettled_usage: number }).unsettled_usage;
  const header = (a: Answer, name: string) => Object.entries(a.headers).find(([k]) => k.toLowerCase() === name)?.[1];

  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-caps-plugin-'));
    stripe = await new StripeEmulator().start();
  });
  afterEach(async () => {
    for (const n of nodes) { n.kong.close(); await n.ps.stop(); }
    nodes = [];
    await svc?.stop();
    await svc2?.stop();
    svc = undefined;
    svc2 = undefined;
    await stripe.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  for (const store of ['SQLite', 'PostgreSQL, two replicas'] as const) it(`${store}: the capped consumer gets exactly its cap, then consumer_cap with Retry-After; the other goes on to the team's end, then no_credit; the next UTC day the cap is whole again`, async () => {
    clock = Date.UTC(2025, 5, 30, 23, 50, 0);
    // Credit for 40 requests at 1 cent; app-batch capped at 6 cents a day; app-web's default cap (10) lifted with none.
    const team = stripe.create({ balance: -40, metadata: { kong_consumer: 'app-web,app-batch', 'payg_cap_daily.app-batch': '6', 'payg_cap_daily.app-web': 'none' } });
    await startControl(store !== 'SQLite');
    const two = await startNodes(2);
    const batch = { id: 'k-batch', custom_id: 'app-batch' };
    const web = { id: 'k-web', custom_id: 'app-web' };

    // app-batch, 10 at once on each node: exactly 6 served in all.
    const batchAnswers = (await Promise.all(two.map((n) => Promise.all(Array.from({ length: 10 }, () => request(n, batch)))))).flat();
    expect(batchAnswers.filter((a) => a.status === 200)).to.have.length(6);
    const capRefusal = batchAnswers.find((a) => a.status === 402)!;
    expect(JSON.parse(capRefusal.body)).to.include({ reason: 'consumer_cap', error: 'consumer_cap_reached', resets_at: '2025-07-01T00:00:00.000Z', top_up_url: `https://billing.example.com/top-up?c=${team.id}` });
    expect(Number(header(capRefusal, 'retry-after'))).to.be.within(1, 600);
    expect(batchAnswers.filter((a) => a.status !== 200).every((a) => a.status === 402 && JSON.parse(a.body).reason === 'consumer_cap')).to.equal(true);
    await until(async () => (await unsettled(team.id)) === 6, 5000, 'the 6 served requests not counted');

    // app-web on both nodes: the rest of the team's credit, 34, then no_credit.
    const webAnswers = (await Promise.all(two.map((n) => Promise.all(Array.from({ length: 25 }, () => request(n, web)))))).flat();
    expect(webAnswers.filter((a) => a.status === 200)).to.have.length(34);
    const noCredit = webAnswers.find((a) => a.status === 402)!;
    expect(JSON.parse(noCredit.body)).to.include({ reason: 'no_credit' });
    expect(header(noCredit, 'retry-after')).to.equal(undefined);
    await until(async () => (await unsettled(team.id)) === 40, 5000, 'the 40 served requests not counted');

    // The next UTC day (clock moved), the team tops up 20 cents: app-batch's daily cap is whole again, 6 more and no more.
    clock = Date.UTC(2025, 6, 1, 0, 0, 1);
    stripe.addBalanceTransaction(team.id, -20);
    await svc!.sync!.sweep();
    const nextDay = (await Promise.all(two.map((n) => Promise.all(Array.from({ length: 5 }, () => request(n, batch)))))).flat();
    expect(nextDay.filter((a) => a.status === 200)).to.have.length(6);
    const again = nextDay.find((a) => a.status === 402)!;
    expect(JSON.parse(again.body)).to.include({ reason: 'consumer_cap', resets_at: '2025-07-02T00:00:00.000Z' });
  });
});
