// The engine coordinates: it wires the customer book (customer-book.ts), the
// one serialized change path (change-pipeline.ts), the decision answers
// (decision-answers.ts) and the consumer caps (caps/consumer-caps.ts), and
// decides each change with the pure cores: a balance read against the ledger
// (ledger.ts), cohorts (cohorts.ts), the emails they call for
// (emails/workflow.ts), the auto-recharge crossings (recharges/core.ts). Every
// change (Stripe news, usage, a settlement, another replica's commit) goes
// through the pipeline, which records cohort transitions, emails and usage in
// one store transaction before the new state is served, so the decision API
// answers from memory and never touches Stripe or disk.
//
// Cohorts, rules and emails see the *estimated* balance: Stripe's balance plus
// the cost of usage not yet settled to Stripe.

import { cohortsOf, diffMemberships } from './cohorts';
import type { RuleDef } from './rules';
import type { Config } from './config';
import type { OutboxRecord, OutboxRow, SavedChanges, SettlementRow, Store, StoreChanges, StoredCustomer, TransitionRecord, UsageAdded, UsageRecord } from './store/store';
import { costOf, MICROS_PER_UNIT, type Units } from './pricing';
import { addUsage, applyRead, estimatedBalance, failSettlement, openLedger, openSettlement, type BalanceRead, type LedgerState } from './ledger';
import { planEmails, planRecurring, staleReason } from './emails/workflow';
import type { CapLeft, CapLimits, ConsumerSpend } from './caps/caps';
import { ConsumerCaps, type CapOf, type ConsumerCapView } from './caps/consumer-caps';
import { rechargeCrossing } from './recharges/core';
import type { RechargeCrossing } from './recharges/store';
import { CustomerBook, estimated, type DecisionAnswer } from './customer-book';
import { ChangePipeline, Gatherer } from './change-pipeline';
import { DecisionAnswers } from './decision-answers';

export type { DecisionAnswer, DecisionOutcome } from './customer-book';

function sameState(a: StoredCustomer, b: StoredCustomer): boolean {
  if (a.balance !== b.balance || a.currency !== b.currency || a.name !== b.name || a.email !== b.email) return false;
  const ak = Object.keys(a.metadata);
  return ak.length === Object.keys(b.metadata).length && ak.every((k) => a.metadata[k] === b.metadata[k]);
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

export interface IngestResult { accepted: number; duplicates: number; acceptedIds: Set<string> }
/** At most this many events go into one gathered commit. */
const MAX_GATHERED_EVENTS = 5000;

export class Engine {
  /** The customers held in memory, their claims, cohorts and answers. */
  private readonly book: CustomerBook;
  /** Each consumer's spend and caps (issue 23). */
  private readonly caps: ConsumerCaps;
  private readonly answers: DecisionAnswers;
  /** Every change runs here, one at a time. */
  private readonly pipeline: ChangePipeline;
  /** Usage calls that arrive while a commit is out go into the store together. */
  private readonly usage: Gatherer<UsageEventInput[], IngestResult>;
  private ruleEnabled = new Map<string, boolean>();
  private templateActive = new Map<string, boolean>();
  private lastAt = 0;
  /** Called after threshold crossings were decided in a commit (the recharger wakes up). */
  onRechargeCrossings: () => void = () => undefined;
  /** Called after emails were written to the outbox (the sender wakes up). */
  onEmailsEnqueued: () => void = () => undefined;
  /** Called after Stripe news or a rule switch changed customers' answers (pushed to gateway nodes); not for usage. */
  onChange: (consumers: string[] | 'all') => void = () => undefined;

  constructor(private readonly config: Config, private readonly store: Store, private readonly now: () => number = Date.now) {
    this.answers = new DecisionAnswers(config, this.isEnabled);
    this.book = new CustomerBook({ consumerMetadataKey: config.stripe.consumerMetadataKey, answer: (customer, cohorts, ledger) => this.answers.forCustomer(customer, cohorts, ledger) });
    this.pipeline = new ChangePipeline(store);
    this.usage = new Gatherer(this.pipeline, (calls) => this.ingestGathered(calls), { weight: (events) => events.length, maxWeight: MAX_GATHERED_EVENTS });
    this.caps = new ConsumerCaps({
      caps: config.caps, rules: config.rules, isEnabled: this.isEnabled, topUp: config.topUp, decisionTtlMs: config.decisionTtlMs,
      dearestMicros: this.answers.dearestMicros, now,
    }, this.book, store);
  }

  async init(): Promise<void> {
    this.ruleEnabled = await this.store.ruleOverrides();
    this.templateActive = await this.store.templateOverrides();
    await this.caps.load();
    const memberships = await this.store.loadMemberships();
    const usage = await this.store.usageTotals();
    const pending = new Map<string, SettlementRow[]>();
    for (const row of await this.store.pendingSettlements()) pending.set(row.customerId, [...(pending.get(row.customerId) ?? []), row]);
    for (const customer of await this.store.loadCustomers()) {
      const u = usage.get(customer.id);
      const inFlight = (pending.get(customer.id) ?? []).map(pendingOf);
      this.book.put(customer, memberships.get(customer.id) ?? [], openLedger(customer.balance, customer.version, u ? u.usedMicros - u.settled * MICROS_PER_UNIT : 0, inFlight));
    }
    // Config may have changed since the last run: bring memberships in line.
    const all = [...this.book.values()].map((e) => ({ customer: e.customer, ledger: e.ledger }));
    await this.pipeline.run(() => this.applyNow(all, [], { force: true }));
  }

  // ---- reading the book ----

  get size(): number { return this.book.size; }

  customer(id: string): { customer: StoredCustomer; unsettledMicros: number; estimatedBalance: number; cohorts: string[]; decision: DecisionAnswer; ledger: LedgerState } | undefined {
    const e = this.book.get(id);
    return e && {
      customer: e.customer, unsettledMicros: e.ledger.unsettledMicros, estimatedBalance: estimatedBalance(e.ledger),
      cohorts: e.cohorts, decision: e.answer, ledger: e.ledger,
    };
  }

  /** When the oldest settlement still in flight for this customer was opened, if any. */
  oldestPendingSettlementAt(id: string): number | undefined {
    const p = this.book.get(id)?.ledger.pending;
    return p?.length ? Math.min(...p.map((q) => q.createdAt)) : undefined;
  }

  /** The customer id a consumer value maps to, if exactly one. */
  resolve(consumer: string): string | undefined { return this.book.resolve(consumer); }

  knownIds(): string[] { return this.book.knownIds(); }

  /**
   * Visits every customer as held, read-only and without copying (the
   * console's pages scan 100k customers per request). `visit` must not keep
   * or change what it is given.
   */
  forEachCustomer(visit: (customer: Readonly<StoredCustomer>, cohorts: readonly string[], ledger: LedgerState, decision: DecisionAnswer) => void): void {
    for (const e of this.book.values()) visit(e.customer, e.cohorts, e.ledger, e.answer);
  }

  cohortMembers(cohort: string): string[] { return this.book.cohortMembers(cohort); }

  /** Members per cohort, counted in one pass. */
  cohortSizes(): Map<string, number> { return this.book.cohortSizes(this.config.cohorts.map((c) => c.id)); }

  /** Consumers claimed by more than one customer: reported, never guessed. */
  conflicts(): Array<{ consumer: string; customers: string[] }> { return this.book.conflicts(); }

  /** The consumer values that name a customer: its id and each consumer its metadata claims (see consumer-claims.ts). */
  consumersOf(customer: StoredCustomer): string[] { return this.book.consumersOf(customer); }

  /** The dearest price of one request, in micros (0: nothing is metered). */
  get dearestMicros(): number { return this.answers.dearestMicros; }

  // ---- decisions ----

  /** The decision for a consumer value, from memory only. */
  decide(consumer: string): DecisionAnswer {
    const id = this.book.resolve(consumer);
    const entry = id === undefined ? undefined : this.book.get(id);
    if (!entry) return this.answers.unknown(this.book.isConflict(consumer));
    return this.caps.capped(consumer, entry) ?? entry.answer;
  }

  /**
   * The answer for a customer with no spendable credit left (what is not held by leases
   * is worth less than one request): the rules' verdict with a balance of at most zero.
   * Undefined when the rules still allow it (no blocking rule at zero: the operator's choice).
   */
  exhaustedAnswer(customerId: string): string | undefined {
    const e = this.book.get(customerId);
    return e && this.answers.exhausted(e.customer, e.ledger, this.now());
  }

  // ---- consumer caps (caps/consumer-caps.ts) ----

  /** A consumer's cap now; undefined when the consumer maps to no customer. */
  capOf(consumer: string, now: number = this.now()): CapOf | undefined { return this.caps.capOf(consumer, now); }

  /** Each consumer of a customer with its spend this period and its caps (console, balance endpoint), amounts in micros. */
  consumerCaps(customerId: string, now: number = this.now()): ConsumerCapView[] { return this.caps.consumerCaps(customerId, now); }

  /** The caps that apply to a consumer (undefined: it maps to no customer, or no cap applies). */
  capLimitsOf(consumer: string): CapLimits | undefined { return this.caps.capLimitsOf(consumer); }

  /** A consumer's spend as this replica counted it. */
  spendOf(consumer: string): ConsumerSpend { return this.caps.spendOf(consumer); }

  /** The cap refusal for a consumer whose cap resets at `resetsAt`. */
  capRefusalAt(consumer: string, resetsAt: number, now: number = this.now()): string { return this.caps.refusalAt(consumer, resetsAt, now); }

  /** The refusal of a consumer whose cap is spent, as decision JSON. */
  capRefusal(consumer: string, left: CapLeft, now: number = this.now()): string { return this.caps.refusal(consumer, left, now); }

  // ---- rule and template switches ----

  rules(): Array<{ rule: RuleDef; enabled: boolean }> {
    return this.config.rules.map((rule) => ({ rule, enabled: this.isEnabled(rule) }));
  }

  private isEnabled = (rule: RuleDef): boolean => this.ruleEnabled.get(rule.id) ?? rule.enabled;

  async setRuleEnabled(ruleId: string, enabled: boolean): Promise<boolean> {
    if (!this.config.rules.some((r) => r.id === ruleId)) return false;
    await this.store.setRuleEnabled(ruleId, enabled);
    this.ruleEnabled.set(ruleId, enabled);
    this.book.reanswer();
    this.onChange('all');
    return true;
  }

  /**
   * Another replica switched a rule or a template (PostgreSQL NOTIFY): take the
   * stored switches, and answer with them from now on.
   */
  reloadSwitches(): Promise<void> {
    return this.pipeline.run(async () => {
      const before = this.ruleEnabled;
      this.ruleEnabled = await this.store.ruleOverrides();
      this.templateActive = await this.store.templateOverrides();
      this.book.reanswer();
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

  // ---- emails ----

  /** Why an email about to be delivered is no longer true (see workflow.staleReason), or undefined. */
  emailStaleReason = async (row: OutboxRow): Promise<string | undefined> => {
    const template = this.config.emails.find((t) => t.id === row.templateId);
    if (!template) return undefined;
    const e = this.book.get(row.customerId);
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
        const e = this.book.get(customerId);
        return e ? [{ customer: estimated(e.customer, e.ledger), since }] : [];
      });
      added += await this.store.enqueueEmails(planRecurring(t, members, now, this.config.topUp, this.now()));
    }
    if (added) this.onEmailsEnqueued();
    return added;
  }

  // ---- changes: each runs in the pipeline ----

  /**
   * Applies customer objects read from Stripe (sweep pages, webhook re-reads),
   * each stamped with when its read started. A read older than the one held is
   * ignored, so a late event or a slow sweep page never rolls back a newer
   * balance. A read that cannot be placed against a settlement in flight is
   * not applied and comes back in `needsReconcile`. Deletes name ids with the
   * version of the news.
   */
  apply(upserts: StoredCustomer[], deletes: Array<{ id: string; version: number }>, opts: { webhookEventId?: string } = {}): Promise<ApplyResult> {
    return this.pipeline.run(async () => {
      const updates: Update[] = [];
      const needsReconcile: StoredCustomer[] = [];
      for (const c of upserts) {
        const held = this.book.get(c.id);
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
    return this.pipeline.run(async () => {
      const held = this.book.get(customer.id);
      const read: BalanceRead = { kind: 'reconciled', balance: customer.balance, startedAt: customer.version, applied };
      const outcome = held ? applyRead(held.ledger, read) : { kind: 'applied' as const, state: openLedger(customer.balance, customer.version), confirmed: [] };
      const at = this.now();
      const updates = outcome.kind === 'applied' ? [{ customer: { ...customer, version: outcome.state.asOf }, ledger: outcome.state }] : [];
      const confirmSettlements = outcome.kind === 'applied' ? outcome.confirmed.map((c) => ({ ...c, at })) : [];
      const transitions = await this.applyNow(updates, [], {}, { confirmSettlements, webhookEventId: opts.webhookEventId });
      return { transitions, needsReconcile: [] };
    });
  }

  /**
   * Usage seen at the gateway: stored once per event id, priced, and added to
   * the customer's unsettled usage, so cohorts and decisions move at once.
   * `acceptedIds`: the events counted now (not seen before). Calls that arrive
   * while a commit is out wait for it and then go into the store together, in
   * one commit (in order: a repeat of an earlier call's event is its duplicate),
   * so a busy replica makes fewer, larger commits.
   */
  ingestUsage(events: UsageEventInput[]): Promise<IngestResult> {
    return this.usage.submit(events);
  }

  /** One gathered commit of several ingest calls: each call's own result. */
  private async ingestGathered(calls: UsageEventInput[][]): Promise<IngestResult[]> {
    const counted = await this.ingestNow(calls.flat());
    let at = 0;
    return calls.map((events) => {
      const acceptedIds = new Set<string>();
      for (const e of events) if (counted.has(at++)) acceptedIds.add(e.id);
      return { accepted: acceptedIds.size, duplicates: events.length - acceptedIds.size, acceptedIds };
    });
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
      const customerId = this.book.resolve(e.consumer) ?? null;
      const costMicros = customerId ? costOf(this.config.metering.pricing, e.route, e.status, e.units) : 0;
      // Issue 23: a consumer's spend counts in the period of the service's clock, not the gateway's (see caps/caps.ts).
      fresh.push({ ...e, customerId, costMicros, spentAt: now });
      if (customerId) expected.set(customerId, (expected.get(customerId) ?? 0) + costMicros);
      if (customerId && costMicros > 0) ledgers.set(customerId, addUsage(ledgers.get(customerId) ?? this.book.get(customerId)!.ledger, costMicros));
    }
    if (fresh.length) {
      const updates = [...ledgers].map(([id, ledger]) => ({ customer: this.book.get(id)!.customer, ledger }));
      await this.applyNow(updates, [], {}, { usage: fresh, saved: (r) => {
        // Issue 23: each consumer's spend, as the store counted it in this commit (an event another replica stored first errs high until re-read).
        this.caps.counted(fresh);
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
      const held = this.book.get(id);
      const a = got.get(id);
      if (held && (a?.micros ?? 0) !== micros) this.book.put(held.customer, held.cohorts, addUsage(held.ledger, (a?.micros ?? 0) - micros));
      if (!a) continue;
      const version = this.book.usageVersion(id);
      this.book.setUsageVersion(id, version !== undefined && a.version === version + 1 ? a.version : undefined);
    }
  }

  /** Settlements written and about to be sent: in flight until confirmed, so plain reads of these customers get reconciled. */
  settlementsOpened(rows: readonly SettlementRow[]): Promise<void> {
    return this.pipeline.run(async () => {
      for (const row of rows) {
        const e = this.book.get(row.customerId);
        if (e) this.book.setLedger(row.customerId, openSettlement(e.ledger, pendingOf(row)));
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
    return this.pipeline.run(async () => {
      const held = this.book.get(row.customerId);
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
    return this.pipeline.run(async () => {
      const held = this.book.get(row.customerId);
      const failSettlementChange = { id: row.id, error, at: this.now() };
      if (held) this.book.setLedger(row.customerId, failSettlement(held.ledger, row.id));
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
    return this.pipeline.run(() => this.reloadNow(ids, read));
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
    return this.pipeline.run(async () => {
      const again = new Set(ids);
      for (const a of added) {
        if (again.has(a.customerId)) continue;
        const held = this.book.get(a.customerId);
        const version = this.book.usageVersion(a.customerId);
        if (held && version !== undefined && a.version <= version) continue;
        if (!held || version === undefined || a.version !== version + 1) { again.add(a.customerId); continue; }
        this.book.put(held.customer, held.cohorts, addUsage(held.ledger, a.micros));
        this.book.setUsageVersion(a.customerId, a.version);
      }
      if (again.size) await this.reloadNow([...again], read);
      await this.caps.reread([...new Set([...added.map((a) => a.customerId), ...again])]);
    });
  }

  private async reloadNow(ids: string[], read: (ids: string[]) => Promise<ReloadedCustomer[]>): Promise<void> {
    const found = new Map((await read(ids)).map((r) => [r.customer.id, r]));
    // Stripe news another replica applied (not its usage): gateway nodes streaming from here drop what they hold.
    const news: string[] = [];
    for (const id of ids) {
      const held = this.book.get(id);
      const r = found.get(id);
      if (r) {
        // Both lists: a consumer taken off the customer is news for the nodes holding it.
        if (held && held.customer.version !== r.customer.version) news.push(...this.book.consumersOf(r.customer), ...this.book.consumersOf(held.customer));
        this.book.put(r.customer, r.cohorts, openLedger(r.customer.balance, r.customer.version, r.unsettledMicros, r.pending.map(pendingOf)));
        this.book.setUsageVersion(id, r.usageVersion);
      } else if (held) {
        news.push(...this.book.consumersOf(held.customer));
        this.book.remove(id);
      }
    }
    if (news.length) this.onChange(news);
  }

  /**
   * Decides a change (cohort transitions, the emails and recharge crossings
   * they call for) against the book, then commits it through the pipeline:
   * stored first, served after.
   */
  private async applyNow(updates: Update[], deletes: Array<{ id: string; version: number }>, opts: { force?: boolean }, extra: ApplyExtra = {}): Promise<TransitionRecord[]> {
    // Strictly increasing, so an entry's time names it (emails are keyed by it).
    const at = this.lastAt = Math.max(this.now(), this.lastAt + 1);
    const transitions: TransitionRecord[] = [];
    const emails: OutboxRecord[] = [];
    const recharges: RechargeCrossing[] = [];
    const saved: StoredCustomer[] = [];
    const removed: string[] = [];
    const removedConsumers: string[] = [];
    const staged: Array<() => void> = [];
    for (const { customer: fields, ledger } of updates) {
      const c: StoredCustomer = fields.balance === ledger.balance && fields.version === ledger.asOf ? fields : { ...fields, balance: ledger.balance, version: ledger.asOf };
      const held = this.book.get(c.id);
      if (this.book.buried(c.id, c.version)) continue;
      const unchanged = held !== undefined && sameState(held.customer, c);
      if (!opts.force && unchanged && ledger.unsettledMicros === held!.ledger.unsettledMicros) {
        // Nothing changed (most customers on most sweeps): move the version on
        // in memory only, so a sweep does not rewrite every row.
        staged.push(() => this.book.restate(held!, c, ledger));
        continue;
      }
      const viewBefore = held && estimated(held.customer, held.ledger);
      const viewAfter = estimated(c, ledger);
      const before = held?.cohorts ?? [];
      const after = cohortsOf(this.config.cohorts, viewAfter);
      const mine = diffMemberships(before, after).map((t) => ({ customerId: c.id, ...t, at, balance: viewAfter.balance }));
      transitions.push(...mine);
      // A config change (force) moves memberships but is nothing the customer did: no emails, no recharges.
      if (!opts.force && this.config.emails.length) {
        emails.push(...planEmails(this.config.emails, this.isTemplateActive, { before: viewBefore, after: viewAfter, transitions: mine, at }, this.config.topUp));
      }
      const recharge = !opts.force && viewBefore ? rechargeCrossing(c, viewBefore.balance, viewAfter.balance, at, this.config.autoRecharge, this.config.topUp.checkout?.defaultCurrency) : undefined;
      if (recharge) recharges.push(recharge);
      if (!unchanged && (!opts.force || !held)) {
        saved.push(c);
        // Consumers taken off the customer's list are news too: nodes must drop what they hold for them.
        if (held) { const now = this.book.consumersOf(c); removedConsumers.push(...this.book.consumersOf(held.customer).filter((x) => !now.includes(x))); }
      }
      staged.push(() => this.book.put(c, after, ledger));
    }
    for (const d of deletes) {
      const held = this.book.get(d.id);
      if (!held || held.customer.version > d.version) continue;
      for (const cohort of held.cohorts) transitions.push({ customerId: d.id, cohort, kind: 'leave', at, balance: held.customer.balance });
      removed.push(d.id);
      removedConsumers.push(...this.book.consumersOf(held.customer));
      staged.push(() => { this.book.remove(d.id); this.book.bury(d.id, d.version); });
    }
    const result = await this.pipeline.commit({
      upserts: saved, deletes: removed, transitions, emails, usage: extra.usage, ...(recharges.length ? { recharges } : {}),
      confirmSettlements: extra.confirmSettlements, failSettlement: extra.failSettlement,
      webhookEvent: extra.webhookEventId === undefined ? undefined : { id: extra.webhookEventId, at: this.now() },
    }, staged);
    extra.saved?.(result);
    if (emails.length) this.onEmailsEnqueued();
    if (recharges.length) this.onRechargeCrossings();
    // Stripe news (not usage, not a settlement, not a config reload): gateway nodes drop what they hold.
    if (!opts.force && !extra.usage && !extra.confirmSettlements?.length && (saved.length || removed.length)) {
      this.onChange([...saved.flatMap((c) => this.book.consumersOf(c)), ...removedConsumers]);
    }
    return transitions;
  }
}
