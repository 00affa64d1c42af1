// Decisions per consumer: reused while fresh, kept a while longer as a
// fallback for when the control service fails, and fetched once however many
// requests for the same consumer miss at the same moment.

import type { Decision } from './decision';
import type { FetchOutcome, FailureReason } from './control-client';

export type Resolution =
  | { kind: 'FRESH' | 'FETCHED' | 'STALE'; decision: Decision }
  | { kind: 'UNAVAILABLE'; reason: FailureReason; detail: string };

interface Entry { decision: Decision; freshUntil: number; usableUntil: number }

export interface DecisionCacheOptions {
  cacheTtlMs: number;
  staleTtlMs: number;
  /** Bound on remembered consumers; the least recently fetched go first. */
  maxEntries?: number;
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

  /** The synchronous fast path: a fresh decision, or undefined. */
  fresh(consumer: string): Decision | undefined {
    const entry = this.entries.get(consumer);
    return entry !== undefined && this.now() < entry.freshUntil ? entry.decision : undefined;
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
    const outcome = await this.fetch(consumer);
    const now = this.now();
    if (outcome.kind === 'DECISION') {
      const { decision } = outcome;
      const ttl = Math.min(decision.ttlMs, this.opts.cacheTtlMs);
      this.entries.delete(consumer); // re-insert so Map order stays oldest-first
      this.entries.set(consumer, { decision, freshUntil: now + ttl, usableUntil: now + Math.max(ttl, this.opts.staleTtlMs) });
      if (this.entries.size > this.maxEntries) this.entries.delete(this.entries.keys().next().value as string);
      return { kind: 'FETCHED', decision };
    }
    const entry = this.entries.get(consumer);
    if (entry && now < entry.usableUntil) return { kind: 'STALE', decision: entry.decision };
    return outcome;
  }
}
