// Usage ingest through the HTTP API into SQLite: the control service runs as
// its own process pinned to CPU 1; autocannon on CPU 0 posts batches of 200
// events (the plugin's default max_batch_size) with unique ids, over 4
// keep-alive connections. Prints events/s accepted and checks none was lost.
import autocannon from 'autocannon';
import { startControl } from './support';

const CUSTOMERS = 1000;
const BATCH = Number(process.env.BATCH ?? 200);
const SECONDS = Number(process.env.SECONDS ?? 5);
const TOKEN = 'bench-control-token';
const ADMIN = 'bench-admin-token';

async function main() {
  const control = await startControl({
    port: 18804,
    customers: Array.from({ length: CUSTOMERS }, (_, i) => ({ id: `cus_bench${i}`, balance: -1e9, currency: 'usd', name: null, email: null, metadata: {}, version: 1 })),
    config: {
      cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
      rules: [{ id: 'block', cohort: 'no-credit', body: '{"error":"payment_required"}' }],
      metering: { default_cost: '0.1' },
    },
    env: { PAYG_CONTROL_TOKEN: TOKEN, PAYG_ADMIN_TOKEN: ADMIN },
  });
  try {
    let n = 0;
    const at = new Date().toISOString();
    const batch = () => JSON.stringify({
      events: Array.from({ length: BATCH }, () => { n++; return { id: `e-${n}`, consumer: `cus_bench${n % CUSTOMERS}`, at, route: 'orders', status: 200 }; }),
    });
    const result = await autocannon({
      url: control.url, connections: 4, duration: SECONDS,
      requests: [{ method: 'POST', path: '/v1/usage', headers: { 'content-type': 'application/json', authorization: `Bearer ${TOKEN}` }, setupRequest: (req) => ({ ...req, body: batch() }) }],
    });
    const ok = result['2xx'];
    const eventsPerSecond = (ok * BATCH) / SECONDS;
    console.log(`usage ingest: ${ok} batches of ${BATCH} in ${SECONDS}s → ${eventsPerSecond.toFixed(0)} events/s stored   (target ≥ 20,000)`);
    console.log(`  batch latency p50 ${result.latency.p50} ms, p99 ${result.latency.p99} ms; non-2xx ${result.non2xx}, errors ${result.errors}`);
    const metrics = await (await fetch(`${control.url}/metrics`)).text();
    const accepted = Number(/^payg_usage_events_total\{result="accepted"\} (\d+)/m.exec(metrics)?.[1]);
    console.log(`  stored by the service ${accepted} events (the 2xx batches counted ${ok * BATCH}; batches still in flight at the end are stored too)`);
  } finally {
    await control.stop();
  }
}

main().catch((err) => { console.error(err); process.exit(1); });
