// A full sweep of 100,000 emulated customers with the emulator answering 429
// past 100 requests/second, as Stripe's live-mode limiter would. The control
// service runs as its own process (pinned to CPU 1, max_requests_per_second
// 100) so its peak RSS is its own; the emulator runs here on CPU 0.
// Figures: wall time against the pages ÷ rate floor, 429s seen, peak RSS.
// PENDING=1,10 (percent of customers) adds a run per figure where that many
// customers have a balance-transaction settlement in flight, which a sweep
// reconciles with one extra read of their balance transactions: it prints the
// extra requests and time against the same sweep with none in flight.
import { StripeEmulator } from '../testkit/stripe-emulator';
import { peakRssMb, startControl } from './support';
import type { StoredCustomer } from '../control-service/src/store/store';

const CUSTOMERS = Number(process.env.CUSTOMERS ?? 100_000);
const PENDING = (process.env.PENDING ?? '').split(',').filter((p) => p.trim() !== '').map(Number);
const RATE = 100;
const ADMIN = 'bench-admin-token';

async function main() {
  if (PENDING.length) return pendingVariants();
  const stripe = await new StripeEmulator().start();
  stripe.autoDeliver = false;
  for (let i = 0; i < CUSTOMERS; i++) {
    stripe.create({ name: `Customer ${i}`, email: `c${i}@example.com`, balance: i % 3 ? -5000 : 0, metadata: { kong_consumer: `consumer-${i}` } });
  }
  stripe.events.length = 0;
  stripe.limitRate(RATE);
  const t0 = Date.now();
  // The service sweeps once on start; POST /admin/sweep joins that sweep and answers when it ends.
  const control = await startControl({
    port: 18803,
    config: {
      stripe: { poll: '0 0 1 1 *', max_requests_per_second: RATE, page_size: 100 },
      cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }, { id: 'under-10', filter: { balance: { gt: -1000 } } }],
      rules: [{ id: 'block-no-credit', cohort: 'no-credit', body: '{"error":"payment_required","name":"{{customer.name}}"}' }],
    },
    env: { STRIPE_SECRET_KEY: stripe.secretKey, STRIPE_API_BASE: stripe.url, PAYG_ADMIN_TOKEN: ADMIN },
  });
  try {
    const sweep = async (label: string) => {
      const before = stripe.requests.length;
      const res = await fetch(`${control.url}/admin/sweep`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN}` } });
      const result = await res.json() as { ok: boolean; customers: number; pages: number; durationMs: number; applyMs: number; error?: string };
      if (!result.ok) throw new Error(`${label} failed: ${result.error}`);
      const floor = result.pages / RATE;
      const throttled = stripe.requests.slice(before).filter((r) => r.status === 429).length;
      console.log(`${label}: ${result.customers} customers, ${result.pages} pages, ${(result.durationMs / 1000).toFixed(2)} s `
        + `(applying pages to memory and SQLite, overlapped with fetching: ${(result.applyMs / 1000).toFixed(2)} s)`);
      console.log(`  floor pages÷rate ${floor.toFixed(2)} s → ratio ${(result.durationMs / 1000 / floor).toFixed(3)} (target ≤ 1.2); 429 answers ${throttled}`);
    };
    await sweep('first sweep, empty store (every row inserted)');
    console.log(`  process start to first sweep end ${((Date.now() - t0) / 1000).toFixed(2)} s`);
    // Steady state: 1% of balances moved since.
    [...stripe.customers.values()].forEach((c, i) => { if (i % 100 === 0) c.balance += 100; });
    await sweep('next sweep, 1% of balances changed');
    const metrics = await (await fetch(`${control.url}/metrics`)).text();
    const mb = (name: string) => (Number(new RegExp(`^${name} (\\S+)`, 'm').exec(metrics)?.[1]) / 2 ** 20).toFixed(1);
    console.log(`control service after the sweeps: RSS ${mb('payg_process_resident_memory_bytes')} MB, V8 heap ${mb('payg_nodejs_heap_size_used_bytes')} MB used of ${mb('payg_nodejs_heap_size_total_bytes')} MB, external ${mb('payg_nodejs_external_memory_bytes')} MB`);
    console.log(`control service peak RSS ${peakRssMb(control.child.proc.pid!).toFixed(1)} MB   (target ≤ 256 MB)`);
  } finally {
    await control.stop();
    await stripe.stop();
  }
}

main().catch((err) => { console.error(err); process.exit(1); });

interface SweepFigures { pages: number; durationMs: number; requests: number; ledgerReads: number }

/**
 * The same steady-state sweep (every customer already known) with 0% and then
 * each PENDING% of customers holding a settlement in flight that Stripe has not
 * applied: it stays in flight, so every sweep reads those customers' balance
 * transactions. Settlement passes are off so nothing else talks to Stripe.
 */
async function pendingVariants() {
  const stripe = await new StripeEmulator().start();
  stripe.autoDeliver = false;
  for (let i = 0; i < CUSTOMERS; i++) {
    stripe.create({ name: `Customer ${i}`, email: `c${i}@example.com`, balance: i % 3 ? -5000 : 0, metadata: { kong_consumer: `consumer-${i}` } });
  }
  stripe.events.length = 0;
  stripe.limitRate(RATE);
  const known: StoredCustomer[] = [...stripe.customers.values()].map((c) => ({
    id: c.id, balance: c.balance, currency: c.currency, name: c.name, email: c.email, metadata: c.metadata, version: 1,
  }));
  const run = async (percent: number, port: number): Promise<SweepFigures> => {
    const every = percent > 0 ? Math.round(100 / percent) : 0;
    const control = await startControl({
      port,
      config: {
        stripe: { poll: '0 0 1 1 *', max_requests_per_second: RATE, page_size: 100 },
        cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
        rules: [{ id: 'block-no-credit', cohort: 'no-credit', body: '{"error":"payment_required"}' }],
        metering: { default_cost: 1, settle: { enabled: false } },
      },
      customers: known,
      // 2¢ of usage for every `every`-th customer, opened as a settlement (never sent: it stays in flight).
      seed: async (store) => {
        if (!every) return;
        const usage = known.filter((_, i) => i % every === 0).map((c, i) => ({ id: `u${i}`, customerId: c.id, consumer: c.id, at: 1, route: null, status: 200, costMicros: 2_000_000 }));
        await store.saveChanges({ upserts: [], deletes: [], transitions: [], usage });
        await store.openSettlements(Date.now(), 'balance_transactions', () => 'usd');
      },
      env: { STRIPE_SECRET_KEY: stripe.secretKey, STRIPE_API_BASE: stripe.url, PAYG_ADMIN_TOKEN: ADMIN },
    });
    try {
      const sweep = async () => {
        const before = stripe.requests.length;
        const res = await fetch(`${control.url}/admin/sweep`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN}` } });
        const result = await res.json() as { ok: boolean; pages: number; durationMs: number; error?: string };
        if (!result.ok) throw new Error(`sweep failed: ${result.error}`);
        const seen = stripe.requests.slice(before).filter((r) => r.status === 200);
        return { pages: result.pages, durationMs: result.durationMs, requests: seen.length, ledgerReads: seen.filter((r) => r.path.endsWith('/balance_transactions')).length };
      };
      await sweep(); // joins the start-up sweep
      return await sweep();
    } finally {
      await control.stop();
    }
  };
  try {
    console.log(`sweep of ${CUSTOMERS} known customers at ${RATE} req/s, with settlements in flight (steady state, second sweep after start)`);
    const base = await run(0, 18804);
    const line = (label: string, f: SweepFigures) => console.log(`${label}: ${f.requests} requests (${f.pages} pages + ${f.ledgerReads} balance-transaction reads), ${(f.durationMs / 1000).toFixed(2)} s`);
    line('  none in flight', base);
    for (const [i, percent] of PENDING.entries()) {
      const f = await run(percent, 18805 + i);
      line(`  ${percent}% in flight (${Math.floor(CUSTOMERS / Math.round(100 / percent))} customers)`, f);
      console.log(`    extra: ${f.requests - base.requests} requests, ${((f.durationMs - base.durationMs) / 1000).toFixed(2)} s (${(f.durationMs / base.durationMs).toFixed(2)}× the sweep with none)`);
    }
  } finally {
    await stripe.stop();
  }
}
