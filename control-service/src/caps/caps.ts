// Spending caps per consumer (issue 23): one team balance, and for each
// consumer a daily and/or monthly cap in the customer's currency. Pure: time
// comes in as epoch milliseconds, money as integer micros (1 smallest currency
// unit = 1,000,000 micros, as in pricing.ts), so every boundary is exact.
//
// Periods start at UTC boundaries: a day at 00:00:00.000 UTC, a month at 00:00
// UTC on its first day. `resets_at` is the start of the next period.

import { MICROS_PER_UNIT } from '../pricing';

export type CapPeriod = 'daily' | 'monthly';
export const CAP_PERIODS: readonly CapPeriod[] = ['daily', 'monthly'];

/** Caps in the smallest currency unit; absent: no cap for that period. */
export interface CapLimits { daily?: number; monthly?: number }

/** The start (epoch ms, UTC) of the period holding `at`. */
export function periodStart(period: CapPeriod, at: number): number {
  const d = new Date(at);
  return period === 'daily'
    ? Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate())
    : Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1);
}

/** When the period holding `at` ends and the next begins (epoch ms, UTC): its `resets_at`. */
export function periodEnd(period: CapPeriod, at: number): number {
  const d = new Date(at);
  return period === 'daily'
    ? Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() + 1)
    : Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1);
}

/**
 * A consumer's spend in the current periods, in micros, as counted from its
 * usage events. `daily.start`/`monthly.start` name the period the sum belongs
 * to; a sum from an earlier period counts as zero (the period reset).
 */
export interface ConsumerSpend { daily: { start: number; micros: number }; monthly: { start: number; micros: number } }

export const NO_SPEND: ConsumerSpend = { daily: { start: 0, micros: 0 }, monthly: { start: 0, micros: 0 } };

/**
 * Adds one usage event (priced at `micros`, seen at `at`) to a spend. An event
 * of an earlier period than the one held (a late event after a reset) is not
 * counted against the new period; one of a later period starts it.
 */
export function addSpend(spend: ConsumerSpend, at: number, micros: number): ConsumerSpend {
  const step = (held: { start: number; micros: number }, period: CapPeriod) => {
    const start = periodStart(period, at);
    if (start > held.start) return { start, micros };
    if (start < held.start) return held;
    return { start, micros: held.micros + micros };
  };
  return { daily: step(spend.daily, 'daily'), monthly: step(spend.monthly, 'monthly') };
}

/** The spend of one period at `now`, in micros (0 once the period it was counted in is over). */
export function spentIn(spend: ConsumerSpend, period: CapPeriod, now: number): number {
  const held = spend[period];
  return held.start === periodStart(period, now) ? held.micros : 0;
}

/** The spend of one period at `now`, summed from events directly (what the store's sums must equal). */
export function spendFromEvents(events: Iterable<{ at: number; micros: number }>, period: CapPeriod, now: number): number {
  const start = periodStart(period, now);
  const end = periodEnd(period, now);
  let sum = 0;
  for (const e of events) if (e.at >= start && e.at < end) sum += e.micros;
  return sum;
}

/** What a consumer may still spend now, and which period binds; `left` undefined: no cap. */
export interface CapLeft { leftMicros: number | undefined; period: CapPeriod | undefined; resetsAt: number | undefined }

export function capLeft(limits: CapLimits, spend: ConsumerSpend, now: number): CapLeft {
  let best: CapLeft = { leftMicros: undefined, period: undefined, resetsAt: undefined };
  for (const period of CAP_PERIODS) {
    const cap = limits[period];
    if (cap === undefined) continue;
    // A spend counted in a later period than `now` (another replica's clock is already past the boundary) replaced
    // this period's in the store: what this period spent is unknown here, so nothing is left of it (refusals until
    // this clock reaches the boundary too, at most the clocks' difference).
    const ahead = spend[period].start > periodStart(period, now);
    const left = ahead ? 0 : Math.max(0, cap * MICROS_PER_UNIT - spentIn(spend, period, now));
    // The tighter cap binds; at a tie, the one that resets later (a refusal must not promise an early reset).
    if (best.leftMicros === undefined || left < best.leftMicros || (left === best.leftMicros && periodEnd(period, now) > best.resetsAt!)) {
      best = { leftMicros: left, period, resetsAt: periodEnd(period, now) };
    }
  }
  return best;
}

export type LimitKind = 'no_credit' | 'consumer_cap';

/**
 * How much a new lease for a consumer may reserve: the team's available credit
 * (what other leases do not hold), and no more than the consumer's cap left
 * minus what that consumer's other open leases hold. `limit` names the bound
 * that is tighter (the team's credit at a tie: topping up is what helps).
 */
export function boundLease(teamAvailableMicros: number, capLeftMicros: number | undefined, consumerOpenLeaseMicros = 0): { micros: number; limit: LimitKind } {
  const team = Math.max(0, teamAvailableMicros);
  if (capLeftMicros === undefined) return { micros: team, limit: 'no_credit' };
  const cap = Math.max(0, capLeftMicros - Math.max(0, consumerOpenLeaseMicros));
  return cap < team ? { micros: cap, limit: 'consumer_cap' } : { micros: team, limit: 'no_credit' };
}

/** Seconds until `resetsAt`, rounded up, at least 1: a cap refusal's Retry-After. */
export function retryAfterSeconds(resetsAt: number, now: number): number {
  return Math.max(1, Math.ceil((resetsAt - now) / 1000));
}
