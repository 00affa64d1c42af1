// Reads a child process's retained memory through testkit/memory-probe (preloaded
// into it): memory still reachable after a full garbage collection, which is what
// grows when something leaks, unlike RSS (see memory-probe.ts).
import type { ChildProcess } from 'node:child_process';
import path from 'node:path';

/** The preload, compiled (dist/testkit/memory-probe.js). */
export const MEMORY_PROBE = path.join(__dirname, 'memory-probe.js');

export interface MemorySample {
  /** Bytes, as process.memoryUsage() gives them after the probe's collections. */
  rss: number;
  heapTotal: number;
  heapUsed: number;
  external: number;
  arrayBuffers: number;
}

/** What a leak grows: the JavaScript heap and the memory its objects hold outside it (Buffers), after GC. */
export function retained(m: MemorySample): number {
  return m.heapUsed + m.external;
}

/**
 * `env` plus NODE_OPTIONS that preload the probe into a Node process started with it. The
 * NODE_OPTIONS it extends are `env`'s, else this process's (which carry the suite's loopback
 * guard into every child: they must not be replaced).
 */
export function withMemoryProbe(env: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const probe = `--require=${JSON.stringify(MEMORY_PROBE)}`;
  return { ...env, NODE_OPTIONS: [env.NODE_OPTIONS ?? process.env.NODE_OPTIONS, probe].filter(Boolean).join(' ') };
}

/** Probe lines (`{"memoryProbe":n,...}`) in a process's output, in order. */
export function probeLines(output: string): Array<MemorySample & { memoryProbe: number }> {
  return [...output.matchAll(/^\{"memoryProbe":.*\}$/gm)].map((m) => JSON.parse(m[0]));
}

/**
 * Asks `proc` (started with the probe) for a sample and waits for it. `seen` returns the
 * probe lines the process has printed so far.
 */
export async function probeMemory(
  proc: ChildProcess, seen: () => Array<MemorySample & { memoryProbe: number }>, timeoutMs = 30_000,
): Promise<MemorySample> {
  const count = seen().length;
  proc.kill('SIGUSR2');
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const all = seen();
    if (all.length > count) {
      const { rss, heapTotal, heapUsed, external, arrayBuffers } = all[all.length - 1];
      return { rss, heapTotal, heapUsed, external, arrayBuffers };
    }
    if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`process ${proc.pid} exited before answering the memory probe`);
    if (Date.now() > deadline) throw new Error(`no memory probe answer from process ${proc.pid} (started without ${MEMORY_PROBE}?)`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** `bytes` as MB with one decimal, for messages. */
export function mb(bytes: number): string {
  return (bytes / 1024 / 1024).toFixed(1);
}
