// Exact credit on every node: real payg-pluginserver processes, driven as Kong
// drives them, against the real control service and the Stripe emulator.
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import type { Consumer } from '../../testkit/kong-harness';
import { CONTROL } from '../support/fixture';
import { pluginFixture, type PluginNode } from '../support/plugin-fixture';
import { until } from '../support/until';

describe('leases: exact credit on every node', function () {
  this.timeout(30_000);
  const fx = pluginFixture({ prefix: 'payg-leases-', plugin: { cache_ttl_ms: 60_000, usage_queue: { max_coalescing_delay: 0.02 } } });

  const startControl = (leases: Record<string, unknown> = {}) => fx.startControl({ metering: { default_cost: 1, settle: { enabled: false } }, leases });
  const startNodes = (n: number, config: Record<string, unknown> = {}) => fx.startNodes(n, config);
  /** One request through a node: access, then (when served) its log phase. */
  const request = async (node: PluginNode, consumer: Consumer) => (await fx.request(node, consumer)).status;
  const leasesOf = async (id: string) => (await fx.customer(id)).leases;
  const unsettled = (id: string) => fx.unsettled(id);
  /** The same store, on the same port, without Stripe: what the nodes queued while it was down arrives. */
  const restartControl = (port: number) => fx.service.start({ listen: { port }, metering: { default_cost: 1, settle: { enabled: false } } });

  it('one node, 200 requests at once, credit for 100: exactly 100 served, the rest get the rule\'s 402', async () => {
    const c = fx.stripe.create({ balance: -100 });
    await startControl();
    const [node] = await startNodes(1, { timeout_ms: 3000 });
    const consumer = { id: 'k1', custom_id: c.id };
    const statuses = await Promise.all(Array.from({ length: 200 }, () => request(node, consumer)));
    expect(statuses.filter((s) => s === 200)).to.have.length(100);
    expect(statuses.filter((s) => s === 402)).to.have.length(100);
    await until(async () => (await unsettled(c.id)) === 100, 3000, 'usage of the 100 served requests not counted');
  });

  it('four nodes and no node count configured, 50 at once on each, credit for 100: exactly 100 served in all', async () => {
    const c = fx.stripe.create({ balance: -100 });
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
    const c = fx.stripe.create({ balance: -10 });
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
    const c = fx.stripe.create({ balance: -10 });
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
    const c = fx.stripe.create({ balance: -100_000 });
    await startControl();
    const four = await startNodes(4);
    const consumer = { id: 'k1', custom_id: c.id };
    await until(() => fx.svc.stream.nodes().length === 4, 3000, 'nodes did not connect to the stream');
    for (const n of four) expect(await request(n, consumer)).to.equal(200);
    fx.stripe.addBalanceTransaction(c.id, 100_000 + 4); // spent, by Stripe
    for (const n of four) await until(async () => await request(n, consumer) === 402, 2000, 'a node kept serving after the push');
    fx.stripe.addBalanceTransaction(c.id, -1000);
    for (const n of four) await until(async () => await request(n, consumer) === 200, 2000, 'a node kept refusing after the top-up');
  });

  /** The service's own (read-only) answer for a consumer, once it has applied what Stripe said. */
  const serviceAllows = async (consumer: string) =>
    ((await (await fetch(`${fx.svc.url}/v1/decisions/${consumer}`, { headers: { authorization: `Bearer ${CONTROL}` } })).json()) as { allow: boolean }).allow;

  /**
   * A node caches a block for `ttl` ms; the customer tops up. Returns when the node first answers 200,
   * in ms after the block was fetched, and how many 402s it gave after the service already allowed.
   */
  async function topUpSeenAfter(node: PluginNode, customerId: string, ttl: number): Promise<{ firstAllowAt: number; staleRefusals: number }> {
    const consumer = { id: 'k1', custom_id: customerId };
    const fetchedAt = Date.now(); // taken before the call: the node's ttl runs from no earlier than this
    expect(await request(node, consumer)).to.equal(402);
    fx.stripe.addBalanceTransaction(customerId, -1000);
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
    const c = fx.stripe.create({ balance: 0 });
    await startControl();
    const ttl = 1500;
    const [node] = await startNodes(1, { cache_ttl_ms: ttl });
    await until(() => fx.svc.stream.nodes().length === 1, 3000, 'no stream');
    fx.svc.stream.close(); // every stream connection ends, and reconnects are refused (503): no push reaches the node
    await until(() => node.ps.logs.some((l) => /change stream down/.test(String(l.msg))), 3000, 'the node did not notice');
    const seen = await topUpSeenAfter(node, c.id, ttl);
    expect(seen.staleRefusals, 'the cached block kept answering after the top-up').to.be.greaterThan(0);
    expect(seen.firstAllowAt, 'seen before the TTL: something other than the TTL told the node').to.be.at.least(ttl);
  });

  it('stream up: the same change is pushed, and seen well before the TTL', async () => {
    const c = fx.stripe.create({ balance: 0 });
    await startControl();
    const ttl = 1500;
    const [node] = await startNodes(1, { cache_ttl_ms: ttl });
    await until(() => fx.svc.stream.nodes().length === 1, 3000, 'no stream');
    const seen = await topUpSeenAfter(node, c.id, ttl);
    expect(seen.firstAllowAt, 'not pushed: the node waited for its TTL').to.be.below(ttl);
  });

  it('the stream reconnects by itself after the connection drops', async () => {
    const c = fx.stripe.create({ balance: 0 });
    await startControl();
    const [node] = await startNodes(1);
    await until(() => fx.svc.stream.nodes().length === 1, 3000, 'no stream');
    const consumer = { id: 'k1', custom_id: c.id };
    expect(await request(node, consumer)).to.equal(402); // cached for 60 s
    fx.svc.stream.disconnectAll();
    await until(() => node.ps.logs.some((l) => /change stream down/.test(String(l.msg))), 3000, 'the node did not notice');
    await until(() => fx.svc.stream.nodes().length === 1, 3000, 'the node did not reconnect');
    fx.stripe.addBalanceTransaction(c.id, -1000);
    await until(async () => await request(node, consumer) === 200, 2000, 'a push after the reconnect did not arrive');
  });

  it('control service down: a node serves what its lease holds, then fail_open=false answers 503', async () => {
    const c = fx.stripe.create({ balance: -100 });
    await startControl({ initial_requests: 5 });
    const [node] = await startNodes(1, { fail_open: false, usage_queue: { max_coalescing_delay: 0.02, max_retry_delay: 0.1 } });
    const consumer = { id: 'k1', custom_id: c.id };
    expect(await request(node, consumer)).to.equal(200); // lease of 5
    await fx.service.stop();
    const statuses: number[] = [];
    for (let i = 0; i < 10; i++) statuses.push(await request(node, consumer));
    expect(statuses).to.deep.equal([200, 200, 200, 200, 503, 503, 503, 503, 503, 503]);
  });

  it('control service down, fail_open=true: passes past the lease, and bills it when the service is back', async () => {
    const c = fx.stripe.create({ balance: -100 });
    await startControl({ initial_requests: 2 });
    const port = Number(new URL(fx.svc.url).port);
    const [node] = await startNodes(1, { fail_open: true, usage_queue: { max_coalescing_delay: 0.02, max_retry_delay: 0.1 } });
    const consumer = { id: 'k1', custom_id: c.id };
    await fx.service.stop();
    for (let i = 0; i < 5; i++) expect(await request(node, consumer)).to.equal(200);
    await restartControl(port);
    await until(async () => (await unsettled(c.id)) === 5, 5000, 'usage served during the outage was not billed');
  });

  it('the usage queue survives SIGTERM: what could not be sent is kept under Kong\'s prefix and sent after the next start', async () => {
    const c = fx.stripe.create({ balance: -100 });
    await startControl();
    const prefix = path.join(fx.dir, 'kong-prefix'); // Kong's prefix: kept across the plugin server's restart
    fs.mkdirSync(prefix);
    const port = Number(new URL(fx.svc.url).port);
    const queued = { usage_queue: { max_coalescing_delay: 60 } };
    const first = await fx.startNode({ prefix, instance: queued });
    const consumer = { id: 'k1', custom_id: c.id };
    for (let i = 0; i < 3; i++) expect(await request(first, consumer)).to.equal(200);
    await fx.service.stop(); // nowhere to send it
    await fx.stopNode(first); // SIGTERM
    const spooled = fs.readdirSync(prefix).filter((f) => f.startsWith('payg-usage-'));
    expect(spooled, 'kept on disk').to.have.length(1);
    expect(fs.readFileSync(path.join(prefix, spooled[0]), 'utf8').trim().split('\n')).to.have.length(3);

    await restartControl(port);
    await fx.startNode({ prefix, instance: { usage_queue: { max_coalescing_delay: 0.02 } } });
    await until(async () => (await unsettled(c.id)) === 3, 5000, 'kept usage was not sent after the restart');
    expect(fs.readdirSync(prefix).filter((f) => f.startsWith('payg-usage-'))).to.have.length(0);
  });
});
