// State shared by every instance with the same options: the lease cache, the
// keep-alive connections, the change stream and the usage queue. Kong starts a
// new instance for each config change (`__seq__`) and kong-pdk may drop idle
// instances; neither should throw away leases or queued usage.

import { ControlClient } from './control-client';
import { LeaseCache } from './lease-cache';
import { StreamClient } from './stream-client';
import { UsageQueue } from './usage-queue';
import { spoolFile, takeSpool, writeSpool } from './usage-spool';
import { NODE_ID } from './node-id';
import type { PaygOptions } from './schema';
import { log } from './log';

export interface Runtime {
  client: ControlClient;
  decisions: LeaseCache;
  usage: UsageQueue;
  stream: StreamClient;
  spool: string | undefined;
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
    // A request waits timeout_ms for a lease call; the call itself may take longer, so a lease the
    // service granted late is kept for the next requests instead of stranding its credit.
    const leaseCallTimeoutMs = Math.max(opts.timeoutMs * 4, 2000);
    const decisions = new LeaseCache({
      fetch: (consumer, want, previous, reserve) => client.fetchLease({ node: NODE_ID, consumer, want, reserve, previous }, leaseCallTimeoutMs),
      release: (leases) => client.releaseLeases(NODE_ID, leases),
    }, { cacheTtlMs: opts.cacheTtlMs, staleTtlMs: opts.staleTtlMs, trackDraws: opts.reportUsage, waitMs: opts.timeoutMs });
    const origin = opts.controlServiceUrl.origin;
    const stream = new StreamClient({ baseUrl: opts.controlServiceUrl, fallbackUrls: opts.controlServiceUrls, token: opts.controlServiceToken, node: NODE_ID }, {
      changed: (consumers) => (consumers === 'all' ? decisions.dropAll() : decisions.drop(consumers)),
      recall: (consumers) => decisions.drop(consumers),
      connected: () => decisions.dropAll(),
      warn: (fields, msg) => log.warn({ ...fields, controlService: origin }, msg),
    });
    const usage = new UsageQueue(opts.usageQueue, {
      send: (batch) => client.postUsage(batch, usageTimeoutMs),
      warn: (fields, msg) => log.warn({ ...fields, controlService: origin }, msg),
      error: (fields, msg) => log.error({ ...fields, controlService: origin }, msg),
    });
    const spool = spoolFile(opts.controlServiceUrl.href);
    // Usage kept on disk by the previous run goes out first.
    if (spool) {
      const kept = takeSpool(spool);
      for (const e of kept) usage.push(e);
      if (kept.length) log.info({ events: kept.length, controlService: origin }, 'payg: sending usage kept from the previous run');
    }
    stream.start();
    runtime = { client, decisions, usage, stream, spool };
    runtimes.set(key, runtime);
  }
  return runtime;
}

/**
 * For a clean stop within `deadlineMs`: give leases back, send queued usage, and
 * write what could not be sent under Kong's prefix for the next start.
 */
export async function shutdownAll(deadlineMs: number): Promise<void> {
  const all = [...runtimes.values()];
  for (const r of all) r.stream.stop();
  const work = Promise.all(all.map(async (r) => {
    await r.decisions.releaseAll();
    await r.usage.drain();
  }));
  await Promise.race([work, new Promise((resolve) => setTimeout(resolve, deadlineMs).unref())]);
  for (const r of all) {
    const rest = r.usage.takeRemaining();
    if (rest.length === 0) continue;
    if (r.spool) {
      try { writeSpool(r.spool, rest); log.info({ events: rest.length, file: r.spool }, 'payg: usage kept on disk for the next start'); continue; } catch (err) {
        log.error({ err: String(err), events: rest.length }, 'payg: could not keep usage on disk');
      }
    }
    log.error({ dropped: rest.length }, 'payg: usage not sent before stopping, and no place to keep it');
  }
}
