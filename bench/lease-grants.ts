// Lease grants on SQLite (one control-service process, the book in memory and every lease written
// through to the file before it is answered): the service pinned to CPU 1, autocannon on CPU 0
// (`npm run bench:leases` runs this file under `taskset -c 0`). 1,000 consumers; per request a node
// (of NODES) asks for a consumer's lease and gives back the one it held for that consumer, drawn in
// full (as a busy plugin server's renewal does); one request in 20 is instead a node releasing
// every lease it holds. The same mix as bench:postgres's grant cell. ROUNDS rounds of SECONDS each;
// prints grants/s, latency, the service's CPU per grant and the load average. Figures only.
import autocannon from 'autocannon';
import fs from 'node:fs';
import os from 'node:os';
import { leaseTraffic, startControl } from './support';

const CUSTOMERS = 1000;
const NODES = Number(process.env.NODES ?? 4);
const CONNECTIONS = Number(process.env.CONNECTIONS ?? 16);
const SECONDS = Number(process.env.SECONDS ?? 5);
const ROUNDS = Number(process.env.ROUNDS ?? 3);
const TOKEN = 'bench-control-token';
const COST_MICROS = 100_000; // metering.default_cost 0.1

/** CPU time (ms) a process has used so far, from /proc. */
function cpuMs(pid: number | undefined): number {
  try {
    const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return (Number(fields[11]) + Number(fields[12])) * 10; // utime + stime, USER_HZ 100
  } catch { return NaN; }
}

async function round(url: string, pid: number | undefined, n: number) {
  const headers = { 'content-type': 'application/json', authorization: `Bearer ${TOKEN}` };
  const counts = { grants: 0, refusals: 0, releases: 0 };
  const cpuBefore = cpuMs(pid);
  const result = await autocannon({
    url, connections: CONNECTIONS, duration: SECONDS,
    requests: [{
      method: 'POST', path: '/v1/leases', headers,
      ...leaseTraffic({ nodeOf: (sent) => `bench-node-${sent % NODES}`, customers: CUSTOMERS, costMicros: COST_MICROS }, counts),
    }],
  });
  const cpu = cpuMs(pid) - cpuBefore;
  console.log(`  round ${n}: ${(counts.grants / SECONDS).toFixed(0)} grants/s (${counts.grants} in ${SECONDS}s), p50 ${result.latency.p50} ms, p99 ${result.latency.p99} ms; `
    + `service CPU ${(cpu / counts.grants).toFixed(3)} ms a grant; ${counts.releases} releases, ${counts.refusals} answers without a lease, non-2xx ${result.non2xx}, errors ${result.errors}; `
    + `load average ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}`);
  return counts.grants / SECONDS;
}

async function main() {
  const control = await startControl({
    port: 18790,
    config: {
      cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
      rules: [{ id: 'block', cohort: 'no-credit', body: '{"error":"payment_required"}' }],
      metering: { default_cost: '0.1' },
    },
    customers: Array.from({ length: CUSTOMERS }, (_, i) => ({ id: `cus_bench${i}`, balance: -1e9, currency: 'usd', name: null, email: null, metadata: {}, version: 1 })),
    env: { PAYG_CONTROL_TOKEN: TOKEN, PAYG_ADMIN_TOKEN: 'bench-admin-token' },
  });
  try {
    console.log(`lease grants on SQLite: one service (CPU 1), autocannon (CPU 0), ${CONNECTIONS} connections, ${NODES} nodes, ${CUSTOMERS} consumers   (target ≥ 10,000 grants/s)`);
    const rates: number[] = [];
    for (let n = 1; n <= ROUNDS; n++) rates.push(await round(control.url, control.child.proc.pid, n));
    const sorted = [...rates].sort((a, b) => a - b);
    console.log(`  median of ${ROUNDS} rounds: ${sorted[Math.floor(sorted.length / 2)].toFixed(0)} grants/s`);
  } finally {
    await control.stop();
  }
}

main().catch((err) => { console.error(err); process.exit(1); });
