// Usage ingest on PostgreSQL across replicas, and failover time. REPLICAS (3)
// control-service processes share one database (the embedded PostgreSQL the
// tests use, or PAYG_TEST_DATABASE_URL); autocannon posts batches of 200 events
// with unique ids to every replica at once (4 keep-alive connections each).
// Prints events/s stored across replicas (checked against the rows in the
// database), then kills the leader with SIGKILL a few times and prints how long
// until another replica leads. Figures only; nothing is asserted.
import autocannon from 'autocannon';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { PostgresStore } from '../control-service/src/store/postgres';
import { freshDatabase, mochaHooks } from '../spec/support/postgres';
import { ROOT, sleep } from './support';

const REPLICAS = Number(process.env.REPLICAS ?? 3);
const CUSTOMERS = 1000;
const BATCH = Number(process.env.BATCH ?? 200);
const SECONDS = Number(process.env.SECONDS ?? 5);
const FAILOVERS = Number(process.env.FAILOVERS ?? 3);
const TOKEN = 'bench-control-token';
const BASE_PORT = 18820;

interface Replica { port: number; url: string; proc: ChildProcess; output(): string }

function startReplica(configFile: string, port: number, databaseUrl: string): Promise<Replica> {
  const proc = spawn(process.execPath, [path.join(ROOT, 'control-service/bin/payg-control'), '--config', configFile], {
    env: { ...process.env, PORT: String(port), PAYG_DATABASE_URL: databaseUrl, PAYG_CONTROL_TOKEN: TOKEN, STRIPE_SECRET_KEY: '' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  const keep = (c: Buffer) => { out = (out + c.toString()).slice(-20_000); };
  proc.stdout!.on('data', keep);
  proc.stderr!.on('data', keep);
  const replica = { port, url: `http://127.0.0.1:${port}`, proc, output: () => out };
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + 20_000;
    const check = () => {
      if (out.includes('"msg":"payg control service listening"')) return resolve(replica);
      if (proc.exitCode !== null || Date.now() > deadline) { proc.kill('SIGKILL'); return reject(new Error(`replica did not start: ${out}`)); }
      setTimeout(check, 20);
    };
    check();
  });
}

const leads = (r: Replica, since = 0) => r.output().slice(since).includes('"msg":"leading');

async function main() {
  const databaseUrl = await freshDatabase();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-bench-pg-'));
  const replicas: Replica[] = [];
  try {
    const seed = await PostgresStore.open(databaseUrl);
    await seed.saveChanges({
      upserts: Array.from({ length: CUSTOMERS }, (_, i) => ({ id: `cus_bench${i}`, balance: -1e9, currency: 'usd', name: null, email: null, metadata: {}, version: 1 })),
      deletes: [], transitions: [],
    });
    await seed.close();
    const configFile = path.join(dir, 'payg.yml');
    fs.writeFileSync(configFile, JSON.stringify({
      listen: { host: '127.0.0.1', port: 0 }, store: { postgres: {} },
      cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
      rules: [{ id: 'block', cohort: 'no-credit', body: '{"error":"payment_required"}' }],
      metering: { default_cost: '0.1' },
    }));
    for (let i = 0; i < REPLICAS; i++) replicas.push(await startReplica(configFile, BASE_PORT + i, databaseUrl));

    // Ingest: every replica at once.
    let n = 0;
    const at = new Date().toISOString();
    const batch = () => JSON.stringify({
      events: Array.from({ length: BATCH }, () => { n++; return { id: `e-${n}`, consumer: `cus_bench${n % CUSTOMERS}`, at, route: 'orders', status: 200 }; }),
    });
    const results = await Promise.all(replicas.map((r) => autocannon({
      url: r.url, connections: 4, duration: SECONDS,
      requests: [{ method: 'POST', path: '/v1/usage', headers: { 'content-type': 'application/json', authorization: `Bearer ${TOKEN}` }, setupRequest: (req) => ({ ...req, body: batch() }) }],
    })));
    const ok = results.reduce((sum, r) => sum + r['2xx'], 0);
    const db = new pg.Client({ connectionString: databaseUrl });
    await db.connect();
    const stored = Number((await db.query('SELECT COUNT(*) AS n FROM usage_events')).rows[0].n);
    const usedMicros = Number((await db.query('SELECT COALESCE(SUM(used_micros), 0) AS s FROM usage_totals')).rows[0].s);
    await db.end();
    console.log(`postgres usage ingest: ${REPLICAS} replicas, ${ok} batches of ${BATCH} in ${SECONDS}s → ${((ok * BATCH) / SECONDS).toFixed(0)} events/s   (target ≥ 20,000)`);
    for (const [i, r] of results.entries()) {
      console.log(`  replica ${i + 1}: ${r['2xx']} batches, p50 ${r.latency.p50} ms, p99 ${r.latency.p99} ms, non-2xx ${r.non2xx}, errors ${r.errors}`);
    }
    console.log(`  rows stored ${stored} (2xx batches counted ${ok * BATCH}; batches in flight at the end are stored too); totals ${usedMicros / 100_000} events' worth`);

    // Failover: kill -9 the leader; time until another replica leads. Then bring it back as a follower.
    for (let round = 1; round <= FAILOVERS; round++) {
      const deadline = Date.now() + 10_000;
      let leader: Replica | undefined;
      while (!(leader = replicas.find((r) => r.proc.exitCode === null && r.proc.signalCode === null && leadsNow(r))) && Date.now() < deadline) await sleep(20);
      if (!leader) { console.log('  failover: no replica leads'); break; }
      const marks = new Map(replicas.map((r) => [r, r.output().length]));
      leader.proc.kill('SIGKILL');
      const killedAt = Date.now();
      let next: Replica | undefined;
      while (!(next = replicas.find((r) => r !== leader && leads(r, marks.get(r))))) {
        if (Date.now() - killedAt > 15_000) break;
        await sleep(5);
      }
      console.log(`  failover ${round}: leader killed with SIGKILL → ${next ? `another replica leads after ${Date.now() - killedAt} ms` : 'no new leader within 15 s'}`);
      const i = replicas.indexOf(leader);
      if (leader.proc.exitCode === null && leader.proc.signalCode === null) await new Promise((r) => leader!.proc.once('exit', r));
      replicas[i] = await startReplica(configFile, leader.port, databaseUrl);
    }
  } finally {
    for (const r of replicas) r.proc.kill('SIGKILL');
    await mochaHooks.afterAll.call(undefined);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** The newest leadership line of a replica says it leads now. */
function leadsNow(r: Replica): boolean {
  const out = r.output();
  return out.lastIndexOf('"msg":"leading') > out.lastIndexOf('"msg":"no longer leading');
}

main().catch((err) => { console.error(err); process.exit(1); });
