// better-sqlite3 against Node's built-in node:sqlite on the store's own schema
// (a file made by SqliteStore, so every migration and index is the real one),
// with the store's pragmas (WAL, synchronous = NORMAL) and the store's SQL:
//  - ingest: batches of BATCH usage events, one transaction per batch: INSERT OR
//    IGNORE each event, then add each customer's share to usage_totals (as
//    SqliteStore.saveChanges does); events/s.
//  - grants: one transaction per grant, as a store-backed lease grant would do
//    it: read the customer's balance and usage totals, upsert the lease row
//    (customer, node, amount, expiry) in a bench-only table; grants/s and p99.
// Each driver runs ROUNDS times on a fresh copy of the file, alternating; the
// median round is printed, per wall second and per CPU second of this process
// (the latter barely moved by other load on a shared machine). On a Node without node:sqlite (20.x, or 22.x before
// 22.13 without --experimental-sqlite) it says so and measures better-sqlite3
// alone. Figures only; nothing is asserted.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { SqliteStore } from '../control-service/src/store/sqlite';

const CUSTOMERS = 1000;
const BATCH = Number(process.env.BATCH ?? 200);
const BATCHES = Number(process.env.BATCHES ?? 250);
const GRANTS = Number(process.env.GRANTS ?? 20_000);
const ROUNDS = Number(process.env.ROUNDS ?? 3);
const NODES = 4;

/** What the two drivers have in common, as the workload uses it. */
interface Stmt { run(...args: unknown[]): { changes: number | bigint; lastInsertRowid: number | bigint }; get(...args: unknown[]): unknown }
interface Driver { name: string; open(file: string): Db }
interface Db { exec(sql: string): void; prepare(sql: string): Stmt; inTransaction(fn: () => void): void; close(): void }

const betterSqlite3: Driver = {
  name: `better-sqlite3 ${(require('better-sqlite3/package.json') as { version: string }).version}`,
  open(file) {
    const db = new BetterSqlite3(file);
    return {
      exec: (sql) => { db.exec(sql); },
      prepare: (sql) => db.prepare(sql) as unknown as Stmt,
      inTransaction: (fn) => db.transaction(fn)(),
      close: () => db.close(),
    };
  },
};

function nodeSqlite(): Driver | string {
  let mod: { DatabaseSync: new (file: string) => { exec(sql: string): void; prepare(sql: string): Stmt; close(): void } };
  try {
    mod = require('node:sqlite');
  } catch (err) {
    return `node:sqlite is not available on Node ${process.versions.node} (${(err as Error).message.split('\n')[0]})`;
  }
  return {
    name: `node:sqlite (SQLite ${process.versions.sqlite ?? '?'})`,
    open(file) {
      const db = new mod.DatabaseSync(file);
      return {
        exec: (sql) => db.exec(sql),
        prepare: (sql) => db.prepare(sql),
        // node:sqlite has no transaction helper: BEGIN/COMMIT, ROLLBACK on a throw.
        inTransaction: (fn) => {
          db.exec('BEGIN');
          try { fn(); db.exec('COMMIT'); } catch (err) { db.exec('ROLLBACK'); throw err; }
        },
        close: () => db.close(),
      };
    },
  };
}

/** A seeded store file with the real schema: customers, and none of their usage yet. */
async function makeTemplate(dir: string): Promise<string> {
  const file = path.join(dir, 'template.sqlite');
  const store = new SqliteStore(file);
  const upserts = Array.from({ length: CUSTOMERS }, (_, i) => ({
    id: `cus_${i}`, balance: -5_000_000, currency: 'usd', name: `Customer ${i}`, email: `c${i}@example.test`, metadata: { kong_consumer: `consumer-${i}` }, version: 1,
  }));
  await store.saveChanges({ upserts, deletes: [], transitions: [] });
  await store.close();
  return file;
}

function copyOf(template: string, dir: string, name: string): string {
  const file = path.join(dir, `${name}.sqlite`);
  for (const suffix of ['', '-wal', '-shm']) fs.rmSync(file + suffix, { force: true });
  fs.copyFileSync(template, file);
  return file;
}

function pragmas(db: Db): void {
  db.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;');
}

/** Deterministic pseudo-random customer picks, so both drivers see the same work. */
function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => { s = (s * 1664525 + 1013904223) >>> 0; return s / 2 ** 32; };
}

/** CPU seconds (user + system) this process spent since `from`: unlike wall time, barely moved by other load. */
const cpuSince = (from: NodeJS.CpuUsage) => { const d = process.cpuUsage(from); return (d.user + d.system) / 1e6; };

function ingest(db: Db): { perSecond: number; perCpuSecond: number } {
  const insertUsage = db.prepare(`INSERT OR IGNORE INTO usage_events (id, customer_id, consumer, at, route, status, cost_micros, received_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)`);
  const addUsage = db.prepare(`INSERT INTO usage_totals (customer_id, used_micros, last_seq) VALUES (?, ?, ?)
    ON CONFLICT (customer_id) DO UPDATE SET used_micros = used_micros + excluded.used_micros, last_seq = MAX(last_seq, excluded.last_seq)`);
  const rand = prng(7);
  const now = Date.now();
  let n = 0;
  const cpu = process.cpuUsage();
  const started = process.hrtime.bigint();
  for (let b = 0; b < BATCHES; b++) {
    db.inTransaction(() => {
      const added = new Map<string, { micros: number; seq: number }>();
      for (let i = 0; i < BATCH; i++) {
        const c = Math.floor(rand() * CUSTOMERS);
        const customerId = `cus_${c}`;
        const r = insertUsage.run(`evt_${b}_${i}`, customerId, `consumer-${c}`, now + n, 'orders', 200, 100_000, now);
        n++;
        if (Number(r.changes) === 0) continue;
        const t = added.get(customerId) ?? { micros: 0, seq: 0 };
        t.micros += 100_000;
        t.seq = Number(r.lastInsertRowid);
        added.set(customerId, t);
      }
      for (const [customerId, t] of added) addUsage.run(customerId, t.micros, t.seq);
    });
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return { perSecond: n / seconds, perCpuSecond: n / cpuSince(cpu) };
}

function grants(db: Db): { perSecond: number; perCpuSecond: number; p99Us: number } {
  db.exec(`CREATE TABLE IF NOT EXISTS bench_leases (customer_id TEXT NOT NULL, node TEXT NOT NULL, amount INTEGER NOT NULL,
    expires_at INTEGER NOT NULL, PRIMARY KEY (customer_id, node))`);
  const customer = db.prepare('SELECT balance FROM customers WHERE id = ?');
  const totals = db.prepare('SELECT used_micros, settled FROM usage_totals WHERE customer_id = ?');
  const held = db.prepare('SELECT COALESCE(SUM(amount), 0) AS held FROM bench_leases WHERE customer_id = ? AND node <> ? AND expires_at > ?');
  const upsert = db.prepare(`INSERT INTO bench_leases (customer_id, node, amount, expires_at) VALUES (?, ?, ?, ?)
    ON CONFLICT (customer_id, node) DO UPDATE SET amount = excluded.amount, expires_at = excluded.expires_at`);
  const rand = prng(11);
  const lat = new Float64Array(GRANTS);
  const now = Date.now();
  const cpu = process.cpuUsage();
  const started = process.hrtime.bigint();
  for (let g = 0; g < GRANTS; g++) {
    const c = `cus_${Math.floor(rand() * CUSTOMERS)}`;
    const node = `node-${g % NODES}`;
    const t0 = process.hrtime.bigint();
    db.inTransaction(() => {
      const balance = (customer.get(c) as { balance: number }).balance;
      const used = (totals.get(c) as { used_micros: number; settled: number } | undefined)?.used_micros ?? 0;
      const others = Number((held.get(c, node, now) as { held: number | bigint }).held);
      const free = -balance * 10_000 - used - others; // balance in cents → micros
      const amount = Math.max(0, Math.min(1_000_000, Math.floor(free / 2)));
      upsert.run(c, node, amount, now + 10_000);
    });
    lat[g] = Number(process.hrtime.bigint() - t0) / 1000;
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  lat.sort();
  return { perSecond: GRANTS / seconds, perCpuSecond: GRANTS / cpuSince(cpu), p99Us: lat[Math.floor(GRANTS * 0.99)] };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-sqlite-compare-'));
  try {
    const template = await makeTemplate(dir);
    const drivers: Driver[] = [betterSqlite3];
    const builtin = nodeSqlite();
    if (typeof builtin === 'string') console.log(builtin); else drivers.push(builtin);
    console.log(`Node ${process.versions.node}; ${CUSTOMERS} customers; ingest ${BATCHES} x ${BATCH} events; ${GRANTS} grants; median of ${ROUNDS} rounds`);
    const results = new Map<string, { ingest: number[]; ingestCpu: number[]; grants: number[]; grantsCpu: number[]; p99: number[] }>(
      drivers.map((d) => [d.name, { ingest: [], ingestCpu: [], grants: [], grantsCpu: [], p99: [] }]));
    for (let round = 0; round < ROUNDS; round++) {
      for (const d of round % 2 ? [...drivers].reverse() : drivers) {
        const db = d.open(copyOf(template, dir, 'run'));
        pragmas(db);
        const r = results.get(d.name)!;
        const i = ingest(db);
        r.ingest.push(i.perSecond);
        r.ingestCpu.push(i.perCpuSecond);
        const g = grants(db);
        r.grants.push(g.perSecond);
        r.grantsCpu.push(g.perCpuSecond);
        r.p99.push(g.p99Us);
        db.close();
      }
    }
    const fmt = (x: number, w: number) => Math.round(x).toLocaleString('en-US').padStart(w);
    for (const [name, r] of results) {
      console.log(`${name.padEnd(34)} ingest ${fmt(median(r.ingest), 9)} events/s (${fmt(median(r.ingestCpu), 9)} per CPU-s)   grants ${fmt(median(r.grants), 7)}/s (${fmt(median(r.grantsCpu), 7)} per CPU-s)   grant p99 ${median(r.p99).toFixed(0)} µs`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => { console.error(err); process.exit(1); });
