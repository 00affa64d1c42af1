// Usage ingest on PostgreSQL across replicas, lease grants, and failover time.
// REPLICAS (3) control-service processes share one database (the embedded
// PostgreSQL the tests use, or PAYG_TEST_DATABASE_URL); autocannon posts batches
// of 200 events with unique ids to every replica at once (4 keep-alive
// connections each). Prints events/s stored across replicas, checks the rows
// against the running totals and every replica's book against the database; then
// lease grants per second across every replica at once (any replica grants: POST /v1/leases from
// NODES node ids for 1,000 consumers, each renewal giving back the node's
// previous lease as the plugin does, and now and then a node releasing what it
// holds); then kills the leader with SIGKILL a few times and prints how long
// until another replica leads. Figures only; nothing is asserted.
import autocannon from 'autocannon';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { PostgresStore } from '../control-service/src/store/postgres';
import { freshDatabase, mochaHooks } from '../spec/support/postgres';
import { leaseTraffic, ROOT, sleep } from './support';

const REPLICAS = Number(process.env.REPLICAS ?? 3);
const CUSTOMERS = 1000;
const BATCH = Number(process.env.BATCH ?? 200);
const SECONDS = Number(process.env.SECONDS ?? 5);
const FAILOVERS = Number(process.env.FAILOVERS ?? 3);
const LEASE_SECONDS = Number(process.env.LEASE_SECONDS ?? 5);
const NODES = Number(process.env.NODES ?? 4);
/** Which parts run (comma-separated): ingest, leases, failover. */
const PHASES = new Set((process.env.PHASES ?? 'ingest,leases,failover').split(','));
const TOKEN = 'bench-control-token';
const ADMIN_TOKEN = 'bench-admin-token';
const COST_MICROS = 100_000; // metering.default_cost 0.1
const BASE_PORT = 18820;

interface Replica { port: number; url: string; proc: ChildProcess; output(): string }

function startReplica(configFile: string, port: number, databaseUrl: string): Promise<Replica> {
  // CHILD_NODE_ARGS (e.g. "--cpu-prof") go to each replica's node, to profile it.
  const nodeArgs = process.env.CHILD_NODE_ARGS ? process.env.CHILD_NODE_ARGS.split(' ') : [];
  const proc = spawn(process.execPath, [...nodeArgs, path.join(ROOT, 'control-service/bin/payg-control'), '--config', configFile], {
    env: { ...process.env, PORT: String(port), PAYG_DATABASE_URL: databaseUrl, PAYG_CONTROL_TOKEN: TOKEN, PAYG_ADMIN_TOKEN: ADMIN_TOKEN, STRIPE_SECRET_KEY: '' },
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

    if (PHASES.has('ingest')) await ingest(replicas, databaseUrl);
    if (PHASES.has('leases')) await leaseGrants(replicas, databaseUrl);

    // Failover: kill -9 the leader; time until another replica leads. Then bring it back as a follower.
    for (let round = 1; PHASES.has('failover') && round <= FAILOVERS; round++) {
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
    // Profiled replicas stop with SIGTERM, so they write their profiles.
    if (process.env.CHILD_NODE_ARGS) {
      await Promise.all(replicas.map((r) => new Promise((resolve) => {
        if (r.proc.exitCode !== null || r.proc.signalCode !== null) return resolve(undefined);
        r.proc.once('exit', resolve);
        r.proc.kill('SIGTERM');
        setTimeout(resolve, 20_000).unref();
      })));
    }
    for (const r of replicas) r.proc.kill('SIGKILL');
    await mochaHooks.afterAll.call(undefined);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Usage ingest at every replica at once; checks the rows against the totals and every replica's book against them. */
async function ingest(replicas: Replica[], databaseUrl: string) {
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
  await sleep(500); // batches in flight at the end land, and every replica hears of them
  const db = new pg.Client({ connectionString: databaseUrl });
  await db.connect();
  // One statement: one snapshot of the rows and the totals.
  const counts = (await db.query('SELECT (SELECT COUNT(*) FROM usage_events) AS rows, (SELECT COALESCE(SUM(used_micros), 0) FROM usage_totals) AS micros')).rows[0];
  const sample = (await db.query('SELECT customer_id, used_micros FROM usage_totals ORDER BY random() LIMIT 50')).rows;
  await db.end();
  console.log(`postgres usage ingest: ${REPLICAS} replicas, ${ok} batches of ${BATCH} in ${SECONDS}s → ${((ok * BATCH) / SECONDS).toFixed(0)} events/s   (target ≥ 20,000)`);
  for (const [i, r] of results.entries()) {
    console.log(`  replica ${i + 1}: ${r['2xx']} batches, p50 ${r.latency.p50} ms, p99 ${r.latency.p99} ms, non-2xx ${r.non2xx}, errors ${r.errors}`);
  }
  const rows = Number(counts.rows);
  console.log(`  rows stored ${rows} (2xx batches counted ${ok * BATCH}; batches in flight at the end are stored too); running totals ${Number(counts.micros) / COST_MICROS} events' worth${Number(counts.micros) === rows * COST_MICROS ? ' (exact)' : ' (DIFFER)'}`);
  // Every replica's book (what it decides on) against the stored totals, for a sample of customers.
  let agree = 0;
  for (const r of replicas) {
    for (const row of sample) {
      const res = await fetch(`${r.url}/admin/customers/${row.customer_id}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
      const body = await res.json() as { unsettled_usage: number };
      if (Math.round(body.unsettled_usage * 1_000_000) === Number(row.used_micros)) agree++;
    }
  }
  console.log(`  replicas' books agree with the stored totals: ${agree} of ${replicas.length * sample.length} (customer, replica) pairs`);
}

/**
 * Lease grants per second across every replica at once (any replica grants: each is one
 * transaction under the customer's row lock): per replica 16 connections, each request a
 * node (of NODES, its own per replica) asking for a consumer's lease and giving back the
 * one it held for that consumer (drawn in full, as a busy plugin server's renewal does);
 * one request in 20 is instead a node releasing every lease it holds (as at shutdown or
 * when they run out). Replicas share the customers, so their grants contend for the same rows.
 */
async function leaseGrants(replicas: Replica[], databaseUrl: string) {
  const headers = { 'content-type': 'application/json', authorization: `Bearer ${TOKEN}` };
  const cpuBefore = await cpuTicks(replicas, databaseUrl);
  const runs = await Promise.all(replicas.map(async (replica, r) => {
    const counts = { grants: 0, refusals: 0, releases: 0 };
    const result = await autocannon({
      url: replica.url, connections: 16, duration: LEASE_SECONDS,
      requests: [{
        method: 'POST', path: '/v1/leases', headers,
        ...leaseTraffic({ nodeOf: (sent) => `bench-node-${r}-${sent % NODES}`, customers: CUSTOMERS, costMicros: COST_MICROS }, counts),
      }],
    });
    return { result, ...counts };
  }));
  const grants = runs.reduce((n, x) => n + x.grants, 0);
  const cpuAfter = await cpuTicks(replicas, databaseUrl);
  console.log(`lease grants across ${replicas.length} replicas at once: ${grants} in ${LEASE_SECONDS}s → ${(grants / LEASE_SECONDS).toFixed(0)} grants/s   (target ≥ 5,000, p99 ≤ 20 ms) (${NODES} nodes each, ${CUSTOMERS} consumers, 16 connections each)`);
  const used = (k: 'replicas' | 'postgres' | 'bench') => k === 'postgres'
    ? [...cpuAfter.postgres].reduce((sum, [pid, ms]) => sum + ms - (cpuBefore.postgres.get(pid) ?? 0), 0)
    : cpuAfter[k] - cpuBefore[k];
  console.log(`  CPU per grant (any load on the machine aside): replicas ${(used('replicas') / grants).toFixed(3)} ms, PostgreSQL ${(used('postgres') / grants).toFixed(3)} ms, load generator ${(used('bench') / grants).toFixed(3)} ms; load average ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}`);
  runs.forEach((x, i) => console.log(`  replica ${i + 1}: ${x.grants} grants, p50 ${x.result.latency.p50} ms, p99 ${x.result.latency.p99} ms; ${x.releases} releases; ${x.refusals} answers without a lease; non-2xx ${x.result.non2xx}, errors ${x.result.errors}`));
}

/**
 * CPU time used so far (ms): by the replicas, by this database's PostgreSQL backends (when the server
 * runs on this machine: its processes are read from /proc, per backend; a backend that ended
 * meanwhile is not counted), and by this process (the load generator).
 */
async function cpuTicks(replicas: Replica[], databaseUrl: string): Promise<{ replicas: number; postgres: Map<number, number>; bench: number }> {
  const tick = 1000 / 100; // USER_HZ
  const of = (pid: number | undefined) => {
    try {
      const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
      return (Number(fields[11]) + Number(fields[12])) * tick; // utime, stime
    } catch { return 0; }
  };
  const db = new pg.Client({ connectionString: databaseUrl });
  await db.connect();
  const pids = (await db.query('SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()')).rows.map((r) => r.pid as number);
  await db.end();
  const own = process.cpuUsage();
  return {
    replicas: replicas.reduce((sum, r) => sum + of(r.proc.pid), 0),
    postgres: new Map(pids.map((pid) => [pid, of(pid)])),
    bench: (own.user + own.system) / 1000,
  };
}


/** The newest leadership line of a replica says it leads now. */
function leadsNow(r: Replica): boolean {
  const out = r.output();
  return out.lastIndexOf('"msg":"leading') > out.lastIndexOf('"msg":"no longer leading');
}

main().catch((err) => { console.error(err); process.exit(1); });
