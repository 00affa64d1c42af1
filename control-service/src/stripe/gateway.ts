// All Stripe calls go through here: the official SDK (pointed at
// STRIPE_API_BASE), a request-rate limit, and retries. The SDK's own retries
// are off because it does not retry a plain 429; this one rule covers all:
// 429 → wait Retry-After (or back off), 5xx and connection errors → back off,
// other 4xx → fail at once.

import Stripe from 'stripe';
import type { Customer } from '../customer';
import { moveRefOf } from '../top-ups/core';

export interface GatewayOptions {
  secretKey: string;
  apiBase: URL;
  maxRequestsPerSecond: number;
  timeoutMs: number;
  maxAttempts?: number;
  baseDelayMs?: number;
  maxDelayMs?: number;
  onError?: (status: string) => void;
  sleep?: (ms: number) => Promise<void>;
}

export class StripeUnavailable extends Error {}

/** Stripe refused the request for good (a 4xx other than 429 and 409): sending it again gets the same answer. */
export function isPermanentRefusal(err: unknown): boolean {
  const status = (err as { statusCode?: number }).statusCode;
  return status !== undefined && status >= 400 && status < 500 && status !== 429 && status !== 409;
}

/** What the customer's balance transactions say: the balance after the newest, and our settlements among them. */
/** `moves`: our top-up credits and debits among them (ref → balance transaction id; see top-ups/core.ts moveRefOf). */
export interface BalanceLedgerRead { balance: number | undefined; applied: Map<number, string>; startedAt: number; deleted?: boolean; moves: Map<string, string> }

let lastStamp = 0;
/** When a read starts, strictly increasing: of two reads, the later-started one is newer even within one millisecond. */
export function readStamp(): number {
  lastStamp = Math.max(Date.now(), lastStamp + 1);
  return lastStamp;
}

const defaultSleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export function toCustomer(c: Stripe.Customer): Customer {
  return {
    id: c.id, balance: c.balance ?? 0, currency: c.currency ?? null, name: c.name ?? null, email: c.email ?? null,
    metadata: { ...(c.metadata ?? {}) },
  };
}

export class StripeGateway {
  readonly stripe: Stripe;
  private nextSlot = 0;
  private readonly spacingMs: number;
  private readonly sleep: (ms: number) => Promise<void>;

  constructor(private readonly opts: GatewayOptions) {
    const base = opts.apiBase;
    this.stripe = new Stripe(opts.secretKey, {
      host: base.hostname,
      port: base.port ? Number(base.port) : base.protocol === 'http:' ? 80 : 443,
      protocol: base.protocol === 'http:' ? 'http' : 'https',
      maxNetworkRetries: 0,
      timeout: opts.timeoutMs,
      telemetry: false,
    });
    this.spacingMs = 1000 / opts.maxRequestsPerSecond;
    this.sleep = opts.sleep ?? defaultSleep;
  }

  /** Waits for the next request slot so we stay under max_requests_per_second. */
  private async slot(): Promise<void> {
    const now = Date.now();
    const at = Math.max(now, this.nextSlot);
    this.nextSlot = at + this.spacingMs;
    if (at > now) await this.sleep(at - now);
  }

  async call<T>(fn: (stripe: Stripe) => Promise<T>): Promise<T> {
    const maxAttempts = this.opts.maxAttempts ?? 6;
    const base = this.opts.baseDelayMs ?? 250;
    const cap = this.opts.maxDelayMs ?? 10_000;
    for (let attempt = 1; ; attempt++) {
      await this.slot();
      try {
        return await fn(this.stripe);
      } catch (err) {
        const e = err as { statusCode?: number; type?: string; headers?: Record<string, string>; message?: string };
        // Stripe's error text may repeat the key the request was made with: it must not travel on into logs or answers.
        if (typeof e.message === 'string' && e.message.includes(this.opts.secretKey)) e.message = e.message.split(this.opts.secretKey).join('[redacted key]');
        const status = e.statusCode;
        this.opts.onError?.(status ? String(status) : 'connection');
        const retryable = status === undefined ? e.type === 'StripeConnectionError' || e.type === 'StripeAPIError'
          : status === 429 || status >= 500;
        if (!retryable) throw err;
        if (attempt >= maxAttempts) throw new StripeUnavailable(`Stripe unavailable after ${attempt} attempts: ${status ?? e.message}`);
        const retryAfter = Number(e.headers?.['retry-after']);
        const backoff = Math.min(cap, base * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2);
        const delay = Number.isFinite(retryAfter) && retryAfter >= 0 ? retryAfter * 1000 : backoff;
        // Keep the whole client behind the pause, so a 429 slows every caller, not just this one.
        this.nextSlot = Math.max(this.nextSlot, Date.now() + delay);
      }
    }
  }

  async listPage(limit: number, startingAfter: string | undefined): Promise<{ customers: Customer[]; hasMore: boolean; lastId?: string; fetchedAt: number }> {
    const fetchedAt = readStamp();
    const page = await this.call((s) => s.customers.list({ limit, ...(startingAfter ? { starting_after: startingAfter } : {}) }));
    return { customers: page.data.map(toCustomer), hasMore: page.has_more, lastId: page.data.at(-1)?.id, fetchedAt };
  }

  /**
   * Debits a customer's credit by `amount` (positive = debit, Stripe's sign).
   * The idempotency key makes a retry after a crash return the first answer
   * instead of charging again.
   */
  async debitBalance(customerId: string, amount: number, currency: string, description: string, metadata: Record<string, string>, idempotencyKey: string): Promise<{ id: string; endingBalance: number }> {
    const txn = await this.call((s) => s.customers.createBalanceTransaction(customerId, { amount, currency, description, metadata }, { idempotencyKey }));
    return { id: txn.id, endingBalance: txn.ending_balance };
  }

  /** Reports usage to a Stripe Billing Meter; `identifier` is Stripe's own dedupe, the idempotency key ours. */
  async meterEvent(eventName: string, customerId: string, value: number, identifier: string, timestamp: number, idempotencyKey: string): Promise<{ identifier: string }> {
    const event = await this.call((s) => s.billing.meterEvents.create(
      { event_name: eventName, payload: { stripe_customer_id: customerId, value: String(value) }, identifier, timestamp }, { idempotencyKey }));
    return { identifier: event.identifier };
  }

  /** The customer as Stripe holds it now, or 'deleted', with when the read started. */
  async retrieve(id: string): Promise<{ customer: Customer | 'deleted'; startedAt: number }> {
    const startedAt = readStamp();
    let c: Stripe.Customer | Stripe.DeletedCustomer;
    try {
      c = await this.call((s) => s.customers.retrieve(id));
    } catch (err) {
      // Stripe says no such customer: as good as deleted (a signed event for it creates nothing).
      if ((err as { statusCode?: number }).statusCode === 404) return { customer: 'deleted', startedAt };
      throw err;
    }
    return { customer: (c as Stripe.DeletedCustomer).deleted ? 'deleted' : toCustomer(c as Stripe.Customer), startedAt };
  }

  /**
   * Lists a customer's balance transactions newest first, back to a little
   * before `since` (ms; our clock and Stripe's may differ by a few minutes).
   * Every change to a Stripe balance is a balance transaction, so the newest
   * one's ending_balance is the balance, and the ones carrying our
   * `payg_settlement` metadata are the settlements Stripe has applied: one
   * consistent answer, whatever is in flight.
   */
  async balanceLedger(customerId: string, since: number): Promise<BalanceLedgerRead> {
    const startedAt = readStamp();
    const applied = new Map<number, string>();
    const moves = new Map<string, string>();
    let balance: number | undefined;
    let after: string | undefined;
    const horizon = Math.floor((since - 10 * 60_000) / 1000);
    for (;;) {
      let page: Stripe.ApiList<Stripe.CustomerBalanceTransaction>;
      try {
        page = await this.call((s) => s.customers.listBalanceTransactions(customerId, { limit: 100, ...(after ? { starting_after: after } : {}) }));
      } catch (err) {
        // No such customer: deleted since it was read (its settlements then fail as refused).
        if ((err as { statusCode?: number }).statusCode === 404) return { balance: undefined, applied, startedAt, deleted: true, moves };
        throw err;
      }
      if (balance === undefined && page.data.length) balance = page.data[0].ending_balance;
      for (const t of page.data) {
        const ref = Number(t.metadata?.payg_settlement);
        if (Number.isInteger(ref) && ref > 0) applied.set(ref, t.id);
        const move = moveRefOf(t.metadata);
        if (move) moves.set(move, t.id);
      }
      const last = page.data.at(-1);
      if (!page.has_more || !last || last.created < horizon) break;
      after = last.id;
    }
    return { balance, applied, startedAt, moves };
  }
}
