// A push that arrives while a lease call is out: the answer may predate the change the push
// announced. A refusal fetched across a push must not stay cached, or a customer whose credit
// came back stays refused until the TTL.
import { expect } from 'chai';
import { accessPdk, type Consumer, type KongHarness } from '../../testkit/kong-harness';
import { FakeControlService, block, leased } from '../../testkit/fake-control-service';
import { pluginFixture } from '../support/plugin-fixture';
import { until } from '../support/until';

const ada: Consumer = { id: 'c-ada', username: 'ada', custom_id: 'cus_ada' };
const PAYMENT = '{"error":"payment_required"}';

describe('payg: a push racing a lease call', function () {
  this.timeout(20_000);
  const fx = pluginFixture({ control: 'fake' });
  let kong: KongHarness;
  let svc: FakeControlService;

  beforeEach(async () => {
    svc = fx.fake;
    kong = (await fx.startNode()).kong;
  });

  for (const [what, push] of [
    ['a push for that consumer', () => svc.push('changed', { consumers: [ada.custom_id] })],
    ['a push for everyone (rule switched)', () => svc.push('changed', { all: true })],
  ] as const) {
    it(`a 402 answered after ${what} serves the waiting request but is not kept: the next request asks again and gets 200`, async () => {
      const id = await kong.startInstance('payg', { control_service_url: svc.url, cache_ttl_ms: 60_000, timeout_ms: 3000, fail_open: false });
      // The stream connects when the instance first talks to the service.
      svc.decide = () => leased(1, { ttlMs: 60_000 });
      expect((await kong.handleEvent(id, 'access', accessPdk(ada))).exit).to.equal(undefined);
      await until(() => svc.streamCount() === 1, 5000, 'no stream');

      // The one-request lease is spent: the next request asks, and the answer (computed before the top-up) is late.
      svc.decide = () => ({ ...block(PAYMENT, { ttlMs: 60_000 }), delayMs: 400 });
      const asked = svc.leaseRequests.length;
      const waiting = kong.handleEvent(id, 'access', accessPdk(ada));
      await until(() => svc.leaseRequests.length === asked + 1, 3000, 'the lease call never went out');
      svc.decide = () => leased(10, { ttlMs: 60_000 });
      push(); // the top-up, pushed while the refusal is on its way
      expect((await waiting).exit?.status, 'the request that waited gets the answer it waited for').to.equal(402);

      const next = await kong.handleEvent(id, 'access', accessPdk(ada));
      expect(next.exit, 'a cached 402 from before the push would refuse this request').to.equal(undefined);
      expect(svc.leaseRequests.length, 'the node asked again').to.equal(asked + 2);
    });
  }
});
