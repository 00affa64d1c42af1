// Top-ups (issue 21 point 10): from the payment confirmed on Checkout to a 200
// at every gateway node (N = 1 and 4 real payg-pluginserver processes driven as
// Kong drives them; the control service in process with the Stripe emulator,
// webhooks delivered as they happen), and how long the top-up page takes:
// GET of the page and POST → 303 to Checkout, as the client sees them on
// loopback, and the page's server-side render time. Prints figures only.
import os from 'node:os';
import { performance } from 'node:perf_hooks';
import type { Consumer } from '../testkit/kong-harness';
import { BenchStack, CONTROL, pct, request } from './stack';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const fmt = (xs: number[]) => `p50 ${pct(xs, 50).toFixed(1)}  p90 ${pct(xs, 90).toFixed(1)}  max ${Math.max(...xs).toFixed(1)} ms  (n=${xs.length})`;

const form = (fields: Record<string, string>) => ({ method: 'POST', redirect: 'manual' as const, headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(fields).toString() });

async function main() {
  const stack = await BenchStack.open({ prefix: 'payg-bench-top-ups-' });
  const stripe = stack.stripe;
  const svc = await stack.startService({
    stripe: { poll: '0 0 1 1 *', max_requests_per_second: 100 },
    top_up: { checkout: { public_url: stack.url, currencies: { usd: { presets: [1000, 2500], min: 500, max: 100_000 } } } },
    cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
    rules: [{ id: 'block', cohort: 'no-credit', body: '{"error":"payment_required","top_up_url":"{{top_up_url}}"}' }],
    metering: { default_cost: 1, settle: { enabled: false } },
  }, { STRIPE_WEBHOOK_SECRET: 'whsec_bench' });
  stripe.webhook = { url: `${svc.url}/webhooks/stripe`, secret: 'whsec_bench' };
  console.log(`top-ups: payment confirmed on Checkout → 200 at every node; top-up page timings. ${os.cpus().length} CPUs, Stripe emulator on loopback`);

  const rounds = Number(process.env.ROUNDS ?? 20);
  for (const count of [1, 4]) {
    const nodes = await stack.startNodes(count, { timeout_ms: 2000 });
    await sleep(200); // streams connect
    const c = stripe.create({ name: 'Bench Customer', balance: 0, currency: 'usd' });
    await svc.sync!.sweep();
    const consumer: Consumer = { id: `k-${c.id}`, custom_id: c.id };
    const confirmed: number[] = [];
    const credited: number[] = [];
    for (let r = 0; r < rounds; r++) {
      // Back to zero, refused at every node.
      const held = -stripe.customers.get(c.id)!.balance;
      if (held > 0) stripe.addBalanceTransaction(c.id, held);
      for (const n of nodes) while (await request(n, consumer) !== 402) await sleep(1);
      const link = JSON.parse(JSON.parse(await (await fetch(`${svc.url}/v1/decisions/${c.id}`, { headers: { authorization: `Bearer ${CONTROL}` } })).text()).body).top_up_url as string;
      const html = await (await fetch(link)).text();
      const nonce = /name="nonce" value="([^"]+)"/.exec(html)![1];
      const res = await fetch(link, form({ nonce, preset: '1000' }));
      const sessionId = /\/c\/pay\/([^/?]+)/.exec(res.headers.get('location') ?? '')![1];
      const t0 = performance.now();
      stripe.completeCheckoutSession(sessionId, 'pm_card_visa'); // paid: Stripe sends checkout.session.completed
      const watch = (async () => {
        while (stripe.customers.get(c.id)!.balance === 0) await sleep(1);
        credited.push(performance.now() - t0);
      })();
      await Promise.all(nodes.map(async (n) => {
        while (await request(n, consumer) !== 200) await sleep(1);
        confirmed.push(performance.now() - t0);
      }));
      await watch;
    }
    console.log(`N = ${count} node${count > 1 ? 's' : ''}: payment confirmed → credit applied in Stripe    ${fmt(credited)}`);
    console.log(`N = ${count} node${count > 1 ? 's' : ''}: payment confirmed → 200 at every node   ${fmt(confirmed)}`);
    await stack.stopNodes(nodes);
  }

  // The page, as a client on loopback sees it.
  const c = stripe.create({ name: 'Page Customer', balance: 0, currency: 'usd' });
  await svc.sync!.sweep();
  const link = JSON.parse(JSON.parse(await (await fetch(`${svc.url}/v1/decisions/${c.id}`, { headers: { authorization: `Bearer ${CONTROL}` } })).text()).body).top_up_url as string;
  const gets: number[] = [];
  const posts: number[] = [];
  for (let i = 0; i < 20; i++) await (await fetch(link)).text(); // warm
  for (let i = 0; i < Number(process.env.PAGES ?? 500); i++) {
    const t0 = performance.now();
    await (await fetch(link)).text();
    gets.push(performance.now() - t0);
  }
  for (let i = 0; i < Number(process.env.POSTS ?? 100); i++) {
    const t0 = performance.now();
    const res = await fetch(link, form({ nonce: `bench-nonce-${i}-0123456789`, preset: '2500' }));
    await res.text();
    if (res.status !== 303) throw new Error(`POST answered ${res.status}`);
    posts.push(performance.now() - t0);
  }
  console.log(`top-up page GET (render + loopback)                 ${fmt(gets)}`);
  console.log(`top-up page POST → 303 to Checkout (new session)    ${fmt(posts)}`);
  await stack.close();
}

main().catch((err) => { console.error(err); process.exit(1); });
