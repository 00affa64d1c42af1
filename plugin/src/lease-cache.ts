// Decisions and leases per consumer, on this node.
//
// An allow that spends credit comes with a lease: a number of requests this node
// may serve. The access phase draws one from it, locally, when it lets a request
// through (no network call, no PDK call). When the lease is used up or over, the
// next request asks again and gives the old lease back with how many it drew.
// Requests arriving while that call is out wait for it and draw from its lease;
// the call says how many are waiting. Blocks and unmetered allows are reused
// until their ttl; pushed changes drop them (and give leases back) at once.
//
// Reserve, then settle: a lease is an amount of credit (micros). A request draws its
// route's max_cost from it (with fixed prices only, the lease's price per request), and
// its usage event says how much it drew; once the service has counted the event, the
// reservation is let go of and the difference to the real cost is free credit again,
// which comes back to this node with its next lease. A request whose maximum the lease
// cannot cover asks again; a service with no free credit for it answers with the rules.
//
// One cache per control service per process, shared by every plugin instance that talks
// to it (leases are granted per node id, and a process is one node): each instance sees
// it through a view with its own cache_ttl_ms, stale_ttl_ms, timeout_ms and report_usage.
// A lease is drawn on until its own ttl_ms, whatever the instance's cache_ttl_ms.

import type { Decision } from './decision';
import type { FailureReason, LeaseOutcome, LeaseReturn } from './control-client';
import type { MaxCosts } from './lease';
import { CreditBook } from './credit-book';

export type Resolution =
  | { kind: 'FRESH' | 'FETCHED' | 'STALE'; decision: Decision }
  | { kind: 'UNAVAILABLE'; reason: FailureReason | 'EXHAUSTED'; detail: string };

/**
 * `left` and `drawnMicros` are micros when the service sent the lease as an amount
 * (`amount`), else requests (one per request). `unit`: the lease's price per request.
 */
interface HeldLease {
  id: string; left: number; drawn: number; drawnMicros: number; expiresAt: number; closed: boolean;
  amount: boolean; unit: number; credit: number | undefined;
}

/** What one request drew, for its usage event. */
export interface Draw { lease: string; reserved: number | undefined }

/** The route as the access phase knows it: a name or id, null for none, undefined when not read. */
export type RouteKey = string | null | undefined;

interface Entry {
  decision: Decision;
  /** When the call that fetched it was sent: freshness is timed from there. */
  sentAt: number;
  /** A block or unmetered allow fetched across a push: used for its waiters, never reused. */
  raced: boolean;
  /** Set on an allow that spends credit: the request is served only on it, until its own expiry. */
  lease: HeldLease | undefined;
}

/** What one plugin instance's config says about reusing decisions. */
export interface ViewOptions {
  cacheTtlMs: number;
  staleTtlMs: number;
  /** Remember which lease each request drew from, for its usage event (off when usage is not reported). */
  trackDraws: boolean;
  /** How long a request waits for a lease call (timeout_ms); undefined: as long as the call takes. */
  waitMs?: number;
}

/** `reserve`: the most a waiter needs (micros); undefined once a waiter does not know its route. */
interface Fetch {
  waiters: number; reserve: number | undefined; promise: Promise<LeaseOutcome>;
  /** A push for this consumer arrived while the call was out: its answer may predate the change. */
  raced: boolean;
}

/**
 * The defaults for callers that use the cache directly (the view of a single instance).
 * waitMs: a request waits that long for a lease call; the call itself may run longer (the
 * transport's own limit): a lease granted late is kept for the next requests, not dropped,
 * so its credit is neither stranded nor asked for twice.
 */
export interface LeaseCacheOptions extends ViewOptions {
  maxEntries?: number;
  now?: () => number;
  /** Leases given back that the service did not take, kept to send again; past it the oldest are dropped. */
  maxUnsentReleases?: number;
  /** How long past a lease's own expiry its return is still worth sending (the service's usage_grace_ms default). */
  releaseGraceMs?: number;
  warn?: (fields: Record<string, unknown>, msg: string) => void;
}

/**
 * `release` resolves true when the service took the leases, false when it did not (down,
 * restarting, 5xx, a cut connection: they are kept and sent again), 'REFUSED' when it
 * answered that the call itself is wrong (4xx: sending it again would not help).
 */
export interface LeaseTransport {
  fetch(consumer: string, want: number, previous: LeaseReturn | undefined, reserve: number | undefined): Promise<LeaseOutcome>;
  release(leases: LeaseReturn[]): Promise<boolean | 'REFUSED'>;
}

/** A lease return waiting to be sent, and until when it is worth sending. */
interface Unsent { ret: LeaseReturn; keepUntil: number }

/** Fetch rounds one request may take while the leases it waits on are drawn by others. */
const MAX_ROUNDS = 64;
/** Draws remembered per consumer before their log phase; past it the oldest are forgotten. */
const MAX_DRAWS = 100_000;
/** Lease returns per release call (the service takes up to 100,000 and 1 MiB). */
const RELEASE_CHUNK = 2000;
/** Returns not taken are sent again with the next release or lease call, on reconnect, or after this backoff. */
const RESEND_MIN_MS = 1000;
const RESEND_MAX_MS = 30_000;

export class LeaseCache {
  private readonly entries = new Map<string, Entry>();
  private readonly inFlight = new Map<string, Fetch>();
  private readonly draws = new Map<string, Draw[]>();
  /** Max costs per route from the latest lease (prices by measured units only). */
  private maxCosts: MaxCosts | undefined;
  private dearestMaxCost = 0;
  private pendingRelease: Unsent[] = [];
  private releaseScheduled = false;
  /** Returns the service did not take, by lease id, oldest first: sent again until taken or worthless. */
  private readonly unsent = new Map<string, Unsent>();
  private resendTimer: NodeJS.Timeout | undefined;
  private resendFailures = 0;
  private readonly maxUnsent: number;
  private readonly releaseGraceMs: number;
  private readonly maxEntries: number;
  private readonly now: () => number;
  /** What the credit header shows per consumer (see credit-book.ts). */
  readonly credit: CreditBook;

  constructor(private readonly transport: LeaseTransport, private readonly opts: LeaseCacheOptions) {
    this.maxEntries = opts.maxEntries ?? 100_000;
    this.now = opts.now ?? Date.now;
    this.credit = new CreditBook(this.maxEntries);
    this.maxUnsent = opts.maxUnsentReleases ?? 10_000;
    this.releaseGraceMs = opts.releaseGraceMs ?? 60_000;
  }

  /** One plugin instance's way in: its own TTLs, wait and draw tracking over the shared leases. */
  view(options: ViewOptions): LeaseView {
    return new LeaseView(this, options);
  }

  /** Whether requests draw by route (prices by measured units): only then does the access phase read the route. */
  get routePriced(): boolean { return this.maxCosts !== undefined; }

  /**
   * The synchronous fast path: a fresh decision, drawing the request's reservation from
   * its lease, or undefined (ask again).
   */
  fresh(consumer: string, route?: RouteKey, view: ViewOptions = this.opts): Decision | undefined {
    const entry = this.entries.get(consumer);
    if (entry === undefined) return undefined;
    const now = this.now();
    const lease = entry.lease;
    if (lease === undefined) {
      if (entry.raced || now >= entry.sentAt + Math.min(entry.decision.ttlMs, view.cacheTtlMs)) return undefined;
      return entry.decision;
    }
    // A lease is credit set aside for this node until it expires: drawn on until then, however
    // short the instance's cache_ttl_ms (a push or its expiry ends it sooner).
    if (lease.closed || now >= lease.expiresAt) return undefined;
    const need = lease.amount ? this.reservation(route) ?? Math.max(lease.unit, this.dearestMaxCost) : 1;
    // A free route (max_cost 0) draws nothing, but still needs a live lease.
    if (lease.left < need) return undefined;
    lease.left -= need;
    lease.drawn++;
    if (lease.amount) lease.drawnMicros += need;
    if (view.trackDraws) {
      this.recordDraw(consumer, route, { lease: lease.id, reserved: lease.amount ? need : undefined });
      // Only reported requests are counted against the shown credit: their usage settles them.
      if (lease.amount) this.credit.drew(consumer, need);
    }
    return entry.decision;
  }

  /**
   * The consumer's credit for the credit header, in the smallest currency unit: never more
   * than the latest grant's estimate less what this node reserved since that the estimate did
   * not count, and never more than the value shown before unless the credit went up (a top-up).
   * Undefined without a lease that carried a credit.
   */
  creditOf(consumer: string): number | undefined {
    return this.credit.show(consumer);
  }

  /** Usage events that left the queue for good (counted by the service, or dropped): their reservations are settled. */
  usageDone(events: ReadonlyArray<{ consumer: string; reserved?: number }>): void {
    this.credit.done(events);
  }

  /** A request's max_cost by its route; undefined when unknown (fixed prices, or the route was not read). */
  private reservation(route: RouteKey): number | undefined {
    if (!this.maxCosts || route === undefined) return undefined;
    return (route !== null ? this.maxCosts.routes.get(route) : undefined) ?? this.maxCosts.default;
  }

  async resolve(consumer: string, route?: RouteKey, view: ViewOptions = this.opts): Promise<Resolution> {
    let last: LeaseOutcome | undefined;
    for (let round = 0; round < MAX_ROUNDS; round++) {
      const decision = this.fresh(consumer, route, view);
      if (decision) return { kind: last ? 'FETCHED' : 'FRESH', decision };
      const need = this.reservation(route);
      last = await this.waitAtMost(this.fetchShared(consumer, need === undefined ? undefined : Math.max(1, need)), view.waitMs);
      if (last.kind === 'UNAVAILABLE') return this.fallback(consumer, last, view);
      // A block, or an allow with nothing to reserve: it applies to every waiter as is.
      if (!last.decision.allow || last.lease === undefined) return { kind: 'FETCHED', decision: last.decision };
      // An allow with a lease: draw from it (others waiting may have used it up: ask again).
    }
    return { kind: 'UNAVAILABLE', reason: 'EXHAUSTED', detail: `leases used up by concurrent requests ${MAX_ROUNDS} times` };
  }

  /**
   * What the oldest not-yet-logged request of this consumer on this route drew (for its
   * usage event); requests whose route access did not read are matched after those.
   */
  takeDraw(consumer: string, route: string | null): Draw | undefined {
    return this.shiftDraw(drawKey(consumer, route)) ?? this.shiftDraw(drawKey(consumer, undefined));
  }

  private shiftDraw(key: string): Draw | undefined {
    const list = this.draws.get(key);
    if (!list) return undefined;
    const draw = list.shift();
    if (list.length === 0) this.draws.delete(key);
    return draw;
  }

  /** Pushed: these consumers changed. Their cached answers go, and their leases go back. */
  drop(consumers: string[]): void {
    for (const c of consumers) {
      const running = this.inFlight.get(c);
      if (running) running.raced = true;
      const entry = this.entries.get(c);
      if (!entry) continue;
      this.entries.delete(c);
      this.giveBack(entry);
    }
  }

  /** Pushed: a rule switched (or the stream reconnected after missing news). */
  dropAll(): void {
    for (const running of this.inFlight.values()) running.raced = true;
    for (const entry of this.entries.values()) this.giveBack(entry);
    this.entries.clear();
    // On reconnect too: returns a restarting service did not take go to whichever replica answers now.
    if (this.unsent.size) this.scheduleFlush();
  }

  /** Gives every lease back now (shutdown), with those not taken before; resolves when sent or failed. */
  async releaseAll(): Promise<void> {
    for (const entry of this.entries.values()) this.closeLease(entry.lease, true, true);
    await this.flushReleases();
  }

  /** Lease returns the service has not taken yet, kept to send again (for tests and logs). */
  unsentReleases(): number { return this.unsent.size; }

  /** Leases held now (for tests and logs). */
  heldLeases(): number {
    let n = 0;
    for (const e of this.entries.values()) if (e.lease && !e.lease.closed) n++;
    return n;
  }

  private waitAtMost(call: Promise<LeaseOutcome>, ms: number | undefined): Promise<LeaseOutcome> {
    if (ms === undefined) return call;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<LeaseOutcome>((resolve) => {
      timer = setTimeout(() => resolve({ kind: 'UNAVAILABLE', reason: 'TIMEOUT', detail: `no answer within ${ms} ms` }), ms);
    });
    return Promise.race([call, late]).finally(() => clearTimeout(timer));
  }

  private fetchShared(consumer: string, reserve: number | undefined): Promise<LeaseOutcome> {
    const running = this.inFlight.get(consumer);
    if (running) {
      running.waiters++;
      running.reserve = reserve === undefined || running.reserve === undefined ? undefined : Math.max(running.reserve, reserve);
      return running.promise;
    }
    const f: Fetch = { waiters: 1, reserve, raced: false, promise: undefined as unknown as Promise<LeaseOutcome> };
    // Sent on the next turn, so requests resuming in this one join it and are counted in `want`.
    f.promise = new Promise<void>((r) => setImmediate(r))
      .then(() => this.fetchNow(consumer, f))
      .finally(() => this.inFlight.delete(consumer));
    this.inFlight.set(consumer, f);
    return f.promise;
  }

  private async fetchNow(consumer: string, f: Fetch): Promise<LeaseOutcome> {
    const { waiters: want, reserve } = f;
    // Leases given back but not yet sent go first, or the service would still count them held
    // (with them, those it did not take before). Those alone go beside this call, not before it:
    // a service that is still down must not make the lease call wait for their failure too.
    if (this.pendingRelease.length) await this.flushReleases();
    else if (this.unsent.size) void this.flushReleases();
    const held = this.entries.get(consumer);
    const previous = this.closeLease(held?.lease, false);
    const sentAt = this.now();
    // What of this node's reservations the service has certainly counted when it answers.
    const settledBefore = this.credit.settledSoFar(consumer);
    f.raced = false; // only pushes from now on can postdate the answer
    const outcome = await this.transport.fetch(consumer, want, previous, reserve);
    // A push arrived while the call was out: the answer may predate the change it announced. A
    // block is used for the requests that waited, not kept (else a customer whose credit came back
    // would stay refused until the TTL); a lease is real reserved credit, so it is kept.
    const raced = f.raced;
    if (outcome.kind === 'UNAVAILABLE') {
      // The lease it gave back may not have been taken: send it again (a second close is a no-op).
      if (previous) this.keepUnsent([{ ret: previous, keepUntil: held!.lease!.expiresAt + this.releaseGraceMs }], outcome.detail);
      return outcome;
    }
    const { decision, lease } = outcome;
    if (lease?.maxCosts) {
      this.maxCosts = lease.maxCosts;
      this.dearestMaxCost = Math.max(lease.maxCosts.default, ...lease.maxCosts.routes.values());
    }
    if (lease?.credit !== undefined) this.credit.granted(consumer, lease.credit, settledBefore);
    // Timed from before the call: this node stops drawing no later than the service expects.
    const entry: Entry = {
      decision, sentAt, raced: raced && !lease,
      lease: lease && {
        id: lease.id, left: lease.micros ?? lease.requests, drawn: 0, drawnMicros: 0, expiresAt: sentAt + lease.ttlMs, closed: false,
        amount: lease.micros !== undefined, unit: lease.micros !== undefined ? Math.floor(lease.micros / lease.requests) : 1, credit: lease.credit,
      },
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

  private fallback(consumer: string, outcome: Extract<LeaseOutcome, { kind: 'UNAVAILABLE' }>, view: ViewOptions): Resolution {
    const entry = this.entries.get(consumer);
    // A stale block still applies; a stale unmetered allow still serves. A lease is never stretched:
    // the credit it stood for is drawn or given back.
    if (entry && entry.lease === undefined) {
      const usableUntil = entry.sentAt + Math.max(Math.min(entry.decision.ttlMs, view.cacheTtlMs), view.staleTtlMs);
      if (this.now() < usableUntil) return { kind: 'STALE', decision: entry.decision };
    }
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

  /**
   * Marks a lease closed; queues its return unless the caller sends it itself (`queue` false),
   * sending it on the next turn unless the caller flushes itself (`later` true).
   */
  private closeLease(lease: HeldLease | undefined, queue = true, later = false): LeaseReturn | undefined {
    if (!lease || lease.closed) return undefined;
    lease.closed = true;
    lease.left = 0;
    const ret: LeaseReturn = lease.amount ? { id: lease.id, drawn: lease.drawn, drawn_micros: lease.drawnMicros } : { id: lease.id, drawn: lease.drawn };
    if (queue) {
      this.pendingRelease.push({ ret, keepUntil: lease.expiresAt + this.releaseGraceMs });
      if (!later) this.scheduleFlush();
    }
    return ret;
  }

  private scheduleFlush(): void {
    if (this.releaseScheduled) return;
    this.releaseScheduled = true;
    setImmediate(() => { void this.flushReleases(); });
  }

  /**
   * Sends the returns queued, with those the service did not take before. What it does not take
   * now is kept (bounded) and sent again: otherwise the lease's undrawn credit would stay reserved
   * at the service until the lease's ttl_ms + usage_grace_ms.
   */
  private async flushReleases(): Promise<void> {
    this.releaseScheduled = false;
    const batch = this.pendingRelease.splice(0);
    const fresh = batch.length;
    if (this.unsent.size) {
      const now = this.now();
      let expired = 0;
      // Taken out while out: a second flush meanwhile does not send them twice.
      for (const u of this.unsent.values()) if (now < u.keepUntil) batch.push(u); else expired++;
      this.unsent.clear();
      if (expired) this.opts.warn?.({ leases: expired }, 'payg: lease returns the control service never took dropped: the leases are long over');
    }
    for (let i = 0; i < batch.length; i += RELEASE_CHUNK) {
      const chunk = batch.slice(i, i + RELEASE_CHUNK);
      const taken = await this.transport.release(chunk.map((u) => u.ret)).catch(() => false as const);
      if (taken === false) this.keepUnsent(chunk, 'not taken', i >= fresh);
      else if (taken === 'REFUSED') this.opts.warn?.({ leases: chunk.length }, 'payg: the control service refused a lease return; not sent again');
      else if (this.unsent.size === 0) this.resendFailures = 0;
    }
  }

  /** Keeps returns to send again: at most maxUnsentReleases (the oldest go first), none past its worth. */
  private keepUnsent(list: Unsent[], reason: string, again = false): void {
    const now = this.now();
    for (const u of list) if (now < u.keepUntil && !this.unsent.has(u.ret.id)) this.unsent.set(u.ret.id, u);
    let dropped = 0;
    while (this.unsent.size > this.maxUnsent) {
      this.unsent.delete(this.unsent.keys().next().value as string);
      dropped++;
    }
    if (dropped) this.opts.warn?.({ dropped, kept: this.unsent.size }, 'payg: too many lease returns not taken; the oldest dropped (their credit waits for the leases to end)');
    if (this.unsent.size === 0) return;
    // Logged when returns are first kept; failing again (each retry while the service is down) is not.
    if (!again) this.opts.warn?.({ leases: list.length, kept: this.unsent.size, reason }, 'payg: lease returns not taken by the control service; kept to send again');
    if (this.resendTimer) return;
    const delay = Math.min(RESEND_MAX_MS, RESEND_MIN_MS * 2 ** Math.min(this.resendFailures++, 10));
    this.resendTimer = setTimeout(() => { this.resendTimer = undefined; if (this.unsent.size) void this.flushReleases(); }, delay).unref();
  }

  private recordDraw(consumer: string, route: RouteKey, draw: Draw): void {
    // Keyed by route when access read it: requests of one route reserve alike, so matching
    // them to log phases in order settles each event against what its own kind reserved.
    const key = drawKey(consumer, this.maxCosts ? route : undefined);
    let list = this.draws.get(key);
    if (!list) { list = []; this.draws.set(key, list); }
    if (list.length >= MAX_DRAWS) list.shift();
    list.push(draw);
  }
}

/** One plugin instance's view of the shared lease cache: the same leases, its own options. */
export class LeaseView {
  constructor(readonly cache: LeaseCache, readonly options: ViewOptions) {}
  get routePriced(): boolean { return this.cache.routePriced; }
  fresh(consumer: string, route?: RouteKey): Decision | undefined { return this.cache.fresh(consumer, route, this.options); }
  resolve(consumer: string, route?: RouteKey): Promise<Resolution> { return this.cache.resolve(consumer, route, this.options); }
  takeDraw(consumer: string, route: string | null): Draw | undefined { return this.cache.takeDraw(consumer, route); }
  creditOf(consumer: string): number | undefined { return this.cache.creditOf(consumer); }
}

function drawKey(consumer: string, route: RouteKey): string {
  return route === undefined ? `${consumer}\n?` : `${consumer}\n=${route ?? ''}`;
}
