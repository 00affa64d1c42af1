// Settlement: usage not yet charged goes to Stripe on a schedule, per customer,
// as a customer balance transaction (a positive amount debits the credit) or a
// Billing Meter event. Each settlement is written before it is sent, with an
// idempotency key derived from exactly what it charges, and sent again with
// the same key until Stripe confirms it: a crash between "sent" and "marked
// settled" ends in one charge, not two.

import type { Logger } from 'pino';
import type { Engine } from '../engine';
import type { SettlementMode, SettlementRow, Store } from '../store/store';
import { isPermanentRefusal, readStamp, type StripeGateway } from './gateway';

/** `failed`: refused by Stripe for good; `retrying`: not confirmed this pass, resent with the same key. */
export interface SettleResult { confirmed: number; failed: number; retrying: number; amount: number; durationMs: number }

/** Stripe's answer when a meter event's identifier is taken (sent before, past the idempotency key's life). */
const IDENTIFIER_TAKEN = /An event already exists with identifier/i;

export class Settler {
  private running: Promise<SettleResult> | undefined;

  constructor(
    private readonly gateway: StripeGateway,
    private readonly engine: Engine,
    private readonly store: Store,
    private readonly opts: { mode: SettlementMode; meterEventName: string; log: Logger; onResult?: (r: SettleResult) => void },
  ) {}

  /** Runs a settlement pass, or joins the one already running. */
  settle(): Promise<SettleResult> {
    this.running ??= this.run().finally(() => { this.running = undefined; });
    return this.running;
  }

  private async run(): Promise<SettleResult> {
    const started = Date.now();
    const pending = await this.store.openSettlements(started, this.opts.mode, (id) => this.engine.customer(id)?.customer.currency ?? undefined);
    // In flight from now on: a balance read of these customers is reconciled with their balance transactions.
    await this.engine.settlementsOpened(pending);
    const result: SettleResult = { confirmed: 0, failed: 0, retrying: 0, amount: 0, durationMs: 0 };
    for (const row of pending) {
      try {
        // Opened in an earlier pass: sent before, maybe applied with the answer lost.
        if (row.createdAt < started && await this.appliedAlready(row)) {
          result.confirmed++;
          result.amount += row.amount;
          continue;
        }
        await this.send(row);
        result.confirmed++;
        result.amount += row.amount;
      } catch (err) {
        const message = (err as Error).message;
        if (isPermanentRefusal(err)) {
          // Sending it again gets the same answer: it must not hold up this customer's later settlements.
          result.failed++;
          await this.engine.settlementFailed(row, message);
          this.opts.log.error({ settlement: row.id, customer: row.customerId, amount: row.amount, err: message }, 'settlement refused by Stripe; marked failed, its amount stays counted against the estimate');
        } else {
          result.retrying++;
          await this.store.settlementAttemptFailed(row.id, message);
          this.opts.log.warn({ settlement: row.id, customer: row.customerId, amount: row.amount, err: message }, 'settlement not confirmed; retried with the same idempotency key');
        }
      }
    }
    result.durationMs = Date.now() - started;
    this.opts.onResult?.(result);
    return result;
  }

  /**
   * Whether Stripe already applied this balance-transaction settlement, read
   * from the customer's balance transactions (that read then confirms it).
   * Stripe forgets an idempotency key after 24 hours: a resend after a longer
   * outage would charge twice, so a resend is checked first. One extra request
   * per settlement resent, none for first sends.
   */
  private async appliedAlready(row: SettlementRow): Promise<boolean> {
    const held = this.engine.customer(row.customerId);
    if (row.mode !== 'balance_transactions' || !held) return false;
    const read = await this.gateway.balanceLedger(row.customerId, row.createdAt);
    if (read.deleted || !read.applied.has(row.id)) return false;
    await this.engine.applyReconciled({ ...held.customer, balance: read.balance ?? held.customer.balance, version: read.startedAt }, read.applied);
    return true;
  }

  private async send(row: SettlementRow): Promise<void> {
    if (row.mode === 'balance_transactions') {
      const txn = await this.gateway.debitBalance(row.customerId, row.amount, row.currency,
        `API usage (events ${row.fromSeq}–${row.uptoSeq})`, { payg_settlement: String(row.id) }, row.idempotencyKey);
      // Stamped by the clock reads are stamped with: any read begun before this answer was heard is older.
      await this.engine.settlementConfirmed(row, txn.id, txn.endingBalance, readStamp());
      return;
    }
    try {
      const event = await this.gateway.meterEvent(this.opts.meterEventName, row.customerId, row.amount, row.idempotencyKey, Math.floor(row.createdAt / 1000), row.idempotencyKey);
      await this.engine.settlementConfirmed(row, event.identifier, undefined);
    } catch (err) {
      // Stripe already holds an event with this identifier (sent past the idempotency key's life): it is settled.
      // Matched on Stripe's message too: the error code is not always there.
      const e = err as { code?: string; message?: string; raw?: { message?: string } };
      if (e.code === 'meter_event_identifier_already_exists' || IDENTIFIER_TAKEN.test(e.raw?.message ?? e.message ?? '')) {
        await this.engine.settlementConfirmed(row, row.idempotencyKey, undefined);
        return;
      }
      throw err;
    }
  }
}
