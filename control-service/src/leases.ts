// The lease book: credit reserved to gateway nodes. Pure (time is passed in).
//
// Per customer, credit available = −(Stripe balance) − unsettled usage − outstanding
// reservations. A node serves a consumer only on a lease granted from that available
// credit, so the requests all nodes may serve never cost more than the credit.
//
// A lease is an amount of credit (`micros`), sized as a number of requests at the
// reservation of one request (`costMicros`: the dearest max_cost, or the one the node
// asked for). A request draws its route's max_cost from it at access, so with prices
// by measured units requests draw different amounts. It reserves
//   open:   micros − settled       (the node may still draw any of it)
//   closed: drawnMicros − settled  (the node said how much it drew; the rest came back)
// where `settled` sums what the distinct usage events reported against it had reserved
// (their real cost, never more than that, is now in the customer's unsettled usage, so
// the reservation lets go of them: the difference is free credit again). An open lease the node never closes (a node that died) keeps its reservation
// until `expiresAt + usageGraceMs`: the node stops drawing at `expiresAt`, and its usage
// has `usageGraceMs` more to arrive.

export interface LeaseOptions {
  /** How long a node may draw on a lease. */
  ttlMs: number;
  /** After a lease ends, how long its drawn-but-unreported requests stay reserved. */
  usageGraceMs: number;
  /** The first lease a node gets for a customer, in requests. */
  initialRequests: number;
  /** Cap on one lease, in requests. */
  maxRequests: number;
}

export interface Lease {
  id: string;
  customerId: string;
  consumer: string;
  node: string;
  requests: number;
  costMicros: number;
  /** The credit reserved: requests × costMicros. */
  micros: number;
  grantedAt: number;
  expiresAt: number;
  /** Set when the node closed the lease (renewal or release): requests, and micros, drawn. */
  drawn: number | undefined;
  drawnMicros: number | undefined;
  /** Ids of usage events settled against this lease (dedupes resent batches), and what they had reserved. */
  settled: Set<string>;
  settledMicros: number;
}

export interface GrantInput {
  customerId: string;
  consumer: string;
  node: string;
  /** −(balance) − unsettled usage, in micros, before any reservation. */
  creditMicros: number;
  /** The reservation of one request, in micros (> 0): the dearest max_cost, or less when the node asks for less. */
  costMicros: number;
  /** Requests waiting at the node for this grant. */
  want: number;
  now: number;
}

export type GrantOutcome =
  | { kind: 'GRANTED'; lease: Lease }
  /** Less than one request of credit is free; `reservedMicros` of it is held by leases. */
  | { kind: 'EXHAUSTED'; reservedMicros: number };

export class LeaseBook {
  private readonly byId = new Map<string, Lease>();
  private readonly byCustomer = new Map<string, Set<Lease>>();
  /** A consumer's leases under every customer (a consumer moved between teams holds leases at both for a while). */
  private readonly byConsumer = new Map<string, Set<Lease>>();
  /** The size of the next lease per customer and node: doubles while leases run out, shrinks to what was drawn. */
  private readonly nextSize = new Map<string, number>();
  private seq = 0;
  /** Customers whose leases ended since the last expire() (however they were noticed). */
  private readonly ended = new Set<string>();

  constructor(private readonly opts: LeaseOptions, private readonly newId: () => string = () => `l${Date.now().toString(36)}${(++this.seq).toString(36)}`) {}

  /** Micros this customer's leases hold now. */
  reservedMicros(customerId: string, now: number): number {
    const leases = this.byCustomer.get(customerId);
    if (!leases) return 0;
    let sum = 0;
    for (const l of leases) {
      const held = this.heldMicros(l, now);
      if (held === 0) this.drop(l); else sum += held;
    }
    return sum;
  }

  grant(input: GrantInput, ): GrantOutcome {
    const reserved = this.reservedMicros(input.customerId, input.now);
    const key = `${input.customerId}\n${input.node}`;
    const requests = leaseRequests(this.opts, input.creditMicros - reserved, input.costMicros, input.want, this.nextSize.get(key));
    if (requests < 1) return { kind: 'EXHAUSTED', reservedMicros: reserved };
    const lease: Lease = {
      id: this.newId(), customerId: input.customerId, consumer: input.consumer, node: input.node,
      requests, costMicros: input.costMicros, micros: requests * input.costMicros, grantedAt: input.now, expiresAt: input.now + this.opts.ttlMs,
      drawn: undefined, drawnMicros: undefined, settled: new Set(), settledMicros: 0,
    };
    this.add(lease);
    return { kind: 'GRANTED', lease };
  }

  /**
   * The node is done with a lease and drew `drawn` requests, `drawnMicros` of credit, from
   * it (a node that does not say drew `drawn` × costMicros): the rest comes back at once.
   * Only the node that holds it can close it. Returns the customer, or undefined for a
   * lease unknown here (already expired, or another node's).
   */
  close(node: string, leaseId: string, drawn: number, now: number, drawnMicros?: number): string | undefined {
    const l = this.byId.get(leaseId);
    if (!l || l.node !== node || l.drawn !== undefined) return undefined;
    l.drawn = Math.max(0, Math.min(l.requests, Math.floor(drawn)));
    l.drawnMicros = Math.max(0, Math.min(l.micros, Math.floor(drawnMicros ?? l.drawn * l.costMicros)));
    this.nextSize.set(`${l.customerId}\n${l.node}`, nextLeaseSize(this.opts, l, l.drawn, now));
    if (this.heldMicros(l, now) === 0) this.drop(l);
    return l.customerId;
  }

  /**
   * A usage event reported against a lease, which had reserved `reservedMicros` (default
   * costMicros): that no longer needs reserving, since its real cost (capped at it) is now
   * unsettled usage. Never more than the lease drew. False when unknown, seen, or for another
   * consumer (its cost counts against someone else: letting go of this reservation would free
   * credit nobody spent).
   */
  settle(leaseId: string, eventId: string, now: number, reservedMicros?: number, consumer?: string): boolean {
    const l = this.byId.get(leaseId);
    if (!l || l.settled.has(eventId)) return false;
    if (consumer !== undefined && consumer !== l.consumer) return false;
    const limit = l.drawnMicros ?? l.micros;
    if (l.settledMicros >= limit) return false;
    l.settled.add(eventId);
    l.settledMicros += Math.min(limit - l.settledMicros, Math.max(0, Math.floor(reservedMicros ?? l.costMicros)));
    if (this.heldMicros(l, now) === 0) this.drop(l);
    return true;
  }

  /** Drops leases past their grace; returns the customers whose leases ended since the last call. */
  expire(now: number): string[] {
    for (const l of this.byId.values()) if (this.heldMicros(l, now) === 0) this.drop(l);
    const ended = [...this.ended];
    this.ended.clear();
    return ended;
  }

  /** Open leases of a customer (for recalls) and all its leases, read-only. */
  leasesOf(customerId: string, now: number): Lease[] {
    this.reservedMicros(customerId, now);
    return [...(this.byCustomer.get(customerId) ?? [])];
  }

  heldMicros(l: Lease, now: number): number {
    if (now >= l.expiresAt + this.opts.usageGraceMs) return 0;
    return Math.max(0, (l.drawnMicros ?? l.micros) - l.settledMicros);
  }

  /** What a lease holds, in requests of its costMicros (rounded up), for the admin view. */
  heldRequests(l: Lease, now: number): number {
    return Math.ceil(this.heldMicros(l, now) / l.costMicros);
  }

  get size(): number { return this.byId.size; }

  /** A lease by id, while the book holds it. */
  get(id: string): Lease | undefined { return this.byId.get(id); }

  /**
   * A lease read back from the store after a restart: it holds what it held (open: all it did not
   * settle, until `heldUntil`), so grants count it. `heldUntil` is kept as stored.
   */
  restore(row: { id: string; customerId: string; consumer: string; node: string; requests: number; costMicros: number; micros: number;
    grantedAt: number; expiresAt: number; heldUntil: number; drawn: number | null; drawnMicros: number | null; settledMicros: number }): void {
    if (this.byId.has(row.id)) return;
    const lease: Lease = {
      id: row.id, customerId: row.customerId, consumer: row.consumer, node: row.node, requests: row.requests, costMicros: row.costMicros,
      micros: row.micros, grantedAt: row.grantedAt, expiresAt: row.heldUntil - this.opts.usageGraceMs,
      drawn: row.drawn ?? undefined, drawnMicros: row.drawnMicros ?? undefined, settled: new Set(), settledMicros: row.settledMicros,
    };
    this.add(lease);
  }

  /** What a consumer's leases hold now, under whichever customer they were granted (its cap counts them all). */
  consumerHeldMicros(consumer: string, now: number): number {
    let sum = 0;
    for (const l of [...(this.byConsumer.get(consumer) ?? [])]) {
      const held = this.heldMicros(l, now);
      if (held === 0) this.drop(l); else sum += held;
    }
    return sum;
  }

  private add(lease: Lease): void {
    this.byId.set(lease.id, lease);
    for (const [index, key] of [[this.byCustomer, lease.customerId], [this.byConsumer, lease.consumer]] as const) {
      let set = index.get(key);
      if (!set) { set = new Set(); index.set(key, set); }
      set.add(lease);
    }
  }

  private drop(l: Lease): void {
    this.ended.add(l.customerId);
    this.byId.delete(l.id);
    for (const [index, key] of [[this.byCustomer, l.customerId], [this.byConsumer, l.consumer]] as const) {
      const set = index.get(key);
      set?.delete(l);
      if (set?.size === 0) index.delete(key);
    }
  }
}

/**
 * How many requests a lease is for, given the credit free of every reservation (micros), the
 * reservation of one request, the requests waiting and the size this node's last lease earned
 * (undefined: the first). 0 when less than one request is free. Half of what is free at most, so
 * other nodes find credit too; but never fewer than the requests already waiting, when the credit
 * pays for them.
 */
export function leaseRequests(opts: LeaseOptions, freeMicros: number, costMicros: number, want: number, size: number | undefined): number {
  const affordable = freeMicros > 0 ? Math.floor(freeMicros / costMicros) : 0;
  if (affordable < 1) return 0;
  const next = size ?? opts.initialRequests;
  return Math.max(1, Math.min(opts.maxRequests, affordable, Math.max(want, Math.min(next, Math.ceil(affordable / 2)))));
}

/** The size of a node's next lease: doubles while leases run out fast, shrinks to what was drawn. */
export function nextLeaseSize(opts: LeaseOptions, lease: { requests: number; grantedAt: number }, drawn: number, now: number): number {
  const fast = now - lease.grantedAt < opts.ttlMs / 2;
  return drawn >= lease.requests && fast ? Math.min(opts.maxRequests, lease.requests * 2) : Math.max(opts.initialRequests, drawn);
}
