// What auto-recharge keeps in the store (SQLite version 10, PostgreSQL version 8):
// the recharge outbox (one row per planned recharge, written in the same
// transaction as the change that crossed the threshold, before anything is
// charged) and per customer the failures in a row and whether it is paused.
// Each store runs the same statements (here, `?` placeholders) in its dialect.

import { randomBytes } from 'node:crypto';
import { COUNTS_AGAINST_CAP, monthOf, OPEN, planRecharge, type PlanDecision, type RechargeCrossing, type RechargeSettings, type RechargeStatus } from './core';

export interface RechargeRow {
  id: string;
  customerId: string;
  amount: number;
  currency: string;
  month: string;
  dueAt: number;
  status: RechargeStatus;
  /** The saved payment method charged (fixed at the first attempt, so every retry sends the same request). */
  paymentMethod: string | null;
  paymentIntent: string | null;
  failureCode: string | null;
  lastError: string | null;
  attempts: number;
  createdAt: number;
  finishedAt: number | null;
}

export type { RechargeCrossing } from './core';

export interface RechargeState { failures: number; pausedAt: number | null }

export interface PendingOptIn { topUpId: string; customerId: string; sessionId: string; settings: RechargeSettings }
export const toOptIn = (r: Record<string, any>): PendingOptIn => ({ topUpId: r.top_up_id, customerId: r.customer_id, sessionId: r.session_id, settings: JSON.parse(r.settings) });

export interface RechargeStore {
  /** Planned recharges due by `now` and those still processing at Stripe, oldest first. */
  dueRecharges(now: number): Promise<RechargeRow[]>;
  /** When the next planned recharge is due, if any. */
  nextRechargeDueAt(): Promise<number | undefined>;
  recharges(customerId: string, limit: number): Promise<RechargeRow[]>;
  recharge(id: string): Promise<RechargeRow | undefined>;
  rechargeState(customerId: string): Promise<RechargeState>;
  /** Fixes the payment method of a recharge not yet sent; answers the one fixed (a first caller's wins). */
  fixRechargePaymentMethod(id: string, paymentMethod: string): Promise<string>;
  rechargeAttemptFailed(id: string, error: string): Promise<void>;
  /** Stripe is still processing the payment: polled again by the leader. */
  rechargeProcessing(id: string, paymentIntent: string): Promise<void>;
  /**
   * A recharge's end, once (a row already finished stays as it is; `changed`
   * false): succeeded resets the failures in a row; failed and
   * action_required add one, pausing at `maxFailures`.
   */
  finishRecharge(id: string, end: { status: 'succeeded' | 'failed' | 'action_required'; paymentIntent: string | null; failureCode?: string; error?: string; at: number }, maxFailures: number): Promise<{ changed: boolean; state: RechargeState }>;
  /** A manual top-up credited after the pause: failures back to 0, not paused. Answers whether it was paused. */
  rearmRecharges(customerId: string, at: number): Promise<boolean>;
  /** An opt-in chosen on the top-up page, applied once its top-up is credited (recharges/opt-in.ts). */
  recordOptIn(o: PendingOptIn, at: number): Promise<void>;
  pendingOptIns(): Promise<PendingOptIn[]>;
  optInDone(topUpId: string, at: number): Promise<void>;
  /** Customers paused now. */
  pausedRecharges(): Promise<Array<{ customerId: string; pausedAt: number }>>;
}

export function toRecharge(r: Record<string, any>): RechargeRow {
  return {
    id: r.id, customerId: r.customer_id, amount: Number(r.amount), currency: r.currency, month: r.month, dueAt: Number(r.due_at), status: r.status,
    paymentMethod: r.payment_method ?? null, paymentIntent: r.payment_intent ?? null, failureCode: r.failure_code ?? null, lastError: r.last_error ?? null,
    attempts: Number(r.attempts), createdAt: Number(r.created_at), finishedAt: r.finished_at == null ? null : Number(r.finished_at),
  };
}

export function rechargeSchema(dialect: 'sqlite' | 'postgres'): string {
  const big = dialect === 'sqlite' ? 'INTEGER' : 'BIGINT';
  return `CREATE TABLE recharges (id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, amount ${big} NOT NULL CHECK (amount > 0), currency TEXT NOT NULL,
     month TEXT NOT NULL, due_at ${big} NOT NULL,
     status TEXT NOT NULL CHECK (status IN ('planned','processing','succeeded','failed','action_required')),
     payment_method TEXT, payment_intent TEXT, failure_code TEXT, last_error TEXT, attempts INTEGER NOT NULL DEFAULT 0,
     created_at ${big} NOT NULL, finished_at ${big});
   CREATE INDEX recharges_customer_month ON recharges (customer_id, month);
   CREATE INDEX recharges_open ON recharges (status, due_at) WHERE status IN ('planned','processing');
   CREATE UNIQUE INDEX recharges_one_open ON recharges (customer_id) WHERE status IN ('planned','processing');
   CREATE TABLE recharge_state (customer_id TEXT PRIMARY KEY, failures INTEGER NOT NULL DEFAULT 0, paused_at ${big});
   CREATE TABLE recharge_opt_ins (top_up_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, session_id TEXT NOT NULL, settings TEXT NOT NULL,
     created_at ${big} NOT NULL, done_at ${big});`;
}

const IN = (xs: readonly string[]) => `(${xs.map((x) => `'${x}'`).join(',')})`;

/** The statements, with `?` placeholders (PostgreSQL: see `pg`). */
export const SQL = {
  ensureState: 'INSERT INTO recharge_state (customer_id) VALUES (?) ON CONFLICT (customer_id) DO NOTHING',
  state: 'SELECT failures, paused_at FROM recharge_state WHERE customer_id = ?',
  lockState: 'SELECT failures, paused_at FROM recharge_state WHERE customer_id = ? FOR UPDATE',
  open: `SELECT COUNT(*) AS n FROM recharges WHERE customer_id = ? AND status IN ${IN(OPEN)}`,
  lastDue: 'SELECT MAX(due_at) AS t FROM recharges WHERE customer_id = ?',
  /**
   * Per month, succeeded + in flight, less what refunds took back of a recharge
   * (its refund debits in the money outbox, not failed; at most its amount),
   * unless it was disputed: a disputed recharge counts in full.
   */
  spent: `SELECT r.month, SUM(r.amount - CASE
       WHEN EXISTS (SELECT 1 FROM top_up_moves d WHERE d.top_up_id = r.id AND d.kind = 'dispute' AND d.status <> 'failed') THEN 0
       ELSE COALESCE((SELECT SUM(f.amount) FROM top_up_moves f WHERE f.top_up_id = r.id AND f.kind = 'refund' AND f.status <> 'failed'), 0) END) AS n
     FROM recharges r WHERE r.customer_id = ? AND r.month >= ? AND r.status IN ${IN(COUNTS_AGAINST_CAP)} GROUP BY r.month`,
  insert: `INSERT INTO recharges (id, customer_id, amount, currency, month, due_at, status, created_at) VALUES (?, ?, ?, ?, ?, ?, 'planned', ?) ON CONFLICT DO NOTHING`,
  due: `SELECT * FROM recharges WHERE (status = 'planned' AND due_at <= ?) OR status = 'processing' ORDER BY due_at, id`,
  nextDue: `SELECT MIN(due_at) AS t FROM recharges WHERE status = 'planned'`,
  byCustomer: 'SELECT * FROM recharges WHERE customer_id = ? ORDER BY due_at DESC, id DESC LIMIT ?',
  byId: 'SELECT * FROM recharges WHERE id = ?',
  fixMethod: `UPDATE recharges SET payment_method = ? WHERE id = ? AND payment_method IS NULL`,
  attemptFailed: 'UPDATE recharges SET attempts = attempts + 1, last_error = ? WHERE id = ?',
  processing: `UPDATE recharges SET status = 'processing', payment_intent = ?, attempts = attempts + 1 WHERE id = ? AND status IN ${IN(OPEN)}`,
  finish: `UPDATE recharges SET status = ?, payment_intent = COALESCE(?, payment_intent), failure_code = ?, last_error = ?, finished_at = ?, attempts = attempts + 1
     WHERE id = ? AND status IN ${IN(OPEN)}`,
  setState: 'UPDATE recharge_state SET failures = ?, paused_at = ? WHERE customer_id = ?',
  /** A refund or dispute pauses (enqueueDebit): an earlier pause keeps its time. */
  pause: 'UPDATE recharge_state SET paused_at = COALESCE(paused_at, ?) WHERE customer_id = ?',
  paused: 'SELECT customer_id, paused_at FROM recharge_state WHERE paused_at IS NOT NULL',
  recordOptIn: 'INSERT INTO recharge_opt_ins (top_up_id, customer_id, session_id, settings, created_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (top_up_id) DO NOTHING',
  pendingOptIns: 'SELECT * FROM recharge_opt_ins WHERE done_at IS NULL ORDER BY created_at LIMIT 100',
  optInDone: 'UPDATE recharge_opt_ins SET done_at = ? WHERE top_up_id = ? AND done_at IS NULL',
};

/** `?` → `$1, $2, …` for PostgreSQL. */
export function pg(sql: string): string {
  let n = 0;
  return sql.replace(/\?/g, () => `$${++n}`);
}

export function newRechargeId(): string {
  return `ar_${randomBytes(12).toString('base64url')}`;
}

/** What the store read, under the customer's lock, for one crossing. */
export interface CrossingRead { state: { failures: number; paused_at: number | null } | undefined; open: number; lastDue: number | null; spent: Array<{ month: string; n: number }> }

export function decideCrossing(c: RechargeCrossing, read: CrossingRead): PlanDecision {
  const spent = new Map(read.spent.map((r) => [r.month, Number(r.n)]));
  return planRecharge(c.settings, {
    spentIn: (m) => spent.get(m) ?? 0, open: Number(read.open) > 0, lastDueAt: read.lastDue == null ? undefined : Number(read.lastDue),
    paused: read.state?.paused_at != null,
  }, c.at, c.minIntervalMs);
}

export const monthFloor = (at: number) => monthOf(at);

/** Failures in a row after an end, and the pause. */
export function stateAfter(before: { failures: number; paused_at: number | null }, status: 'succeeded' | 'failed' | 'action_required', at: number, max: number): RechargeState {
  if (status === 'succeeded') return { failures: 0, pausedAt: before.paused_at == null ? null : Number(before.paused_at) };
  const failures = before.failures + 1;
  return { failures, pausedAt: before.paused_at != null ? Number(before.paused_at) : failures >= max ? at : null };
}
