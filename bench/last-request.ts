// Time from the last affordable request to the first 402, through the real
// plugin server and the Kong-side harness, with default settings: a customer
// holds $1.00 at $0.01 a request and calls at a steady rate. The control
// service and the plugin server share CPU 1; the harness runs on CPU 0.
// Prints, per rate: the time from request 100 to the first 402, and how many
// requests past the 100th got through (the overshoot) — to compare with the
// bound in README: ρ·(max_coalescing_delay + a round trip) + max(0, ρ·T − L) requests.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { SqliteStore } from '../control-service/src/store/sqlite';
import { KongHarness, accessPdk, logPdk } from '../spec/support/kong-harness';
import { startPluginServer } from '../spec/support/pluginserver-process';
import { spawnPinned, stop, waitForHttp } from './support';

const ROOT = path.resolve(__dirname, '../..');
const RATES = (process.env.RATES ?? '10,50,200').split(',').map(Number);
const COALESCING = process.env.COALESCING; // plugin usage_queue.max_coalescing_delay (s); default: the plugin's

async function main() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-bench-'));
  const file = path.join(dir, 'payg.sqlite');
  const store = new SqliteStore(file);
  await store.saveChanges({
    upserts: RATES.map((rate) => ({ id: `cus_rate${rate}`, balance: -100, currency: 'usd', name: 'Bench', email: null, metadata: {}, version: 1 })),
    deletes: [], transitions: [],
  });
  await store.close();
  const configFile = path.join(dir, 'payg.yml');
  fs.writeFileSync(configFile, JSON.stringify({
    listen: { host: '127.0.0.1', port: 18805 }, store: { sqlite: file },
    cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
    rules: [{ id: 'block', cohort: 'no-credit', body: '{"error":"payment_required"}' }],
    metering: { default_cost: 1 },
  }));
  const control = spawnPinned([process.execPath, path.join(ROOT, 'control-service/bin/payg-control'), '--config', configFile], { cpu: 1, env: { STRIPE_SECRET_KEY: '' } });
  const ps = await startPluginServer({ cpu: 1 });
  const kong = new KongHarness(ps.socketPath);
  try {
    await waitForHttp('http://127.0.0.1:18805/health', control);
    console.log(`$1.00 of credit at $0.01 a request; plugin and service defaults${COALESCING ? `, max_coalescing_delay ${COALESCING}s` : ''}`);
    for (const rate of RATES) {
      const id = await kong.startInstance('payg', {
        control_service_url: 'http://127.0.0.1:18805', ...(COALESCING ? { usage_queue: { max_coalescing_delay: Number(COALESCING) } } : {}),
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
    await stop(control);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => { console.error(err); process.exit(1); });
