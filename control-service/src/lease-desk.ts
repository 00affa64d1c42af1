// The edge around the pure lease book: reads the engine's customer state, keeps
// the "leases may be outstanding until" horizon in the store (so a restarted
// service grants nothing until every lease the previous run handed out is over),
// and tells nodes over the change stream when credit comes back or is needed.

import type { Engine } from './engine';
import { LeaseBook, type Lease } from './leases';
import { MICROS_PER_UNIT } from './pricing';
import type { Store } from './store/store';
import type { ChangeStream } from './http/stream';
import type { Config } from './config';

const HORIZON_KEY = 'lease_horizon';
/** The horizon is written ahead by this much, so a busy service writes it about once a minute. */
const HORIZON_STEP_MS = 60_000;

export interface LeaseRequest { node: string; consumer: string; want: number; previous?: { id: string; drawn: number } }
export type LeaseAnswer = { status: 200; json: string } | { status: 503; json: string };

export class LeaseDesk {
  readonly book: LeaseBook;
  private horizon = 0;
  private recoveringUntil = 0;
  /** Customers refused for want of free credit: told when it comes back. */
  private readonly starved = new Set<string>();
  private readonly allowJson: string;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly config: Config, private readonly engine: Engine, private readonly store: Store,
    private readonly stream: ChangeStream, private readonly now: () => number = Date.now) {
    this.book = new LeaseBook(config.leases);
    this.allowJson = JSON.stringify({ allow: true, ttl_ms: config.decisionTtlMs });
  }

  async init(): Promise<void> {
    const stored = Number(await this.store.getMeta(HORIZON_KEY) ?? 0);
    this.horizon = stored;
    // Leases from a previous run may still be drawn on (and their usage still arrive) until then.
    this.recoveringUntil = stored > this.now() ? stored : 0;
    this.timer = setInterval(() => this.wake(this.book.expire(this.now())), this.config.leases.expireIntervalMs).unref();
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
      const next = needed + HORIZON_STEP_MS;
      try {
        await this.store.setMeta(HORIZON_KEY, String(next));
        this.horizon = Math.max(this.horizon, next);
      } catch {
        // Not durable: do not hand it out (it stays reserved until it expires).
        return { status: 503, json: JSON.stringify({ error: 'store_unavailable' }) };
      }
    }
    return { status: 200, json: JSON.stringify({ allow: true, ttl_ms: this.config.decisionTtlMs, lease: { id: lease.id, requests: lease.requests, ttl_ms: this.config.leases.ttlMs } }) };
  }

  private grant(customerId: string, r: LeaseRequest, now: number) {
    const state = this.engine.customer(customerId)!;
    const creditMicros = -(state.ledger.balance * MICROS_PER_UNIT + state.ledger.unsettledMicros);
    return this.book.grant({ customerId, consumer: r.consumer, node: r.node, creditMicros, costMicros: this.engine.dearestMicros, want: r.want, now });
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

  /** A node gives leases back, saying how many requests it drew from each. */
  release(node: string, leases: Array<{ id: string; drawn: number }>): number {
    const now = this.now();
    const freed: string[] = [];
    for (const l of leases) {
      const customerId = this.book.close(node, l.id, l.drawn, now);
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

  /** Usage events that name their lease, after the engine counted their cost as unsettled. */
  settle(events: Array<{ id: string; lease?: unknown }>): void {
    const now = this.now();
    for (const e of events) if (typeof e.lease === 'string') this.book.settle(e.lease, e.id, now);
  }

  leasesOf(customerId: string): Array<Record<string, unknown>> {
    const now = this.now();
    return this.book.leasesOf(customerId, now).map((l: Lease) => ({
      id: l.id, node: l.node, consumer: l.consumer, requests: l.requests, drawn: l.drawn ?? null, settled: l.settled.size,
      open: l.drawn === undefined && now < l.expiresAt, held_requests: this.book.heldRequests(l, now),
      granted_at: new Date(l.grantedAt).toISOString(), expires_at: new Date(l.expiresAt).toISOString(),
    }));
  }

  /** Starved customers whose credit came back: nodes drop the refusal they cached. */
  private wake(customerIds: string[]): void {
    const now = this.now();
    for (const id of customerIds) {
      if (!this.starved.has(id)) continue;
      const state = this.engine.customer(id);
      if (!state) { this.starved.delete(id); continue; }
      const free = -(state.ledger.balance * MICROS_PER_UNIT + state.ledger.unsettledMicros) - this.book.reservedMicros(id, now);
      if (free >= this.engine.dearestMicros) {
        this.starved.delete(id);
        this.stream.changed(this.engine.consumersOf(state.customer));
      }
    }
  }
}
