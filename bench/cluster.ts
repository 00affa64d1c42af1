// Exact credit across Kong nodes: N = 1, 2, 4 real payg-pluginserver processes
// (driven as Kong drives them), one control service with the Stripe emulator.
// A customer's credit pays exactly 1,000 requests at $0.01. Prints, per cell:
// served, overspend (must be 0), and the time from the last affordable request
// to the first 402 at each node; then webhook→402 and top-up→200 at every node.
// Prints figures only; asserts nothing.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import pino from 'pino';
import { parseConfig } from '../control-service/src/config';
import { startService, type RunningService } from '../control-service/src/service';
import { StripeEmulator } from '../testkit/stripe-emulator';
import { KongHarness, accessPdk, logPdk, requestCtx, type Consumer } from '../testkit/kong-harness';
import { startPluginServer, type PluginServerProcess } from '../testkit/pluginserver-process';

const CONTROL = 'bench-control-token';
const CREDIT = 1000;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
interface Node { ps: PluginServerProcess; kong: KongHarness; plugin: string }

let stripe: StripeEmulator;
let svc: RunningService;

async function customer(balance = -CREDIT): Promise<Consumer> {
  const c = stripe.create({ balance });
  await svc.sync!.sweep();
  return { id: `k-${c.id}`, custom_id: c.id };
}

async function request(node: Node, consumer: Consumer): Promise<number> {
  const ctx = requestCtx();
  const res = await node.kong.handleEvent(node.plugin, 'access', accessPdk(consumer, ctx));
  const status = res.exit?.status ?? 200;
  if (status === 200) void node.kong.handleEvent(node.plugin, 'log', logPdk({ consumer, route: { id: 'r', name: 'api' }, status }, ctx));
  return status;
}

/** Tracks served requests and, per node, the first 402 after the last affordable request. */
class Tally {
  served = 0;
  lastAffordableAt = 0;
  firstBlock = new Map<number, number>();
  other = 0;
  record(nodeIndex: number, status: number): void {
    if (status === 200) { this.served++; if (this.served === CREDIT) this.lastAffordableAt = performance.now(); }
    else if (status === 402) { if (this.served >= CREDIT && !this.firstBlock.has(nodeIndex)) this.firstBlock.set(nodeIndex, performance.now()); }
    else this.other++;
  }
  line(label: string, nodes: number): string {
    const lag = [...Array(nodes).keys()].map((i) => {
      const t = this.firstBlock.get(i);
      return t === undefined ? '–' : `${Math.max(0, t - this.lastAffordableAt).toFixed(0)}`;
    }).join('/');
    return `  ${label.padEnd(28)} served ${String(this.served).padStart(5)}  overspend ${String(Math.max(0, this.served - CREDIT)).padStart(3)}  last→402 per node ms ${lag}${this.other ? `  other ${this.other}` : ''}`;
  }
}

async function roundRobin(nodes: Node[], rate: number): Promise<Tally> {
  const consumer = await customer();
  const t = new Tally();
  const t0 = performance.now();
  const pending: Array<Promise<void>> = [];
  let inFlight = 0;
  for (let i = 0; t.firstBlock.size < nodes.length && i < CREDIT * 2; i++) {
    const due = t0 + (i * 1000) / rate;
    // At most 128 requests open at once (each is a socket to the plugin server, as Kong's workers would hold).
    while (performance.now() < due || inFlight >= 128) await new Promise((r) => setImmediate(r));
    const n = i % nodes.length;
    inFlight++;
    pending.push(request(nodes[n], consumer).then((s) => { inFlight--; t.record(n, s); }));
  }
  await Promise.all(pending);
  return t;
}

async function burst(nodes: Node[], warm: boolean): Promise<Tally> {
  const consumer = await customer();
  const t = new Tally();
  if (warm) for (const [i, n] of nodes.entries()) t.record(i, await request(n, consumer));
  await Promise.all(nodes.map((n, i) => Promise.all(Array.from({ length: 200 }, () => request(n, consumer).then((s) => t.record(i, s))))));
  // Then round robin until every node refuses, for the lag figure.
  for (let i = 0; t.served < CREDIT * 2 && t.firstBlock.size < nodes.length && i < CREDIT * 2; i++) t.record(i % nodes.length, await request(nodes[i % nodes.length], consumer));
  return t;
}

async function parallel(nodes: Node[], clients: number): Promise<Tally> {
  const consumer = await customer();
  const t = new Tally();
  let next = 0;
  await Promise.all(Array.from({ length: clients }, async () => {
    while (t.firstBlock.size < nodes.length && next < CREDIT * 3) {
      const n = next++ % nodes.length;
      t.record(n, await request(nodes[n], consumer));
    }
  }));
  return t;
}

const pct = (xs: number[], p: number) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]; };

/** From a Stripe change to every node answering `want`: per node times, over `rounds` changes. */
async function pushLatency(nodes: Node[], rounds: number): Promise<{ block: number[]; restore: number[] }> {
  const block: number[] = [];
  const restore: number[] = [];
  const consumer = await customer(-1_000_000);
  for (const n of nodes) await request(n, consumer);
  const until = async (want: number, t0: number, out: number[]) => {
    await Promise.all(nodes.map(async (n) => {
      while (await request(n, consumer) !== want) await sleep(1);
      out.push(performance.now() - t0);
    }));
  };
  for (let r = 0; r < rounds; r++) {
    const held = -stripe.customers.get(consumer.custom_id!)!.balance;
    let t0 = performance.now();
    stripe.addBalanceTransaction(consumer.custom_id!, held + 10); // debit past zero: webhook customer.updated
    await until(402, t0, block);
    t0 = performance.now();
    stripe.addBalanceTransaction(consumer.custom_id!, -1_000_000); // top-up
    await until(200, t0, restore);
  }
  return { block, restore };
}

async function main() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-cluster-'));
  stripe = await new StripeEmulator().start();
  const config = parseConfig({
    listen: { port: 0 }, store: { sqlite: path.join(dir, 'payg.sqlite') },
    stripe: { poll: '0 0 1 1 *', max_requests_per_second: 100 },
    cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
    rules: [{ id: 'block', cohort: 'no-credit', body: '{"error":"payment_required"}' }],
    metering: { default_cost: 1, settle: { enabled: false } },
  }, { STRIPE_SECRET_KEY: stripe.secretKey, STRIPE_API_BASE: stripe.url, PAYG_CONTROL_TOKEN: CONTROL, STRIPE_WEBHOOK_SECRET: 'whsec_bench' }, dir);
  svc = await startService(config, { log: pino({ level: 'silent' }), sweepOnStart: false });
  stripe.webhook = { url: `${svc.url}/webhooks/stripe`, secret: 'whsec_bench' };
  console.log(`credit for ${CREDIT} requests at $0.01; plugin defaults except timeout_ms 2000 (fail_open true would pass a slow answer); ${os.cpus().length} CPUs`);
  for (const count of [1, 2, 4]) {
    const nodes: Node[] = await Promise.all(Array.from({ length: count }, async () => {
      const ps = await startPluginServer();
      const kong = new KongHarness(ps.socketPath);
      const plugin = await kong.startInstance('payg', { control_service_url: svc.url, control_service_token: CONTROL, timeout_ms: 2000 });
      return { ps, kong, plugin };
    }));
    await sleep(200); // streams connect
    console.log(`N = ${count} node${count > 1 ? 's' : ''}`);
    // PUSH_ONLY=1 measures only webhook→every node (PUSH_ROUNDS changes, default 10).
    if (!process.env.PUSH_ONLY) {
      for (const rate of [50, 200, 1000, 5000]) console.log((await roundRobin(nodes, rate)).line(`round robin ${rate} req/s`, count));
      console.log((await burst(nodes, false)).line('burst 200/node, cold', count));
      console.log((await burst(nodes, true)).line('burst 200/node, warm', count));
      for (const clients of [8, 64]) console.log((await parallel(nodes, clients)).line(`${clients} parallel clients`, count));
    }
    const { block, restore } = await pushLatency(nodes, Number(process.env.PUSH_ROUNDS ?? 10));
    const fmt = (xs: number[]) => `p50 ${pct(xs, 50).toFixed(1)}  p90 ${pct(xs, 90).toFixed(1)}  max ${Math.max(...xs).toFixed(1)} ms`;
    console.log(`  webhook→402 at every node     ${fmt(block)}`);
    console.log(`  top-up→200 at every node      ${fmt(restore)}`);
    for (const n of nodes) { n.kong.close(); await n.ps.stop(); }
  }
  await svc.stop();
  await stripe.stop();
  fs.rmSync(dir, { recursive: true, force: true });
}

main().catch((err) => { console.error(err); process.exit(1); });
