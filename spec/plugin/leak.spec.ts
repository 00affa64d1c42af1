// kong-pdk 0.6.0 keeps every event that ended in kong.response.exit() forever.
// Blocked consumers take exactly that path; payg-pluginserver must not keep them.
//
// What is measured is what a leak grows: memory still reachable after a full garbage
// collection (heapUsed + external, read in the plugin server by testkit/memory-probe), over
// two equal windows of blocked requests after a warm-up. A leak grows in every window;
// warm-up (compiled code, caches filling) only in the first. RSS is not the measure: V8
// sizes its young generation to the allocation rate (Node 20 grows it to 32 MB here, Node
// 26 to 53 MB), which moves RSS by tens of MB with nothing retained (docs/runtime.md).
import { expect } from 'chai';
import path from 'node:path';
import { KongHarness, accessPdk } from '../../testkit/kong-harness';
import { startPluginServer, type PluginServerProcess } from '../../testkit/pluginserver-process';
import { FakeControlService, block } from '../../testkit/fake-control-service';
import { mb, probeMemory, retained, withMemoryProbe, type MemorySample } from '../../testkit/memory';

const WARMUP_REQUESTS = 3_000;
const WINDOW_REQUESTS = 10_000;
/** Retained growth allowed over one window: about 50 bytes a request (a leak of the smallest per-request object, kong-pdk's event, keeps 70). */
const LIMIT_BYTES = 512 * 1024;
const VARIANT = path.join(__dirname, '../../testkit/variant-pluginserver.js');

interface Growth { first: number; second: number; samples: MemorySample[] }

/** Retained memory growth over two windows of WINDOW_REQUESTS blocked requests, after a warm-up. */
async function retainedGrowth(server: PluginServerProcess, svcUrl: string): Promise<Growth> {
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
    const sample = () => probeMemory(server.proc, () => server.logs.filter((l) => 'memoryProbe' in l) as never);
    await run(WARMUP_REQUESTS);
    const samples = [await sample()];
    for (let w = 0; w < 2; w++) {
      await run(WINDOW_REQUESTS);
      samples.push(await sample());
    }
    const [a, b, c] = samples.map(retained);
    return { first: b - a, second: c - b, samples };
  } finally {
    kong.close();
  }
}

function describeGrowth(g: Growth): string {
  const [a, b, c] = g.samples;
  return `retained (heapUsed + external after GC) grew ${mb(g.first)} MB, then ${mb(g.second)} MB over two windows of ${WINDOW_REQUESTS} blocked requests; `
    + `RSS ${mb(a.rss)} -> ${mb(b.rss)} -> ${mb(c.rss)} MB, V8 heap reserved ${mb(a.heapTotal)} -> ${mb(b.heapTotal)} -> ${mb(c.heapTotal)} MB`;
}

describe('payg-pluginserver memory under blocked consumers', function () {
  this.timeout(90_000);
  let svc: FakeControlService;
  before(async () => {
    svc = await new FakeControlService().start();
    svc.decide = () => block('{"error":"payment_required"}', { ttlMs: 60_000 });
  });
  after(() => svc.stop());

  it(`keeps nothing per blocked request: retained memory grows by less than 0.5 MB over ${WINDOW_REQUESTS} of them`, async () => {
    const server = await startPluginServer({ env: withMemoryProbe() });
    try {
      const growth = await retainedGrowth(server, svc.url);
      console.log(`      ${describeGrowth(growth)}`);
      expect(growth.second, describeGrowth(growth)).to.be.below(LIMIT_BYTES);
    } finally {
      await server.stop();
    }
  });

  it('the same measure catches kong-pdk\'s unpatched Server (proves the test can fail)', async () => {
    const server = await startPluginServer({ command: [process.execPath, VARIANT, '--server', 'stock'], env: withMemoryProbe() });
    try {
      const growth = await retainedGrowth(server, svc.url);
      console.log(`      stock Server: ${describeGrowth(growth)}`);
      // It keeps every event: both windows grow, each by far more than the limit.
      expect(growth.first, describeGrowth(growth)).to.be.above(LIMIT_BYTES * 8);
      expect(growth.second, describeGrowth(growth)).to.be.above(LIMIT_BYTES * 8);
    } finally {
      await server.stop();
    }
  });
});
