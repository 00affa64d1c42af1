// Helpers the benchmarks share: child processes pinned to a core, waiting for
// an HTTP endpoint, a process's peak resident memory, and the control service
// started as its own process on a seeded store.

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
