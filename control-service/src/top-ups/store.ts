// What top-ups keep in the store (SQLite version 8, PostgreSQL version 6):
// the top-ups payg created a Checkout Session for, and the money outbox: every
// credit and debit written before it is sent, unique by what it is for (the
// session, the refund, the dispute), so it is sent once whoever decides it.

import type { MoveIntent, MoveKind } from './core';

export interface TopUpRow {
  id: string;
  customerId: string;
  amount: number;
  currency: string;
  sessionId: string | null;
  sessionUrl: string | null;
  paymentIntent: string | null;
  createdAt: number;
}

export interface MoveRow extends MoveIntent {
  id: number;
  status: 'pending' | 'confirmed' | 'failed';
  attempts: number;
  lastError: string | null;
  stripeRef: string | null;
  createdAt: number;
  confirmedAt: number | null;
}

export interface TopUpStore {
  /** Records a top-up about to get its Checkout Session; one already recorded under this id is returned as it is. */
  recordTopUp(row: { id: string; customerId: string; amount: number; currency: string; createdAt: number }): Promise<TopUpRow>;
  /** The session Stripe created for a top-up (and, once known, its PaymentIntent). */
  setTopUpSession(id: string, sessionId: string, sessionUrl: string | null): Promise<void>;
  setTopUpPaymentIntent(id: string, paymentIntent: string): Promise<void>;
  topUp(id: string): Promise<TopUpRow | undefined>;
  topUpByPaymentIntent(paymentIntent: string): Promise<TopUpRow | undefined>;
  /** A customer's top-ups, newest first. */
  topUps(customerId: string, limit: number): Promise<TopUpRow[]>;
  /**
   * Writes a credit to the outbox unless one with its ref is there; answers the
   * stored row and whether this call wrote it (exactly one caller does).
   */
  enqueueMove(intent: MoveIntent, now: number): Promise<{ row: MoveRow; created: boolean }>;
  /**
   * Writes a debit of a top-up unless one with its ref is there, its amount
   * computed from what was debited of that top-up before (refunds and disputes
   * not failed), in the same transaction: debits never exceed the credit.
   * Nothing is written when the amount comes out 0. With `pauseRecharges`, the
   * customer's auto-recharge is paused in the same transaction as the row is
   * written (only then: a replay after a re-arm pauses nothing), so the debit
   * is never sent, nor its crossing decided, with auto-recharge still armed.
   */
  enqueueDebit(intent: Omit<MoveIntent, 'amount'>, amountFor: (debitedBefore: number) => number, now: number, pauseRecharges?: boolean): Promise<{ row: MoveRow | undefined; created: boolean }>;
  pendingMoves(): Promise<MoveRow[]>;
  moves(filter: { topUpId?: string; customerId?: string }): Promise<MoveRow[]>;
  moveAttemptFailed(id: number, error: string): Promise<void>;
  /** Confirmed by Stripe (its balance transaction id); a row already confirmed stays as it is. */
  confirmMove(id: number, stripeRef: string, at: number): Promise<boolean>;
  failMove(id: number, error: string, at: number): Promise<void>;
}

export const MOVE_KINDS: readonly MoveKind[] = ['credit', 'refund', 'dispute'];

export function toTopUp(r: Record<string, any>): TopUpRow {
  return {
    id: r.id, customerId: r.customer_id, amount: Number(r.amount), currency: r.currency, sessionId: r.session_id ?? null,
    sessionUrl: r.session_url ?? null, paymentIntent: r.payment_intent ?? null, createdAt: Number(r.created_at),
  };
}

export function toMove(r: Record<string, any>): MoveRow {
  return {
    id: Number(r.id), ref: r.ref, kind: r.kind, topUpId: r.top_up_id, customerId: r.customer_id, amount: Number(r.amount), currency: r.currency,
    idempotencyKey: r.idempotency_key, description: r.description, metadata: JSON.parse(r.metadata), status: r.status,
    attempts: r.attempts, lastError: r.last_error, stripeRef: r.stripe_ref, createdAt: Number(r.created_at),
    confirmedAt: r.confirmed_at === null ? null : Number(r.confirmed_at),
  };
}

/** The schema, in each store's dialect (`id` column and integer type differ). */
export function topUpSchema(dialect: 'sqlite' | 'postgres'): string {
  const serial = dialect === 'sqlite' ? 'INTEGER PRIMARY KEY AUTOINCREMENT' : 'BIGSERIAL PRIMARY KEY';
  const big = dialect === 'sqlite' ? 'INTEGER' : 'BIGINT';
  return `CREATE TABLE top_ups (id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, amount ${big} NOT NULL CHECK (amount > 0),
     currency TEXT NOT NULL, session_id TEXT UNIQUE, session_url TEXT, payment_intent TEXT, created_at ${big} NOT NULL);
   CREATE INDEX top_ups_customer ON top_ups (customer_id, created_at);
   CREATE INDEX top_ups_payment_intent ON top_ups (payment_intent);
   CREATE TABLE top_up_moves (id ${serial}, ref TEXT NOT NULL UNIQUE,
     kind TEXT NOT NULL CHECK (kind IN ('credit','refund','dispute')), top_up_id TEXT NOT NULL, customer_id TEXT NOT NULL,
     amount ${big} NOT NULL CHECK (amount <> 0), currency TEXT NOT NULL, idempotency_key TEXT NOT NULL UNIQUE,
     description TEXT NOT NULL, metadata TEXT NOT NULL, status TEXT NOT NULL CHECK (status IN ('pending','confirmed','failed')),
     attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, stripe_ref TEXT, created_at ${big} NOT NULL, confirmed_at ${big});
   CREATE INDEX top_up_moves_pending ON top_up_moves (status) WHERE status = 'pending';
   CREATE INDEX top_up_moves_top_up ON top_up_moves (top_up_id, id);
   CREATE INDEX top_up_moves_customer ON top_up_moves (customer_id, id);`;
}
