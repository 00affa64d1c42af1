// Issue 23: each consumer's spend in its current daily and monthly periods,
// counted from the usage events in the same store transaction that stores
// them (SQLite migration 9, PostgreSQL migration 7: table consumer_spend).
// One row per (consumer, period): the period's UTC start and the micros spent
// in it. An event of a later period starts it again; one of an earlier period
// (late after a reset) leaves it as it is. See caps/caps.ts (addSpend).

import { periodStart, type ConsumerSpend } from '../caps/caps';
import type { UsageRecord } from './store';

export const SQLITE_CONSUMER_SPEND_MIGRATION = `CREATE TABLE consumer_spend (consumer TEXT NOT NULL, period TEXT NOT NULL CHECK (period IN ('daily','monthly')),
     period_start INTEGER NOT NULL, micros INTEGER NOT NULL, PRIMARY KEY (consumer, period));`;
export const POSTGRES_CONSUMER_SPEND_MIGRATION = `CREATE TABLE consumer_spend (consumer TEXT NOT NULL, period TEXT NOT NULL CHECK (period IN ('daily','monthly')),
     period_start BIGINT NOT NULL, micros BIGINT NOT NULL, PRIMARY KEY (consumer, period));`;

/** One upsert per row; SQLite reads the old row in every SET expression. */
export const SQLITE_ADD_SPEND = `INSERT INTO consumer_spend (consumer, period, period_start, micros) VALUES (?, ?, ?, ?)
  ON CONFLICT (consumer, period) DO UPDATE SET
    micros = CASE WHEN excluded.period_start > period_start THEN excluded.micros
                  WHEN excluded.period_start = period_start THEN micros + excluded.micros ELSE micros END,
    period_start = MAX(period_start, excluded.period_start)`;

/** The same for PostgreSQL, from arrays (consumer, period, start, micros): at most one row per (consumer, period). */
export const POSTGRES_ADD_SPEND = `INSERT INTO consumer_spend (consumer, period, period_start, micros)
  SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) ORDER BY 1, 2
  ON CONFLICT (consumer, period) DO UPDATE SET
    micros = CASE WHEN excluded.period_start > consumer_spend.period_start THEN excluded.micros
                  WHEN excluded.period_start = consumer_spend.period_start THEN consumer_spend.micros + excluded.micros ELSE consumer_spend.micros END,
    period_start = GREATEST(consumer_spend.period_start, excluded.period_start)`;

/**
 * The usage stored now (not seen before) as spend rows, one per (consumer,
 * period): the latest period among the events, summed (earlier ones do not
 * count once a later period started). Only billed, priced events spend.
 */
export function spendRows(usage: readonly UsageRecord[]): { consumers: string[]; periods: string[]; starts: number[]; micros: number[] } {
  const latest = new Map<string, { consumer: string; period: string; start: number; micros: number }>();
  for (const u of usage) {
    if (!u.customerId || u.costMicros <= 0) continue;
    for (const period of ['daily', 'monthly'] as const) {
      const start = periodStart(period, u.spentAt ?? u.at);
      const key = `${period}\n${u.consumer}`;
      const held = latest.get(key);
      if (!held || start > held.start) latest.set(key, { consumer: u.consumer, period, start, micros: u.costMicros });
      else if (start === held.start) held.micros += u.costMicros;
    }
  }
  const rows = [...latest.values()];
  return { consumers: rows.map((r) => r.consumer), periods: rows.map((r) => r.period), starts: rows.map((r) => r.start), micros: rows.map((r) => r.micros) };
}

/** Rows read back as each consumer's spend. */
export function spendFromRows(rows: Iterable<{ consumer: string; period: string; period_start: number; micros: number }>): Map<string, ConsumerSpend> {
  const out = new Map<string, ConsumerSpend>();
  for (const r of rows) {
    const held = out.get(r.consumer) ?? { daily: { start: 0, micros: 0 }, monthly: { start: 0, micros: 0 } };
    const part = { start: Number(r.period_start), micros: Number(r.micros) };
    out.set(r.consumer, r.period === 'daily' ? { ...held, daily: part } : { ...held, monthly: part });
  }
  return out;
}
