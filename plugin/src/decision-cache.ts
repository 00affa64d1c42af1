// Decisions per consumer: reused while fresh, kept a while longer as a
// fallback for when the control service fails, and fetched once however many
// requests for the same consumer miss at the same moment.

import type { Decision } from './decision';
import type { FetchOutcome, FailureReason } from './control-client';

export type Resolution =
  | { kind: 'FRESH' | 'FETCHED' | 'STALE'; decision: Decision }
  | { kind: 'UNAVAILABLE'; reason: FailureReason; detail: string };

interface Entry {
  decision: Decision;
  freshUntil: number;
  usableUntil: number;
  /** Allows this decision may still serve (its max_requests less those served); undefined: no limit. */
  budget: number | undefined;
}

export interface DecisionCacheOptions {
  cacheTtlMs: number;
  staleTtlMs: number;
  /** Bound on remembered consumers; the least recently fetched go first. */
  maxEntries?: number;
  /** Requests of this consumer served here but not yet counted by the service (usage still queued). */
  unreported?: (consumer: string) => number;
  /** Sends queued usage now; resolves when the service has it (or sending failed). */
  flushUsage?: () => Promise<void>;
  now?: () => number;
}

export class DecisionCache {
  private readonly entries = new Map<string, Entry>();
  private readonly inFlight = new Map<string, Promise<Resolution>>();
  private readonly maxEntries: number;
  private readonly now: () => number;

  constructor(private readonly fetch: (consumer: string) => Promise<FetchOutcome>, private readonly opts: DecisionCacheOptions) {
    this.maxEntries = opts.maxEntries ?? 100_000;
    this.now = opts.now ?? Date.now;
  }

  /**
   * The synchronous fast path: a fresh decision, or undefined. An allow with a
   * request budget counts the request it serves, and is no longer fresh once
   * the budget is spent, so a customer near zero is asked about again.
   */
  fresh(consumer: string): Decision | undefined {
    const entry = this.entries.get(consumer);
    if (entry === undefined || this.now() >= entry.freshUntil) return undefined;
    if (entry.budget !== undefined && entry.decision.allow) {
      if (entry.budget <= 0) return undefined;
      entry.budget--;
    }
    return entry.decision;
  }

  resolve(consumer: string): Promise<Resolution> {
    const decision = this.fresh(consumer);
    if (decision) return Promise.resolve({ kind: 'FRESH', decision });
    let pending = this.inFlight.get(consumer);
    if (!pending) {
      pending = this.refresh(consumer).finally(() => this.inFlight.delete(consumer));
      this.inFlight.set(consumer, pending);
    }
    return pending;
  }

  private async refresh(consumer: string): Promise<Resolution> {
    let outcome = await this.fetch(consumer);
    // An allow whose max_requests is used up by requests served here but not yet
    // reported does not cover this request: report them now and ask again, so
    // the answer (a block, with the rule's body) counts everything served.
    if (outcome.kind === 'DECISION' && outcome.decision.allow && outcome.decision.maxRequests !== undefined
      && this.opts.flushUsage && outcome.decision.maxRequests - (this.opts.unreported?.(consumer) ?? 0) <= 0) {
      await this.opts.flushUsage();
      outcome = await this.fetch(consumer);
    }
    const now = this.now();
    if (outcome.kind === 'DECISION') {
      const { decision } = outcome;
      const ttl = Math.min(decision.ttlMs, this.opts.cacheTtlMs);
      this.entries.delete(consumer); // re-insert so Map order stays oldest-first
      // The request that fetched it is the first the budget pays for; requests served
      // here whose usage the service has not counted yet were paid for already.
      const budget = decision.allow && decision.maxRequests !== undefined
        ? decision.maxRequests - 1 - (this.opts.unreported?.(consumer) ?? 0) : undefined;
      this.entries.set(consumer, { decision, freshUntil: now + ttl, usableUntil: now + Math.max(ttl, this.opts.staleTtlMs), budget });
      if (this.entries.size > this.maxEntries) this.entries.delete(this.entries.keys().next().value as string);
      return { kind: 'FETCHED', decision };
    }
    const entry = this.entries.get(consumer);
    // A spent budget is not a usable fallback: the credit it stood for is gone.
    const spent = entry?.decision.allow === true && entry.budget !== undefined && entry.budget <= 0;
    if (entry && now < entry.usableUntil && !spent) return { kind: 'STALE', decision: entry.decision };
    return outcome;
  }
}
