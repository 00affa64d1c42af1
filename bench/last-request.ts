// Time from the last affordable request to the first 402, through the real
// plugin server and the Kong-side harness, with default settings: a customer
// holds $1.00 at $0.01 a request and calls at a steady rate. The control
// service and the plugin server share CPU 1; the harness runs on CPU 0.
// Prints, per rate: the time from request 100 to the first 402, and how many
// requests past the 100th got through (the overshoot: none, as leases make it; see
// docs/control-service.md, "Exact credit on every node", and docs/benchmarks.md).
import { performance } from 'node:perf_hooks';
import { KongHarness, accessPdk, logPdk } from '../testkit/kong-harness';
import { startPluginServer } from '../testkit/pluginserver-process';
import { startControl } from './support';

const RATES = (process.env.RATES ?? '10,50,200').split(',').map(Number);
const COALESCING = process.env.COALESCING; // plugin queue.max_coalescing_delay (s); default: the plugin's

async function main() {
  const control = await startControl({
    port: 18805,
    customers: RATES.map((rate) => ({ id: `cus_rate${rate}`, balance: -100, currency: 'usd', name: 'Bench', email: null, metadata: {}, version: 1 })),
    config: {
      cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
      rules: [{ id: 'block', cohort: 'no-credit', body: '{"error":"payment_required"}' }],
      metering: { default_cost: 1 },
    },
  });
  const ps = await startPluginServer({ cpu: 1 });
  const kong = new KongHarness(ps.socketPath);
  try {
    console.log(`$1.00 of credit at $0.01 a request; plugin and service defaults${COALESCING ? `, max_coalescing_delay ${COALESCING}s` : ''}`);
    for (const rate of RATES) {
      const id = await kong.startInstance('payg', {
        control_service_url: control.url, ...(COALESCING ? { queue: { max_coalescing_delay: Number(COALESCING) } } : {}),
      }, `bench-${rate}`);
      const consumer = { id: `k-${rate}`, custom_id: `cus_rate${rate}` };
      const t0 = performance.now();
      let lastAffordableAt = 0;
      let served = 0;
      for (let i = 0; ; i++) {
        const due = t0 + (i * 1000) / rate;
        while (performance.now() < due) await new Promise((r) => setImmediate(r));
        const res = await kong.handleEvent(id, 'access', accessPdk(consumer));
        if (res.exit) {
          const ms = performance.now() - lastAffordableAt;
          console.log(`  ${String(rate).padStart(4)} req/s: first 402 ${ms.toFixed(0).padStart(5)} ms after request 100; overshoot ${served - 100} requests (${served} served)   (target ≤ 1000 ms)`);
          break;
        }
        served++;
        if (served === 100) lastAffordableAt = performance.now();
        await kong.handleEvent(id, 'log', logPdk({ consumer, route: { id: 'r1', name: 'orders' }, status: 200 }));
        if (performance.now() - t0 > 60_000) throw new Error('never blocked');
      }
    }
  } finally {
    kong.close();
    await ps.stop();
    await control.stop();
  }
}

main().catch((err) => { console.error(err); process.exit(1); });
