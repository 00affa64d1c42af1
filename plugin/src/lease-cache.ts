// Decisions and leases per consumer, on this node.
//
// An allow that spends credit comes with a lease: a number of requests this node
// may serve. The access phase draws one from it, locally, when it lets a request
// through (no network call, no PDK call). When the lease is used up or over, the
// next request asks again and gives the old lease back with how many it drew.
// Requests arriving while that call is out wait for it and draw from its lease;
// the call says how many are waiting. Blocks and unmetered allows are reused
// until their ttl; pushed changes drop them (and give leases back) at once.

import type { Decision } from './decision';
import type { FailureReason, LeaseOutcome, LeaseReturn } from './control-client';

export type Resolution =
  | { kind: 'FRESH' | 'FETCHED' | 'STALE'; decision: Decision }
  | { kind: 'UNAVAILABLE'; reason: FailureReason | 'EXHAUSTED'; detail: string };

interface HeldLease { id: string; left: number; drawn: number; expiresAt: number; closed: boolean }

interface Entry {
  decision: Decision;
  freshUntil: number;
  usableUntil: number;
  /** Set on an allow that spends credit: the request is served only on it. */
  lease: HeldLease | undefined;
}

interface Fetch { waiters: number; promise: Promise<LeaseOutcome> }

export interface LeaseCacheOptions {
  cacheTtlMs: number;
  staleTtlMs: number;
  /** Remember which lease each request drew from, for its usage event (off when usage is not reported). */
  trackDraws: boolean;
  maxEntries?: number;
  now?: () => number;
}

export interface LeaseTransport {
  fetch(consumer: string, want: number, previous: LeaseReturn | undefined): Promise<LeaseOutcome>;
  release(leases: LeaseReturn[]): Promise<boolean>;
}

/** Fetch rounds one request may take while the leases it waits on are drawn by others. */
const MAX_ROUNDS = 64;
/** Draws remembered per consumer before their log phase; past it the oldest are forgotten. */
const MAX_DRAWS = 100_000;

export class LeaseCache {
  private readonly entries = new Map<string, Entry>();
  private readonly inFlight = new Map<string, Fetch>();
  private readonly draws = new Map<string, string[]>();
  private pendingRelease: LeaseReturn[] = [];
  private releaseScheduled = false;
  private readonly maxEntries: number;
  private readonly now: () => number;

  constructor(private readonly transport: LeaseTransport, private readonly opts: LeaseCacheOptions) {
    this.maxEntries = opts.maxEntries ?? 100_000;
    this.now = opts.now ?? Date.now;
  }

  /** The synchronous fast path: a fresh decision (drawing one request from its lease), or undefined. */
  fresh(consumer: string): Decision | undefined {
    const entry = this.entries.get(consumer);
    if (entry === undefined) return undefined;
    const now = this.now();
    if (now >= entry.freshUntil) return undefined;
    const lease = entry.lease;
    if (lease !== undefined) {
      if (lease.closed || lease.left <= 0 || now >= lease.expiresAt) return undefined;
      lease.left--;
      lease.drawn++;
      if (this.opts.trackDraws) this.recordDraw(consumer, lease.id);
    }
    return entry.decision;
  }

  async resolve(consumer: string): Promise<Resolution> {
    let last: LeaseOutcome | undefined;
    for (let round = 0; round < MAX_ROUNDS; round++) {
      const decision = this.fresh(consumer);
      if (decision) return { kind: last ? 'FETCHED' : 'FRESH', decision };
      last = await this.fetchShared(consumer);
      if (last.kind === 'UNAVAILABLE') return this.fallback(consumer, last);
      // A block, or an allow with nothing to reserve: it applies to every waiter as is.
      if (!last.decision.allow || last.lease === undefined) return { kind: 'FETCHED', decision: last.decision };
      // An allow with a lease: draw from it (others waiting may have used it up: ask again).
    }
    return { kind: 'UNAVAILABLE', reason: 'EXHAUSTED', detail: `leases used up by concurrent requests ${MAX_ROUNDS} times` };
  }

  /** The lease id the oldest not-yet-logged request of this consumer drew from (for its usage event). */
  takeDraw(consumer: string): string | undefined {
    const list = this.draws.get(consumer);
    if (!list) return undefined;
    const id = list.shift();
    if (list.length === 0) this.draws.delete(consumer);
    return id;
  }

  /** Pushed: these consumers changed. Their cached answers go, and their leases go back. */
  drop(consumers: string[]): void {
    for (const c of consumers) {
      const entry = this.entries.get(c);
      if (!entry) continue;
      this.entries.delete(c);
      this.giveBack(entry);
    }
  }

  /** Pushed: a rule switched (or the stream reconnected after missing news). */
  dropAll(): void {
    for (const entry of this.entries.values()) this.giveBack(entry);
    this.entries.clear();
  }

  /** Gives every lease back now (shutdown); resolves when the service took them or could not. */
  async releaseAll(): Promise<void> {
    for (const entry of this.entries.values()) this.closeLease(entry.lease);
    const batch = this.pendingRelease.splice(0);
    if (batch.length) await this.transport.release(batch);
  }

  /** Leases held now (for tests and logs). */
  heldLeases(): number {
    let n = 0;
    for (const e of this.entries.values()) if (e.lease && !e.lease.closed) n++;
    return n;
  }

  private fetchShared(consumer: string): Promise<LeaseOutcome> {
    const running = this.inFlight.get(consumer);
    if (running) { running.waiters++; return running.promise; }
    const f: Fetch = { waiters: 1, promise: undefined as unknown as Promise<LeaseOutcome> };
    // Sent on the next turn, so requests resuming in this one join it and are counted in `want`.
    f.promise = new Promise<void>((r) => setImmediate(r))
      .then(() => this.fetchNow(consumer, f.waiters))
      .finally(() => this.inFlight.delete(consumer));
    this.inFlight.set(consumer, f);
    return f.promise;
  }

  private async fetchNow(consumer: string, want: number): Promise<LeaseOutcome> {
    // Leases given back but not yet sent go first, or the service would still count them held.
    if (this.pendingRelease.length) await this.flushReleases();
    const held = this.entries.get(consumer);
    const previous = this.closeLease(held?.lease, false);
    const sentAt = this.now();
    const outcome = await this.transport.fetch(consumer, want, previous);
    if (outcome.kind === 'UNAVAILABLE') return outcome;
    const { decision, lease } = outcome;
    const ttl = Math.min(decision.ttlMs, this.opts.cacheTtlMs);
    // Timed from before the call: this node stops drawing no later than the service expects.
    const entry: Entry = {
      decision, freshUntil: sentAt + ttl, usableUntil: sentAt + Math.max(ttl, this.opts.staleTtlMs),
      lease: lease && { id: lease.id, left: lease.requests, drawn: 0, expiresAt: sentAt + Math.min(lease.ttlMs, ttl), closed: false },
    };
    const replaced = this.entries.get(consumer);
    this.entries.delete(consumer); // re-insert so Map order stays oldest-first
    if (replaced && replaced !== held) this.giveBack(replaced);
    this.entries.set(consumer, entry);
    if (entry.lease) this.releaseWhenOver(consumer, entry);
    if (this.entries.size > this.maxEntries) {
      const oldest = this.entries.keys().next().value as string;
      this.giveBack(this.entries.get(oldest)!);
      this.entries.delete(oldest);
    }
    return outcome;
  }

  private fallback(consumer: string, outcome: Extract<LeaseOutcome, { kind: 'UNAVAILABLE' }>): Resolution {
    const entry = this.entries.get(consumer);
    // A stale block still applies; a stale unmetered allow still serves. A lease is never stretched:
    // the credit it stood for is drawn or given back.
    if (entry && this.now() < entry.usableUntil && entry.lease === undefined) return { kind: 'STALE', decision: entry.decision };
    return outcome;
  }

  /** An idle lease goes back when it is over, so its credit does not wait for the service's expiry. */
  private releaseWhenOver(consumer: string, entry: Entry): void {
    const delay = Math.max(0, entry.lease!.expiresAt - this.now());
    setTimeout(() => {
      if (this.entries.get(consumer) === entry) this.giveBack(entry);
    }, delay).unref();
  }

  private giveBack(entry: Entry): void {
    this.closeLease(entry.lease);
  }

  /** Marks a lease closed; queues its return unless the caller sends it itself. */
  private closeLease(lease: HeldLease | undefined, queue = true): LeaseReturn | undefined {
    if (!lease || lease.closed) return undefined;
    lease.closed = true;
    lease.left = 0;
    const ret = { id: lease.id, drawn: lease.drawn };
    if (queue) this.queueRelease(ret);
    return ret;
  }

  private queueRelease(ret: LeaseReturn): void {
    this.pendingRelease.push(ret);
    if (this.releaseScheduled) return;
    this.releaseScheduled = true;
    setImmediate(() => { void this.flushReleases(); });
  }

  private async flushReleases(): Promise<void> {
    this.releaseScheduled = false;
    const batch = this.pendingRelease.splice(0);
    // Not taken: the service keeps it reserved until it expires (safe, only slower to come back).
    if (batch.length) await this.transport.release(batch).catch(() => false);
  }

  private recordDraw(consumer: string, leaseId: string): void {
    let list = this.draws.get(consumer);
    if (!list) { list = []; this.draws.set(consumer, list); }
    if (list.length >= MAX_DRAWS) list.shift();
    list.push(leaseId);
  }
}
