// Helpers the benchmarks share: child processes pinned to a core, waiting for
// an HTTP endpoint, a process's peak resident memory, and the control service
// started as its own process on a seeded store.

import type autocannon from 'autocannon';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { SqliteStore } from '../control-service/src/store/sqlite';
import type { StoredCustomer } from '../control-service/src/store/store';

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Spawns `command` pinned to `cpu` (taskset), with stderr kept for error reports. */
export function spawnPinned(command: string[], opts: { cpu: number; env?: NodeJS.ProcessEnv }): { proc: ChildProcess; stderr: () => string } {
  const proc = spawn('taskset', ['-c', String(opts.cpu), ...command], { env: { ...process.env, ...opts.env }, stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  proc.stderr!.on('data', (c: Buffer) => { err = (err + c.toString()).slice(-4000); });
  return { proc, stderr: () => err };
}

export async function waitForHttp(url: string, child: { proc: ChildProcess; stderr: () => string }, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.proc.exitCode !== null) throw new Error(`process exited with ${child.proc.exitCode}: ${child.stderr()}`);
    try { const res = await fetch(url); await res.text(); return; } catch { /* not yet */ }
    if (Date.now() > deadline) throw new Error(`${url} did not answer: ${child.stderr()}`);
    await sleep(50);
  }
}

/** Peak resident set size (VmHWM) of a live process, in MB. */
export function peakRssMb(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

export async function stop(child: { proc: ChildProcess }): Promise<void> {
  if (child.proc.exitCode !== null) return;
  const exited = new Promise((r) => child.proc.once('exit', r));
  child.proc.kill('SIGTERM');
  await exited;
}

export const ROOT = path.resolve(__dirname, '../..');

export interface ControlProcess { url: string; child: ReturnType<typeof spawnPinned>; stop(): Promise<void> }

/**
 * The control service as its own process pinned to CPU 1, listening on
 * `port`, in a temp dir with `config` (listen and store filled in) and a
 * SQLite file seeded with `customers` (and whatever `seed` writes). Resolves once /health answers.
 * CHILD_NODE_ARGS (e.g. "--cpu-prof") go to its node, to profile it.
 */
export async function startControl(opts: { port: number; config: Record<string, unknown>; customers?: StoredCustomer[]; seed?: (store: SqliteStore) => Promise<void>; env?: NodeJS.ProcessEnv }): Promise<ControlProcess> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-bench-'));
  const sqlite = path.join(dir, 'payg.sqlite');
  if (opts.customers?.length || opts.seed) {
    const store = new SqliteStore(sqlite);
    if (opts.customers?.length) await store.saveChanges({ upserts: opts.customers, deletes: [], transitions: [] });
    await opts.seed?.(store);
    await store.close();
  }
  const configFile = path.join(dir, 'payg.yml');
  fs.writeFileSync(configFile, JSON.stringify({ ...opts.config, listen: { host: '127.0.0.1', port: opts.port }, store: { sqlite } }));
  const nodeArgs = process.env.CHILD_NODE_ARGS ? process.env.CHILD_NODE_ARGS.split(' ') : [];
  const child = spawnPinned([process.execPath, ...nodeArgs, path.join(ROOT, 'control-service/bin/payg-control'), '--config', configFile], {
    cpu: 1, env: { STRIPE_SECRET_KEY: '', ...opts.env },
  });
  const url = `http://127.0.0.1:${opts.port}`;
  const stopIt = async () => { await stop(child); fs.rmSync(dir, { recursive: true, force: true }); };
  try {
    await waitForHttp(`${url}/health`, child);
  } catch (err) {
    await stopIt();
    throw err;
  }
  return { url, child, stop: stopIt };
}

/** What a lease-traffic run counted: grants, answers without a lease, releases taken. */
export interface LeaseCounts { grants: number; refusals: number; releases: number }
interface LeaseContext { kind?: 'lease' | 'release'; key?: string }

/**
 * autocannon hooks that act as gateway nodes on POST /v1/leases: each request a node (named by `nodeOf`)
 * asks for a consumer's lease and gives back the one it held for that consumer, drawn in full (as a busy
 * plugin server's renewal does); one request in 20 is instead a node releasing every lease it holds (as at
 * shutdown or when they run out). Consumers are `cus_bench0` … `cus_bench<customers − 1>`.
 */
export function leaseTraffic(opts: { nodeOf: (sent: number) => string; customers: number; costMicros: number }, counts: LeaseCounts) {
  const held = new Map<string, { id: string; requests: number }>(); // `${node}|${consumer}` → lease
  const returned = (l: { id: string; requests: number }) => ({ id: l.id, drawn: l.requests, drawn_micros: l.requests * opts.costMicros });
  let sent = 0;
  return {
    setupRequest: (req: autocannon.Request, ctx: object): autocannon.Request => {
      const context = ctx as LeaseContext;
      const node = opts.nodeOf(sent);
      const consumer = `cus_bench${Math.floor(Math.random() * opts.customers)}`;
      sent++;
      if (sent % 20 === 0) {
        const mine = [...held].filter(([k]) => k.startsWith(`${node}|`));
        for (const [k] of mine) held.delete(k);
        context.kind = 'release';
        return { ...req, path: '/v1/leases/release', body: JSON.stringify({ node, leases: mine.map(([, l]) => returned(l)) }) };
      }
      const key = `${node}|${consumer}`;
      const previous = held.get(key);
      held.delete(key);
      context.kind = 'lease';
      context.key = key;
      return { ...req, path: '/v1/leases', body: JSON.stringify({ node, consumer, want: 20, ...(previous ? { previous: returned(previous) } : {}) }) };
    },
    onResponse: (status: number, body: string, ctx: object): void => {
      const context = ctx as LeaseContext;
      if (context.kind === 'release') { if (status === 200) counts.releases++; return; }
      const lease = status === 200 ? (JSON.parse(body) as { lease?: { id: string; requests: number } }).lease : undefined;
      if (lease) { counts.grants++; held.set(context.key!, { id: lease.id, requests: lease.requests }); } else counts.refusals++;
    },
  };
}
