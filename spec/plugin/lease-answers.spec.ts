// Lease answers the plugin must not trust: wrong shapes and absurd numbers are
// treated like an unreachable service (fail mode) and never handed to Kong; an
// answer over the size limit is not even parsed (the control client on its own).
import { expect } from 'chai';
import { KongHarness, accessPdk, type Consumer, type PdkHandlers } from '../../testkit/kong-harness';
import { startPluginServer, type PluginServerProcess } from '../../testkit/pluginserver-process';
import { FakeControlService, block } from '../../testkit/fake-control-service';
import { controlClientFixture } from '../support/plugin-fixture';

const bob: Consumer = { id: 'b0b', username: 'bob', custom_id: 'cus_bob' };
const allowWith = (lease: Record<string, unknown>, extra: Record<string, unknown> = {}) =>
  ({ body: JSON.stringify({ allow: true, ttl_ms: 5000, lease: { id: 'l1', requests: 10, ttl_ms: 10_000, ...lease }, ...extra }) });

describe('payg plugin: lease answers of the wrong shape', function () {
  this.timeout(20_000);
  let server: PluginServerProcess;
  let kong: KongHarness;
  let svc: FakeControlService;
  let n = 0;
  before(async () => { server = await startPluginServer(); kong = new KongHarness(server.socketPath); });
  after(async () => { kong.close(); await server.stop(); });
  beforeEach(async () => { svc = await new FakeControlService().start(); });
  afterEach(() => svc.stop());
  const instance = (config: Record<string, unknown>) => kong.startInstance('payg', { control_service_url: svc.url, ...config }, `lease-answers-${++n}`);

  const manyRoutes = Object.fromEntries(Array.from({ length: 20_000 }, (_, i) => [`route-${i}`, 1_000_000]));
  for (const [what, lease] of [
    ['1e300 requests', { requests: 1e300, micros: 10_000_000 }],
    ['negative micros', { micros: -5 }],
    ['a negative max_cost', { micros: 10_000_000, max_costs: { default: 1_000_000, routes: { chat: -1 } } }],
    ['a max_costs map of 20,000 routes (far larger than an answer)', { micros: 10_000_000, max_costs: { default: 1_000_000, routes: manyRoutes } }],
  ] as const) {
    it(`a lease with ${what}: fail_open=false answers 503, the request is not served on it`, async () => {
      svc.decide = () => allowWith(lease);
      const id = await instance({ fail_open: false });
      const res = await kong.handleEvent(id, 'access', accessPdk(bob));
      expect(res.exit?.status).to.equal(503);
    });
  }

  it('a credit too large to show exactly sets no credit header; the request is still served', async () => {
    svc.decide = () => allowWith({ micros: 10_000_000, credit: 1e300 });
    const id = await instance({ fail_open: false, credit_header: 'X-Credit-Remaining' });
    const set: string[] = [];
    const pdk: PdkHandlers = { ...accessPdk(bob), 'kong.response.set_header': (name: unknown, value: unknown) => { set.push(`${String(name)}: ${String(value)}`); return null; } };
    const res = await kong.handleEvent(id, 'access', pdk);
    expect(res.exit).to.equal(undefined);
    expect(set).to.deep.equal([]);
  });
});

describe('the control client: a decision answer over the size limit', () => {
  const cx = controlClientFixture();

  it('a decision answer over the size limit is treated as the service failing, not parsed', async () => {
    const padded = JSON.stringify({ allow: false, status: 402, headers: {}, body: 'x'.repeat(300 * 1024), rule: 'r', ttl_ms: 5000 });
    cx.fake.decide = () => ({ body: padded });
    const ask = () => cx.client.fetchLease({ node: 'node-1', consumer: 'cus_a', want: 1 });
    const outcome = await ask();
    expect(outcome).to.deep.include({ kind: 'UNAVAILABLE', reason: 'BAD_SHAPE', detail: 'response too large' });
    // A block with a body of ordinary size is a decision.
    cx.fake.decide = () => block('{"error":"payment_required"}');
    expect((await ask()).kind).to.equal('DECISION');
  });
});
