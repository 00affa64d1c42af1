// Auto-recharge (issue 22): N customers opted in with a saved card cross the
// threshold at once (one usage batch); prints recharges/s (first crossing to
// last credit confirmed in Stripe) and, per customer, the time from the
// crossing's commit to the credit confirmed, with the emulator answering
// payments at once and after a delay. The control service runs in process
// with the Stripe emulator on loopback. Prints figures only.
import { performance } from 'node:perf_hooks';
import { BenchStack, CONTROL, pct } from './stack';

const fmt = (xs: number[]) => `p50 ${pct(xs, 50).toFixed(0)}  p90 ${pct(xs, 90).toFixed(0)}  max ${Math.max(...xs).toFixed(0)} ms`;

async function run(n: number, paymentDelayMs: number): Promise<void> {
  const stack = await BenchStack.open({ prefix: 'payg-bench-recharges-', autoDeliver: false });
  const stripe = stack.stripe;
  const ids: string[] = [];
  for (let i = 0; i < n; i++) ids.push(await stack.optedInCustomer({ name: `c${i}`, balance: -600, currency: 'usd' }));
  const svc = await stack.startService({
    stripe: { poll: '0 0 1 1 *', max_requests_per_second: 100, timeout_ms: 30_000 },
    top_up: { checkout: { public_url: stack.url, currencies: { usd: { presets: [2500], min: 500, max: 100_000 } } } },
    auto_recharge: { enabled: true, threshold: 500, amount: 2000, monthly_cap: 10_000, poll_interval: '1s' },
    cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
    rules: [{ id: 'block', cohort: 'no-credit', body: '{"error":"payment_required"}' }],
    metering: { default_cost: 100, settle: { enabled: false } },
  });
  await svc.sync!.sweep();
  stripe.paymentDelayMs = paymentDelayMs;
  const credited = new Map<string, number>();
  svc.recharger!.onCredited = (row) => credited.set(row.customerId, performance.now());
  // $6 → $4 for every customer in one batch: N crossings in one commit.
  const events = ids.flatMap((id, i) => [0, 1].map((k) => ({ id: `e-${i}-${k}`, consumer: id, at: new Date().toISOString(), route: 'api', status: 200 })));
  const t0 = performance.now();
  const res = await fetch(`${svc.url}/v1/usage`, { method: 'POST', body: JSON.stringify({ events }), headers: { 'content-type': 'application/json', authorization: `Bearer ${CONTROL}` } });
  if (res.status !== 200) throw new Error(`usage: ${res.status}`);
  const committed = performance.now();
  const deadline = Date.now() + 300_000;
  while (credited.size < n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  const last = Math.max(...credited.values());
  const latencies = [...credited.values()].map((t) => t - committed);
  console.log(`N=${String(n).padStart(3)}  payment delay ${String(paymentDelayMs).padStart(4)} ms: ${credited.size}/${n} credited, ${(n / ((last - t0) / 1000)).toFixed(1)} recharges/s;`
    + ` crossing committed → credit confirmed in Stripe: ${fmt(latencies)}`);
  await stack.close();
}

async function main() {
  console.log('bench:recharges (Stripe emulator on loopback, max_requests_per_second 100: each recharge is ~4 Stripe requests)');
  await run(1, 0);
  await run(1, 1000);
  await run(100, 0);
  await run(50, 1000);
}

main().catch((err) => { console.error(err); process.exit(1); });
