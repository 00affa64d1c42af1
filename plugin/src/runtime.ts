// State shared by plugin instances. Kong starts a new instance for each config change
// (`__seq__`), kong-pdk may drop idle instances, and a Kong setup has one payg entity per
// route or service, often with different options: none of that should throw away leases or
// queued usage, or open more than one change stream.
//
// Per control service (its URLs and token) a process holds ONE target: the HTTP client, the
// lease cache, the change stream and the node id the service grants leases to. Leases are
// per node id, and the service keeps one stream per node id (a second replaces the first), so
// every instance talking to that service shares them; each instance sees the lease cache
// through a view with its own TTLs and wait. Usage queues are per queue options within the
// target (batching and retries are the instance's config). Two targets for the same URL (a
// different token) get distinct node ids, so their streams never replace one another.

import { ControlClient } from './control-client';
import { LeaseCache, type LeaseView } from './lease-cache';
import { StreamClient } from './stream-client';
import { UsageQueue, type UsageEvent } from './usage-queue';
import { spoolFile, takeSpool, writeSpool } from './usage-spool';
import { NODE_ID } from './node-id';
import type { PaygOptions } from './schema';
import { log } from './log';

export interface Runtime {
  client: ControlClient;
  /** This instance's view of its target's lease cache. */
  decisions: LeaseView;
  usage: UsageQueue;
  stream: StreamClient;
  target: Target;
}

export interface Target {
  node: string;
  client: ControlClient;
  leases: LeaseCache;
  stream: StreamClient;
  /** One usage queue per distinct queue options. */
  queues: Map<string, UsageQueue>;
  spool: string | undefined;
  /** Events kept on disk by the previous run, until the first queue takes them. */
  kept: UsageEvent[];
  /** The longest lease call any instance allows (timeout_ms × 4, at least 2 s). */
  leaseCallTimeoutMs: number;
}

const targets = new Map<string, Target>();

/** How many change streams (targets) this process holds: one per control service. */
export function targetCount(): number { return targets.size; }

function targetKey(opts: PaygOptions): string {
  return JSON.stringify([opts.controlServiceUrl.href, ...opts.controlServiceUrls.map((u) => u.href), opts.controlServiceToken ?? null]);
}

function targetFor(opts: PaygOptions): Target {
  const key = targetKey(opts);
  let target = targets.get(key);
  // A request waits timeout_ms for a lease call; the call itself may take longer, so a lease the
  // service granted late is kept for the next requests instead of stranding its credit.
  const leaseCallTimeoutMs = Math.max(opts.timeoutMs * 4, 2000);
  if (target) {
    target.leaseCallTimeoutMs = Math.max(target.leaseCallTimeoutMs, leaseCallTimeoutMs);
    return target;
  }
  const origin = opts.controlServiceUrl.origin;
  // The first target of a process is the process's node; another (same URL, other token, or
  // another service) gets an id of its own, so no two streams of this process share one.
  const node = targets.size === 0 ? NODE_ID : `${NODE_ID}-${targets.size + 1}`;
  const client = new ControlClient({
    baseUrl: opts.controlServiceUrl,
    fallbackUrls: opts.controlServiceUrls,
    token: opts.controlServiceToken,
    timeoutMs: opts.timeoutMs,
    // A decision without ttl_ms is bounded by each instance's cache_ttl_ms when it is read.
    defaultTtlMs: Number.MAX_SAFE_INTEGER,
  });
  const self: Target = {
    node, client, queues: new Map(), spool: spoolFile(opts.controlServiceUrl.href), kept: [], leaseCallTimeoutMs,
    leases: undefined as unknown as LeaseCache, stream: undefined as unknown as StreamClient,
  };
  self.leases = new LeaseCache({
    fetch: (consumer, want, previous, reserve) => client.fetchLease({ node, consumer, want, reserve, previous }, self.leaseCallTimeoutMs),
    release: (leases) => client.releaseLeases(node, leases),
  }, {
    cacheTtlMs: opts.cacheTtlMs, staleTtlMs: opts.staleTtlMs, trackDraws: opts.reportUsage, waitMs: opts.timeoutMs,
    warn: (fields, msg) => log.warn({ ...fields, controlService: origin }, msg),
  });
  self.stream = new StreamClient({ baseUrl: opts.controlServiceUrl, fallbackUrls: opts.controlServiceUrls, token: opts.controlServiceToken, node }, {
    changed: (consumers) => (consumers === 'all' ? self.leases.dropAll() : self.leases.drop(consumers)),
    // Another node is starved: give back what this node has not drawn, and send the usage it holds
    // at once, so the reservations it drew settle and what they held beyond their real cost frees.
    recall: (consumers) => {
      self.leases.drop(consumers);
      for (const q of self.queues.values()) if (consumers.some((c) => q.unreported(c) > 0)) void q.flushNow();
    },
    connected: () => self.leases.dropAll(),
    warn: (fields, msg) => log.warn({ ...fields, controlService: origin }, msg),
  });
  // Usage kept on disk by the previous run goes out first (with the first queue).
  if (self.spool) {
    self.kept = takeSpool(self.spool);
    if (self.kept.length) log.info({ events: self.kept.length, controlService: origin }, 'payg: sending usage kept from the previous run');
  }
  self.stream.start();
  targets.set(key, self);
  return self;
}

function queueFor(target: Target, opts: PaygOptions): UsageQueue {
  const key = JSON.stringify(opts.usageQueue, (_k, v: unknown) => (v === Infinity ? 'Infinity' : v));
  let queue = target.queues.get(key);
  if (!queue) {
    const origin = opts.controlServiceUrl.origin;
    // A usage batch is larger than a decision and off the request path: give it more time.
    const usageTimeoutMs = Math.max(opts.timeoutMs * 4, 2000);
    queue = new UsageQueue(opts.usageQueue, {
      send: (batch) => target.client.postUsage(batch, usageTimeoutMs),
      warn: (fields, msg) => log.warn({ ...fields, controlService: origin }, msg),
      error: (fields, msg) => log.error({ ...fields, controlService: origin }, msg),
      done: (events) => target.leases.usageDone(events),
    });
    target.queues.set(key, queue);
    for (const e of target.kept.splice(0)) queue.push(e);
  }
  return queue;
}

export function runtimeFor(opts: PaygOptions): Runtime {
  const target = targetFor(opts);
  return {
    client: target.client,
    decisions: target.leases.view({ cacheTtlMs: opts.cacheTtlMs, staleTtlMs: opts.staleTtlMs, trackDraws: opts.reportUsage, waitMs: opts.timeoutMs }),
    usage: queueFor(target, opts),
    stream: target.stream,
    target,
  };
}

/**
 * For a clean stop within `deadlineMs`: give leases back, send queued usage, and
 * write what could not be sent under Kong's prefix for the next start.
 */
export async function shutdownAll(deadlineMs: number): Promise<void> {
  const all = [...targets.values()];
  for (const t of all) t.stream.stop();
  const work = Promise.all(all.map(async (t) => {
    await t.leases.releaseAll();
    await Promise.all([...t.queues.values()].map((q) => q.drain()));
  }));
  await Promise.race([work, new Promise((resolve) => setTimeout(resolve, deadlineMs).unref())]);
  for (const t of all) {
    const rest = [...t.kept.splice(0), ...[...t.queues.values()].flatMap((q) => q.takeRemaining())];
    if (rest.length === 0) continue;
    if (t.spool) {
      try { writeSpool(t.spool, rest); log.info({ events: rest.length, file: t.spool }, 'payg: usage kept on disk for the next start'); continue; } catch (err) {
        log.error({ err: String(err), events: rest.length }, 'payg: could not keep usage on disk');
      }
    }
    log.error({ dropped: rest.length }, 'payg: usage not sent before stopping, and no place to keep it');
  }
}
