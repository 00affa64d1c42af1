// Helpers the benchmarks share: child processes pinned to a core, waiting for
// an HTTP endpoint, and a process's peak resident memory.

import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';

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
