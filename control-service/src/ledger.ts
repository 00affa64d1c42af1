// The ledger of one customer, pure: Stripe's balance as of a read, the usage
// not yet in that balance, and the settlements sent but not yet confirmed.
// Every way we learn a balance (a sweep page, a webhook's re-read, a list of
// the customer's balance transactions, a settlement's own answer) is a
// BalanceRead; applyRead decides what it changes. I/O lives elsewhere.
//
// Estimated balance = balance + unsettled usage, where unsettled usage still
// holds every settlement Stripe has not been seen to apply. The hard part is a
// settlement in flight: a plain balance read cannot say whether it includes
// it, so while one is pending such a read is not applied; the caller reads the
// customer's balance transactions instead (reconciled read), which name the
// settlements applied and give the balance after them, in one answer.

import type { SettlementMode } from './store/store';
import { MICROS_PER_UNIT } from './pricing';

export interface PendingSettlement { id: number; amount: number; mode: SettlementMode; createdAt: number }

export interface LedgerState {
  /** Stripe's balance (cents, negative = credit) as of `asOf`. */
  readonly balance: number;
  /** When the read that gave `balance` started (ms; reads are stamped by one monotonic clock). */
  readonly asOf: number;
  /** Cost of usage not in `balance`, in micros: unsettled usage plus the amounts of pending settlements. */
  readonly unsettledMicros: number;
  /** Settlements opened and not yet confirmed, oldest first. */
  readonly pending: readonly PendingSettlement[];
  /**
   * The highest settlement id confirmed or failed. A customer has one
   * settlement in flight at a time and ids only grow, so an id at or below it
   * is done: a settlement pass that read it as pending just before is late.
   */
  readonly doneThrough?: number;
  /**
   * The last balance-transaction settlement confirmed by its own answer, and
   * when that answer was heard: a plain read that began before it cannot say
   * whether it includes that settlement.
   */
  readonly lastConfirmed?: {
    id: number; heardAt: number;
    /**
     * The start of the newest reconciled read applied since that lists it but
     * began before it was heard: such reads are placed by their start among
     * themselves, so an older one never replaces a newer one.
     */
    containedBy?: number;
  };
}

export type BalanceRead =
  /** A customer object (sweep page, retrieve): its balance, nothing about settlements. */
  | { kind: 'plain'; balance: number; startedAt: number }
  /** The customer's balance transactions: the balance after the newest, and the settlements among them. */
  | { kind: 'reconciled'; balance: number; startedAt: number; applied: ReadonlyMap<number, string> }
  /** A settlement's own answer (balance transactions: with Stripe's ending_balance). */
  | { kind: 'confirmation'; settlementId: number; stripeRef: string; endingBalance: number | undefined; heardAt: number };

export type ReadOutcome =
  | { kind: 'applied'; state: LedgerState; confirmed: Array<{ id: number; stripeRef: string }> }
  /** Older than what is held (or already counted): nothing changes. */
  | { kind: 'stale' }
  /** A plain read that cannot be placed against a settlement in flight: read the balance transactions instead. */
  | { kind: 'needs_reconcile' };

export function openLedger(balance: number, asOf: number, unsettledMicros = 0, pending: readonly PendingSettlement[] = []): LedgerState {
  return { balance, asOf, unsettledMicros, pending };
}

/** What cohorts, rules and emails see: the balance with the unsettled usage (cents, may be fractional). */
export function estimatedBalance(s: LedgerState): number {
  return s.unsettledMicros === 0 ? s.balance : s.balance + s.unsettledMicros / MICROS_PER_UNIT;
}

/** True while a plain read cannot be trusted: a balance-transaction settlement may be applied at any moment. */
export function needsReconciledReads(s: LedgerState): boolean {
  return s.pending.some((p) => p.mode === 'balance_transactions');
}

export function addUsage(s: LedgerState, micros: number): LedgerState {
  return micros === 0 ? s : { ...s, unsettledMicros: s.unsettledMicros + micros };
}

/** A settlement was written and is about to be sent: its amount stays in unsettled usage until confirmed. */
export function openSettlement(s: LedgerState, p: PendingSettlement): LedgerState {
  return s.pending.some((q) => q.id === p.id) || p.id <= (s.doneThrough ?? 0) ? s : { ...s, pending: [...s.pending, p] };
}

/**
 * Stripe refused a settlement for good. It is no longer in flight, and its
 * amount stays counted against the estimate: the usage was served, it is
 * owed, it just was not billed (an operator sees it as failed).
 */
export function failSettlement(s: LedgerState, id: number): LedgerState {
  return s.pending.some((q) => q.id === id) ? { ...s, pending: s.pending.filter((q) => q.id !== id), doneThrough: Math.max(s.doneThrough ?? 0, id) } : s;
}

export function applyRead(s: LedgerState, read: BalanceRead): ReadOutcome {
  switch (read.kind) {
    case 'plain': {
      if (read.startedAt < s.asOf) return { kind: 'stale' };
      if (needsReconciledReads(s) || (s.lastConfirmed && read.startedAt <= s.lastConfirmed.heardAt)) return { kind: 'needs_reconcile' };
      return { kind: 'applied', state: { ...s, balance: read.balance, asOf: read.startedAt }, confirmed: [] };
    }
    case 'reconciled': {
      // Older than the held balance, unless the held balance is a confirmation's
      // ending_balance that this read already contains (it lists that settlement).
      const held = s.lastConfirmed;
      const containsHeld = held !== undefined && s.asOf === held.heardAt && read.applied.has(held.id)
        && read.startedAt > (held.containedBy ?? -Infinity);
      if (read.startedAt < s.asOf && !containsHeld) return { kind: 'stale' };
      const confirmed = s.pending.filter((p) => read.applied.has(p.id));
      const unsettledMicros = confirmed.reduce((u, p) => u - p.amount * MICROS_PER_UNIT, s.unsettledMicros);
      const lastConfirmed = containsHeld && read.startedAt < s.asOf ? { ...held, containedBy: read.startedAt } : s.lastConfirmed;
      const doneThrough = Math.max(s.doneThrough ?? 0, ...confirmed.map((p) => p.id));
      return {
        kind: 'applied',
        state: { ...s, balance: read.balance, asOf: Math.max(s.asOf, read.startedAt), unsettledMicros, pending: s.pending.filter((p) => !read.applied.has(p.id)), lastConfirmed, doneThrough },
        confirmed: confirmed.map((p) => ({ id: p.id, stripeRef: read.applied.get(p.id)! })),
      };
    }
    case 'confirmation': {
      // Already seen applied (by a reconciled read): a late or replayed answer
      // carries the balance of its time and must not roll back a newer one.
      const p = s.pending.find((q) => q.id === read.settlementId);
      if (!p) return { kind: 'stale' };
      const base = { ...s, unsettledMicros: s.unsettledMicros - p.amount * MICROS_PER_UNIT, pending: s.pending.filter((q) => q.id !== p.id), doneThrough: Math.max(s.doneThrough ?? 0, p.id) };
      if (read.endingBalance === undefined) return { kind: 'applied', state: base, confirmed: [{ id: p.id, stripeRef: read.stripeRef }] };
      // While it was pending every read was reconciled and did not list it, so
      // its ending_balance is newer than the held balance.
      const asOf = Math.max(s.asOf, read.heardAt);
      return {
        kind: 'applied',
        state: { ...base, balance: read.endingBalance, asOf, lastConfirmed: { id: p.id, heardAt: asOf } },
        confirmed: [{ id: p.id, stripeRef: read.stripeRef }],
      };
    }
  }
}
