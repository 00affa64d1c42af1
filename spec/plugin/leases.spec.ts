// Exact credit on every node: real payg-pluginserver processes, driven as Kong
// drives them, against the real control service and the Stripe emulator.
import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { parseConfig } from '../../control-service/src/config';
import { startService, type RunningService } from '../../control-service/src/service';
import { StripeEmulator } from '../../testkit/stripe-emulator';
import { KongHarness, accessPdk, logPdk, requestCtx, type Consumer } from '../../testkit/kong-harness';
import { startPluginServer, type PluginServerProcess } from '../../testkit/pluginserver-process';
import { until } from '../support/until';

const ADMIN = 'admin-token-for-tests';
const CONTROL = 'control-token-for-tests';
const WEBHOOK_SECRET = 'whsec_leases';
const PAYMENT_BODY = '{"error":"payment_required"}';

interface Node { ps: PluginServerProcess; kong: KongHarness; plugin: string }

describe('leases: exact credit on every node', function () {
  this.timeout(30_000);
  let stripe: StripeEmulator;
  let svc: RunningService;
  let dir: string;
  let nodes: Node[] = [];

  async function startControl(leases: Record<string, unknown> = {}): Promise<void> {
    const config = parseConfig({
      listen: { port: 0 }, store: { sqlite: path.join(dir, 'payg.sqlite') },
      stripe: { poll: '0 0 1 1 *', max_requests_per_second: 100, retry: { max_attempts: 2, base_delay_ms: 10, max_delay_ms: 20 } },
      decision_ttl_ms: 60_000,
      cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
      rules: [{ id: 'block', cohort: 'no-credit', body: PAYMENT_BODY }],
      metering: { default_cost: 1, settle: { enabled: false } },
      leases,
    }, { STRIPE_SECRET_KEY: stripe.secretKey, STRIPE_API_BASE: stripe.url, PAYG_ADMIN_TOKEN: ADMIN, PAYG_CONTROL_TOKEN: CONTROL, STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET }, dir);
    svc = await startService(config, { log: pino({ level: 'silent' }), sweepOnStart: false });
    stripe.webhook = { url: `${svc.url}/webhooks/stripe`, secret: WEBHOOK_SECRET };
    await svc.sync!.sweep();
  }

  async function startNodes(n: number, config: Record<string, unknown> = {}): Promise<Node[]> {
    const started = await Promise.all(Array.from({ length: n }, async () => {
      const ps = await startPluginServer();
      const kong = new KongHarness(ps.socketPath);
      const plugin = await kong.startInstance('payg', {
        control_service_url: svc.url, control_service_token: CONTROL, cache_ttl_ms: 60_000,
        usage_queue: { max_coalescing_delay: 0.02 }, ...config,
      });
      return { ps, kong, plugin };
    }));
    nodes.push(...started);
    return started;
  }

  /** One request through a node: access, then (when served) its log phase. */
  async function request(node: Node, consumer: Consumer): Promise<number> {
    const ctx = requestCtx();
    const res = await node.kong.handleEvent(node.plugin, 'access', accessPdk(consumer, ctx));
    const status = res.exit?.status ?? 200;
    if (status === 200) await node.kong.handleEvent(node.plugin, 'log', logPdk({ consumer, route: { id: 'r1', name: 'orders' }, status }, ctx));
    return status;
  }
  const leasesOf = async (id: string) => ((await (await fetch(`${svc.url}/admin/customers/${id}`, { headers: { authorization: `Bearer ${ADMIN}` } })).json()) as { leases: Array<{ node: string; held_requests: number }> }).leases;
  const unsettled = async (id: string) => ((await (await fetch(`${svc.url}/admin/customers/${id}`, { headers: { authorization: `Bearer ${ADMIN}` } })).json()) as { unsettled_usage: number }).unsettled_usage;

  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-leases-'));
    stripe = await new StripeEmulator().start();
  });
  afterEach(async () => {
    for (const n of nodes) { n.kong.close(); await n.ps.stop(); }
    nodes = [];
    await svc?.stop();
    await stripe.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('one node, 200 requests at once, credit for 100: exactly 100 served, the rest get the rule\'s 402', async () => {
    const c = stripe.create({ balance: -100 });
    await startControl();
    const [node] = await startNodes(1, { timeout_ms: 3000 });
    const consumer = { id: 'k1', custom_id: c.id };
    const statuses = await Promise.all(Array.from({ length: 200 }, () => request(node, consumer)));
    expect(statuses.filter((s) => s === 200)).to.have.length(100);
    expect(statuses.filter((s) => s === 402)).to.have.length(100);
    await until(async () => (await unsettled(c.id)) === 100, 3000, 'usage of the 100 served requests not counted');
  });

  it('four nodes and no node count configured, 50 at once on each, credit for 100: exactly 100 served in all', async () => {
    const c = stripe.create({ balance: -100 });
    await startControl();
    // Generous timeout: on two shared cores a slow answer would let fail_open=true pass (by design).
    const four = await startNodes(4, { timeout_ms: 3000 });
    const consumer = { id: 'k1', custom_id: c.id };
    const statuses = (await Promise.all(four.map((n) => Promise.all(Array.from({ length: 50 }, () => request(n, consumer)))))).flat();
    expect(statuses.filter((s) => s === 200)).to.have.length(100);
    // Requests refused while other nodes still held the last leases get the rule's answer too.
    expect(statuses.filter((s) => s !== 200).every((s) => s === 402)).to.equal(true);
    // And round robin one at a time after that: nothing more is served.
    for (let i = 0; i < 8; i++) expect(await request(four[i % 4], consumer)).to.equal(402);
    await until(async () => (await unsettled(c.id)) === 100, 3000, 'usage not counted');
  });

  it('a node killed with kill -9 strands only its lease, until ttl + usage grace; then the credit comes back', async () => {
    const c = stripe.create({ balance: -10 });
    await startControl({ ttl_ms: 400, usage_grace_ms: 300, initial_requests: 4, expire_interval_ms: 20 });
    const [doomed, survivor] = await startNodes(2);
    const consumer = { id: 'k1', custom_id: c.id };
    expect(await request(doomed, consumer)).to.equal(200); // takes a lease of 4, draws 1
    await until(async () => (await unsettled(c.id)) === 1, 3000, 'usage of the first request not counted');
    expect((await leasesOf(c.id)).map((l) => l.held_requests), '3 left undrawn').to.deep.equal([3]);
    doomed.ps.proc.kill('SIGKILL');
    await new Promise((r) => doomed.ps.proc.once('exit', r));
    // The survivor gets the other 6, not the 3 the dead node did not draw.
    let served = 0;
    for (let i = 0; i < 10; i++) if (await request(survivor, consumer) === 200) served++;
    expect(served).to.equal(6);
    // The 3 the dead node never drew come back after ttl + usage grace.
    await until(async () => (await leasesOf(c.id)).every((l) => !l.node.includes(`-${doomed.ps.proc.pid}-`)), 3000, 'the dead node\'s lease never expired');
    await until(async () => await request(survivor, consumer) === 200, 3000, 'credit did not come back');
    let more = 1;
    for (let i = 0; i < 6; i++) if (await request(survivor, consumer) === 200) more++;
    expect(more).to.equal(3);
  });

  it('lease expiry returns credit: an idle node gives its unused lease back when it is over', async () => {
    const c = stripe.create({ balance: -10 });
    await startControl({ ttl_ms: 300, usage_grace_ms: 60_000, initial_requests: 8 });
    const [idle, busy] = await startNodes(2);
    const consumer = { id: 'k1', custom_id: c.id };
    expect(await request(idle, consumer)).to.equal(200); // holds 8, drew 1
    await until(async () => (await leasesOf(c.id)).every((l) => !(l as { open?: boolean }).open), 3000, 'idle lease not given back');
    let served = 0;
    for (let i = 0; i < 12; i++) if (await request(busy, consumer) === 200) served++;
    expect(served).to.equal(9);
  });

  it('a push reaches every node: a debit by webhook gives 402 on all four at once, a top-up 200, with a 60 s TTL', async () => {
    const c = stripe.create({ balance: -100_000 });
    await startControl();
    const four = await startNodes(4);
    const consumer = { id: 'k1', custom_id: c.id };
    await until(() => svc.stream.nodes().length === 4, 3000, 'nodes did not connect to the stream');
    for (const n of four) expect(await request(n, consumer)).to.equal(200);
    stripe.addBalanceTransaction(c.id, 100_000 + 4); // spent, by Stripe
    for (const n of four) await until(async () => await request(n, consumer) === 402, 2000, 'a node kept serving after the push');
    stripe.addBalanceTransaction(c.id, -1000);
    for (const n of four) await until(async () => await request(n, consumer) === 200, 2000, 'a node kept refusing after the top-up');
  });

  /** The service's own (read-only) answer for a consumer, once it has applied what Stripe said. */
  const serviceAllows = async (consumer: string) =>
    ((await (await fetch(`${svc.url}/v1/decisions/${consumer}`, { headers: { authorization: `Bearer ${CONTROL}` } })).json()) as { allow: boolean }).allow;

  /**
   * A node caches a block for `ttl` ms; the customer tops up. Returns when the node first answers 200,
   * in ms after the block was fetched, and how many 402s it gave after the service already allowed.
   */
  async function topUpSeenAfter(node: Node, customerId: string, ttl: number): Promise<{ firstAllowAt: number; staleRefusals: number }> {
    const consumer = { id: 'k1', custom_id: customerId };
    const fetchedAt = Date.now(); // taken before the call: the node's ttl runs from no earlier than this
    expect(await request(node, consumer)).to.equal(402);
    stripe.addBalanceTransaction(customerId, -1000);
    await until(() => serviceAllows(customerId), 2000, 'the service never saw the top-up');
    let staleRefusals = 0;
    for (;;) {
      const status = await request(node, consumer);
      if (status === 200) return { firstAllowAt: Date.now() - fetchedAt, staleRefusals };
      expect(status).to.equal(402);
      staleRefusals++;
      expect(Date.now() - fetchedAt, 'still refusing long after the TTL').to.be.below(ttl + 3000);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  it('stream down (refused): a change is seen only when the TTL runs out, not before', async () => {
    const c = stripe.create({ balance: 0 });
    await startControl();
    const ttl = 1500;
    const [node] = await startNodes(1, { cache_ttl_ms: ttl });
    await until(() => svc.stream.nodes().length === 1, 3000, 'no stream');
    svc.stream.close(); // every stream connection ends, and reconnects are refused (503): no push reaches the node
    await until(() => node.ps.logs.some((l) => /change stream down/.test(String(l.msg))), 3000, 'the node did not notice');
    const seen = await topUpSeenAfter(node, c.id, ttl);
    expect(seen.staleRefusals, 'the cached block kept answering after the top-up').to.be.greaterThan(0);
    expect(seen.firstAllowAt, 'seen before the TTL: something other than the TTL told the node').to.be.at.least(ttl);
  });

  it('stream up: the same change is pushed, and seen well before the TTL', async () => {
    const c = stripe.create({ balance: 0 });
    await startControl();
    const ttl = 1500;
    const [node] = await startNodes(1, { cache_ttl_ms: ttl });
    await until(() => svc.stream.nodes().length === 1, 3000, 'no stream');
    const seen = await topUpSeenAfter(node, c.id, ttl);
    expect(seen.firstAllowAt, 'not pushed: the node waited for its TTL').to.be.below(ttl);
  });

  it('the stream reconnects by itself after the connection drops', async () => {
    const c = stripe.create({ balance: 0 });
    await startControl();
    const [node] = await startNodes(1);
    await until(() => svc.stream.nodes().length === 1, 3000, 'no stream');
    const consumer = { id: 'k1', custom_id: c.id };
    expect(await request(node, consumer)).to.equal(402); // cached for 60 s
    svc.stream.disconnectAll();
    await until(() => node.ps.logs.some((l) => /change stream down/.test(String(l.msg))), 3000, 'the node did not notice');
    await until(() => svc.stream.nodes().length === 1, 3000, 'the node did not reconnect');
    stripe.addBalanceTransaction(c.id, -1000);
    await until(async () => await request(node, consumer) === 200, 2000, 'a push after the reconnect did not arrive');
  });

  it('control service down: a node serves what its lease holds, then fail_open=false answers 503', async () => {
    const c = stripe.create({ balance: -100 });
    await startControl({ initial_requests: 5 });
    const [node] = await startNodes(1, { fail_open: false, usage_queue: { max_coalescing_delay: 0.02, max_retry_delay: 0.1 } });
    const consumer = { id: 'k1', custom_id: c.id };
    expect(await request(node, consumer)).to.equal(200); // lease of 5
    await svc.stop();
    const statuses: number[] = [];
    for (let i = 0; i < 10; i++) statuses.push(await request(node, consumer));
    expect(statuses).to.deep.equal([200, 200, 200, 200, 503, 503, 503, 503, 503, 503]);
  });

  it('control service down, fail_open=true: passes past the lease, and bills it when the service is back', async () => {
    const c = stripe.create({ balance: -100 });
    await startControl({ initial_requests: 2 });
    const port = Number(new URL(svc.url).port);
    const [node] = await startNodes(1, { fail_open: true, usage_queue: { max_coalescing_delay: 0.02, max_retry_delay: 0.1 } });
    const consumer = { id: 'k1', custom_id: c.id };
    await svc.stop();
    for (let i = 0; i < 5; i++) expect(await request(node, consumer)).to.equal(200);
    // The same store, on the same port: the queued usage arrives.
    const config = parseConfig({
      listen: { port }, store: { sqlite: path.join(dir, 'payg.sqlite') }, stripe: { poll: '0 0 1 1 *' },
      metering: { default_cost: 1, settle: { enabled: false } },
    }, { PAYG_ADMIN_TOKEN: ADMIN, PAYG_CONTROL_TOKEN: CONTROL }, dir);
    svc = await startService(config, { log: pino({ level: 'silent' }), sweepOnStart: false });
    await until(async () => (await unsettled(c.id)) === 5, 5000, 'usage served during the outage was not billed');
  });

  it('the usage queue survives SIGTERM: what could not be sent is kept under Kong\'s prefix and sent after the next start', async () => {
    const c = stripe.create({ balance: -100 });
    await startControl();
    const prefix = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-prefix-'));
    const port = Number(new URL(svc.url).port);
    const config = { control_service_url: svc.url, control_service_token: CONTROL, usage_queue: { max_coalescing_delay: 60 } };
    let ps = await startPluginServer({ prefix });
    let kong = new KongHarness(ps.socketPath);
    let plugin = await kong.startInstance('payg', config);
    const consumer = { id: 'k1', custom_id: c.id };
    for (let i = 0; i < 3; i++) {
      const ctx = requestCtx();
      expect((await kong.handleEvent(plugin, 'access', accessPdk(consumer, ctx))).exit).to.equal(undefined);
      await kong.handleEvent(plugin, 'log', logPdk({ consumer, route: { id: 'r1', name: 'orders' }, status: 200 }, ctx));
    }
    await svc.stop(); // nowhere to send it
    kong.close();
    await ps.stop(); // SIGTERM
    const spooled = fs.readdirSync(prefix).filter((f) => f.startsWith('payg-usage-'));
    expect(spooled, 'kept on disk').to.have.length(1);
    expect(fs.readFileSync(path.join(prefix, spooled[0]), 'utf8').trim().split('\n')).to.have.length(3);

    const doc = parseConfig({
      listen: { port }, store: { sqlite: path.join(dir, 'payg.sqlite') }, stripe: { poll: '0 0 1 1 *' },
      metering: { default_cost: 1, settle: { enabled: false } },
    }, { PAYG_ADMIN_TOKEN: ADMIN, PAYG_CONTROL_TOKEN: CONTROL }, dir);
    svc = await startService(doc, { log: pino({ level: 'silent' }), sweepOnStart: false });
    ps = await startPluginServer({ prefix });
    kong = new KongHarness(ps.socketPath);
    plugin = await kong.startInstance('payg', { ...config, usage_queue: { max_coalescing_delay: 0.02 } });
    nodes.push({ ps, kong, plugin });
    await until(async () => (await unsettled(c.id)) === 3, 5000, 'kept usage was not sent after the restart');
    expect(fs.readdirSync(prefix).filter((f) => f.startsWith('payg-usage-'))).to.have.length(0);
    fs.rmSync(prefix, { recursive: true, force: true });
  });
});
