// The customer book held in memory: customers, their cohorts, and the
// decision JSON precomputed for each, so the decision API never touches
// Stripe or disk. Every change (Stripe news, usage, a settlement) goes through
// one serialized path that records cohort transitions, the emails they call
// for and the usage in one store transaction before the new state is served.
//
// Cohorts, rules and emails see the *estimated* balance: Stripe's balance plus
// the cost of usage not yet settled to Stripe.

import { cohortsOf, diffMemberships } from './cohorts';
import { mergeContext } from './merge-tags';
import { decisionJson, verdict, type RuleDef } from './rules';
import type { Config } from './config';
import type { OutboxRecord, SettlementRow, Store, StoreChanges, StoredCustomer, TransitionRecord, UsageRecord } from './store/store';
import { costOf, MICROS_PER_UNIT, type Units } from './pricing';
import type { Customer } from './customer';
import { planEmails, planRecurring } from './emails/workflow';

export type DecisionOutcome = 'allow' | 'block' | 'would_block' | 'unknown_allow' | 'unknown_block' | 'conflict';
export interface DecisionAnswer { json: string; outcome: DecisionOutcome }

const UNKNOWN_BLOCK_BODY = JSON.stringify({ error: 'no_billing_account', message: 'No billing account is linked to this API consumer.' });

function sameState(a: StoredCustomer, b: StoredCustomer): boolean {
  if (a.balance !== b.balance || a.currency !== b.currency || a.name !== b.name || a.email !== b.email) return false;
  const ak = Object.keys(a.metadata);
  return ak.length === Object.keys(b.metadata).length && ak.every((k) => a.metadata[k] === b.metadata[k]);
}

interface Entry {
  /** As Stripe last told us. */
  customer: StoredCustomer;
  /** Cost of usage not yet settled to Stripe, in micros (see pricing.ts). */
  unsettledMicros: number;
  cohorts: string[];
  answer: DecisionAnswer;
}

/** The customer as cohorts, rules and emails see it: balance plus unsettled usage. */
function estimated<C extends Customer>(customer: C, unsettledMicros: number): C {
  return unsettledMicros === 0 ? customer : { ...customer, balance: customer.balance + unsettledMicros / MICROS_PER_UNIT };
}

/** `units`: what the gateway measured (tokens, header units, bytes); absent from older plugins. */
export interface UsageEventInput { id: string; consumer: string; at: number; route: string | null; status: number; units?: Units }

interface ApplyExtra {
  /** New unsettled usage per customer (default: as held). */
  unsettled?: Map<string, number>;
  usage?: UsageRecord[];
  confirmSettlement?: StoreChanges['confirmSettlement'];
}

export class Engine {
  private readonly entries = new Map<string, Entry>();
  /** consumer metadata value → the customer id claiming it, or the ids when several do (a conflict) */
  private readonly claims = new Map<string, string | Set<string>>();
  /** Allow answers and cohort lists are shared, not held once per customer (100k customers fit in ~60 MB). */
  private readonly allowAnswer: DecisionAnswer;
  private readonly wouldBlockAnswer: DecisionAnswer;
  private readonly cohortLists = new Map<string, string[]>();
  private readonly tombstones = new Map<string, number>();
  private ruleEnabled = new Map<string, boolean>();
  private templateActive = new Map<string, boolean>();
  private lastAt = 0;
  /** Called after emails were written to the outbox (the sender wakes up). */
  onEmailsEnqueued: () => void = () => undefined;
  private readonly allowJson: string;
  private readonly unknownJson: string;
  private readonly dearestCostMicros: number;

  constructor(private readonly config: Config, private readonly store: Store, private readonly now: () => number = Date.now) {
    this.allowJson = JSON.stringify({ allow: true, ttl_ms: config.decisionTtlMs });
    const { pricing } = config.metering;
    this.dearestCostMicros = Math.max(pricing.defaultCostMicros, ...pricing.routeCostMicros.values());
    this.allowAnswer = { json: this.allowJson, outcome: 'allow' };
    this.wouldBlockAnswer = { json: this.allowJson, outcome: 'would_block' };
    this.unknownJson = config.unknownConsumer === 'allow' ? this.allowJson : JSON.stringify({
      allow: false, status: 403, headers: { 'Content-Type': 'application/json' }, body: UNKNOWN_BLOCK_BODY, rule: 'unknown_consumer', ttl_ms: config.decisionTtlMs,
    });
  }

  async init(): Promise<void> {
    this.ruleEnabled = await this.store.ruleOverrides();
    this.templateActive = await this.store.templateOverrides();
    const memberships = await this.store.loadMemberships();
    const usage = await this.store.usageTotals();
    for (const customer of await this.store.loadCustomers()) {
      const u = usage.get(customer.id);
      this.put(customer, memberships.get(customer.id) ?? [], u ? u.usedMicros - u.settled * MICROS_PER_UNIT : 0);
    }
    // Config may have changed since the last run: bring memberships in line.
    await this.apply([...this.entries.values()].map((e) => e.customer), [], { force: true });
  }

  get size(): number { return this.entries.size; }

  customer(id: string): { customer: StoredCustomer; unsettledMicros: number; estimatedBalance: number; cohorts: string[]; decision: DecisionAnswer } | undefined {
    const e = this.entries.get(id);
    return e && {
      customer: e.customer, unsettledMicros: e.unsettledMicros, estimatedBalance: estimated(e.customer, e.unsettledMicros).balance,
      cohorts: e.cohorts, decision: e.answer,
    };
  }

  /** The customer id a consumer value maps to, if exactly one. */
  resolve(consumer: string): string | undefined {
    if (this.entries.has(consumer)) return consumer;
    const claimants = this.claims.get(consumer);
    return typeof claimants === 'string' ? claimants : undefined;
  }

  knownIds(): string[] { return [...this.entries.keys()]; }

  cohortMembers(cohort: string): string[] {
    return [...this.entries.values()].filter((e) => e.cohorts.includes(cohort)).map((e) => e.customer.id);
  }

  /** Members per cohort, counted in one pass. */
  cohortSizes(): Map<string, number> {
    const sizes = new Map<string, number>(this.config.cohorts.map((c) => [c.id, 0]));
    for (const e of this.entries.values()) for (const c of e.cohorts) sizes.set(c, (sizes.get(c) ?? 0) + 1);
    return sizes;
  }

  /** Consumers claimed by more than one customer: reported, never guessed. */
  conflicts(): Array<{ consumer: string; customers: string[] }> {
    return [...this.claims].filter(([, ids]) => typeof ids !== 'string').map(([consumer, ids]) => ({ consumer, customers: [...ids].sort() }));
  }

  rules(): Array<{ rule: RuleDef; enabled: boolean }> {
    return this.config.rules.map((rule) => ({ rule, enabled: this.isEnabled(rule) }));
  }

  private isEnabled = (rule: RuleDef): boolean => this.ruleEnabled.get(rule.id) ?? rule.enabled;

  async setRuleEnabled(ruleId: string, enabled: boolean): Promise<boolean> {
    if (!this.config.rules.some((r) => r.id === ruleId)) return false;
    await this.store.setRuleEnabled(ruleId, enabled);
    this.ruleEnabled.set(ruleId, enabled);
    for (const e of this.entries.values()) e.answer = this.answerFor(e.customer, e.cohorts, e.unsettledMicros);
    return true;
  }

  isTemplateActive = (id: string): boolean => this.templateActive.get(id) ?? this.config.emails.find((t) => t.id === id)?.active ?? false;

  /** Switches an email template on or off (persisted); off cancels its pending sends at once. */
  async setTemplateActive(id: string, active: boolean): Promise<boolean> {
    if (!this.config.emails.some((t) => t.id === id)) return false;
    await this.store.setTemplateActive(id, active);
    this.templateActive.set(id, active);
    if (!active) await this.store.cancelPendingEmails(id, this.now());
    return true;
  }

  /** Enqueues re-enrollment emails that are due: members still in the cohort a window after entering. */
  async enqueueRecurring(now: number = this.now()): Promise<number> {
    let added = 0;
    for (const t of this.config.emails) {
      if (!t.reenrollAfterMs || t.trigger.kind !== 'cohort' || !this.isTemplateActive(t.id)) continue;
      const members = (await this.store.membersSince(t.trigger.cohort)).flatMap(({ customerId, since }) => {
        const e = this.entries.get(customerId);
        return e ? [{ customer: estimated(e.customer, e.unsettledMicros), since }] : [];
      });
      added += await this.store.enqueueEmails(planRecurring(t, members, now, this.config.topUp, this.now()));
    }
    if (added) this.onEmailsEnqueued();
    return added;
  }

  /** The decision for a consumer value, from memory only. */
  decide(consumer: string): DecisionAnswer {
    const id = this.resolve(consumer);
    if (id === undefined && typeof this.claims.get(consumer) === 'object') return { json: this.unknownJson, outcome: 'conflict' };
    const entry = id === undefined ? undefined : this.entries.get(id);
    if (!entry) return { json: this.unknownJson, outcome: this.config.unknownConsumer === 'allow' ? 'unknown_allow' : 'unknown_block' };
    return entry.answer;
  }

  /**
   * Applies customer states from Stripe. A state older than the one held
   * (by `version`) is ignored, so a late event or a slow sweep page never rolls
   * back a newer balance. Deletes name ids with the version of the news.
   */
  apply(upserts: StoredCustomer[], deletes: Array<{ id: string; version: number }>, opts: { force?: boolean } = {}): Promise<TransitionRecord[]> {
    // One apply at a time, so each sees the memberships the previous one left.
    const run = this.applying.then(() => this.applyNow(upserts, deletes, opts));
    this.applying = run.catch(() => undefined);
    return run;
  }

  private applying: Promise<unknown> = Promise.resolve();

  /**
   * Usage seen at the gateway: stored once per event id, priced, and added to
   * the customer's unsettled usage, so cohorts and decisions move at once.
   */
  ingestUsage(events: UsageEventInput[]): Promise<{ accepted: number; duplicates: number }> {
    const run = this.applying.then(() => this.ingestNow(events));
    this.applying = run.catch(() => undefined);
    return run;
  }

  private async ingestNow(events: UsageEventInput[]): Promise<{ accepted: number; duplicates: number }> {
    const known = await this.store.knownUsageIds(events.map((e) => e.id));
    const fresh: UsageRecord[] = [];
    const unsettled = new Map<string, number>();
    for (const e of events) {
      if (known.has(e.id)) continue;
      known.add(e.id); // a repeat inside the batch
      const customerId = this.resolve(e.consumer) ?? null;
      const costMicros = customerId ? costOf(this.config.metering.pricing, e.route, e.status, e.units) : 0;
      fresh.push({ id: e.id, consumer: e.consumer, at: e.at, route: e.route, status: e.status, customerId, costMicros });
      if (customerId && costMicros > 0) {
        unsettled.set(customerId, (unsettled.get(customerId) ?? this.entries.get(customerId)!.unsettledMicros) + costMicros);
      }
    }
    if (fresh.length) {
      const customers = [...unsettled.keys()].map((id) => this.entries.get(id)!.customer);
      await this.applyNow(customers, [], {}, { usage: fresh, unsettled });
    }
    return { accepted: fresh.length, duplicates: events.length - fresh.length };
  }

  /**
   * Stripe confirmed a settlement: that usage is now in Stripe's hands, so it
   * leaves the unsettled sum in the same step as the balance Stripe reported
   * after it (balance transactions), leaving the estimate unchanged: no gap,
   * no double count.
   */
  settlementConfirmed(row: SettlementRow, stripeRef: string, endingBalance: number | undefined): Promise<void> {
    const run = this.applying.then(async () => {
      const held = this.entries.get(row.customerId);
      const confirmSettlement = { id: row.id, stripeRef, at: this.now() };
      if (!held) { await this.store.saveChanges({ upserts: [], deletes: [], transitions: [], confirmSettlement }); return; }
      const next = endingBalance === undefined ? held.customer
        : { ...held.customer, balance: endingBalance, version: Math.max(this.now(), held.customer.version + 1) };
      const unsettled = new Map([[row.customerId, held.unsettledMicros - row.amount * MICROS_PER_UNIT]]);
      await this.applyNow([next], [], {}, { unsettled, confirmSettlement });
    });
    this.applying = run.catch(() => undefined);
    return run;
  }

  private async applyNow(upserts: StoredCustomer[], deletes: Array<{ id: string; version: number }>, opts: { force?: boolean }, extra: ApplyExtra = {}): Promise<TransitionRecord[]> {
    // Strictly increasing, so an entry's time names it (emails are keyed by it).
    const at = this.lastAt = Math.max(this.now(), this.lastAt + 1);
    const transitions: TransitionRecord[] = [];
    const emails: OutboxRecord[] = [];
    const saved: StoredCustomer[] = [];
    const removed: string[] = [];
    const staged: Array<() => void> = [];
    for (const c of upserts) {
      const held = this.entries.get(c.id);
      if (!opts.force && held && held.customer.version > c.version) continue;
      if ((this.tombstones.get(c.id) ?? -Infinity) >= c.version) continue;
      const unsettled = extra.unsettled?.get(c.id) ?? held?.unsettledMicros ?? 0;
      const unchanged = held !== undefined && sameState(held.customer, c);
      if (!opts.force && unchanged && unsettled === held!.unsettledMicros) {
        // Nothing changed (most customers on most sweeps): move the version on
        // in memory only, so a sweep does not rewrite every row.
        staged.push(() => { held!.customer = c; });
        continue;
      }
      const viewBefore = held && estimated(held.customer, held.unsettledMicros);
      const viewAfter = estimated(c, unsettled);
      const before = held?.cohorts ?? [];
      const after = cohortsOf(this.config.cohorts, viewAfter);
      const mine = diffMemberships(before, after).map((t) => ({ customerId: c.id, ...t, at, balance: viewAfter.balance }));
      transitions.push(...mine);
      // A config change (force) moves memberships but is nothing the customer did: no emails.
      if (!opts.force && this.config.emails.length) {
        emails.push(...planEmails(this.config.emails, this.isTemplateActive, { before: viewBefore, after: viewAfter, transitions: mine, at }, this.config.topUp));
      }
      if (!unchanged && (!opts.force || !held)) saved.push(c);
      staged.push(() => this.put(c, after, unsettled));
    }
    for (const d of deletes) {
      const held = this.entries.get(d.id);
      if (!held || held.customer.version > d.version) continue;
      for (const cohort of held.cohorts) transitions.push({ customerId: d.id, cohort, kind: 'leave', at, balance: held.customer.balance });
      removed.push(d.id);
      staged.push(() => { this.remove(d.id); this.tombstones.set(d.id, d.version); });
    }
    // Persist first: what is served must be what survives a crash.
    if (saved.length || removed.length || transitions.length || extra.usage?.length || extra.confirmSettlement) {
      await this.store.saveChanges({ upserts: saved, deletes: removed, transitions, emails, usage: extra.usage, confirmSettlement: extra.confirmSettlement });
    }
    for (const commit of staged) commit();
    if (emails.length) this.onEmailsEnqueued();
    return transitions;
  }

  private put(customer: StoredCustomer, cohorts: string[], unsettledMicros: number): void {
    const held = this.entries.get(customer.id);
    if (held) this.unclaim(held.customer);
    const key = cohorts.join('\n');
    let shared = this.cohortLists.get(key);
    if (!shared) { shared = Object.freeze([...cohorts]) as string[]; this.cohortLists.set(key, shared); }
    this.entries.set(customer.id, { customer, unsettledMicros, cohorts: shared, answer: this.answerFor(customer, shared, unsettledMicros) });
    const consumer = customer.metadata[this.config.stripe.consumerMetadataKey];
    if (consumer) {
      const ids = this.claims.get(consumer);
      if (ids === undefined || ids === customer.id) this.claims.set(consumer, customer.id);
      else if (typeof ids === 'string') this.claims.set(consumer, new Set([ids, customer.id]));
      else ids.add(customer.id);
    }
  }

  private remove(id: string): void {
    const held = this.entries.get(id);
    if (!held) return;
    this.unclaim(held.customer);
    this.entries.delete(id);
  }

  private unclaim(customer: StoredCustomer): void {
    const consumer = customer.metadata[this.config.stripe.consumerMetadataKey];
    const ids = consumer ? this.claims.get(consumer) : undefined;
    if (ids === undefined) return;
    if (typeof ids === 'string') {
      if (ids === customer.id) this.claims.delete(consumer);
      return;
    }
    ids.delete(customer.id);
    if (ids.size === 1) this.claims.set(consumer, ids.values().next().value as string);
  }

  private answerFor(customer: StoredCustomer, cohorts: string[], unsettledMicros: number): DecisionAnswer {
    const v = verdict(this.config.rules, cohorts, this.isEnabled);
    const view = estimated(customer, unsettledMicros);
    if (v.outcome === 'ALLOW') {
      const lease = this.allowLease(customer, unsettledMicros);
      if (!lease) return v.wouldBlock.length ? this.wouldBlockAnswer : this.allowAnswer;
      return { json: JSON.stringify({ allow: true, ttl_ms: lease.ttlMs, max_requests: lease.maxRequests, credit: lease.credit }), outcome: v.wouldBlock.length ? 'would_block' : 'allow' };
    }
    return { json: decisionJson(v, mergeContext(view, this.config.topUp), this.config.decisionTtlMs), outcome: 'block' };
  }

  /**
   * What a cached allow may serve when usage is metered: with r requests of
   * credit left at the dearest price, `max_requests` = ⌈r / gateway_nodes⌉
   * (the plugin asks again once it has served that many), and below
   * low_credit_requests (L) also a shorter `ttl_ms` = T·(r − 1)/L, not below
   * min_ttl_ms. The plugin subtracts the requests it served but has not yet
   * reported, and reports them before asking again once they use the budget
   * up, so one node cannot overspend; with several nodes each can overspend by
   * what the others have not reported yet: ρ·(max_coalescing_delay + a round
   * trip) requests per other node. Undefined when nothing is metered.
   */
  private allowLease(customer: Customer, unsettledMicros: number): { ttlMs: number; maxRequests: number; credit: number } | undefined {
    const { lowCreditRequests, minTtlMs, gatewayNodes } = this.config.metering;
    const full = this.config.decisionTtlMs;
    if (this.dearestCostMicros === 0) return undefined;
    // In integer micros, so the boundary is exact.
    const creditMicros = -(customer.balance * MICROS_PER_UNIT + unsettledMicros);
    const remaining = Math.floor(Math.max(0, creditMicros) / this.dearestCostMicros);
    const ttlMs = remaining >= lowCreditRequests ? full
      : Math.min(full, Math.max(minTtlMs, Math.floor((full * Math.max(0, remaining - 1)) / lowCreditRequests)));
    // `credit`: the estimate in the smallest currency unit, for the plugin's optional credit header.
    return { ttlMs, maxRequests: Math.ceil(remaining / gatewayNodes), credit: Math.max(0, creditMicros) / MICROS_PER_UNIT };
  }
}
