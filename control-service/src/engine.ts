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
import type { OutboxRecord, OutboxRow, SavedChanges, SettlementRow, Store, StoreChanges, StoredCustomer, TransitionRecord, UsageAdded, UsageRecord } from './store/store';
import { costOf, MICROS_PER_UNIT, type Units } from './pricing';
import { addUsage, applyRead, estimatedBalance, failSettlement, openLedger, openSettlement, type BalanceRead, type LedgerState } from './ledger';
import type { Customer } from './customer';
import { planEmails, planRecurring, staleReason } from './emails/workflow';
import { consumersOfCustomer, parseConsumerClaim } from './consumer-claims';
import { addSpend, boundLease, capLeft, NO_SPEND, periodEnd as periodEndOf, spentIn, type CapLeft, type CapLimits, type ConsumerSpend } from './caps/caps';
import { capsFor } from './caps/limits';
import { limitRule, refusalJson } from './caps/refusal';

export type DecisionOutcome = 'allow' | 'block' | 'would_block' | 'unknown_allow' | 'unknown_block' | 'conflict';
export interface DecisionAnswer { json: string; outcome: DecisionOutcome }

const UNKNOWN_BLOCK_BODY = JSON.stringify({ error: 'no_billing_account', message: 'No billing account is linked to this API consumer.' });

function sameState(a: StoredCustomer, b: StoredCustomer): boolean {
  if (a.balance !== b.balance || a.currency !== b.currency || a.name !== b.name || a.email !== b.email) return false;
  const ak = Object.keys(a.metadata);
  return ak.length === Object.keys(b.metadata).length && ak.every((k) => a.metadata[k] === b.metadata[k]);
}

interface Entry {
  /** As Stripe last told us; `balance` and `version` are the ledger's `balance` and `asOf`. */
  customer: StoredCustomer;
  /** Balance, unsettled usage and settlements in flight (see ledger.ts). */
  ledger: LedgerState;
  cohorts: string[];
  answer: DecisionAnswer;
}

/** The customer as cohorts, rules and emails see it: balance plus unsettled usage. */
function estimated<C extends Customer>(customer: C, ledger: LedgerState): C {
  return ledger.unsettledMicros === 0 ? customer : { ...customer, balance: estimatedBalance(ledger) };
}

/** A change decided for one customer: its fields as Stripe gave them and its next ledger. */
interface Update { customer: StoredCustomer; ledger: LedgerState }

export interface ApplyResult {
  transitions: TransitionRecord[];
  /** Customers whose plain read could not be placed against a settlement in flight: read their balance transactions. */
  needsReconcile: StoredCustomer[];
}

/** `units`: what the gateway measured (tokens, header units, bytes); absent from older plugins. */
export interface UsageEventInput { id: string; consumer: string; at: number; route: string | null; status: number; units?: Units }

interface ApplyExtra {
  usage?: UsageRecord[];
  confirmSettlements?: StoreChanges['confirmSettlements'];
  failSettlement?: StoreChanges['failSettlement'];
  /** Recorded as processed in the same transaction that applies it. */
  webhookEventId?: string;
  /** Called with what the store answered, before anything waiting behind this change runs. */
  saved?(result: SavedChanges | void): void;
}

function pendingOf(row: SettlementRow) {
  return { id: row.id, amount: row.amount, mode: row.mode, createdAt: row.createdAt };
}

/** A customer as stored, for Engine.reload. */
export interface ReloadedCustomer { customer: StoredCustomer; cohorts: string[]; unsettledMicros: number; pending: SettlementRow[]; usageVersion?: number }

/** Events one ingest call handed in, gathered with others into one store commit. */
interface IngestCall { events: UsageEventInput[]; resolve(r: IngestResult): void; reject(err: unknown): void }
export interface IngestResult { accepted: number; duplicates: number; acceptedIds: Set<string> }
/** At most this many events go into one gathered commit. */
const MAX_GATHERED_EVENTS = 5000;

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
  /** Called after Stripe news or a rule switch changed customers' answers (pushed to gateway nodes); not for usage. */
  onChange: (consumers: string[] | 'all') => void = () => undefined;
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
    for (const [consumer, spend] of await this.store.consumerSpend()) this.spend.set(consumer, spend);
    const memberships = await this.store.loadMemberships();
    const usage = await this.store.usageTotals();
    const pending = new Map<string, SettlementRow[]>();
    for (const row of await this.store.pendingSettlements()) pending.set(row.customerId, [...(pending.get(row.customerId) ?? []), row]);
    for (const customer of await this.store.loadCustomers()) {
      const u = usage.get(customer.id);
      const inFlight = (pending.get(customer.id) ?? []).map(pendingOf);
      this.put(customer, memberships.get(customer.id) ?? [], openLedger(customer.balance, customer.version, u ? u.usedMicros - u.settled * MICROS_PER_UNIT : 0, inFlight));
    }
    // Config may have changed since the last run: bring memberships in line.
    const all = [...this.entries.values()].map((e) => ({ customer: e.customer, ledger: e.ledger }));
    await this.run(() => this.applyNow(all, [], { force: true }));
  }

  get size(): number { return this.entries.size; }

  customer(id: string): { customer: StoredCustomer; unsettledMicros: number; estimatedBalance: number; cohorts: string[]; decision: DecisionAnswer; ledger: LedgerState } | undefined {
    const e = this.entries.get(id);
    return e && {
      customer: e.customer, unsettledMicros: e.ledger.unsettledMicros, estimatedBalance: estimatedBalance(e.ledger),
      cohorts: e.cohorts, decision: e.answer, ledger: e.ledger,
    };
  }

  /** When the oldest settlement still in flight for this customer was opened, if any. */
  oldestPendingSettlementAt(id: string): number | undefined {
    const p = this.entries.get(id)?.ledger.pending;
    return p?.length ? Math.min(...p.map((q) => q.createdAt)) : undefined;
  }

  /** The customer id a consumer value maps to, if exactly one. */
  resolve(consumer: string): string | undefined {
    if (this.entries.has(consumer)) return consumer;
    const claimants = this.claims.get(consumer);
    return typeof claimants === 'string' ? claimants : undefined;
  }

  knownIds(): string[] { return [...this.entries.keys()]; }

  /**
   * Visits every customer as held, read-only and without copying (the
   * console's pages scan 100k customers per request). `visit` must not keep
   * or change what it is given.
   */
  forEachCustomer(visit: (customer: Readonly<StoredCustomer>, cohorts: readonly string[], ledger: LedgerState, decision: DecisionAnswer) => void): void {
    for (const e of this.entries.values()) visit(e.customer, e.cohorts, e.ledger, e.answer);
  }

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
    for (const e of this.entries.values()) e.answer = this.answerFor(e.customer, e.cohorts, e.ledger);
    this.onChange('all');
    return true;
  }

  /**
   * Another replica switched a rule or a template (PostgreSQL NOTIFY): take the
   * stored switches, and answer with them from now on.
   */
  reloadSwitches(): Promise<void> {
    return this.run(async () => {
      const before = this.ruleEnabled;
      this.ruleEnabled = await this.store.ruleOverrides();
      this.templateActive = await this.store.templateOverrides();
      for (const e of this.entries.values()) e.answer = this.answerFor(e.customer, e.cohorts, e.ledger);
      // A rule switched at another replica: gateway nodes streaming from here drop what they hold, as after a switch made here.
      const same = before.size === this.ruleEnabled.size && [...before].every(([id, on]) => this.ruleEnabled.get(id) === on);
      if (!same) this.onChange('all');
    });
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

  /** Why an email about to be delivered is no longer true (see workflow.staleReason), or undefined. */
  emailStaleReason = async (row: OutboxRow): Promise<string | undefined> => {
    const template = this.config.emails.find((t) => t.id === row.templateId);
    if (!template) return undefined;
    const e = this.entries.get(row.customerId);
    if (!e) return 'customer deleted';
    const since = template.trigger.kind === 'cohort' ? await this.store.membershipSince(row.customerId, template.trigger.cohort) : undefined;
    return staleReason(template, row.dedupeKey, { since, credit: -estimatedBalance(e.ledger) });
  };

  /** Enqueues re-enrollment emails that are due: members still in the cohort a window after entering. */
  async enqueueRecurring(now: number = this.now()): Promise<number> {
    let added = 0;
    for (const t of this.config.emails) {
      if (!t.reenrollAfterMs || t.trigger.kind !== 'cohort' || !this.isTemplateActive(t.id)) continue;
      const members = (await this.store.membersSince(t.trigger.cohort)).flatMap(({ customerId, since }) => {
        const e = this.entries.get(customerId);
        return e ? [{ customer: estimated(e.customer, e.ledger), since }] : [];
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
    return this.capped(consumer, entry) ?? entry.answer;
  }

  /**
   * Issue 23: a capped consumer's read-only answer (GET /v1/decisions): refused
   * once its cap left is worth less than the dearest request; otherwise the
   * customer's allow with `max_requests` and `credit` at the tighter of the two limits.
   */
  private capped(consumer: string, entry: Entry): DecisionAnswer | undefined {
    if (entry.answer.outcome === 'block' || !this.mayBeCapped(entry.customer)) return undefined;
    const now = this.now();
    const cap = this.capOf(consumer, now);
    if (!cap || cap.left.leftMicros === undefined || this.dearestCostMicros === 0) return undefined;
    if (cap.left.leftMicros < this.dearestCostMicros) return { json: this.capRefusal(consumer, cap.left, now), outcome: 'block' };
    const held = JSON.parse(entry.answer.json) as { allow: true; ttl_ms: number; max_requests?: number; credit?: number };
    if (held.max_requests === undefined) return undefined;
    const byCap = Math.floor(cap.left.leftMicros / this.dearestCostMicros);
    if (byCap >= held.max_requests) return undefined;
    return { json: JSON.stringify({ ...held, max_requests: byCap, credit: Math.min(held.credit ?? Infinity, cap.left.leftMicros / MICROS_PER_UNIT) }), outcome: entry.answer.outcome };
  }

  /**
   * Applies customer objects read from Stripe (sweep pages, webhook re-reads),
   * each stamped with when its read started. A read older than the one held is
   * ignored, so a late event or a slow sweep page never rolls back a newer
   * balance. A read that cannot be placed against a settlement in flight is
   * not applied and comes back in `needsReconcile`. Deletes name ids with the
   * version of the news.
   */
  apply(upserts: StoredCustomer[], deletes: Array<{ id: string; version: number }>, opts: { webhookEventId?: string } = {}): Promise<ApplyResult> {
    return this.run(async () => {
      const updates: Update[] = [];
      const needsReconcile: StoredCustomer[] = [];
      for (const c of upserts) {
        const held = this.entries.get(c.id);
        if (!held) { updates.push({ customer: c, ledger: openLedger(c.balance, c.version) }); continue; }
        const outcome = applyRead(held.ledger, { kind: 'plain', balance: c.balance, startedAt: c.version });
        if (outcome.kind === 'needs_reconcile') needsReconcile.push(c);
        else if (outcome.kind === 'applied') updates.push({ customer: c, ledger: outcome.state });
      }
      // A webhook whose read still needs reconciling is recorded by that step, not this one.
      const transitions = await this.applyNow(updates, deletes, {}, { webhookEventId: needsReconcile.length ? undefined : opts.webhookEventId });
      return { transitions, needsReconcile };
    });
  }

  /**
   * Applies a reconciled read: the customer's fields from a plain read, and the
   * balance and applied settlements from its balance transactions (`balance`
   * and `version` of `customer` are the list's). The settlements it shows
   * applied are confirmed in the same store transaction.
   */
  applyReconciled(customer: StoredCustomer, applied: ReadonlyMap<number, string>, opts: { webhookEventId?: string } = {}): Promise<ApplyResult> {
    return this.run(async () => {
      const held = this.entries.get(customer.id);
      const read: BalanceRead = { kind: 'reconciled', balance: customer.balance, startedAt: customer.version, applied };
      const outcome = held ? applyRead(held.ledger, read) : { kind: 'applied' as const, state: openLedger(customer.balance, customer.version), confirmed: [] };
      const at = this.now();
      const updates = outcome.kind === 'applied' ? [{ customer: { ...customer, version: outcome.state.asOf }, ledger: outcome.state }] : [];
      const confirmSettlements = outcome.kind === 'applied' ? outcome.confirmed.map((c) => ({ ...c, at })) : [];
      const transitions = await this.applyNow(updates, [], {}, { confirmSettlements, webhookEventId: opts.webhookEventId });
      return { transitions, needsReconcile: [] };
    });
  }

  /** Serializes every change: each sees the memberships and ledger the previous one left. */
  private run<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.applying.then(fn);
    this.applying = run.catch(() => undefined);
    return run;
  }

  private applying: Promise<unknown> = Promise.resolve();

  /**
   * Usage seen at the gateway: stored once per event id, priced, and added to
   * the customer's unsettled usage, so cohorts and decisions move at once.
   */
  /**
   * `acceptedIds`: the events counted now (not seen before). Calls that arrive
   * while a commit is out wait for it and then go into the store together, in
   * one commit (in order: a repeat of an earlier call's event is its duplicate),
   * so a busy replica makes fewer, larger commits.
   */
  ingestUsage(events: UsageEventInput[]): Promise<IngestResult> {
    return new Promise((resolve, reject) => {
      this.ingestCalls.push({ events, resolve, reject });
      if (this.ingestCalls.length === 1) void this.run(() => this.ingestGathered());
    });
  }

  private ingestCalls: IngestCall[] = [];

  private async ingestGathered(): Promise<void> {
    // Whole calls, up to MAX_GATHERED_EVENTS (at least one); the rest get their own turn.
    let n = 0;
    let take = 0;
    while (take < this.ingestCalls.length && (take === 0 || n + this.ingestCalls[take].events.length <= MAX_GATHERED_EVENTS)) n += this.ingestCalls[take++].events.length;
    const calls = this.ingestCalls.splice(0, take);
    if (this.ingestCalls.length) void this.run(() => this.ingestGathered());
    try {
      const counted = await this.ingestNow(calls.flatMap((c) => c.events));
      let at = 0;
      for (const c of calls) {
        const acceptedIds = new Set<string>();
        for (const e of c.events) if (counted.has(at++)) acceptedIds.add(e.id);
        c.resolve({ accepted: acceptedIds.size, duplicates: c.events.length - acceptedIds.size, acceptedIds });
      }
    } catch (err) {
      for (const c of calls) c.reject(err);
    }
  }

  /** Returns the positions of the events counted now. */
  private async ingestNow(events: UsageEventInput[]): Promise<Set<number>> {
    const known = await this.store.knownUsageIds(events.map((e) => e.id));
    const now = this.now();
    const fresh: UsageRecord[] = [];
    const counted = new Set<number>();
    const ledgers = new Map<string, LedgerState>();
    const expected = new Map<string, number>();
    for (const [i, e] of events.entries()) {
      if (known.has(e.id)) continue;
      known.add(e.id); // a repeat inside the batch
      counted.add(i);
      const customerId = this.resolve(e.consumer) ?? null;
      const costMicros = customerId ? costOf(this.config.metering.pricing, e.route, e.status, e.units) : 0;
      // Issue 23: a consumer's spend counts in the period of the service's clock, not the gateway's (see caps/caps.ts).
      fresh.push({ ...e, customerId, costMicros, spentAt: now });
      if (customerId) expected.set(customerId, (expected.get(customerId) ?? 0) + costMicros);
      if (customerId && costMicros > 0) ledgers.set(customerId, addUsage(ledgers.get(customerId) ?? this.entries.get(customerId)!.ledger, costMicros));
    }
    if (fresh.length) {
      const updates = [...ledgers].map(([id, ledger]) => ({ customer: this.entries.get(id)!.customer, ledger }));
      await this.applyNow(updates, [], {}, { usage: fresh, saved: (r) => {
        // Issue 23: each consumer's spend, as the store counted it in this commit (an event another replica stored first errs high until re-read).
        for (const u of fresh) if (u.customerId && u.costMicros > 0) this.spend.set(u.consumer, addSpend(this.spend.get(u.consumer) ?? NO_SPEND, u.spentAt ?? u.at, u.costMicros));
        if (r) this.ownUsageSaved(expected, r.usageAdded);
      } });
    }
    return counted;
  }

  /**
   * What our own commit really added (PostgreSQL): an event another replica stored
   * first between our check and our commit was not added, so the book gives it
   * back. The totals version moves on only when no other replica's commit came in
   * between; otherwise it is unknown until the next reload.
   */
  private ownUsageSaved(expected: Map<string, number>, added: UsageAdded[]): void {
    const got = new Map(added.map((a) => [a.customerId, a]));
    for (const [id, micros] of expected) {
      const held = this.entries.get(id);
      const a = got.get(id);
      if (held && (a?.micros ?? 0) !== micros) this.put(held.customer, held.cohorts, addUsage(held.ledger, (a?.micros ?? 0) - micros));
      if (!a) continue;
      const version = this.usageVersions.get(id);
      if (version !== undefined && a.version === version + 1) this.usageVersions.set(id, a.version);
      else this.usageVersions.delete(id);
    }
  }

  /**
   * Per customer (PostgreSQL), the running-totals version this book's unsettled
   * usage is exact at, so usage other replicas NOTIFY is added in order. Absent: unknown.
   */
  private readonly usageVersions = new Map<string, number>();

  /** Settlements written and about to be sent: in flight until confirmed, so plain reads of these customers get reconciled. */
  settlementsOpened(rows: readonly SettlementRow[]): Promise<void> {
    return this.run(async () => {
      for (const row of rows) {
        const e = this.entries.get(row.customerId);
        if (e) e.ledger = openSettlement(e.ledger, pendingOf(row));
      }
    });
  }

  /**
   * Stripe answered a settlement: that usage is now in Stripe's hands, so it
   * leaves the unsettled sum in the same step as the balance Stripe reported
   * after it (balance transactions), leaving the estimate unchanged. An answer
   * for a settlement already seen applied (a replay, a late answer) changes
   * nothing: its ending_balance is of its time, not the latest.
   */
  settlementConfirmed(row: SettlementRow, stripeRef: string, endingBalance: number | undefined, heardAt: number = this.now()): Promise<void> {
    return this.run(async () => {
      const held = this.entries.get(row.customerId);
      const confirm = [{ id: row.id, stripeRef, at: this.now() }];
      const outcome = held && applyRead(held.ledger, { kind: 'confirmation', settlementId: row.id, stripeRef, endingBalance, heardAt });
      if (!held || outcome?.kind !== 'applied') {
        // Unknown customer or already confirmed by a reconciled read: only the row (a no-op when already confirmed).
        await this.store.saveChanges({ upserts: [], deletes: [], transitions: [], confirmSettlements: confirm });
        return;
      }
      const customer = { ...held.customer, balance: outcome.state.balance, version: outcome.state.asOf };
      await this.applyNow([{ customer, ledger: outcome.state }], [], {}, { confirmSettlements: confirm });
    });
  }

  /** Stripe refused a settlement for good: marked failed; its amount stays counted against the estimate (see ledger.ts). */
  settlementFailed(row: SettlementRow, error: string): Promise<void> {
    return this.run(async () => {
      const held = this.entries.get(row.customerId);
      const failSettlementChange = { id: row.id, error, at: this.now() };
      if (held) held.ledger = failSettlement(held.ledger, row.id);
      await this.store.saveChanges({ upserts: [], deletes: [], transitions: [], failSettlement: failSettlementChange });
    });
  }

  /**
   * Another replica changed these customers (PostgreSQL NOTIFY): take their
   * stored state as it is. Nothing is decided again here (the replica that
   * made the change wrote its transitions and emails); only what this replica
   * serves follows. `read` runs in turn with apply/ingest, so it sees at least
   * what this replica wrote before. Added for several replicas (issue 13).
   */
  reload(ids: string[], read: (ids: string[]) => Promise<ReloadedCustomer[]>): Promise<void> {
    return this.run(() => this.reloadNow(ids, read));
  }

  /**
   * Usage another replica committed alone (PostgreSQL NOTIFY, in commit order),
   * then customers it changed otherwise: each addition whose version follows the
   * one this book holds is added; one already in the book (version not newer) is
   * skipped; after a gap, or for a customer whose version is unknown, the
   * customer is read again, with the `ids`, in one snapshot. Its cohorts do not
   * move: a commit of usage alone made no transition.
   */
  followUsage(added: UsageAdded[], ids: string[], read: (ids: string[]) => Promise<ReloadedCustomer[]>): Promise<void> {
    return this.run(async () => {
      const again = new Set(ids);
      for (const a of added) {
        if (again.has(a.customerId)) continue;
        const held = this.entries.get(a.customerId);
        const version = this.usageVersions.get(a.customerId);
        if (held && version !== undefined && a.version <= version) continue;
        if (!held || version === undefined || a.version !== version + 1) { again.add(a.customerId); continue; }
        this.put(held.customer, held.cohorts, addUsage(held.ledger, a.micros));
        this.usageVersions.set(a.customerId, a.version);
      }
      if (again.size) await this.reloadNow([...again], read);
      await this.rereadSpend([...new Set([...added.map((a) => a.customerId), ...again])]);
    });
  }

  // ---- issue 23 (team caps) ----
  /** Each consumer's spend in its current periods (store/consumer-spend.ts), as this replica knows it. */
  private readonly spend = new Map<string, ConsumerSpend>();

  /** Usage another replica counted: its consumers' spend is read again (only for customers a cap can apply to). */
  private async rereadSpend(customerIds: string[]): Promise<void> {
    const consumers = customerIds.flatMap((id) => {
      const e = this.entries.get(id);
      return e && this.mayBeCapped(e.customer) ? this.consumersOf(e.customer) : [];
    });
    if (!consumers.length) return;
    const fresh = await this.store.consumerSpend(consumers);
    for (const c of consumers) this.spend.set(c, fresh.get(c) ?? NO_SPEND);
  }

  private mayBeCapped(customer: StoredCustomer): boolean {
    const { caps } = this.config;
    if (caps.daily !== undefined || caps.monthly !== undefined) return true;
    return Object.keys(customer.metadata).some((k) => k.startsWith(`${caps.metadataPrefix}_`));
  }

  /**
   * A consumer's cap now: the customer it bills, the caps that apply (config
   * defaults, metadata overrides), its spend this period and what is left.
   * Undefined when the consumer maps to no customer.
   */
  capOf(consumer: string, now: number = this.now()): { customerId: string; limits: CapLimits; left: CapLeft; spend: ConsumerSpend; problems: Array<{ key: string; value: string; error: string }> } | undefined {
    const customerId = this.resolve(consumer);
    const e = customerId === undefined ? undefined : this.entries.get(customerId);
    if (!e) return undefined;
    const { limits, problems } = capsFor(this.config.caps, e.customer.metadata, consumer);
    const spend = this.spend.get(consumer) ?? NO_SPEND;
    return { customerId: e.customer.id, limits, left: capLeft(limits, spend, now), spend, problems };
  }

  /** Each consumer of a customer with its spend this period and its caps (console, balance endpoint), amounts in micros. */
  consumerCaps(customerId: string, now: number = this.now()): Array<{ consumer: string; limits: CapLimits; daily: { spentMicros: number; resetsAt: number }; monthly: { spentMicros: number; resetsAt: number }; left: CapLeft; problems: Array<{ key: string; value: string; error: string }> }> {
    const e = this.entries.get(customerId);
    if (!e) return [];
    const claims = parseConsumerClaim(e.customer.metadata[this.config.stripe.consumerMetadataKey]);
    return (claims.length ? claims : [customerId]).map((consumer) => {
      const { limits, problems } = capsFor(this.config.caps, e.customer.metadata, consumer);
      const spend = this.spend.get(consumer) ?? NO_SPEND;
      return {
        consumer, limits, problems, left: capLeft(limits, spend, now),
        daily: { spentMicros: spentIn(spend, 'daily', now), resetsAt: periodEndOf('daily', now) },
        monthly: { spentMicros: spentIn(spend, 'monthly', now), resetsAt: periodEndOf('monthly', now) },
      };
    });
  }

  /** The refusal of a consumer whose cap is spent (what is left is worth less than `costMicros`), as decision JSON. */
  capRefusal(consumer: string, left: CapLeft, now: number = this.now()): string {
    const customerId = this.resolve(consumer)!;
    const e = this.entries.get(customerId)!;
    return refusalJson({ kind: 'consumer_cap', resetsAt: left.resetsAt }, estimated(e.customer, e.ledger), this.config.topUp, this.config.rules, this.isEnabled, now, this.config.decisionTtlMs);
  }

  /** Credit free for a consumer's new lease: the team's free credit bounded by its cap left less its other open leases (caps/caps.ts boundLease). */
  boundForConsumer(consumer: string, teamFreeMicros: number, consumerHeldMicros: number, now: number = this.now()): { micros: number; limit: 'no_credit' | 'consumer_cap'; left: CapLeft } {
    const cap = this.capOf(consumer, now);
    const left = cap?.left ?? { leftMicros: undefined, period: undefined, resetsAt: undefined };
    return { ...boundLease(teamFreeMicros, left.leftMicros, consumerHeldMicros), left };
  }
  /** The caps that apply to a consumer (undefined: it maps to no customer, or no cap applies). */
  capLimitsOf(consumer: string): CapLimits | undefined {
    const customerId = this.resolve(consumer);
    const e = customerId === undefined ? undefined : this.entries.get(customerId);
    if (!e || !this.mayBeCapped(e.customer)) return undefined;
    const { limits } = capsFor(this.config.caps, e.customer.metadata, consumer);
    return limits.daily === undefined && limits.monthly === undefined ? undefined : limits;
  }

  /** A consumer's spend as this replica counted it. */
  spendOf(consumer: string): ConsumerSpend { return this.spend.get(consumer) ?? NO_SPEND; }

  /** The cap refusal for a consumer whose cap resets at `resetsAt`. */
  capRefusalAt(consumer: string, resetsAt: number, now: number = this.now()): string {
    return this.capRefusal(consumer, { leftMicros: 0, period: undefined, resetsAt }, now);
  }
  // ---- end issue 23 ----

  private async reloadNow(ids: string[], read: (ids: string[]) => Promise<ReloadedCustomer[]>): Promise<void> {
    const found = new Map((await read(ids)).map((r) => [r.customer.id, r]));
    // Stripe news another replica applied (not its usage): gateway nodes streaming from here drop what they hold.
    const news: string[] = [];
    for (const id of ids) {
      const held = this.entries.get(id);
      const r = found.get(id);
      if (r) {
        if (held && held.customer.version !== r.customer.version) news.push(...this.consumersOf(r.customer));
        this.put(r.customer, r.cohorts, openLedger(r.customer.balance, r.customer.version, r.unsettledMicros, r.pending.map(pendingOf)));
        if (r.usageVersion === undefined) this.usageVersions.delete(id); else this.usageVersions.set(id, r.usageVersion);
      } else if (held) {
        news.push(...this.consumersOf(held.customer));
        this.remove(id);
      }
    }
    if (news.length) this.onChange(news);
  }

  private async applyNow(updates: Update[], deletes: Array<{ id: string; version: number }>, opts: { force?: boolean }, extra: ApplyExtra = {}): Promise<TransitionRecord[]> {
    // Strictly increasing, so an entry's time names it (emails are keyed by it).
    const at = this.lastAt = Math.max(this.now(), this.lastAt + 1);
    const transitions: TransitionRecord[] = [];
    const emails: OutboxRecord[] = [];
    const saved: StoredCustomer[] = [];
    const removed: string[] = [];
    const removedConsumers: string[] = [];
    const staged: Array<() => void> = [];
    for (const { customer: fields, ledger } of updates) {
      const c: StoredCustomer = fields.balance === ledger.balance && fields.version === ledger.asOf ? fields : { ...fields, balance: ledger.balance, version: ledger.asOf };
      const held = this.entries.get(c.id);
      if ((this.tombstones.get(c.id) ?? -Infinity) >= c.version) continue;
      const unchanged = held !== undefined && sameState(held.customer, c);
      if (!opts.force && unchanged && ledger.unsettledMicros === held!.ledger.unsettledMicros) {
        // Nothing changed (most customers on most sweeps): move the version on
        // in memory only, so a sweep does not rewrite every row.
        staged.push(() => { held!.customer = c; held!.ledger = ledger; });
        continue;
      }
      const viewBefore = held && estimated(held.customer, held.ledger);
      const viewAfter = estimated(c, ledger);
      const before = held?.cohorts ?? [];
      const after = cohortsOf(this.config.cohorts, viewAfter);
      const mine = diffMemberships(before, after).map((t) => ({ customerId: c.id, ...t, at, balance: viewAfter.balance }));
      transitions.push(...mine);
      // A config change (force) moves memberships but is nothing the customer did: no emails.
      if (!opts.force && this.config.emails.length) {
        emails.push(...planEmails(this.config.emails, this.isTemplateActive, { before: viewBefore, after: viewAfter, transitions: mine, at }, this.config.topUp));
      }
      if (!unchanged && (!opts.force || !held)) saved.push(c);
      staged.push(() => this.put(c, after, ledger));
    }
    for (const d of deletes) {
      const held = this.entries.get(d.id);
      if (!held || held.customer.version > d.version) continue;
      for (const cohort of held.cohorts) transitions.push({ customerId: d.id, cohort, kind: 'leave', at, balance: held.customer.balance });
      removed.push(d.id);
      removedConsumers.push(...this.consumersOf(held.customer));
      staged.push(() => { this.remove(d.id); this.tombstones.set(d.id, d.version); });
    }
    // Persist first: what is served must be what survives a crash.
    let result: SavedChanges | void = undefined;
    if (saved.length || removed.length || transitions.length || extra.usage?.length || extra.confirmSettlements?.length || extra.failSettlement || extra.webhookEventId) {
      result = await this.store.saveChanges({
        upserts: saved, deletes: removed, transitions, emails, usage: extra.usage,
        confirmSettlements: extra.confirmSettlements, failSettlement: extra.failSettlement,
        webhookEvent: extra.webhookEventId === undefined ? undefined : { id: extra.webhookEventId, at: this.now() },
      });
    }
    for (const commit of staged) commit();
    extra.saved?.(result);
    if (emails.length) this.onEmailsEnqueued();
    // Stripe news (not usage, not a settlement, not a config reload): gateway nodes drop what they hold.
    if (!opts.force && !extra.usage && !extra.confirmSettlements?.length && (saved.length || removed.length)) {
      this.onChange([...saved.flatMap((c) => this.consumersOf(c)), ...removedConsumers]);
    }
    return transitions;
  }

  /** The dearest price of one request, in micros (0: nothing is metered). */
  get dearestMicros(): number { return this.dearestCostMicros; }

  /** The consumer values that name a customer: its id and each consumer its metadata claims (see consumer-claims.ts). */
  consumersOf(customer: StoredCustomer): string[] {
    return consumersOfCustomer(customer.id, customer.metadata[this.config.stripe.consumerMetadataKey]);
  }

  /**
   * The answer for a customer with no spendable credit left (what is not held by leases
   * is worth less than one request): the rules' verdict with a balance of at most zero.
   * Undefined when the rules still allow it (no blocking rule at zero: the operator's choice).
   */
  exhaustedAnswer(customerId: string): string | undefined {
    const e = this.entries.get(customerId);
    if (!e) return undefined;
    const view = estimated(e.customer, e.ledger);
    const spent = { ...view, balance: Math.max(0, view.balance) };
    const v = verdict(this.config.rules, cohortsOf(this.config.cohorts, spent), this.isEnabled);
    if (v.outcome === 'ALLOW') {
      // Issue 23: an enabled `limit: no_credit` rule words the refusal when no cohort rule blocks.
      if (!limitRule(this.config.rules, 'no_credit', this.isEnabled)) return undefined;
      return refusalJson({ kind: 'no_credit' }, spent, this.config.topUp, this.config.rules, this.isEnabled, this.now(), this.config.decisionTtlMs);
    }
    // A cohort rule's refusal at no credit names its reason too.
    const json = JSON.parse(decisionJson(v, mergeContext(spent, this.config.topUp), this.config.decisionTtlMs)) as Record<string, unknown>;
    return JSON.stringify({ ...json, reason: 'no_credit' });
  }

  private put(customer: StoredCustomer, cohorts: string[], ledger: LedgerState): void {
    const held = this.entries.get(customer.id);
    if (held) this.unclaim(held.customer);
    const key = cohorts.join('\n');
    let shared = this.cohortLists.get(key);
    if (!shared) { shared = Object.freeze([...cohorts]) as string[]; this.cohortLists.set(key, shared); }
    this.entries.set(customer.id, { customer, ledger, cohorts: shared, answer: this.answerFor(customer, shared, ledger) });
    for (const consumer of parseConsumerClaim(customer.metadata[this.config.stripe.consumerMetadataKey])) {
      const ids = this.claims.get(consumer);
      if (ids === undefined || ids === customer.id) this.claims.set(consumer, customer.id);
      else if (typeof ids === 'string') this.claims.set(consumer, new Set([ids, customer.id]));
      else ids.add(customer.id);
    }
  }

  private remove(id: string): void {
    const held = this.entries.get(id);
    this.usageVersions.delete(id);
    if (!held) return;
    this.unclaim(held.customer);
    this.entries.delete(id);
  }

  private unclaim(customer: StoredCustomer): void {
    for (const consumer of parseConsumerClaim(customer.metadata[this.config.stripe.consumerMetadataKey])) {
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

  private answerFor(customer: StoredCustomer, cohorts: string[], ledger: LedgerState): DecisionAnswer {
    const v = verdict(this.config.rules, cohorts, this.isEnabled);
    const view = estimated(customer, ledger);
    if (v.outcome === 'ALLOW') {
      const lease = this.allowLease(customer, ledger.unsettledMicros);
      if (!lease) return v.wouldBlock.length ? this.wouldBlockAnswer : this.allowAnswer;
      return { json: JSON.stringify({ allow: true, ttl_ms: lease.ttlMs, max_requests: lease.maxRequests, credit: lease.credit }), outcome: v.wouldBlock.length ? 'would_block' : 'allow' };
    }
    return { json: decisionJson(v, mergeContext(view, this.config.topUp), this.config.decisionTtlMs), outcome: 'block' };
  }

  /**
   * What a cached allow may serve when usage is metered: with r requests of
   * credit left at the dearest price, `max_requests` = r, and below
   * low_credit_requests (L) also a shorter `ttl_ms` = T·(r − 1)/L, not below
   * min_ttl_ms. Read-only (GET /v1/decisions): nodes serve on leases
   * (POST /v1/leases), which reserve credit. Undefined when nothing is metered.
   */
  private allowLease(customer: Customer, unsettledMicros: number): { ttlMs: number; maxRequests: number; credit: number } | undefined {
    const { lowCreditRequests, minTtlMs } = this.config.metering;
    const full = this.config.decisionTtlMs;
    if (this.dearestCostMicros === 0) return undefined;
    // In integer micros, so the boundary is exact.
    const creditMicros = -(customer.balance * MICROS_PER_UNIT + unsettledMicros);
    const remaining = Math.floor(Math.max(0, creditMicros) / this.dearestCostMicros);
    const ttlMs = remaining >= lowCreditRequests ? full
      : Math.min(full, Math.max(minTtlMs, Math.floor((full * Math.max(0, remaining - 1)) / lowCreditRequests)));
    // `credit`: the estimate in the smallest currency unit, for the plugin's optional credit header.
    return { ttlMs, maxRequests: remaining, credit: Math.max(0, creditMicros) / MICROS_PER_UNIT };
  }
}
