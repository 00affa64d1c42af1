// What the control service persists. The core sees only this interface; the
// SQLite file is the embedded default, PostgreSQL comes for several replicas.

import type { Customer } from '../customer';
import type { TopUpStore } from '../top-ups/store';
import type { ConsumerSpend } from '../caps/caps';

export interface StoredCustomer extends Customer {
  /** When Stripe last told us this state (ms): a sweep's fetch time or a webhook event's `created`. */
  version: number;
}

export interface TransitionRecord {
  customerId: string;
  cohort: string;
  kind: 'enter' | 'leave';
  at: number;
  balance: number;
}

export interface StoreChanges {
  upserts: StoredCustomer[];
  deletes: string[];
  transitions: TransitionRecord[];
  emails?: OutboxRecord[];
  usage?: UsageRecord[];
  /** Marks settlements confirmed by Stripe (with the customer's new balance among the upserts); already confirmed ones stay as they are. */
  confirmSettlements?: Array<{ id: number; stripeRef: string; at: number }>;
  /** Marks a settlement Stripe refused for good. */
  failSettlement?: { id: number; error: string; at: number };
  /** A webhook event processed by this change (its id is deduplicated from then on). */
  webhookEvent?: { id: string; at: number };
}

/** `stale`: cancelled at delivery time because what it announced is no longer true (or a newer reminder replaced it). */
export type EmailStatus = 'pending' | 'sending' | 'delivered' | 'failed' | 'cancelled' | 'stale';

/** An email decided on: written before it is delivered, unique by `dedupeKey`. */
export interface OutboxRecord {
  /** Names exactly what the email is for (template, customer, the entry or crossing), so deciding twice enqueues once. */
  dedupeKey: string;
  templateId: string;
  customerId: string;
  to: string;
  /** The merge-tag values when the email was decided on (JSON). */
  context: string;
  createdAt: number;
  /** A re-enrollment reminder: it replaces the pending reminders of its template and customer. */
  reminder?: boolean;
}

export interface OutboxRow extends OutboxRecord {
  id: number;
  status: EmailStatus;
  attempts: number;
  nextAttemptAt: number;
  lastError: string | null;
  messageId: string | null;
  deliveredAt: number | null;
}

/** One request seen at the gateway, priced when it arrived. */
export interface UsageRecord {
  id: string;
  /** The Stripe customer billed; null when the consumer maps to none (kept, never billed). */
  customerId: string | null;
  consumer: string;
  at: number;
  route: string | null;
  status: number;
  costMicros: number;
  /** The lease the request drew from, and what it reserved (default: the lease's costMicros): settled in the same commit. */
  lease?: string;
  reserved?: number;
  /** Issue 23: when the control service counted it (its clock): the period its consumer's spend counts in. Default `at`. */
  spentAt?: number;
}

/**
 * A lease of credit as stored (durable leases): written before the node may draw on it, closed
 * when given back (`drawn` set), settled as its usage arrives, and held until `heldUntil`
 * (its expiry plus the usage grace) at most.
 */
export interface LeaseRow {
  id: string;
  node: string;
  customerId: string;
  consumer: string;
  requests: number;
  costMicros: number;
  micros: number;
  grantedAt: number;
  expiresAt: number;
  heldUntil: number;
  drawn: number | null;
  drawnMicros: number | null;
  settledMicros: number;
}

/** What the lease keeper writes: new leases, and closings (the node said what it drew). */
export interface LeaseChanges {
  open?: LeaseRow[];
  close?: Array<{ id: string; drawn: number; drawnMicros: number }>;
}

export type SettlementMode = 'balance_transactions' | 'meter_events';

/** A charge of usage to Stripe: the events of one customer up to `uptoSeq`, not charged before. */
export interface SettlementRow {
  id: number;
  customerId: string;
  fromSeq: number;
  uptoSeq: number;
  amount: number;
  currency: string;
  mode: SettlementMode;
  idempotencyKey: string;
  status: 'pending' | 'confirmed' | 'failed';
  attempts: number;
  lastError: string | null;
  stripeRef: string | null;
  createdAt: number;
  confirmedAt: number | null;
}

/**
 * What a commit's usage added, per customer: the micros of the events stored
 * now (not the ones another replica had stored first) and the customer's
 * running-totals version after it (one more per commit that added usage).
 */
export interface UsageAdded { customerId: string; micros: number; version: number }
export interface SavedChanges { usageAdded: UsageAdded[] }

/** Top-ups (issue 21) keep their rows through TopUpStore (top-ups/store.ts). */
export interface Store extends TopUpStore {
  loadCustomers(): Promise<StoredCustomer[]>;
  /**
   * In one transaction: upserts customers, deletes the ids given, and records
   * cohort transitions with the memberships they lead to. A store that
   * versions running totals (PostgreSQL) answers what the usage in it added.
   */
  saveChanges(changes: StoreChanges): Promise<SavedChanges | void>;

  /** Of these usage ids, the ones already stored. */
  knownUsageIds(ids: string[]): Promise<Set<string>>;
  /** Per customer: cost of all usage (micros) and what confirmed settlements charged (whole units). */
  usageTotals(): Promise<Map<string, { usedMicros: number; settled: number }>>;
  /**
   * Opens a settlement for each customer whose usage not yet charged is worth
   * at least one whole unit, unless one is already pending; returns every
   * pending settlement. Amounts are exact: charged so far + this one =
   * floor(all usage up to uptoSeq).
   */
  openSettlements(now: number, mode: SettlementMode, currencyOf: (customerId: string) => string | undefined): Promise<SettlementRow[]>;
  /** Settlements opened and not yet confirmed or failed, oldest first. */
  pendingSettlements(): Promise<SettlementRow[]>;
  /** A send that Stripe did not answer (or answered 429/5xx): counted, stays pending, resent with the same key. */
  settlementAttemptFailed(id: number, error: string): Promise<void>;
  /**
   * Forgets what is only kept for dedupe: usage events received before `usageBefore`
   * that a confirmed settlement covers (or that bill no one), and webhook event
   * ids older than `webhooksBefore`. Running totals are kept.
   */
  prune(opts: { usageBefore: number; webhooksBefore: number }): Promise<{ usageEvents: number; webhookEvents: number }>;
  settlements(customerId?: string): Promise<SettlementRow[]>;
  /** Current members of a cohort and when they entered. */
  membersSince(cohort: string): Promise<Array<{ customerId: string; since: number }>>;
  /** When a customer entered a cohort it is in now; undefined when not a member. */
  membershipSince(customerId: string, cohort: string): Promise<number | undefined>;

  /**
   * Adds emails to the outbox; a dedupe key already there is ignored. Returns
   * how many were new. A new reminder (`reminder: true`) makes the pending
   * reminders of its template and customer `stale`: at most one waits.
   */
  enqueueEmails(emails: OutboxRecord[]): Promise<number>;
  /** Claims the oldest pending email due by `now` (status → sending). Attempts count server answers only (finish/retry). */
  claimDueEmail(now: number): Promise<OutboxRow | undefined>;
  /** When the next pending email is due, if any. */
  nextEmailDueAt(): Promise<number | undefined>;
  /** `answered`: the SMTP server answered this attempt (it counts as one). */
  finishEmail(id: number, outcome: { status: 'delivered' | 'failed' | 'cancelled' | 'stale'; at: number; messageId?: string; error?: string; answered?: boolean }): Promise<void>;
  retryEmail(id: number, nextAttemptAt: number, error: string, answered: boolean): Promise<void>;
  /** After a crash, emails left in `sending` are pending again (same row, same Message-ID). */
  requeueInterruptedEmails(): Promise<number>;
  /** Cancels pending emails of a template switched off. */
  cancelPendingEmails(templateId: string, at: number): Promise<number>;
  countEmails(status: EmailStatus): Promise<number>;
  emailLog(filter: { customerId?: string; templateId?: string; status?: EmailStatus; limit: number }): Promise<OutboxRow[]>;
  templateOverrides(): Promise<Map<string, boolean>>;
  setTemplateActive(templateId: string, active: boolean): Promise<void>;

  loadMemberships(): Promise<Map<string, string[]>>;
  history(customerId: string): Promise<TransitionRecord[]>;
  ruleOverrides(): Promise<Map<string, boolean>>;
  setRuleEnabled(ruleId: string, enabled: boolean): Promise<void>;
  /** Whether a webhook event was processed (recorded by saveChanges in the transaction that applied it). */
  webhookEventSeen(eventId: string): Promise<boolean>;
  /** Writes new leases and closings in one transaction (durable before the grant is answered). */
  recordLeases(changes: LeaseChanges): Promise<void>;
  /** Leases still held at `now` (held_until later), for a restarted service's book. */
  heldLeases(now: number): Promise<LeaseRow[]>;
  /** Forgets leases that hold nothing any more (past held_until, or closed and fully settled). */
  pruneLeases(now: number): Promise<number>;
  // ---- issue 23 (team caps) ----
  /** Each consumer's spend in its current periods, counted by saveChanges from the usage it stores (store/consumer-spend.ts). */
  consumerSpend(consumers?: string[]): Promise<Map<string, ConsumerSpend>>;
  // ---- end issue 23 ----
  getMeta(key: string): Promise<string | undefined>;
  setMeta(key: string, value: string): Promise<void>;
  ping(): Promise<void>;
  close(): Promise<void>;
}
