// Usage ingest through the HTTP API into SQLite: the control service runs as
// its own process pinned to CPU 1; autocannon on CPU 0 posts batches of 200
// events (the plugin's default max_batch_size) with unique ids, over 4
// keep-alive connections. Prints events/s accepted and checks none was lost.
import autocannon from 'autocannon';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { SqliteStore } from '../control-service/src/store/sqlite';
import { spawnPinned, stop, waitForHttp } from './support';

const ROOT = path.resolve(__dirname, '../..');
const CUSTOMERS = 1000;
const BATCH = Number(process.env.BATCH ?? 200);
const SECONDS = Number(process.env.SECONDS ?? 5);
const TOKEN = 'bench-control-token';
const ADMIN = 'bench-admin-token';

async function main() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-bench-'));
  const file = path.join(dir, 'payg.sqlite');
  const store = new SqliteStore(file);
  await store.saveChanges({
    upserts: Array.from({ length: CUSTOMERS }, (_, i) => ({ id: `cus_bench${i}`, balance: -1e9, currency: 'usd', name: null, email: null, metadata: {}, version: 1 })),
    deletes: [], transitions: [],
  });
  await store.close();
  const configFile = path.join(dir, 'payg.yml');
  fs.writeFileSync(configFile, JSON.stringify({
    listen: { host: '127.0.0.1', port: 18804 }, store: { sqlite: file },
    cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
    rules: [{ id: 'block', cohort: 'no-credit', body: '{"error":"payment_required"}' }],
    metering: { default_cost: '0.1' },
  }));
  const nodeArgs = process.env.CHILD_NODE_ARGS ? process.env.CHILD_NODE_ARGS.split(' ') : [];
  const control = spawnPinned([process.execPath, ...nodeArgs, path.join(ROOT, 'control-service/bin/payg-control'), '--config', configFile], {
    cpu: 1, env: { PAYG_CONTROL_TOKEN: TOKEN, PAYG_ADMIN_TOKEN: ADMIN, STRIPE_SECRET_KEY: '' },
  });
  try {
    await waitForHttp('http://127.0.0.1:18804/health', control);
    let n = 0;
    const at = new Date().toISOString();
    const batch = () => JSON.stringify({
      events: Array.from({ length: BATCH }, () => { n++; return { id: `e-${n}`, consumer: `cus_bench${n % CUSTOMERS}`, at, route: 'orders', status: 200 }; }),
    });
    const result = await autocannon({
      url: 'http://127.0.0.1:18804', connections: 4, duration: SECONDS,
      requests: [{ method: 'POST', path: '/v1/usage', headers: { 'content-type': 'application/json', authorization: `Bearer ${TOKEN}` }, setupRequest: (req) => ({ ...req, body: batch() }) }],
    });
    const ok = result['2xx'];
    const eventsPerSecond = (ok * BATCH) / SECONDS;
    console.log(`usage ingest: ${ok} batches of ${BATCH} in ${SECONDS}s → ${eventsPerSecond.toFixed(0)} events/s stored   (target ≥ 20,000)`);
    console.log(`  batch latency p50 ${result.latency.p50} ms, p99 ${result.latency.p99} ms; non-2xx ${result.non2xx}, errors ${result.errors}`);
    const metrics = await (await fetch('http://127.0.0.1:18804/metrics')).text();
    const accepted = Number(/^payg_usage_events_total\{result="accepted"\} (\d+)/m.exec(metrics)?.[1]);
    console.log(`  stored by the service ${accepted} events (the 2xx batches counted ${ok * BATCH}; batches still in flight at the end are stored too)`);
  } finally {
    await stop(control);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => { console.error(err); process.exit(1); });
