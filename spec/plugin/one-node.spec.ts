// One plugin server is one node, however many payg entities Kong gives it: they share the
// change stream and the leases. A lease is drawn on until its own ttl_ms, whatever the
// instance's cache_ttl_ms. A recall gives back undrawn leases and sends queued usage at once.
// Real payg-pluginserver processes, driven as Kong drives them, against the fake control service.
import { expect } from 'chai';
import type { Consumer, KongHarness } from '../../testkit/kong-harness';
import { FakeControlService, block, leased } from '../../testkit/fake-control-service';
import { pluginFixture, type PluginNode } from '../support/plugin-fixture';
import { until } from '../support/until';

const ada: Consumer = { id: 'c-ada', username: 'ada', custom_id: 'cus_ada' };
const PAYMENT = '{"error":"payment_required"}';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('payg: one plugin server is one node', function () {
  this.timeout(30_000);
  const fx = pluginFixture({ control: 'fake' });
  let node: PluginNode;
  let kong: KongHarness;
  let svc: FakeControlService;

  beforeEach(async () => {
    svc = fx.fake;
    node = await fx.startNode();
    kong = node.kong;
  });

  const request = async (id: string, consumer: Consumer, route = 'orders') => (await fx.request(node, consumer, { plugin: id, route })).status;

  it('cache_ttl_ms 0 with fail_open false: a consumer with credit is served on its lease, with a handful of lease calls', async () => {
    svc.decide = () => leased(1000, { ttlMs: 60_000, leaseTtlMs: 60_000 });
    const id = await kong.startInstance('payg', { control_service_url: svc.url, cache_ttl_ms: 0, fail_open: false, timeout_ms: 3000 });
    const statuses: number[] = [];
    for (let i = 0; i < 20; i++) statuses.push(await request(id, ada));
    expect(statuses, 'served on the lease, not 503').to.deep.equal(Array(20).fill(200));
    expect(svc.leaseRequests.length, 'one lease serves them all').to.be.at.most(2);
    // A block is still not reused with cache_ttl_ms 0: each refused request asks.
    svc.decide = () => block(PAYMENT, { ttlMs: 60_000 });
    svc.push('changed', { consumers: ['cus_ada'] });
    await until(async () => await request(id, ada) === 402, 3000, 'the push was not seen');
    const asked = svc.leaseRequests.length;
    expect(await request(id, ada)).to.equal(402);
    expect(svc.leaseRequests.length).to.equal(asked + 1);
  });

  it('two payg entities with different configs (deck/kong.yaml\'s layout), idle: one stream, no reconnects, lease calls not multiplied', async () => {
    svc.decide = () => leased(1000, { ttlMs: 60_000, leaseTtlMs: 60_000 });
    const api = await kong.startInstance('payg', {
      control_service_url: svc.url, usage_units_header: 'X-Usage-Units', credit_header: 'X-Credit-Remaining',
      queue: { max_batch_size: 200, max_coalescing_delay: 0.2 },
    }, 'plugin-api');
    const chat = await kong.startInstance('payg', { control_service_url: svc.url }, 'plugin-chat');
    for (let i = 0; i < 5; i++) {
      expect(await request(api, ada, 'example-route')).to.equal(200);
      expect(await request(chat, ada, 'chat')).to.equal(200);
    }
    // Idle: with a stream per entity under one node id, each connect replaced the other (~9 a second).
    await sleep(1500);
    expect(svc.streamConnects, 'stream connects').to.have.length(1);
    expect(svc.streamCount()).to.equal(1);
    expect(svc.leaseRequests.length, 'one lease for the consumer on this node, shared by both entities').to.equal(1);
    expect(svc.releases, 'no lease given back for a reconnect').to.have.length(0);
    for (let i = 0; i < 5; i++) expect(await request(chat, ada, 'chat')).to.equal(200);
    expect(svc.leaseRequests.length).to.equal(1);
    // Another control service is another stream (and another node id, never the same one twice).
    const other = await new FakeControlService().start();
    try {
      await kong.startInstance('payg', { control_service_url: other.url }, 'plugin-other');
      await until(() => other.streamCount() === 1, 3000, 'no stream to the second service');
      await sleep(500);
      expect(other.streamConnects).to.have.length(1);
      expect(svc.streamConnects).to.have.length(1);
      expect(other.streamConnects[0]).to.not.equal(svc.streamConnects[0]);
    } finally { await other.stop(); }
  });

  it('a recall gives back the undrawn lease and sends the usage held in the queue at once; a refusal it would undo is not kept', async () => {
    svc.decide = () => leased(100, { ttlMs: 60_000, leaseTtlMs: 60_000, micros: 100_000_000, credit: 100 });
    // Usage would wait 30 s for a batch of 200.
    const id = await kong.startInstance('payg', { control_service_url: svc.url, timeout_ms: 3000, queue: { max_coalescing_delay: 30 } });
    for (let i = 0; i < 3; i++) expect(await request(id, ada)).to.equal(200);
    await sleep(200);
    expect(svc.usageBatches, 'held by the queue').to.have.length(0);
    const t0 = Date.now();
    svc.push('recall', { consumers: ['cus_ada'] });
    await until(() => svc.usageBatches.length === 1 && svc.releases.length === 1, 3000, 'the recall did not send the usage and the lease');
    expect(Date.now() - t0).to.be.below(3000);
    expect(svc.usageBatches[0].map((e) => e.consumer)).to.deep.equal(['cus_ada', 'cus_ada', 'cus_ada']);
    expect(svc.usageBatches[0].every((e) => e.lease === 'lease-100' && e.reserved === 1_000_000)).to.equal(true);
    expect(svc.releases[0].leases).to.deep.equal([{ id: 'lease-100', drawn: 3, drawn_micros: 3_000_000 }]);

    // A refusal cached on this node goes with a recall for that consumer too (credit is moving).
    svc.decide = () => block(PAYMENT, { ttlMs: 60_000 });
    expect(await request(id, ada)).to.equal(402);
    svc.decide = () => leased(100, { ttlMs: 60_000, leaseTtlMs: 60_000, id: 'lease-2' });
    svc.push('recall', { consumers: ['cus_ada'] });
    await until(async () => await request(id, ada) === 200, 3000, 'the 402 outlived the recall');
  });
});
