// Rows as both stores return them (snake_case columns) → the Store contract's records.

import type { LeaseRow, OutboxRow, SettlementRow } from './store';

export function toSettlement(r: Record<string, any>): SettlementRow {
  return {
    id: r.id, customerId: r.customer_id, fromSeq: r.from_seq, uptoSeq: r.upto_seq, amount: r.amount, currency: r.currency, mode: r.mode,
    idempotencyKey: r.idempotency_key, status: r.status, attempts: r.attempts, lastError: r.last_error, stripeRef: r.stripe_ref,
    createdAt: r.created_at, confirmedAt: r.confirmed_at,
  };
}

export function toOutboxRow(r: Record<string, any>): OutboxRow {
  return {
    id: r.id, dedupeKey: r.dedupe_key, templateId: r.template_id, customerId: r.customer_id, to: r.to_address, context: r.context,
    createdAt: r.created_at, status: r.status, attempts: r.attempts, nextAttemptAt: r.next_attempt_at, lastError: r.last_error,
    messageId: r.message_id, deliveredAt: r.delivered_at,
  };
}

export function toLease(r: Record<string, any>): LeaseRow {
  return {
    id: r.id, node: r.node, customerId: r.customer_id, consumer: r.consumer, requests: r.requests, costMicros: r.cost_micros,
    micros: r.micros, grantedAt: r.granted_at, expiresAt: r.expires_at, heldUntil: r.held_until,
    drawn: r.drawn ?? null, drawnMicros: r.drawn_micros ?? null, settledMicros: r.settled_micros,
  };
}
