// Decision API against a bare Node http server that returns a constant, in one
// run: each server in its own process pinned to CPU 1, the load generator
// (autocannon) on CPU 0. Two measures:
//   1. throughput, closed loop with 16 keep-alive connections (rounds interleaved)
//   2. latency at a fixed 1,000 req/s (p50/p99), open loop
// The control service holds 10,000 customers (half blocked, so half the answers
// are rendered 402 bodies) in its SQLite file and requires the control token.
import autocannon from 'autocannon';
import http from 'node:http';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { spawnPinned, startControl, stop, waitForHttp } from './support';

const CUSTOMERS = 10_000;
const ROUNDS = Number(process.env.ROUNDS ?? 3);
const SECONDS = Number(process.env.SECONDS ?? 5);
const TOKEN = 'bench-control-token';

function load(url: string, opts: { connections: number }): Promise<autocannon.Result> {
  let n = 0;
  return autocannon({
    url, connections: opts.connections, duration: SECONDS,
    headers: { authorization: `Bearer ${TOKEN}` },
    requests: [{ method: 'GET', setupRequest: (req) => ({ ...req, path: `/v1/decisions/consumer-${(n++ * 7919) % CUSTOMERS}` }) }],
  });
}

/**
 * Open-loop latency at a fixed rate: request i is sent at t0 + i/rate whether
 * or not earlier ones have answered, so a stall in the server is not hidden by
 * the load generator waiting for it (coordinated omission).
 */
async function fixedRate(url: string, rate: number, seconds = SECONDS): Promise<{ p50: number; p99: number; max: number; count: number; errors: number }> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 32 });
  const total = rate * seconds;
  const latencies: number[] = [];
  let errors = 0;
  const t0 = performance.now();
  const inflight: Array<Promise<void>> = [];
  for (let i = 0; i < total; i++) {
    const due = t0 + (i * 1000) / rate;
    // Spin on setImmediate (the generator has its own core): timers would
    // release requests in bursts and measure the client's jitter, not the server's.
    while (performance.now() < due) await new Promise((r) => setImmediate(r));
    inflight.push(new Promise<void>((resolve) => {
      const sent = performance.now();
      const req = http.get(`${url}/v1/decisions/consumer-${(i * 7919) % CUSTOMERS}`, { agent, headers: { authorization: `Bearer ${TOKEN}` } }, (res) => {
        res.resume();
        res.on('end', () => { if (res.statusCode !== 200) errors++; latencies.push(performance.now() - sent); resolve(); });
      });
      req.on('error', () => { errors++; resolve(); });
    }));
  }
  await Promise.all(inflight);
  agent.destroy();
  latencies.sort((a, b) => a - b);
  const q = (p: number) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))];
  return { p50: q(0.5), p99: q(0.99), max: latencies[latencies.length - 1], count: latencies.length, errors };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main() {
  const bare = spawnPinned([process.execPath, path.join(__dirname, 'bare-server.js')], { cpu: 1, env: { PORT: '18801' } });
  let control: Awaited<ReturnType<typeof startControl>> | undefined;
  try {
    await waitForHttp('http://127.0.0.1:18801/', bare);
    control = await startControl({
      port: 18802,
      customers: Array.from({ length: CUSTOMERS }, (_, i) => ({
        id: `cus_bench${i}`, balance: i % 2 ? 0 : -10_000, currency: 'usd', name: `Customer ${i}`, email: `c${i}@example.com`,
        metadata: { kong_consumer: `consumer-${i}` }, version: Date.now(),
      })),
      config: {
        cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
        rules: [{ id: 'block-no-credit', cohort: 'no-credit', body: '{"error":"payment_required","message":"{{customer.first_name}}, your credit is used up.","balance":"{{credit.formatted}}"}' }],
      },
      env: { PAYG_CONTROL_TOKEN: TOKEN },
    });
    const servers = [
      { name: 'bare http constant', url: 'http://127.0.0.1:18801', rps: [] as number[], errors: 0 },
      { name: 'payg decision API ', url: control.url, rps: [] as number[], errors: 0 },
    ];
    for (const s of servers) await load(s.url, { connections: 16 }); // warm-up
    for (let round = 0; round < ROUNDS; round++) {
      // Alternate which server goes first, so drift hits both alike.
      for (const s of round % 2 ? [...servers].reverse() : servers) {
        const r = await load(s.url, { connections: 16 });
        s.rps.push(r.requests.average);
        s.errors += r.errors + r.non2xx;
      }
    }
    console.log(`throughput, 16 connections, ${ROUNDS}×${SECONDS}s interleaved (median req/s):`);
    for (const s of servers) console.log(`  ${s.name}  ${median(s.rps).toFixed(0).padStart(7)} req/s   errors ${s.errors}`);
    console.log(`  ratio payg/bare: ${(median(servers[1].rps) / median(servers[0].rps)).toFixed(3)}   (target ≥ 0.7)`);
    console.log(`latency at a fixed 1,000 req/s for ${SECONDS}s, open loop, keep-alive:`);
    for (const s of servers) {
      await fixedRate(s.url, 1000, 1); // warm-up after the throughput rounds
      const r = await fixedRate(s.url, 1000);
      console.log(`  ${s.name}  p50 ${r.p50.toFixed(3)} ms  p99 ${r.p99.toFixed(3)} ms  max ${r.max.toFixed(2)} ms  (${r.count} requests, ${r.errors} errors)   (target p99 < 2 ms)`);
    }
  } finally {
    await Promise.all([stop(bare), control?.stop()]);
  }
}

main().catch((err) => { console.error(err); process.exit(1); });
