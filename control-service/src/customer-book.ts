// The customer book held in memory: every customer as Stripe last told us,
// its ledger, its cohorts and the decision answer precomputed for it, and
// which Kong consumers each customer claims. Pure and synchronous: no I/O and
// no clock. The engine decides what goes in (engine.ts, through the one
// serialized change path); the decision API, leases and the console read it.
//
// A consumer claimed by two customers or more is a conflict: it resolves to no
// customer and is reported (conflicts()), never guessed.

import { consumersOfCustomer, parseConsumerClaim } from './consumer-claims';
import { estimatedBalance, type LedgerState } from './ledger';
import type { Customer } from './customer';
import type { StoredCustomer } from './store/store';

export type DecisionOutcome = 'allow' | 'block' | 'would_block' | 'unknown_allow' | 'unknown_block' | 'conflict';
export interface DecisionAnswer { json: string; outcome: DecisionOutcome }

export interface Entry {
  /** As Stripe last told us; `balance` and `version` are the ledger's `balance` and `asOf`. */
  customer: StoredCustomer;
  /** Balance, unsettled usage and settlements in flight (see ledger.ts). */
  ledger: LedgerState;
  cohorts: string[];
  answer: DecisionAnswer;
}

/** The customer as cohorts, rules and emails see it: balance plus unsettled usage. */
export function estimated<C extends Customer>(customer: C, ledger: LedgerState): C {
  return ledger.unsettledMicros === 0 ? customer : { ...customer, balance: estimatedBalance(ledger) };
}

/** What the book is built with: where claims are read, and how a customer's answer is worked out. */
export interface BookOptions {
  /** The Stripe metadata key whose value names the consumers a customer claims (see consumer-claims.ts). */
  consumerMetadataKey: string;
  /** The decision answer for a customer in these cohorts with this ledger (rules.ts, through the engine). */
  answer(customer: StoredCustomer, cohorts: string[], ledger: LedgerState): DecisionAnswer;
}

export class CustomerBook {
  private readonly entries = new Map<string, Entry>();
  /** consumer metadata value → the customer id claiming it, or the ids when several do (a conflict) */
  private readonly claims = new Map<string, string | Set<string>>();
  /** Cohort lists are shared, not held once per customer (100k customers fit in ~60 MB). */
  private readonly cohortLists = new Map<string, string[]>();
  /** Deleted customers: the version of the news that deleted them, so an older read does not bring them back. */
  private readonly tombstones = new Map<string, number>();
  /**
   * Per customer (PostgreSQL), the running-totals version this book's unsettled
   * usage is exact at, so usage other replicas NOTIFY is added in order. Absent: unknown.
   */
  private readonly usageVersions = new Map<string, number>();

  constructor(private readonly opts: BookOptions) {}

  get size(): number { return this.entries.size; }

  /** The entry held for a customer id. The caller must not change it (see restate, setLedger). */
  get(id: string): Entry | undefined { return this.entries.get(id); }

  /** Holds a customer with these cohorts and ledger (replacing what was held), answers it, and records its claims. */
  put(customer: StoredCustomer, cohorts: string[], ledger: LedgerState): void {
    const held = this.entries.get(customer.id);
    if (held) this.unclaim(held.customer);
    const key = cohorts.join('\n');
    let shared = this.cohortLists.get(key);
    if (!shared) { shared = Object.freeze([...cohorts]) as string[]; this.cohortLists.set(key, shared); }
    this.entries.set(customer.id, { customer, ledger, cohorts: shared, answer: this.opts.answer(customer, shared, ledger) });
    for (const consumer of parseConsumerClaim(customer.metadata[this.opts.consumerMetadataKey])) {
      const ids = this.claims.get(consumer);
      if (ids === undefined || ids === customer.id) this.claims.set(consumer, customer.id);
      else if (typeof ids === 'string') this.claims.set(consumer, new Set([ids, customer.id]));
      else ids.add(customer.id);
    }
  }

  /**
   * Moves an entry's customer and ledger on without answering it again: only
   * for a change nothing an answer or a claim reads has moved in (a newer read
   * of the same state; a settlement opened or failed).
   */
  restate(entry: Entry, customer: StoredCustomer, ledger: LedgerState): void {
    entry.customer = customer;
    entry.ledger = ledger;
  }

  /** A held customer's next ledger, with the same answer (see restate). */
  setLedger(id: string, ledger: LedgerState): void {
    const e = this.entries.get(id);
    if (e) e.ledger = ledger;
  }

  /** Drops a customer and its claims. */
  remove(id: string): void {
    const held = this.entries.get(id);
    this.usageVersions.delete(id);
    if (!held) return;
    this.unclaim(held.customer);
    this.entries.delete(id);
  }

  /** A customer deleted by news of this version: reads of that version or older do not bring it back. */
  bury(id: string, version: number): void { this.tombstones.set(id, version); }

  /** True when a read of this version comes from before the customer was deleted. */
  buried(id: string, version: number): boolean { return (this.tombstones.get(id) ?? -Infinity) >= version; }

  /** Every answer worked out again (a rule was switched). */
  reanswer(): void {
    for (const e of this.entries.values()) e.answer = this.opts.answer(e.customer, e.cohorts, e.ledger);
  }

  /** The customer id a consumer value maps to, if exactly one: a customer's own id, or a claim of one customer. */
  resolve(consumer: string): string | undefined {
    if (this.entries.has(consumer)) return consumer;
    const claimants = this.claims.get(consumer);
    return typeof claimants === 'string' ? claimants : undefined;
  }

  /** True when several customers claim this consumer (and none has it as its id). */
  isConflict(consumer: string): boolean {
    return !this.entries.has(consumer) && typeof this.claims.get(consumer) === 'object';
  }

  /** Consumers claimed by more than one customer: reported, never guessed. */
  conflicts(): Array<{ consumer: string; customers: string[] }> {
    return [...this.claims].filter(([, ids]) => typeof ids !== 'string').map(([consumer, ids]) => ({ consumer, customers: [...ids].sort() }));
  }

  /** The consumer values that name a customer: its id and each consumer its metadata claims (see consumer-claims.ts). */
  consumersOf(customer: StoredCustomer): string[] {
    return consumersOfCustomer(customer.id, customer.metadata[this.opts.consumerMetadataKey]);
  }

  /** The consumers a customer's metadata claims (without its id). */
  claimsOf(customer: StoredCustomer): string[] {
    return parseConsumerClaim(customer.metadata[this.opts.consumerMetadataKey]);
  }

  knownIds(): string[] { return [...this.entries.keys()]; }

  /** Every entry held, without copying. */
  values(): IterableIterator<Entry> { return this.entries.values(); }

  cohortMembers(cohort: string): string[] {
    return [...this.entries.values()].filter((e) => e.cohorts.includes(cohort)).map((e) => e.customer.id);
  }

  /** Members per cohort, counted in one pass; every cohort of `cohortIds` is present, at 0 when empty. */
  cohortSizes(cohortIds: readonly string[]): Map<string, number> {
    const sizes = new Map<string, number>(cohortIds.map((c) => [c, 0]));
    for (const e of this.entries.values()) for (const c of e.cohorts) sizes.set(c, (sizes.get(c) ?? 0) + 1);
    return sizes;
  }

  /** The running-totals version a customer's unsettled usage is exact at (PostgreSQL), if known. */
  usageVersion(id: string): number | undefined { return this.usageVersions.get(id); }

  setUsageVersion(id: string, version: number | undefined): void {
    if (version === undefined) this.usageVersions.delete(id); else this.usageVersions.set(id, version);
  }

  private unclaim(customer: StoredCustomer): void {
    for (const consumer of parseConsumerClaim(customer.metadata[this.opts.consumerMetadataKey])) {
      const ids = this.claims.get(consumer);
      if (ids === undefined) continue;
      if (typeof ids === 'string') {
        if (ids === customer.id) this.claims.delete(consumer);
        continue;
      }
      ids.delete(customer.id);
      if (ids.size === 1) this.claims.set(consumer, ids.values().next().value as string);
    }
  }
}
