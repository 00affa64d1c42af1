// The edge around the pure lease book: reads the engine's customer state, keeps
// the "leases may be outstanding until" horizon in the store (so a restarted
// service grants nothing until every lease the previous run handed out is over),
// and tells nodes over the change stream when credit comes back or is needed.

import type { Engine } from './engine';
import { LeaseBook, type Lease } from './leases';
import { isVariable, MICROS_PER_UNIT } from './pricing';
import type { Store } from './store/store';
import type { ChangeStream } from './http/stream';
import type { Config } from './config';

const HORIZON_KEY = 'lease_horizon';
/** The horizon is written ahead by this much, so a busy service writes it about once a minute. */
const HORIZON_STEP_MS = 60_000;

/** `drawn_micros`: the credit drawn (route max_costs); without it, `drawn` requests at the lease's costMicros. */
export interface LeaseReturn { id: string; drawn: number; drawn_micros?: number }
/** `reserve`: the most one of the `want` waiting requests reserves (its route's max_cost), when the node knows it. */
export interface LeaseRequest { node: string; consumer: string; want: number; reserve?: number; previous?: LeaseReturn }
export type LeaseAnswer = { status: 200; json: string } | { status: 503; json: string };

export class LeaseDesk {
  readonly book: LeaseBook;
  private horizon = 0;
  private recoveringUntil = 0;
  /** Customers refused for want of free credit: told when it comes back. */
  private readonly starved = new Set<string>();
  private readonly allowJson: string;
  private timer: NodeJS.Timeout | undefined;
  /**
   * With prices by measured units: the max_cost a request reserves, by default and per
   * route (name or id, as metering.routes keys it), sent with each lease so the node draws
   * each request's own maximum (it reads the route only then). Undefined with fixed prices
   * only: the node then draws the lease's costMicros (the dearest) per request.
   */
  private readonly maxCosts: { default: number; routes: Record<string, number> } | undefined;

  constructor(private readonly config: Config, private readonly engine: Engine, private readonly store: Store,
    private readonly stream: ChangeStream, private readonly now: () => number = Date.now) {
    this.book = new LeaseBook(config.leases);
    this.allowJson = JSON.stringify({ allow: true, ttl_ms: config.decisionTtlMs });
    const pricing = config.metering.pricing;
    this.maxCosts = isVariable(pricing.defaultPrice) || [...pricing.routePrices.values()].some(isVariable)
      ? { default: pricing.defaultPrice.maxCostMicros, routes: Object.fromEntries([...pricing.routePrices].map(([r, p]) => [r, p.maxCostMicros])) }
      : undefined;
  }

  async init(): Promise<void> {
    const stored = Number(await this.store.getMeta(HORIZON_KEY) ?? 0);
    this.horizon = stored;
    // Leases from a previous run may still be drawn on (and their usage still arrive) until then.
    this.recoveringUntil = stored > this.now() ? stored : 0;
    this.timer = setInterval(() => this.wake(this.book.expire(this.now())), this.config.leases.expireIntervalMs).unref();
  }

  /**
   * This replica has just taken the lead from another (several replicas on PostgreSQL): the
   * leases the old leader granted were in its memory only, so grant nothing until the horizon it
   * stored has passed, as after a restart.
   */
  async takeOver(): Promise<void> {
    const stored = Number(await this.store.getMeta(HORIZON_KEY) ?? 0);
    this.horizon = Math.max(this.horizon, stored);
    if (stored > this.now()) this.recoveringUntil = Math.max(this.recoveringUntil, stored);
  }

  stop(): void { clearInterval(this.timer); }

  /** Until when this service grants nothing after a restart (0: not recovering). */
  get recoveryEndsAt(): number { return this.recoveringUntil > this.now() ? this.recoveringUntil : 0; }

  async request(r: LeaseRequest): Promise<LeaseAnswer> {
    const now = this.now();
    if (r.previous) this.release(r.node, [r.previous]);
    const answer = this.engine.decide(r.consumer);
    if (answer.outcome === 'block' || answer.outcome === 'unknown_block' || answer.outcome === 'conflict') return { status: 200, json: answer.json };
    const customerId = this.engine.resolve(r.consumer);
    const cost = this.engine.dearestMicros;
    // Nothing metered, or a consumer the operator lets through unbilled: no credit to reserve.
    if (customerId === undefined || cost === 0) return { status: 200, json: this.allowJson };
    if (now < this.recoveringUntil) {
      return { status: 503, json: JSON.stringify({ error: 'recovering', message: 'leases of the previous run may still be in use', retry_after_ms: this.recoveringUntil - now }) };
    }
    let outcome = this.grant(customerId, r, now);
    if (outcome.kind === 'EXHAUSTED' && this.othersHoldUndrawn(customerId, r.node, now)) {
      // Other nodes hold leases they may not use: ask them to give back what they have not
      // drawn, and wait a moment for it rather than refuse a customer who still has credit.
      const state = this.engine.customer(customerId)!;
      this.stream.recall(this.engine.consumersOf(state.customer));
      await this.releasedOrTimeout(customerId, this.config.leases.recallWaitMs);
      outcome = this.grant(customerId, r, this.now());
    }
    if (outcome.kind === 'EXHAUSTED') {
      this.starved.add(customerId);
      return { status: 200, json: this.engine.exhaustedAnswer(customerId) ?? this.allowJson };
    }
    const { lease } = outcome;
    const needed = lease.expiresAt + this.config.leases.usageGraceMs;
    if (needed > this.horizon) {
      // Stored a step ahead, so a busy service writes it once a step, not on every grant.
      const next = needed + Math.min(HORIZON_STEP_MS, this.config.leases.ttlMs + this.config.leases.usageGraceMs);
      try {
        await this.store.setMeta(HORIZON_KEY, String(next));
        this.horizon = Math.max(this.horizon, next);
      } catch {
        // Not durable: do not hand it out (it stays reserved until it expires).
        return { status: 503, json: JSON.stringify({ error: 'store_unavailable' }) };
      }
    }
    // `credit`: the customer's estimated credit (smallest currency unit) at the grant, for the optional credit header.
    const credit = Math.max(0, this.creditMicros(customerId)) / MICROS_PER_UNIT;
    return { status: 200, json: JSON.stringify({ allow: true, ttl_ms: this.config.decisionTtlMs, lease: {
      id: lease.id, requests: lease.requests, micros: lease.micros, ttl_ms: this.config.leases.ttlMs, credit,
      ...(this.maxCosts ? { max_costs: this.maxCosts } : {}),
    } }) };
  }

  /** −(Stripe balance) − unsettled usage, in micros, before any reservation. */
  private creditMicros(customerId: string): number {
    const state = this.engine.customer(customerId)!;
    return -(state.ledger.balance * MICROS_PER_UNIT + state.ledger.unsettledMicros);
  }

  private grant(customerId: string, r: LeaseRequest, now: number) {
    const dearest = this.engine.dearestMicros;
    // A node that knows its waiting requests' routes asks for no more than they reserve, so a
    // cheap route is served on credit that would not cover the dearest one.
    const costMicros = r.reserve !== undefined ? Math.min(dearest, Math.max(1, r.reserve)) : dearest;
    return this.book.grant({ customerId, consumer: r.consumer, node: r.node, creditMicros: this.creditMicros(customerId), costMicros, want: r.want, now });
  }

  private othersHoldUndrawn(customerId: string, node: string, now: number): boolean {
    return this.book.leasesOf(customerId, now).some((l) => l.node !== node && l.drawn === undefined && now < l.expiresAt);
  }

  private readonly releaseWaiters = new Map<string, Array<() => void>>();

  private releasedOrTimeout(customerId: string, ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() { clearTimeout(timer); resolve(); }
      const list = this.releaseWaiters.get(customerId) ?? [];
      list.push(done);
      this.releaseWaiters.set(customerId, list);
    });
  }

  /** A node gives leases back, saying how many requests (and how much credit) it drew from each. */
  release(node: string, leases: LeaseReturn[]): number {
    const now = this.now();
    const freed: string[] = [];
    for (const l of leases) {
      const customerId = this.book.close(node, l.id, l.drawn, now, l.drawn_micros);
      if (customerId !== undefined) freed.push(customerId);
    }
    for (const id of freed) {
      const waiting = this.releaseWaiters.get(id);
      this.releaseWaiters.delete(id);
      for (const wake of waiting ?? []) wake();
    }
    this.wake(freed);
    return freed.length;
  }

  /**
   * Usage events that name their lease (and what they reserved from it), after the engine counted
   * their cost as unsettled. Only events counted just now (not duplicates) and only against their
   * own consumer's lease.
   */
  settle(events: Array<{ id: string; consumer: string; lease?: unknown; reserved?: number }>): void {
    const now = this.now();
    const freed = new Set<string>();
    for (const e of events) {
      if (typeof e.lease !== 'string' || !this.book.settle(e.lease, e.id, now, e.reserved, e.consumer)) continue;
      // What the request reserved beyond its real cost is free again: a customer refused meanwhile may be served.
      const customerId = this.engine.resolve(e.consumer);
      if (customerId !== undefined) freed.add(customerId);
    }
    if (freed.size) this.wake([...freed]);
  }

  leasesOf(customerId: string): Array<Record<string, unknown>> {
    const now = this.now();
    return this.book.leasesOf(customerId, now).map((l: Lease) => ({
      id: l.id, node: l.node, consumer: l.consumer, requests: l.requests, drawn: l.drawn ?? null, settled: l.settled.size,
      micros: l.micros, drawn_micros: l.drawnMicros ?? null, settled_micros: l.settledMicros,
      open: l.drawn === undefined && now < l.expiresAt, held_requests: this.book.heldRequests(l, now), held_micros: this.book.heldMicros(l, now),
      granted_at: new Date(l.grantedAt).toISOString(), expires_at: new Date(l.expiresAt).toISOString(),
    }));
  }

  /** The least one request may reserve: a starved customer with this much free may be served again. */
  private get cheapestMicros(): number {
    if (!this.maxCosts) return this.engine.dearestMicros;
    const all = [this.maxCosts.default, ...Object.values(this.maxCosts.routes)].filter((m) => m > 0);
    return all.length ? Math.min(...all) : this.engine.dearestMicros;
  }

  /** Starved customers whose credit came back: nodes drop the refusal they cached. */
  private wake(customerIds: string[]): void {
    const now = this.now();
    for (const id of customerIds) {
      if (!this.starved.has(id)) continue;
      const state = this.engine.customer(id);
      if (!state) { this.starved.delete(id); continue; }
      const free = -(state.ledger.balance * MICROS_PER_UNIT + state.ledger.unsettledMicros) - this.book.reservedMicros(id, now);
      if (free >= this.cheapestMicros) {
        this.starved.delete(id);
        this.stream.changed(this.engine.consumersOf(state.customer));
      }
    }
  }
}
