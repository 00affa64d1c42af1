// State shared by every instance with the same options: the decision cache,
// the keep-alive connections and the usage queue. Kong starts a new instance
// for each config change (`__seq__`) and kong-pdk may drop idle instances;
// neither should throw away cached decisions or queued usage.

import { ControlClient } from './control-client';
import { DecisionCache } from './decision-cache';
import { UsageQueue } from './usage-queue';
import type { PaygOptions } from './schema';
import { log } from './log';

export interface Runtime {
  client: ControlClient;
  decisions: DecisionCache;
  usage: UsageQueue;
}

const runtimes = new Map<string, Runtime>();

function keyOf(opts: PaygOptions): string {
  return JSON.stringify({ ...opts, controlServiceUrl: opts.controlServiceUrl.href, controlServiceUrls: opts.controlServiceUrls.map((u) => u.href) });
}

export function runtimeFor(opts: PaygOptions): Runtime {
  const key = keyOf(opts);
  let runtime = runtimes.get(key);
  if (!runtime) {
    const client = new ControlClient({
      baseUrl: opts.controlServiceUrl,
      fallbackUrls: opts.controlServiceUrls,
      token: opts.controlServiceToken,
      timeoutMs: opts.timeoutMs,
      defaultTtlMs: opts.cacheTtlMs,
    });
    // A usage batch is larger than a decision and off the request path: give it more time.
    const usageTimeoutMs = Math.max(opts.timeoutMs * 4, 2000);
    runtime = {
      client,
      decisions: new DecisionCache((consumer) => client.fetchDecision(consumer), {
        cacheTtlMs: opts.cacheTtlMs,
        staleTtlMs: opts.staleTtlMs,
        unreported: (consumer) => runtime!.usage.unreported(consumer),
        // On the request path: wait no longer than a decision call may take.
        flushUsage: () => Promise.race([
          runtime!.usage.flushNow(),
          new Promise<void>((resolve) => { setTimeout(resolve, opts.timeoutMs).unref(); }),
        ]),
      }),
      usage: new UsageQueue(opts.usageQueue, {
        send: (batch) => client.postUsage(batch, usageTimeoutMs),
        warn: (fields, msg) => log.warn({ ...fields, controlService: opts.controlServiceUrl.origin }, msg),
        error: (fields, msg) => log.error({ ...fields, controlService: opts.controlServiceUrl.origin }, msg),
      }),
    };
    runtimes.set(key, runtime);
  }
  return runtime;
}

/** Sends what is queued, for a clean shutdown. */
export async function drainAll(): Promise<void> {
  await Promise.all([...runtimes.values()].map((r) => r.usage.drain()));
}
