// Leases given back reach the service even when it was down or restarting as they were
// given back, and a restart behind open keep-alive sockets costs no request a failure.
import { expect } from 'chai';
import { KongHarness, accessPdk, type Consumer } from '../../testkit/kong-harness';
import { startPluginServer, type PluginServerProcess } from '../../testkit/pluginserver-process';
import { FakeControlService, leased } from '../../testkit/fake-control-service';
import { LeaseCache } from '../../plugin/src/lease-cache';
import type { LeaseReturn } from '../../plugin/src/control-client';
import { until } from '../support/until';

const carol: Consumer = { id: '8f0d6a0e-0000-4000-8000-000000000013', username: 'carol', custom_id: 'cus_carol' };

describe('payg gives leases back through service restarts', function () {
  this.timeout(30_000);
  let server: PluginServerProcess;
  let kong: KongHarness;
  let svc: FakeControlService;
  let plugin = 0;

  beforeEach(async () => {
    svc = await new FakeControlService().start();
    server = await startPluginServer();
    kong = new KongHarness(server.socketPath);
  });
  afterEach(async () => {
    kong.close();
    await server.stop();
    await svc.stop();
  });

  const instance = (extra: Record<string, unknown> = {}) => kong.startInstance('payg', {
    control_service_url: svc.url, fail_open: false, cache_ttl_ms: 0, report_usage: false, timeout_ms: 2000, ...extra,
  }, `release-${++plugin}`);
  const access = (id: string) => kong.handleEvent(id, 'access', accessPdk(carol));
  const released = (id: string): LeaseReturn[] => svc.releases.flatMap((r) => r.leases as LeaseReturn[]).filter((l) => l.id === id);

  it('a release the service answers 503 is sent again and arrives once it is back', async () => {
    svc.decide = () => leased(5, { id: 'L-503' });
    const id = await instance();
    expect((await access(id)).exit).to.equal(undefined);
    await until(() => svc.streamCount() === 1, 5000, 'stream not connected');
    svc.releaseStatus = () => 503;
    svc.push('changed', { consumers: ['cus_carol'] }); // the consumer changed: its lease goes back
    await until(() => svc.releaseAttempts.length >= 1, 5000, 'no release attempted');
    expect(released('L-503'), 'not taken while the service answers 503').to.deep.equal([]);
    svc.releaseStatus = () => 200;
    svc.decide = () => leased(5, { id: 'L-next' });
    expect((await access(id)).exit, 'served on a new lease').to.equal(undefined);
    await until(() => released('L-503').length > 0, 10_000, 'the lease refused with a 503 never reached the service');
    expect(released('L-503')[0]).to.deep.equal({ id: 'L-503', drawn: 1 });
  });

  it('a release sent while the service is down (connection refused) arrives after it is back', async () => {
    svc.decide = () => leased(5, { id: 'L-down', leaseTtlMs: 500 });
    const id = await instance();
    const grantedAt = Date.now();
    expect((await access(id)).exit).to.equal(undefined);
    await svc.stop(); // refuses connections; the lease ends meanwhile and is given back into the void
    await until(() => Date.now() > grantedAt + 500 + 1000, 5000); // its ttl, and a margin for the attempt
    await svc.start(); // the same port
    await until(() => released('L-down').length > 0, 15_000, 'the lease given back while the service was down never reached it');
    expect(released('L-down')[0]).to.deep.equal({ id: 'L-down', drawn: 1 });
    expect(server.logs.some((l) => String(l.msg).includes('lease returns not taken by the control service')), 'the failure was logged').to.equal(true);
  });

  for (const how of ['reset', 'close'] as const) {
    it(`a restart behind open keep-alive sockets (${how === 'reset' ? 'RST' : 'closed as the call came'}) costs no request a failure`, async () => {
      let n = 0;
      svc.decide = () => leased(1, { id: `L-${++n}` }); // one request per lease: every request asks
      const id = await instance();
      expect((await access(id)).exit).to.equal(undefined);
      svc.forgetConnections(how);
      const res = await access(id);
      expect(svc.staleCalls, 'the call went out on the old socket').to.be.greaterThan(0);
      expect(res.exit, 'served, not fail_open=false\'s 503').to.equal(undefined);
      expect((await access(id)).exit).to.equal(undefined);
    });
  }

  it('keeps at most maxUnsentReleases returns, oldest dropped, and none past ttl + grace', async () => {
    let now = 1_000_000;
    let up = false;
    const sent: LeaseReturn[][] = [];
    const warnings: string[] = [];
    let lease = 0;
    const cache = new LeaseCache({
      fetch: async () => ({ kind: 'DECISION', decision: { allow: true, ttlMs: 60_000 } as never, lease: { id: `M-${++lease}`, requests: 1, ttlMs: 1000 } as never }),
      release: async (leases) => { if (!up) return false; sent.push(leases); return true; },
    }, { cacheTtlMs: 60_000, staleTtlMs: 0, trackDraws: false, now: () => now, maxUnsentReleases: 3, releaseGraceMs: 5000, warn: (_f, msg) => warnings.push(msg) });
    for (const c of ['a', 'b', 'c', 'd']) await cache.resolve(c);
    cache.dropAll(); // four leases go back; the service is down
    await until(() => cache.unsentReleases() === 3, 2000, 'returns not kept');
    expect(warnings.some((w) => w.includes('oldest dropped'))).to.equal(true);
    now += 3000;
    await cache.resolve('e'); // M-5, granted later
    now += 3500; // past M-1..M-4's ttl (1 s) + grace (5 s), not M-5's
    cache.drop(['e']);
    await until(() => cache.unsentReleases() === 1, 2000, 'M-5 not kept');
    up = true;
    now += 100;
    cache.dropAll(); // as on reconnect
    await until(() => sent.length > 0, 2000, 'nothing resent');
    expect(sent.flat().map((l) => l.id)).to.deep.equal(['M-5']);
    expect(warnings.some((w) => w.includes('never took dropped'))).to.equal(true);
    // At shutdown: the leases held go back with those not taken before.
    up = false;
    await cache.resolve('f');
    cache.drop(['f']);
    await until(() => cache.unsentReleases() === 1, 2000, 'M-6 not kept');
    up = true;
    sent.length = 0;
    await cache.resolve('g'); // M-7 (its lease call sends M-6 beside it)
    await cache.releaseAll();
    await until(() => sent.flat().length >= 2, 2000, 'not all sent');
    expect(sent.flat().map((l) => l.id).sort()).to.deep.equal(['M-6', 'M-7']);
  });
});
