// The lease book: credit reserved to gateway nodes. Pure (time is passed in).
//
// Per customer, credit available = −(Stripe balance) − unsettled usage − outstanding
// reservations. A node serves a consumer only on a lease granted from that available
// credit, so the requests all nodes may serve never cost more than the credit.
//
// A lease is a number of requests at the dearest price (`costMicros`). It reserves
//   open:   requests − settled   (the node may still draw any of them)
//   closed: drawn − settled      (the node said how many it drew; the rest came back)
// where `settled` counts the distinct usage events the node reported against it (their
// real cost is now in the customer's unsettled usage, so the reservation lets go of
// them). An open lease the node never closes (a node that died) keeps its reservation
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
  grantedAt: number;
  expiresAt: number;
  /** Set when the node closed the lease (renewal or release). */
  drawn: number | undefined;
  /** Ids of usage events settled against this lease (dedupes resent batches). */
  settled: Set<string>;
}

export interface GrantInput {
  customerId: string;
  consumer: string;
  node: string;
  /** −(balance) − unsettled usage, in micros, before any reservation. */
  creditMicros: number;
  /** The dearest price of one request, in micros (> 0). */
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
      const held = this.heldRequests(l, now);
      if (held === 0) this.drop(l); else sum += held * l.costMicros;
    }
    return sum;
  }

  grant(input: GrantInput, ): GrantOutcome {
    const reserved = this.reservedMicros(input.customerId, input.now);
    const free = input.creditMicros - reserved;
    const affordable = free > 0 ? Math.floor(free / input.costMicros) : 0;
    if (affordable < 1) return { kind: 'EXHAUSTED', reservedMicros: reserved };
    const key = `${input.customerId}\n${input.node}`;
    const size = this.nextSize.get(key) ?? this.opts.initialRequests;
    // Half of what is free at most, so other nodes find credit too; but never fewer than
    // the requests already waiting, when the credit pays for them.
    const requests = Math.max(1, Math.min(this.opts.maxRequests, affordable, Math.max(input.want, Math.min(size, Math.ceil(affordable / 2)))));
    const lease: Lease = {
      id: this.newId(), customerId: input.customerId, consumer: input.consumer, node: input.node,
      requests, costMicros: input.costMicros, grantedAt: input.now, expiresAt: input.now + this.opts.ttlMs,
      drawn: undefined, settled: new Set(),
    };
    this.byId.set(lease.id, lease);
    let set = this.byCustomer.get(lease.customerId);
    if (!set) { set = new Set(); this.byCustomer.set(lease.customerId, set); }
    set.add(lease);
    return { kind: 'GRANTED', lease };
  }

  /**
   * The node is done with a lease and drew `drawn` requests from it: the rest comes back
   * at once. Only the node that holds it can close it. Returns the customer, or undefined
   * for a lease unknown here (already expired, or another node's).
   */
  close(node: string, leaseId: string, drawn: number, now: number): string | undefined {
    const l = this.byId.get(leaseId);
    if (!l || l.node !== node || l.drawn !== undefined) return undefined;
    l.drawn = Math.max(0, Math.min(l.requests, Math.floor(drawn)));
    const key = `${l.customerId}\n${l.node}`;
    const fast = now - l.grantedAt < this.opts.ttlMs / 2;
    this.nextSize.set(key, l.drawn >= l.requests && fast
      ? Math.min(this.opts.maxRequests, l.requests * 2)
      : Math.max(this.opts.initialRequests, l.drawn));
    if (this.heldRequests(l, now) === 0) this.drop(l);
    return l.customerId;
  }

  /** A usage event reported against a lease: it no longer needs reserving. False when unknown or seen. */
  settle(leaseId: string, eventId: string, now: number): boolean {
    const l = this.byId.get(leaseId);
    if (!l || l.settled.has(eventId)) return false;
    const limit = l.drawn ?? l.requests;
    if (l.settled.size >= limit) return false;
    l.settled.add(eventId);
    if (this.heldRequests(l, now) === 0) this.drop(l);
    return true;
  }

  /** Drops leases past their grace; returns the customers whose leases ended since the last call. */
  expire(now: number): string[] {
    for (const l of this.byId.values()) if (this.heldRequests(l, now) === 0) this.drop(l);
    const ended = [...this.ended];
    this.ended.clear();
    return ended;
  }

  /** Open leases of a customer (for recalls) and all its leases, read-only. */
  leasesOf(customerId: string, now: number): Lease[] {
    this.reservedMicros(customerId, now);
    return [...(this.byCustomer.get(customerId) ?? [])];
  }

  heldRequests(l: Lease, now: number): number {
    if (now >= l.expiresAt + this.opts.usageGraceMs) return 0;
    return Math.max(0, (l.drawn ?? l.requests) - l.settled.size);
  }

  get size(): number { return this.byId.size; }

  private drop(l: Lease): void {
    this.ended.add(l.customerId);
    this.byId.delete(l.id);
    const set = this.byCustomer.get(l.customerId);
    set?.delete(l);
    if (set?.size === 0) this.byCustomer.delete(l.customerId);
  }
}
