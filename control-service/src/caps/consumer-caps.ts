// Spending caps per consumer, as this replica serves them (issue 23): each
// consumer's spend in its current periods (counted in the usage commit,
// store/consumer-spend.ts), the caps that apply to it (limits.ts) and what is
// left (caps.ts), the capped read-only answer and the refusal (refusal.ts).
// Reads the customer book; the store only to load and re-read spend.

import { addSpend, capLeft, NO_SPEND, periodEnd, spentIn, type CapLeft, type CapLimits, type ConsumerSpend } from './caps';
import { capsFor, type CapsConfig, type ResolvedCaps } from './limits';
import { refusalJson } from './refusal';
import { estimated, type CustomerBook, type DecisionAnswer, type Entry } from '../customer-book';
import { MICROS_PER_UNIT } from '../pricing';
import type { TopUpConfig } from '../merge-tags';
import type { RuleDef } from '../rules';
import type { Store, StoredCustomer, UsageRecord } from '../store/store';

export interface ConsumerCapsOptions {
  caps: CapsConfig;
  /** For a refusal's wording: the rules, which are switched on, the top-up link, the decision TTL. */
  rules: readonly RuleDef[];
  isEnabled(rule: RuleDef): boolean;
  topUp: TopUpConfig;
  decisionTtlMs: number;
  /** The dearest price of one request, in micros (0: nothing is metered). */
  dearestMicros: number;
  now(): number;
}

/** A consumer's cap now: the customer it bills, the caps that apply, its spend this period and what is left. */
export interface CapOf { customerId: string; limits: CapLimits; left: CapLeft; spend: ConsumerSpend; problems: ResolvedCaps['problems'] }

/** One consumer of a customer with its spend this period and its caps (console, balance endpoint), amounts in micros. */
export interface ConsumerCapView {
  consumer: string; limits: CapLimits;
  daily: { spentMicros: number; resetsAt: number }; monthly: { spentMicros: number; resetsAt: number };
  left: CapLeft; problems: ResolvedCaps['problems'];
}

export class ConsumerCaps {
  /** Each consumer's spend in its current periods, as this replica knows it. */
  private readonly spend = new Map<string, ConsumerSpend>();

  constructor(private readonly opts: ConsumerCapsOptions, private readonly book: CustomerBook, private readonly store: Pick<Store, 'consumerSpend'>) {}

  /** Takes every consumer's spend as stored (at start-up). */
  async load(): Promise<void> {
    for (const [consumer, spend] of await this.store.consumerSpend()) this.spend.set(consumer, spend);
  }

  /** Usage this replica committed: each priced event adds to its consumer's spend, in the period of the service's clock. */
  counted(usage: readonly UsageRecord[]): void {
    for (const u of usage) if (u.customerId && u.costMicros > 0) this.spend.set(u.consumer, addSpend(this.spend.get(u.consumer) ?? NO_SPEND, u.spentAt ?? u.at, u.costMicros));
  }

  /** Usage another replica counted: its consumers' spend is read again (only for customers a cap can apply to). */
  async reread(customerIds: string[]): Promise<void> {
    const consumers = customerIds.flatMap((id) => {
      const e = this.book.get(id);
      return e && this.mayBeCapped(e.customer) ? this.book.consumersOf(e.customer) : [];
    });
    if (!consumers.length) return;
    const fresh = await this.store.consumerSpend(consumers);
    for (const c of consumers) this.spend.set(c, fresh.get(c) ?? NO_SPEND);
  }

  /** False when no cap can apply to this customer's consumers (no default cap, no cap key in its metadata). */
  mayBeCapped(customer: StoredCustomer): boolean {
    const { caps } = this.opts;
    if (caps.daily !== undefined || caps.monthly !== undefined) return true;
    return Object.keys(customer.metadata).some((k) => k.startsWith(`${caps.metadataPrefix}_`));
  }

  /** A consumer's cap now; undefined when the consumer maps to no customer. */
  capOf(consumer: string, now: number = this.opts.now()): CapOf | undefined {
    const e = this.entryOf(consumer);
    if (!e) return undefined;
    const { limits, problems } = capsFor(this.opts.caps, e.customer.metadata, consumer);
    const spend = this.spendOf(consumer);
    return { customerId: e.customer.id, limits, left: capLeft(limits, spend, now), spend, problems };
  }

  /** Each consumer of a customer (its id when it claims none) with its spend this period and its caps. */
  consumerCaps(customerId: string, now: number = this.opts.now()): ConsumerCapView[] {
    const e = this.book.get(customerId);
    if (!e) return [];
    const claims = this.book.claimsOf(e.customer);
    return (claims.length ? claims : [customerId]).map((consumer) => {
      const { limits, problems } = capsFor(this.opts.caps, e.customer.metadata, consumer);
      const spend = this.spendOf(consumer);
      return {
        consumer, limits, problems, left: capLeft(limits, spend, now),
        daily: { spentMicros: spentIn(spend, 'daily', now), resetsAt: periodEnd('daily', now) },
        monthly: { spentMicros: spentIn(spend, 'monthly', now), resetsAt: periodEnd('monthly', now) },
      };
    });
  }

  /** The caps that apply to a consumer (undefined: it maps to no customer, or no cap applies). */
  capLimitsOf(consumer: string): CapLimits | undefined {
    const e = this.entryOf(consumer);
    if (!e || !this.mayBeCapped(e.customer)) return undefined;
    const { limits } = capsFor(this.opts.caps, e.customer.metadata, consumer);
    return limits.daily === undefined && limits.monthly === undefined ? undefined : limits;
  }

  /** A consumer's spend as this replica counted it. */
  spendOf(consumer: string): ConsumerSpend { return this.spend.get(consumer) ?? NO_SPEND; }

  /** The refusal of a consumer (of a customer held) whose cap is spent, as decision JSON. */
  refusal(consumer: string, left: CapLeft, now: number = this.opts.now()): string {
    const e = this.entryOf(consumer)!;
    const { rules, isEnabled, topUp, decisionTtlMs } = this.opts;
    return refusalJson({ kind: 'consumer_cap', resetsAt: left.resetsAt }, estimated(e.customer, e.ledger), topUp, rules, isEnabled, now, decisionTtlMs);
  }

  /** The cap refusal for a consumer whose cap resets at `resetsAt`. */
  refusalAt(consumer: string, resetsAt: number, now: number = this.opts.now()): string {
    return this.refusal(consumer, { leftMicros: 0, period: undefined, resetsAt }, now);
  }

  /**
   * A capped consumer's read-only answer (GET /v1/decisions): refused once its
   * cap left is worth less than the dearest request; otherwise the customer's
   * allow with `max_requests` and `credit` at the tighter of the two limits.
   * Undefined: the customer's own answer stands.
   */
  capped(consumer: string, entry: Entry): DecisionAnswer | undefined {
    const dearest = this.opts.dearestMicros;
    if (entry.answer.outcome === 'block' || !this.mayBeCapped(entry.customer)) return undefined;
    const now = this.opts.now();
    const cap = this.capOf(consumer, now);
    if (!cap || cap.left.leftMicros === undefined || dearest === 0) return undefined;
    if (cap.left.leftMicros < dearest) return { json: this.refusal(consumer, cap.left, now), outcome: 'block' };
    const held = JSON.parse(entry.answer.json) as { allow: true; ttl_ms: number; max_requests?: number; credit?: number };
    if (held.max_requests === undefined) return undefined;
    const byCap = Math.floor(cap.left.leftMicros / dearest);
    if (byCap >= held.max_requests) return undefined;
    return { json: JSON.stringify({ ...held, max_requests: byCap, credit: Math.min(held.credit ?? Infinity, cap.left.leftMicros / MICROS_PER_UNIT) }), outcome: entry.answer.outcome };
  }

  private entryOf(consumer: string): Entry | undefined {
    const customerId = this.book.resolve(consumer);
    return customerId === undefined ? undefined : this.book.get(customerId);
  }
}
