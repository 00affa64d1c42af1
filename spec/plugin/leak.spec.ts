// kong-pdk 0.6.0 keeps every event that ended in kong.response.exit() forever.
// Blocked consumers take exactly that path; payg-pluginserver must stay flat.
import { expect } from 'chai';
import path from 'node:path';
import { KongHarness, accessPdk } from '../../testkit/kong-harness';
import { startPluginServer, type PluginServerProcess } from '../../testkit/pluginserver-process';
import { FakeControlService, block } from '../../testkit/fake-control-service';

const BLOCKED_REQUESTS = 20_000;
const WARMUP_REQUESTS = 3_000;
const LIMIT_KB = 10 * 1024;
const VARIANT = path.join(__dirname, '../../testkit/variant-pluginserver.js');

/** RSS growth over BLOCKED_REQUESTS blocked requests, after a warm-up. */
async function rssGrowthKb(server: PluginServerProcess, svcUrl: string): Promise<number> {
  const kong = new KongHarness(server.socketPath);
  try {
    // Generous timeout and cache TTL: on a busy machine a slow decision must not turn into a fail-open pass.
    const id = await kong.startInstance('payg', { control_service_url: svcUrl, report_usage: false, timeout_ms: 10_000, cache_ttl_ms: 3_600_000 });
    const consumers = Array.from({ length: 16 }, (_, i) => ({ id: `c${i}`, custom_id: `cus_${i}` }));
    const run = async (count: number) => {
      let next = 0;
      await Promise.all(consumers.map(async (consumer) => {
        while (next < count) {
          next++;
          const res = await kong.handleEvent(id, 'access', accessPdk(consumer));
          if (res.exit?.status !== 402) throw new Error('expected a blocked request');
        }
      }));
    };
    await run(WARMUP_REQUESTS);
    const before = server.rssKb();
    await run(BLOCKED_REQUESTS);
    await new Promise((r) => setTimeout(r, 200));
    return server.rssKb() - before;
  } finally {
    kong.close();
  }
}

describe('payg-pluginserver memory under blocked consumers', function () {
  this.timeout(60_000);
  let svc: FakeControlService;
  before(async () => {
    svc = await new FakeControlService().start();
    svc.decide = () => block('{"error":"payment_required"}', { ttlMs: 60_000 });
  });
  after(() => svc.stop());

  it(`grows by less than 10 MB over ${BLOCKED_REQUESTS} blocked requests`, async () => {
    const server = await startPluginServer();
    try {
      const growth = await rssGrowthKb(server, svc.url);
      expect(growth, `RSS grew ${growth} kB`).to.be.below(LIMIT_KB);
    } finally {
      await server.stop();
    }
  });

  it('the same measure catches kong-pdk\'s unpatched Server (proves the test can fail)', async () => {
    const server = await startPluginServer({ command: [process.execPath, VARIANT, '--server', 'stock'] });
    try {
      const growth = await rssGrowthKb(server, svc.url);
      expect(growth, `RSS grew ${growth} kB`).to.be.above(LIMIT_KB);
    } finally {
      await server.stop();
    }
  });
});
