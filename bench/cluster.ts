// Exact credit across Kong nodes: N = 1, 2, 4 real payg-pluginserver processes
// (driven as Kong drives them), one control service with the Stripe emulator.
// A customer's credit pays exactly 1,000 requests at $0.01. Prints, per cell:
// served, overspend (must be 0), and the time from the last affordable request
// to the first 402 at each node; then webhook→402 and top-up→200 at every node.
// Then, with caps (issue 23): one team (one Stripe customer) whose consumers
// each have a daily and/or monthly cap smaller than the team's credit, driven
// at high concurrency through the same nodes; per cell, served per consumer vs
// its cap, total served vs the team's credit, overspend against both (must be
// 0), throughput and latency; then the same on PostgreSQL (two replicas, four
// nodes, two on each; CAPS_PG=0 leaves it out). CAPS_ONLY=1 runs only the cap cells.
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
import { freshDatabase, mochaHooks } from '../spec/support/postgres';

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

// ---- caps cells (issue 23) ----

/** One consumer of a capped team: its caps (smallest unit; undefined: none) and what it got. */
interface CapConsumer { name: string; daily?: number; monthly?: number; served: number; capRefused: number; creditRefused: number; other: number }
interface CapCell { label: string; credit: number; consumers: Array<{ name: string; daily?: number; monthly?: number }> }

/** What a consumer may be served at most this period: its tighter cap (Infinity: none). */
const capOf = (c: { daily?: number; monthly?: number }) => Math.min(c.daily ?? Infinity, c.monthly ?? Infinity);

/** A request whose 402 is read for its reason (`consumer_cap` | `no_credit`). */
async function requestWhy(node: Node, consumer: Consumer): Promise<{ status: number; reason?: string }> {
  const ctx = requestCtx();
  const res = await node.kong.handleEvent(node.plugin, 'access', accessPdk(consumer, ctx));
  const status = res.exit?.status ?? 200;
  if (status === 200) { void node.kong.handleEvent(node.plugin, 'log', logPdk({ consumer, route: { id: 'r', name: 'api' }, status }, ctx)); return { status }; }
  let reason: string | undefined;
  try { reason = (JSON.parse(String(res.exit?.body ?? '')) as { reason?: string }).reason; } catch { /* not JSON */ }
  return { status, reason };
}

/**
 * One team: a Stripe customer whose `kong_consumer` lists the cell's consumers, each capped in
 * metadata (`payg_cap_daily.<name>`, `payg_cap_monthly.<name>`). `clients` parallel clients each
 * take the next (consumer, node) pair in turn, until every consumer has been refused at every node
 * twice in a row (or after 4× what the team may be served, plus 2,000 requests).
 */
async function capCell(nodes: Node[], cell: CapCell, clients: number, run: number, sweep: () => Promise<unknown> = () => svc.sync!.sweep()): Promise<string[]> {
  const metadata: Record<string, string> = { kong_consumer: cell.consumers.map((c) => `${c.name}-${run}`).join(',') };
  for (const c of cell.consumers) {
    if (c.daily !== undefined) metadata[`payg_cap_daily.${c.name}-${run}`] = String(c.daily);
    if (c.monthly !== undefined) metadata[`payg_cap_monthly.${c.name}-${run}`] = String(c.monthly);
  }
  stripe.create({ balance: -cell.credit, metadata });
  await sweep();
  const tally: CapConsumer[] = cell.consumers.map((c) => ({ ...c, served: 0, capRefused: 0, creditRefused: 0, other: 0 }));
  const kong: Consumer[] = cell.consumers.map((c) => ({ id: `k-${c.name}-${run}`, custom_id: `${c.name}-${run}` }));
  // Per consumer and node: refusals in a row since its last 200.
  const refusedInRow = tally.map(() => nodes.map(() => 0));
  const done = () => refusedInRow.every((perNode) => perNode.every((n) => n >= 2));
  const allowance = Math.min(cell.credit, tally.reduce((s, c) => s + capOf(c), 0));
  const limit = allowance * 4 + 2000;
  const latencies: number[] = [];
  let next = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: clients }, async () => {
    while (!done() && next < limit) {
      const i = next++;
      const c = i % tally.length;
      const n = Math.floor(i / tally.length) % nodes.length;
      const start = performance.now();
      const a = await requestWhy(nodes[n], kong[c]);
      latencies.push(performance.now() - start);
      const t = tally[c];
      if (a.status === 200) { t.served++; refusedInRow[c][n] = 0; continue; }
      refusedInRow[c][n]++;
      if (a.status === 402 && a.reason === 'consumer_cap') t.capRefused++;
      else if (a.status === 402) t.creditRefused++;
      else t.other++;
    }
  }));
  const seconds = (performance.now() - t0) / 1000;
  const total = tally.reduce((s, c) => s + c.served, 0);
  const capOver = tally.reduce((s, c) => s + Math.max(0, c.served - capOf(c)), 0);
  const lines = [`  ${cell.label} (${clients} clients): served ${total} of ${allowance} allowed  overspend: team ${Math.max(0, total - cell.credit)}, caps ${capOver}  ` +
    `${(latencies.length / seconds).toFixed(0)} req/s  access p50 ${pct(latencies, 50).toFixed(1)} p99 ${pct(latencies, 99).toFixed(1)} ms`];
  for (const c of tally) {
    const caps = [c.daily !== undefined ? `daily ${c.daily}` : '', c.monthly !== undefined ? `monthly ${c.monthly}` : ''].filter(Boolean).join(', ') || 'no cap';
    lines.push(`    ${c.name.padEnd(8)} ${caps.padEnd(22)} served ${String(c.served).padStart(5)}  over cap ${Math.max(0, c.served - capOf(c))}  ` +
      `refused consumer_cap ${c.capRefused}, no_credit ${c.creditRefused}${c.other ? `, other ${c.other}` : ''}`);
  }
  return lines;
}

/**
 * The team's credit is the tighter limit in the first cell (but batch's cap binds before it; free has none);
 * the caps are in the second (batch's monthly cap is under its daily one).
 */
const CAP_CELLS: CapCell[] = [
  { label: 'caps, team credit tighter', credit: 1000, consumers: [
    { name: 'web', daily: 400 }, { name: 'batch', daily: 150, monthly: 500 }, { name: 'partner', monthly: 450 }, { name: 'free' },
  ] },
  { label: 'caps, caps tighter', credit: 5000, consumers: [
    { name: 'web', daily: 300 }, { name: 'batch', daily: 400, monthly: 150 }, { name: 'partner', daily: 250, monthly: 4000 }, { name: 'ci', daily: 100 },
  ] },
];
let capRun = 0;

/** The cap cells again on PostgreSQL: two replicas on one (embedded) database, four nodes, two on each. */
async function capCellsOnPostgres(dir: string, baseDoc: Record<string, unknown>, env: Record<string, string>): Promise<void> {
  const config = parseConfig({ ...baseDoc, store: { postgres: {} } }, { ...env, PAYG_DATABASE_URL: await freshDatabase() }, dir);
  const replicas = [await startService(config, { log: pino({ level: 'silent' }), sweepOnStart: false }), await startService(config, { log: pino({ level: 'silent' }), sweepOnStart: false })];
  const nodes: Node[] = await Promise.all(Array.from({ length: 4 }, async (_, i) => {
    const ps = await startPluginServer();
    const kong = new KongHarness(ps.socketPath);
    const plugin = await kong.startInstance('payg', { control_service_url: replicas[i % 2].url, control_service_token: CONTROL, timeout_ms: 2000 });
    return { ps, kong, plugin };
  }));
  await sleep(200); // streams connect
  console.log('PostgreSQL, 2 replicas, N = 4 nodes (2 on each)');
  const sweep = async () => { for (const r of replicas) await r.sync!.sweep(); };
  for (const cell of CAP_CELLS) for (const clients of [64, 256]) for (const line of await capCell(nodes, cell, clients, ++capRun, sweep)) console.log(line);
  for (const n of nodes) { n.kong.close(); await n.ps.stop(); }
  for (const r of replicas) await r.stop();
  await mochaHooks.afterAll.call(undefined);
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
  const baseDoc = {
    listen: { port: 0 },
    stripe: { poll: '0 0 1 1 *', max_requests_per_second: 100 },
    cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
    rules: [{ id: 'block', cohort: 'no-credit', body: '{"error":"payment_required"}' }],
    metering: { default_cost: 1, settle: { enabled: false } },
  };
  const env = { STRIPE_SECRET_KEY: stripe.secretKey, STRIPE_API_BASE: stripe.url, PAYG_CONTROL_TOKEN: CONTROL, STRIPE_WEBHOOK_SECRET: 'whsec_bench' };
  const config = parseConfig({ ...baseDoc, store: { sqlite: path.join(dir, 'payg.sqlite') } }, env, dir);
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
    if (!process.env.PUSH_ONLY && !process.env.CAPS_ONLY) {
      for (const rate of [50, 200, 1000, 5000]) console.log((await roundRobin(nodes, rate)).line(`round robin ${rate} req/s`, count));
      console.log((await burst(nodes, false)).line('burst 200/node, cold', count));
      console.log((await burst(nodes, true)).line('burst 200/node, warm', count));
      for (const clients of [8, 64]) console.log((await parallel(nodes, clients)).line(`${clients} parallel clients`, count));
    }
    if (!process.env.PUSH_ONLY) {
      for (const cell of CAP_CELLS) for (const clients of [64, 256]) for (const line of await capCell(nodes, cell, clients, ++capRun)) console.log(line);
    }
    if (!process.env.CAPS_ONLY) {
      const { block, restore } = await pushLatency(nodes, Number(process.env.PUSH_ROUNDS ?? 10));
      const fmt = (xs: number[]) => `p50 ${pct(xs, 50).toFixed(1)}  p90 ${pct(xs, 90).toFixed(1)}  max ${Math.max(...xs).toFixed(1)} ms`;
      console.log(`  webhook→402 at every node     ${fmt(block)}`);
      console.log(`  top-up→200 at every node      ${fmt(restore)}`);
    }
    for (const n of nodes) { n.kong.close(); await n.ps.stop(); }
  }
  await svc.stop();
  // CAPS_PG=0 leaves out the cap cells on PostgreSQL.
  if (!process.env.PUSH_ONLY && process.env.CAPS_PG !== '0') await capCellsOnPostgres(dir, baseDoc, env);
  await stripe.stop();
  fs.rmSync(dir, { recursive: true, force: true });
}

main().catch((err) => { console.error(err); process.exit(1); });
