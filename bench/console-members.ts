// Server time of the console's members page with 100,000 customers (CUSTOMERS=
// changes it): search, sort by estimated balance and page, as the API does.
// Prints figures, asserts nothing.
import Database from 'better-sqlite3';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseConfig } from '../control-service/src/config';
import { createConsoleApi } from '../control-service/src/console/api';
import { ActivityRecorder } from '../control-service/src/console/activity';
import { Engine } from '../control-service/src/engine';
import { createMetrics } from '../control-service/src/metrics';
import { SqliteConsoleQueries } from '../control-service/src/store/console-queries';
import { SqliteStore } from '../control-service/src/store/sqlite';

/** The customer page's usage by route, with 1,000,000 usage events stored, with and without the index of migration 6. */
async function usageByRoute(file: string, ids: string[], now: number): Promise<void> {
  const events = Number(process.env.USAGE_EVENTS ?? 1_000_000);
  const db = new Database(file);
  const insert = db.prepare('INSERT INTO usage_events (id, customer_id, consumer, at, route, status, cost_micros, received_at) VALUES (?, ?, ?, ?, ?, 200, 1000, ?)');
  db.transaction(() => {
    for (let i = 0; i < events; i++) {
      const at = now - Math.floor(Math.random() * 7 * 86_400_000);
      insert.run(`ev-${i}`, ids[i % ids.length], `consumer-${i % ids.length}`, at, `route-${i % 7}`, at);
    }
  })();
  const time = (label: string) => {
    const queries = new SqliteConsoleQueries(file);
    const ms: number[] = [];
    for (let i = 0; i < 40; i++) {
      const t = process.hrtime.bigint();
      queries.usageByRoute(ids[(i * 7919) % ids.length], now - 7 * 86_400_000);
      ms.push(Number(process.hrtime.bigint() - t) / 1e6);
    }
    queries.close();
    ms.sort((a, b) => a - b);
    console.log(`${label.padEnd(48)} median ${ms[19].toFixed(2).padStart(6)} ms   p95 ${ms[37].toFixed(2).padStart(6)} ms`);
  };
  console.log(`customer page usage by route, ${events.toLocaleString()} usage events`);
  time('with index usage_events_customer_at');
  db.exec('DROP INDEX usage_events_customer_at');
  time('without it');
  db.close();
}

async function main(): Promise<void> {
  const n = Number(process.env.CUSTOMERS ?? 100_000);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-bench-console-'));
  const config = parseConfig({
    store: { sqlite: path.join(dir, 'payg.sqlite') },
    cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }, { id: 'low-credit', filter: { balance: { gt: -500 } } }],
    rules: [{ id: 'block-no-credit', cohort: 'no-credit', body: '{"error":"payment_required"}' }],
  }, {}, dir);
  const store = new SqliteStore(config.sqlitePath);
  const engine = new Engine(config, store);
  await engine.init();
  const now = Date.now();
  const customers = Array.from({ length: n }, (_, i) => ({
    id: `cus_${String(i).padStart(8, '0')}`, balance: -Math.floor(Math.random() * 2000) + 200, currency: 'usd',
    name: `Customer ${i}`, email: `c${i}@example.com`, metadata: { kong_consumer: `consumer-${i}` }, version: now,
  }));
  for (let i = 0; i < n; i += 10_000) await engine.apply(customers.slice(i, i + 10_000), []);
  const metrics = createMetrics({ customers: () => 0, cohortSizes: () => new Map(), consumerConflicts: () => 0, lastSweepAgeSeconds: () => 0, emailsPending: async () => 0 });
  const api = createConsoleApi({ config, engine, store, sync: undefined, emails: undefined, metrics, activity: new ActivityRecorder(), queries: new SqliteConsoleQueries(config.sqlitePath) });
  const time = async (label: string, query: string) => {
    const runs = 40;
    const ms: number[] = [];
    for (let i = 0; i < runs; i++) {
      const t = process.hrtime.bigint();
      await api('GET', ['customers'], new URLSearchParams(query), async () => undefined);
      ms.push(Number(process.hrtime.bigint() - t) / 1e6);
    }
    ms.sort((a, b) => a - b);
    const at = (q: number) => ms[Math.min(runs - 1, Math.ceil(q * runs) - 1)].toFixed(1);
    console.log(`${label.padEnd(48)} median ${at(0.5).padStart(6)} ms   p95 ${at(0.95).padStart(6)} ms   max ${at(1).padStart(6)} ms`);
  };
  console.log(`console members page, ${n.toLocaleString()} customers (${engine.cohortSizes().get('low-credit')} in low-credit), ${40} runs each`);
  await time('all customers, by estimated balance, page 1', 'page=1');
  await time('all customers, by estimated balance, page 1000', 'page=1000&per_page=50');
  await time('all customers, by id, desc, page 1', 'sort=id&dir=desc');
  await time('cohort low-credit, page 50', 'cohort=low-credit&page=50');
  await time('cohort no-credit, sorted by name, desc', 'cohort=no-credit&sort=name&dir=desc');
  await time('search "9999" across all', 'q=9999');
  await time('search "example.com" (matches all), page 20', 'q=example.com&page=20');
  await usageByRoute(config.sqlitePath, customers.map((c) => c.id), now);
  await store.close();
  fs.rmSync(dir, { recursive: true, force: true });
}

main().catch((err) => { console.error(err); process.exit(1); });
