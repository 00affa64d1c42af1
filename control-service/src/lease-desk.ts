// The edge around the lease book: reads the engine's customer state, keeps every lease durable
// in the store before it is answered (so a restart, or another replica, counts it), and tells
// nodes over the change stream when credit comes back or is needed.
//
// Two keepers hold the leases: with one process on SQLite, the pure book in memory is the truth
// and every lease is written through to the file (read back at start); with several replicas on
// PostgreSQL, the database is the truth and a grant is one transaction under the customer's row
// lock (store/postgres.ts grantLeases), so any replica grants and none grants the same credit twice.

import { randomBytes } from 'node:crypto';
import type { Engine } from './engine';
import { LeaseBook, leaseRequests, nextLeaseSize, type Lease, type LeaseOptions } from './leases';
import { isVariable, MICROS_PER_UNIT } from './pricing';
import type { LeaseRow, Store } from './store/store';
import type { CreditState, LeaseNotice, PostgresStore } from './store/postgres';
import type { ChangeStream } from './http/stream';
import type { Config } from './config';
import { boundLease, capLeft, type CapLimits, type ConsumerSpend, type LimitKind } from './caps/caps';

/** Written by versions before durable leases: until when their leases (memory only) may be in use. Read once after upgrading. */
const LEGACY_HORIZON_KEY = 'lease_horizon';
/** Leases that hold nothing any more are deleted from the store this often. */
const PRUNE_EVERY_MS = 10_000;
/** Grants gathered into one store write (SQLite) or one transaction (PostgreSQL) at most. */
const MAX_GRANT_BATCH = 500;

/** `drawn_micros`: the credit drawn (route max_costs); without it, `drawn` requests at the lease's costMicros. */
export interface LeaseReturn { id: string; drawn: number; drawn_micros?: number }
/** `reserve`: the most one of the `want` waiting requests reserves (its route's max_cost), when the node knows it. */
export interface LeaseRequest { node: string; consumer: string; want: number; reserve?: number; previous?: LeaseReturn }
export type LeaseAnswer = { status: 200; json: string } | { status: 503; json: string };

/**
 * One grant asked of a keeper. `caps` (issue 23): the consumer's spending caps; a lease is then
 * bounded by its cap left less what its other leases hold (caps/caps.ts boundLease).
 */
interface GrantAsk { customerId: string; consumer: string; node: string; costMicros: number; want: number; caps?: CapLimits; previous?: LeaseReturn }
/** `creditMicros`: the tighter of the team's credit and the consumer's cap left. `limit`/`resetsAt`: which one refused. */
type Granted = { kind: 'GRANTED'; lease: LeaseRow; creditMicros: number } | { kind: 'EXHAUSTED'; limit?: LimitKind; resetsAt?: number };

/** Where leases live (see the top of this file). */
interface Keeper {
  init(now: number): Promise<void>;
  grant(ask: GrantAsk, now: number): Promise<Granted>;
  /**
   * Closes a node's leases; answers the leases it closed, as they are now. `durable` false: the
   * closings may still be on their way to the store (a renewal's previous lease on SQLite: the book
   * in memory has closed it; a closing lost in a crash only keeps credit reserved longer).
   */
  close(node: string, returns: LeaseReturn[], now: number, durable?: boolean): Promise<LeaseRow[]>;
  /** Usage events the store counted now (and settled against their leases in that commit). */
  settled(events: Array<{ id: string; consumer: string; lease?: unknown; reserved?: number }>, now: number): void;
  /**
   * Credit free of every reservation, and what other nodes' leases hold that a recall may bring back (micros);
   * with `consumer`, also what other nodes' leases of that consumer hold (a recall frees cap only from those).
   */
  state(customerId: string, node: string | undefined, now: number, consumer?: string): Promise<CreditNow | undefined>;
  list(customerId: string, now: number): Promise<LeaseRow[]>;
  tick(now: number): Promise<string[]>;
}

/** `consumerOthersHoldMicros`: asked for a consumer only. */
interface CreditNow { freeMicros: number; othersHoldMicros: number; consumerOthersHoldMicros?: number }

/** Random bytes drawn 256 ids at a time: one getrandom call per 256 leases instead of one per lease. */
let idBytes = Buffer.alloc(0);
let idOffset = 0;

/** A lease id: 12 random bytes, base64url (as unguessable as before). */
function newLeaseId(): string {
  if (idOffset + 12 > idBytes.length) { idBytes = randomBytes(12 * 256); idOffset = 0; }
  idOffset += 12;
  return `l${idBytes.toString('base64url', idOffset - 12, idOffset)}`;
}

/** Gathers calls made while a write is out into the next one (one transaction for many grants). */
class Batcher<I, O> {
  private queue: Array<{ item: I; resolve(o: O): void; reject(e: unknown): void }> = [];
  private running = 0;
  constructor(private readonly run: (items: I[]) => Promise<O[]>, private readonly parallel = 1) {}
  push(item: I): Promise<O> {
    return new Promise<O>((resolve, reject) => {
      this.queue.push({ item, resolve, reject });
      if (this.running < this.parallel) void this.next();
    });
  }
  private async next(): Promise<void> {
    if (!this.queue.length) return;
    this.running++;
    // Calls made in this turn join the batch.
    await new Promise<void>((r) => setImmediate(r));
    const batch = this.queue.splice(0, MAX_GRANT_BATCH);
    try {
      const out = batch.length ? await this.run(batch.map((b) => b.item)) : [];
      batch.forEach((b, i) => b.resolve(out[i]));
    } catch (err) {
      for (const b of batch) b.reject(err);
    }
    this.running--;
    if (this.queue.length && this.running < this.parallel) void this.next();
  }
}

/** One process on SQLite: the book in memory, written through to the file. */
class MemoryKeeper implements Keeper {
  readonly book: LeaseBook;
  private readonly writes: Batcher<{ open?: LeaseRow; close?: { id: string; drawn: number; drawnMicros: number } }, void>;

  constructor(private readonly opts: LeaseOptions, private readonly store: Store, private readonly creditOf: (customerId: string) => number | undefined,
    private readonly spendOf: (consumer: string) => ConsumerSpend) {
    this.book = new LeaseBook(opts, newLeaseId);
    this.writes = new Batcher(async (items) => {
      await this.store.recordLeases({ open: items.flatMap((i) => (i.open ? [i.open] : [])), close: items.flatMap((i) => (i.close ? [i.close] : [])) });
      return items.map(() => undefined);
    });
  }

  async init(now: number): Promise<void> {
    for (const row of await this.store.heldLeases(now)) this.book.restore(row);
  }

  async grant(ask: GrantAsk, now: number): Promise<Granted> {
    let creditMicros = this.creditOf(ask.customerId);
    if (creditMicros === undefined) return { kind: 'EXHAUSTED' };
    // Issue 23: the book grants from credit − reserved; a capped consumer's lease is held to its cap left less its other leases.
    // The credit header shows the tighter of the team's credit and the consumer's cap left.
    let shown = creditMicros;
    let capBound: ReturnType<typeof boundLease> | undefined;
    let resetsAt: number | undefined;
    if (ask.caps && (ask.caps.daily !== undefined || ask.caps.monthly !== undefined)) {
      const left = capLeft(ask.caps, this.spendOf(ask.consumer), now);
      const reserved = this.book.reservedMicros(ask.customerId, now);
      // Under every customer: a consumer just moved from another team may still hold leases there.
      const mine = this.book.consumerHeldMicros(ask.consumer, now);
      capBound = boundLease(creditMicros - reserved, left.leftMicros, mine);
      resetsAt = left.resetsAt;
      creditMicros = Math.min(creditMicros, reserved + capBound.micros);
      shown = Math.min(shown, left.leftMicros ?? Infinity);
    }
    const outcome = this.book.grant({ ...ask, creditMicros, now });
    if (outcome.kind === 'EXHAUSTED') return capBound?.limit === 'consumer_cap' ? { kind: 'EXHAUSTED', limit: 'consumer_cap', resetsAt } : { kind: 'EXHAUSTED', limit: 'no_credit' };
    const lease = rowOf(outcome.lease, this.opts);
    try {
      await this.writes.push({ open: lease });
    } catch (err) {
      // Not durable: not handed out, and its credit is free again.
      this.book.close(ask.node, lease.id, 0, now, 0);
      throw err;
    }
    return { kind: 'GRANTED', lease, creditMicros: shown };
  }

  async close(node: string, returns: LeaseReturn[], now: number, durable = true): Promise<LeaseRow[]> {
    const closed: LeaseRow[] = [];
    const writes: Array<Promise<void>> = [];
    for (const r of returns) {
      const l = this.book.get(r.id);
      const customerId = this.book.close(node, r.id, r.drawn, now, r.drawn_micros);
      if (customerId === undefined || !l) continue;
      closed.push(rowOf(l, this.opts));
      // A closing lost in a crash only keeps credit reserved longer (until the lease's held_until).
      writes.push(this.writes.push({ close: { id: r.id, drawn: l.drawn ?? 0, drawnMicros: l.drawnMicros ?? 0 } }).catch(() => undefined));
    }
    // Not durable: they go with the next write (a renewal's grant), without a write cycle of their own first.
    if (durable) await Promise.all(writes);
    return closed;
  }

  settled(events: Array<{ id: string; consumer: string; lease?: unknown; reserved?: number }>, now: number): void {
    for (const e of events) if (typeof e.lease === 'string') this.book.settle(e.lease, e.id, now, e.reserved, e.consumer);
  }

  async state(customerId: string, node: string | undefined, now: number, consumer?: string): Promise<CreditNow | undefined> {
    const credit = this.creditOf(customerId);
    if (credit === undefined) return undefined;
    let others = 0;
    let consumerOthers = 0;
    // An open lease past its expiry is not drawn on any more (its node is gone, or its release is on the way): nothing to recall.
    for (const l of this.book.leasesOf(customerId, now)) {
      if (l.node === node || (l.drawn === undefined && now >= l.expiresAt)) continue;
      const held = this.book.heldMicros(l, now);
      others += held;
      if (l.consumer === consumer) consumerOthers += held;
    }
    return { freeMicros: credit - this.book.reservedMicros(customerId, now), othersHoldMicros: others, ...(consumer !== undefined ? { consumerOthersHoldMicros: consumerOthers } : {}) };
  }

  async list(customerId: string, now: number): Promise<LeaseRow[]> {
    return this.book.leasesOf(customerId, now).map((l) => rowOf(l, this.opts));
  }

  private lastPrune = 0;
  async tick(now: number): Promise<string[]> {
    const ended = this.book.expire(now);
    if (now - this.lastPrune >= PRUNE_EVERY_MS) {
      this.lastPrune = now;
      await this.store.pruneLeases(now).catch(() => 0);
    }
    return ended;
  }
}

function rowOf(l: Lease, opts: LeaseOptions): LeaseRow {
  return {
    id: l.id, node: l.node, customerId: l.customerId, consumer: l.consumer, requests: l.requests, costMicros: l.costMicros, micros: l.micros,
    grantedAt: l.grantedAt, expiresAt: l.expiresAt, heldUntil: l.expiresAt + opts.usageGraceMs,
    drawn: l.drawn ?? null, drawnMicros: l.drawnMicros ?? null, settledMicros: l.settledMicros,
  };
}

/** Several replicas on PostgreSQL: the leases table is the truth; grants are batched transactions. */
class PostgresKeeper implements Keeper {
  /** The size of the next lease per customer and node (a sizing hint only: each replica keeps its own). */
  private readonly nextSize = new Map<string, number>();
  private readonly grants: Batcher<GrantAsk & { now: number }, Granted>;

  /** `onClosed`: leases given back with grants (a renewal's previous lease), closed in the grant's transaction. */
  constructor(private readonly opts: LeaseOptions, private readonly store: PostgresStore, private readonly onClosed: (rows: LeaseRow[]) => void) {
    // One batch out at a time per replica: the next gathers meanwhile, so batches are larger and each grant
    // costs less CPU (bench:postgres, alternating 1 and 2: 15–25 % less at the replicas and at PostgreSQL).
    this.grants = new Batcher((asks) => this.grantBatch(asks), 1);
  }

  async init(): Promise<void> { /* nothing to load: every grant reads the table */ }

  grant(ask: GrantAsk, now: number): Promise<Granted> {
    return this.grants.push({ ...ask, now });
  }

  private async grantBatch(asks: Array<GrantAsk & { now: number }>): Promise<Granted[]> {
    const now = Math.max(...asks.map((a) => a.now));
    const out: Granted[] = [];
    const capped = (a: GrantAsk) => a.caps !== undefined && (a.caps.daily !== undefined || a.caps.monthly !== undefined);
    const consumers = [...new Set(asks.filter(capped).map((a) => a.consumer))];
    // A renewal gives its previous lease back in the same transaction, before the credit is read: one round trip less, and what it did not draw counts at once.
    const closes = asks.flatMap((a) => (a.previous ? [{ id: a.previous.id, drawn: a.previous.drawn, drawnMicros: a.previous.drawn_micros, node: a.node }] : []));
    const { closed } = await this.store.grantLeases(asks.map((a) => a.customerId), now, (states, consumerStates, closedNow) => {
      out.length = 0;
      for (const l of closedNow) this.nextSize.set(`${l.customerId}\n${l.node}`, nextLeaseSize(this.opts, l, l.drawn ?? 0, now));
      const held = new Map<string, number>();
      const heldByConsumer = new Map<string, number>();
      const rows: LeaseRow[] = [];
      for (const a of asks) {
        const s = states.get(a.customerId);
        if (!s) { out.push({ kind: 'EXHAUSTED' }); continue; }
        const taken = held.get(a.customerId) ?? 0;
        const key = `${a.customerId}\n${a.node}`;
        let free = s.creditMicros - s.heldMicros - taken;
        let credit = s.creditMicros;
        let refusal: Granted = { kind: 'EXHAUSTED', limit: 'no_credit' };
        if (capped(a)) {
          // Issue 23: the consumer's spend and what its leases hold, read in the same transaction (one statement).
          const cs = consumerStates.get(a.consumer) ?? { heldMicros: 0, spend: { daily: { start: 0, micros: 0 }, monthly: { start: 0, micros: 0 } } };
          const left = capLeft(a.caps!, cs.spend, a.now);
          const bound = boundLease(free, left.leftMicros, cs.heldMicros + (heldByConsumer.get(a.consumer) ?? 0));
          if (bound.limit === 'consumer_cap') refusal = { kind: 'EXHAUSTED', limit: 'consumer_cap', resetsAt: left.resetsAt };
          free = bound.micros;
          credit = Math.min(credit, left.leftMicros ?? Infinity);
        }
        const requests = leaseRequests(this.opts, free, a.costMicros, a.want, this.nextSize.get(key));
        if (requests < 1) { out.push(refusal); continue; }
        const micros = requests * a.costMicros;
        held.set(a.customerId, taken + micros);
        heldByConsumer.set(a.consumer, (heldByConsumer.get(a.consumer) ?? 0) + micros);
        const lease: LeaseRow = {
          id: newLeaseId(), node: a.node, customerId: a.customerId, consumer: a.consumer, requests, costMicros: a.costMicros, micros,
          grantedAt: a.now, expiresAt: a.now + this.opts.ttlMs, heldUntil: a.now + this.opts.ttlMs + this.opts.usageGraceMs,
          drawn: null, drawnMicros: null, settledMicros: 0,
        };
        rows.push(lease);
        out.push({ kind: 'GRANTED', lease, creditMicros: credit });
      }
      return rows;
    }, { consumers, closes });
    if (closed.length) this.onClosed(closed);
    return out;
  }

  async close(node: string, returns: LeaseReturn[], now: number): Promise<LeaseRow[]> {
    // Closings that arrive together (each renewal gives one back) share one statement.
    const rows = (await Promise.all(returns.map((r) => this.closes.push({ id: r.id, drawn: r.drawn, drawnMicros: r.drawn_micros, node })))).flat();
    for (const l of rows) this.nextSize.set(`${l.customerId}\n${l.node}`, nextLeaseSize(this.opts, l, l.drawn ?? 0, now));
    return rows;
  }

  private readonly closes = new Batcher<{ id: string; drawn: number; drawnMicros?: number; node: string }, LeaseRow[]>(async (items) => {
    const rows = await this.store.closeLeases(undefined, items);
    const byId = new Map(rows.map((l) => [l.id, l]));
    return items.map((i) => { const l = byId.get(i.id); return l && l.node === i.node ? [l] : []; });
  }, 2);

  settled(): void { /* settled in the usage commit itself */ }

  async state(customerId: string, node: string | undefined, now: number, consumer?: string): Promise<CreditNow | undefined> {
    const s: CreditState | undefined = (await this.store.readCreditStates([customerId], now, node, consumer)).get(customerId);
    return s && { freeMicros: s.creditMicros - s.heldMicros, othersHoldMicros: s.othersHoldMicros, ...(consumer !== undefined ? { consumerOthersHoldMicros: s.consumerOthersHoldMicros ?? 0 } : {}) };
  }

  list(customerId: string, now: number): Promise<LeaseRow[]> {
    return this.store.heldLeases(now, customerId);
  }

  private lastPrune = 0;
  async tick(now: number): Promise<string[]> {
    if (now - this.lastPrune >= PRUNE_EVERY_MS) {
      this.lastPrune = now;
      await this.store.pruneLeases(now).catch(() => 0);
    }
    return [];
  }
}

export class LeaseDesk {
  private readonly keeper: Keeper;
  private recoveringUntil = 0;
  /** Customers refused for want of free credit: told when it comes back. */
  private readonly starved = new Set<string>();
  private readonly allowJson: string;
  private timer: NodeJS.Timeout | undefined;
  private stopping = false;
  /** Lease calls being answered now (a stopping replica finishes them). */
  private inFlight = 0;
  private idle: Array<() => void> = [];
  /**
   * With prices by measured units: the max_cost a request reserves, by default and per
   * route (name or id, as metering.routes keys it), sent with each lease so the node draws
   * each request's own maximum (it reads the route only then). Undefined with fixed prices
   * only: the node then draws the lease's costMicros (the dearest) per request.
   */
  private readonly maxCosts: { default: number; routes: Record<string, number> } | undefined;
  /** Tells the other replicas (PostgreSQL): recalls reach nodes streaming from them, freed credit wakes their waiters. */
  private readonly notify: ((notice: LeaseNotice) => void) | undefined;

  constructor(private readonly config: Config, private readonly engine: Engine, private readonly store: Store,
    private readonly stream: ChangeStream, private readonly now: () => number = Date.now) {
    this.allowJson = JSON.stringify({ allow: true, ttl_ms: config.decisionTtlMs });
    const pricing = config.metering.pricing;
    this.maxCosts = isVariable(pricing.defaultPrice) || [...pricing.routePrices.values()].some(isVariable)
      ? { default: pricing.defaultPrice.maxCostMicros, routes: Object.fromEntries([...pricing.routePrices].map(([r, p]) => [r, p.maxCostMicros])) }
      : undefined;
    const pg = 'grantLeases' in store ? store as unknown as PostgresStore : undefined;
    this.keeper = pg ? new PostgresKeeper(config.leases, pg, (rows) => this.closedNow(rows)) : new MemoryKeeper(config.leases, store, (id) => this.engineCredit(id), (consumer) => this.engine.spendOf(consumer));
    this.notify = pg ? (notice) => { pg.notifyLeases(notice).catch(() => undefined); } : undefined;
  }

  /** The book in memory (SQLite only; undefined on PostgreSQL, where the leases table is the book). */
  get book(): LeaseBook | undefined { return this.keeper instanceof MemoryKeeper ? this.keeper.book : undefined; }

  async init(): Promise<void> {
    const now = this.now();
    // After upgrading from a version whose leases lived in memory only: its horizon is honoured once.
    const legacy = Number(await this.store.getMeta(LEGACY_HORIZON_KEY) ?? 0);
    this.recoveringUntil = legacy > now ? legacy : 0;
    await this.keeper.init(now);
    this.timer = setInterval(() => {
      this.keeper.tick(this.now()).then((ended) => this.wake(ended), () => undefined);
    }, this.config.leases.expireIntervalMs).unref();
  }

  stop(): void { clearInterval(this.timer); }

  /** A stopping replica answers new lease calls 503 (the node asks the next replica at once) and finishes the ones in flight. */
  async drain(timeoutMs: number): Promise<void> {
    this.stopping = true;
    if (this.inFlight === 0) return;
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, timeoutMs);
      this.idle.push(() => { clearTimeout(t); resolve(); });
    });
  }

  /** Until when this service grants nothing after upgrading from memory-only leases (0: not recovering). */
  get recoveryEndsAt(): number { return this.recoveringUntil > this.now() ? this.recoveringUntil : 0; }

  async request(r: LeaseRequest): Promise<LeaseAnswer> {
    if (this.stopping) return { status: 503, json: JSON.stringify({ error: 'stopping', message: 'this replica is stopping; ask another' }) };
    this.inFlight++;
    try {
      return await this.answer(r);
    } catch {
      // The store did not take the lease: nothing was handed out.
      return { status: 503, json: JSON.stringify({ error: 'store_unavailable' }) };
    } finally {
      if (--this.inFlight === 0) for (const wake of this.idle.splice(0)) wake();
    }
  }

  private async answer(r: LeaseRequest): Promise<LeaseAnswer> {
    // The lease a renewal gives back: on PostgreSQL closed in the grant's own transaction; else (or when nothing is granted) first.
    let previous = r.previous;
    const releaseFirst = async () => {
      if (!previous) return;
      const p = previous;
      previous = undefined;
      await this.release(r.node, [p], false);
    };
    if (!(this.keeper instanceof PostgresKeeper)) await releaseFirst();
    const answer = this.engine.decide(r.consumer);
    if (answer.outcome === 'block' || answer.outcome === 'unknown_block' || answer.outcome === 'conflict') { await releaseFirst(); return { status: 200, json: answer.json }; }
    const customerId = this.engine.resolve(r.consumer);
    const dearest = this.engine.dearestMicros;
    // Nothing metered, or a consumer the operator lets through unbilled: no credit to reserve.
    if (customerId === undefined || dearest === 0) { await releaseFirst(); return { status: 200, json: this.allowJson }; }
    const now = this.now();
    if (now < this.recoveringUntil) {
      await releaseFirst();
      return { status: 503, json: JSON.stringify({ error: 'recovering', message: 'leases of the previous version may still be in use', retry_after_ms: this.recoveringUntil - now }) };
    }
    // A node that knows its waiting requests' routes asks for no more than they reserve, so a
    // cheap route is served on credit that would not cover the dearest one.
    const costMicros = r.reserve !== undefined ? Math.min(dearest, Math.max(1, r.reserve)) : dearest;
    const ask: GrantAsk = { customerId, consumer: r.consumer, node: r.node, costMicros, want: r.want, caps: this.engine.capLimitsOf(r.consumer) };
    let outcome = await this.keeper.grant(previous ? { ...ask, previous } : ask, now);
    if (outcome.kind === 'EXHAUSTED') outcome = await this.recallAndRetry(ask, outcome);
    if (outcome.kind === 'EXHAUSTED') {
      this.starved.add(customerId);
      // Issue 23: the consumer's cap refused, not the team's credit: say so, with Retry-After until the reset.
      if (outcome.limit === 'consumer_cap' && outcome.resetsAt !== undefined) return { status: 200, json: this.engine.capRefusalAt(r.consumer, outcome.resetsAt, this.now()) };
      return { status: 200, json: this.engine.exhaustedAnswer(customerId) ?? this.allowJson };
    }
    const { lease } = outcome;
    // `credit`: the customer's estimated credit (smallest currency unit) at the grant, for the optional credit header.
    const credit = Math.max(0, outcome.creditMicros) / MICROS_PER_UNIT;
    return { status: 200, json: JSON.stringify({ allow: true, ttl_ms: this.config.decisionTtlMs, lease: {
      id: lease.id, requests: lease.requests, micros: lease.micros, ttl_ms: this.config.leases.ttlMs, credit,
      ...(this.maxCosts ? { max_costs: this.maxCosts } : {}),
    } }) };
  }

  /**
   * Short of credit while other nodes' leases hold some (undrawn, or drawn and not yet settled by
   * their usage): ask those nodes, at whichever replica they stream from, to give back what they did
   * not draw and to send their queued usage now; try the grant again each time a lease of this
   * customer is given back or settled, for up to leases.recall_wait_ms, before refusing.
   */
  private async recallAndRetry(ask: GrantAsk, first: Granted): Promise<Granted> {
    const wait = this.config.leases.recallWaitMs;
    if (wait <= 0) return first;
    // Worth waiting only while other nodes hold enough that, given back, it would pay for one request;
    // refused by the consumer's cap, only while other nodes' leases of that consumer hold some (what
    // other consumers' leases hold frees team credit, never this consumer's cap).
    const capRefusal = first.kind === 'EXHAUSTED' && first.limit === 'consumer_cap';
    const worthWaiting = async () => {
      const state = await this.keeper.state(ask.customerId, ask.node, this.now(), capRefusal ? ask.consumer : undefined);
      if (state === undefined || state.othersHoldMicros <= 0 || state.freeMicros + state.othersHoldMicros < ask.costMicros) return false;
      return !capRefusal || (state.consumerOthersHoldMicros ?? 0) > 0;
    };
    if (!(await worthWaiting())) return first;
    const held = this.engine.customer(ask.customerId);
    if (!held) return first;
    const consumers = this.engine.consumersOf(held.customer);
    this.stream.recall(consumers);
    this.notify?.({ recall: consumers });
    const deadline = this.now() + wait;
    let outcome = first;
    while (outcome.kind === 'EXHAUSTED') {
      const left = deadline - this.now();
      if (left <= 0 || !(await this.freedOrTimeout(ask.customerId, left))) break;
      outcome = await this.keeper.grant(ask, this.now());
      if (outcome.kind === 'EXHAUSTED' && !(await worthWaiting())) break;
    }
    return outcome;
  }

  private readonly freedWaiters = new Map<string, Array<(freed: boolean) => void>>();

  /** True when a lease of this customer was given back or settled within `ms`. */
  private freedOrTimeout(customerId: string, ms: number): Promise<boolean> {
    return new Promise((resolve) => {
      const list = this.freedWaiters.get(customerId) ?? [];
      const done = (freed: boolean) => { clearTimeout(timer); resolve(freed); };
      const timer = setTimeout(() => {
        const l = this.freedWaiters.get(customerId);
        if (l) { const i = l.indexOf(done); if (i >= 0) l.splice(i, 1); if (!l.length) this.freedWaiters.delete(customerId); }
        resolve(false);
      }, ms);
      list.push(done);
      this.freedWaiters.set(customerId, list);
    });
  }

  /** Credit of these customers may have come back (a release, a settle, here or at another replica). */
  freed(customerIds: Iterable<string>): void {
    const ids = [...new Set(customerIds)];
    for (const id of ids) {
      const waiting = this.freedWaiters.get(id);
      if (!waiting) continue;
      this.freedWaiters.delete(id);
      for (const wake of waiting) wake(true);
    }
    this.wake(ids);
  }

  /** News from another replica (PostgreSQL): recalls for nodes streaming from here, credit come back. */
  onNotice(notice: LeaseNotice): void {
    if (notice.recall?.length) this.stream.recall(notice.recall);
    if (notice.freed?.length) this.freed(notice.freed);
  }

  /** A node gives leases back, saying how many requests (and how much credit) it drew from each. */
  /** `durable` false: the closings may still be on their way to the store when this answers (see Keeper.close). */
  async release(node: string, leases: LeaseReturn[], durable = true): Promise<number> {
    const closed = await this.keeper.close(node, leases, this.now(), durable);
    this.closedNow(closed);
    return closed.length;
  }

  /** Leases just closed (a release, or a renewal's previous lease): their customers' waiters retry. */
  private closedNow(closed: LeaseRow[]): void {
    if (!closed.length) return;
    this.freed(closed.map((l) => l.customerId));
    // Other replicas hear only of credit given back undrawn (a renewal that drew its lease in full frees nothing).
    const undrawn = [...new Set(closed.filter((l) => (l.drawnMicros ?? 0) < l.micros).map((l) => l.customerId))];
    if (undrawn.length) this.notify?.({ freed: undrawn });
  }

  /**
   * Usage events that name their lease (and what they reserved from it), after the store counted
   * them (and settled their leases in that commit). Only events counted just now (not duplicates)
   * and only against their own consumer's lease.
   */
  settle(events: Array<{ id: string; consumer: string; lease?: unknown; reserved?: number }>): void {
    this.keeper.settled(events, this.now());
    const freed = new Set<string>();
    for (const e of events) {
      if (typeof e.lease !== 'string') continue;
      const customerId = this.engine.resolve(e.consumer);
      if (customerId !== undefined) freed.add(customerId);
    }
    // What a request reserved beyond its real cost is free again: waiters retry, a customer refused meanwhile may be served.
    if (freed.size) this.freed(freed);
  }

  async leasesOf(customerId: string): Promise<Array<Record<string, unknown>>> {
    const now = this.now();
    return (await this.keeper.list(customerId, now)).map((l) => {
      const heldMicros = now >= l.heldUntil ? 0 : Math.max(0, (l.drawnMicros ?? l.micros) - l.settledMicros);
      return {
        id: l.id, node: l.node, consumer: l.consumer, requests: l.requests, drawn: l.drawn,
        micros: l.micros, drawn_micros: l.drawnMicros, settled_micros: l.settledMicros,
        open: l.drawn === null && now < l.expiresAt, held_requests: Math.ceil(heldMicros / l.costMicros), held_micros: heldMicros,
        granted_at: new Date(l.grantedAt).toISOString(), expires_at: new Date(l.expiresAt).toISOString(),
      };
    });
  }

  /** −(Stripe balance) − unsettled usage, in micros, before any reservation, as this replica's engine holds it. */
  private engineCredit(customerId: string): number | undefined {
    const state = this.engine.customer(customerId);
    return state && -(state.ledger.balance * MICROS_PER_UNIT + state.ledger.unsettledMicros);
  }

  /** The least one request may reserve: a starved customer with this much free may be served again. */
  private get cheapestMicros(): number {
    if (!this.maxCosts) return this.engine.dearestMicros;
    const all = [this.maxCosts.default, ...Object.values(this.maxCosts.routes)].filter((m) => m > 0);
    return all.length ? Math.min(...all) : this.engine.dearestMicros;
  }

  /** Starved customers whose credit came back: nodes drop the refusal they cached. */
  private wake(customerIds: string[]): void {
    for (const id of customerIds) {
      if (!this.starved.has(id)) continue;
      void this.keeper.state(id, undefined, this.now()).then((s) => {
        if (!this.starved.has(id)) return;
        const state = this.engine.customer(id);
        if (!s || !state) { this.starved.delete(id); return; }
        if (s.freeMicros >= this.cheapestMicros) {
          this.starved.delete(id);
          this.stream.changed(this.engine.consumersOf(state.customer));
        }
      }, () => undefined);
    }
  }
}
