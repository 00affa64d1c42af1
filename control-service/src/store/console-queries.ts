// Read-model queries for the operator console. The store's interface stays
// about what the service needs; these answer what an operator asks: counts,
// per-day histories, usage by route. Two implementations answer alike (spec
// spec/console/stores): SQLite here, on a read-only connection of its own to the
// file (WAL lets it read while the store writes), and PostgreSQL in
// console-queries-postgres.ts.

import Database from 'better-sqlite3';
import { toMove, toTopUp, type MoveRow, type TopUpRow } from '../top-ups/store';
import { toSettlement } from './rows';
import type { EmailStatus, SettlementRow } from './store';

export interface ConsoleQueries {
  /** Per cohort and UTC day since `since`: enters minus leaves (to rebuild sizes backwards from now). */
  cohortNetByDay(since: number): Promise<Array<{ cohort: string; day: number; net: number }>>;
  /** A customer's usage since `since`, by route (at most 100, dearest first): requests and cost in micros. */
  usageByRoute(customerId: string, since: number): Promise<Array<{ route: string | null; requests: number; costMicros: number }>>;
  /** Settlements by what an operator acts on: waiting for Stripe's first answer, retrying after a failed attempt, refused for good, confirmed. */
  settlementCounts(): Promise<Record<SettlementView, number>>;
  /** Newest first, at most `limit`. */
  settlements(filter: { status?: SettlementView; customerId?: string; limit: number }): Promise<SettlementRow[]>;
  /** Outbox rows per status, every status present (0 when none). */
  emailCounts(): Promise<Record<EmailStatus, number>>;
  /** A customer's top-ups, newest first (ties by id), at most `limit`. */
  topUps(customerId: string, limit: number): Promise<TopUpRow[]>;
  /** A customer's credits, refunds and disputes (top_up_moves), newest first, at most `limit`. */
  topUpMoves(customerId: string, limit: number): Promise<MoveRow[]>;
  /** Credits, refunds and disputes written in [from, to) and not failed: how many and how much, per kind and currency (by kind, then currency). */
  topUpTotals(from: number, to: number): Promise<TopUpTotal[]>;
  close(): Promise<void>;
}

/** `amount` is the sum of the moves' amounts: negative for credits (Stripe's sign), positive for refunds and disputes. */
export interface TopUpTotal { kind: MoveRow['kind']; currency: string; count: number; amount: number }

/** Shared by both stores: failed moves moved no money; ordered so both answer in one order. */
export const TOP_UP_TOTALS_SQL = (p: (n: number) => string) => `SELECT kind, currency, COUNT(*) AS n, SUM(amount) AS amount FROM top_up_moves
  WHERE created_at >= ${p(1)} AND created_at < ${p(2)} AND status <> 'failed' GROUP BY kind, currency ORDER BY kind, currency`;

const DAY = 86_400_000;

export const SETTLEMENT_VIEWS = ['pending', 'retrying', 'failed', 'confirmed'] as const;
export type SettlementView = typeof SETTLEMENT_VIEWS[number];

/** The condition each view stands for; `retrying` is a pending settlement whose last attempt failed (resent with the same key). */
export const VIEW_SQL: Record<SettlementView, string> = {
  pending: "status = 'pending' AND last_error IS NULL",
  retrying: "status = 'pending' AND last_error IS NOT NULL",
  failed: "status = 'failed'",
  confirmed: "status = 'confirmed'",
};

export const noSettlements = (): Record<SettlementView, number> => ({ pending: 0, retrying: 0, failed: 0, confirmed: 0 });
export const noEmails = (): Record<EmailStatus, number> => ({ pending: 0, sending: 0, delivered: 0, failed: 0, cancelled: 0, stale: 0 });

/** Which view a stored settlement is in. */
export function settlementView(row: Pick<SettlementRow, 'status' | 'lastError'>): SettlementView {
  return row.status === 'pending' && row.lastError ? 'retrying' : row.status;
}

export class SqliteConsoleQueries implements ConsoleQueries {
  private readonly db: Database.Database;
  private readonly stmt;

  constructor(file: string) {
    this.db = new Database(file, { readonly: true, fileMustExist: true });
    this.stmt = {
      cohortNet: this.db.prepare(`SELECT cohort, at / ${DAY} AS day, SUM(CASE kind WHEN 'enter' THEN 1 ELSE -1 END) AS net
        FROM cohort_transitions WHERE at >= ? GROUP BY cohort, day`),
      usage: this.db.prepare(`SELECT route, COUNT(*) AS requests, SUM(cost_micros) AS cost FROM usage_events
        WHERE customer_id = ? AND at >= ? GROUP BY route ORDER BY cost DESC, requests DESC, route LIMIT 100`),
      settlementCounts: this.db.prepare(`SELECT CASE WHEN status = 'pending' AND last_error IS NOT NULL THEN 'retrying' ELSE status END AS view, COUNT(*) AS n
        FROM settlements GROUP BY view`),
      emails: this.db.prepare('SELECT status, COUNT(*) AS n FROM email_outbox GROUP BY status'),
      topUps: this.db.prepare('SELECT * FROM top_ups WHERE customer_id = ? ORDER BY created_at DESC, id LIMIT ?'),
      moves: this.db.prepare('SELECT * FROM top_up_moves WHERE customer_id = ? ORDER BY id DESC LIMIT ?'),
      totals: this.db.prepare(TOP_UP_TOTALS_SQL(() => '?')),
    };
  }

  async cohortNetByDay(since: number) {
    return (this.stmt.cohortNet.all(since) as Array<{ cohort: string; day: number; net: number }>).map((r) => ({ cohort: r.cohort, day: Math.floor(r.day), net: r.net }));
  }

  async usageByRoute(customerId: string, since: number) {
    return (this.stmt.usage.all(customerId, since) as Array<{ route: string | null; requests: number; cost: number }>)
      .map((r) => ({ route: r.route, requests: r.requests, costMicros: r.cost }));
  }

  async settlementCounts() {
    const out = noSettlements();
    for (const r of this.stmt.settlementCounts.all() as Array<{ view: SettlementView; n: number }>) out[r.view] = r.n;
    return out;
  }

  async settlements(filter: { status?: SettlementView; customerId?: string; limit: number }): Promise<SettlementRow[]> {
    const where = [filter.status ? VIEW_SQL[filter.status] : '1', filter.customerId ? 'customer_id = ?' : '1'].join(' AND ');
    const args = filter.customerId ? [filter.customerId, filter.limit] : [filter.limit];
    return (this.db.prepare(`SELECT * FROM settlements WHERE ${where} ORDER BY id DESC LIMIT ?`).all(...args) as Array<Record<string, any>>).map(toSettlement);
  }

  async emailCounts() {
    const out = noEmails();
    for (const r of this.stmt.emails.all() as Array<{ status: EmailStatus; n: number }>) out[r.status] = r.n;
    return out;
  }

  async topUps(customerId: string, limit: number): Promise<TopUpRow[]> {
    return (this.stmt.topUps.all(customerId, limit) as Array<Record<string, any>>).map(toTopUp);
  }

  async topUpMoves(customerId: string, limit: number): Promise<MoveRow[]> {
    return (this.stmt.moves.all(customerId, limit) as Array<Record<string, any>>).map(toMove);
  }

  async topUpTotals(from: number, to: number): Promise<TopUpTotal[]> {
    return (this.stmt.totals.all(from, to) as Array<{ kind: MoveRow['kind']; currency: string; n: number; amount: number }>)
      .map((r) => ({ kind: r.kind, currency: r.currency, count: r.n, amount: r.amount }));
  }

  async close(): Promise<void> { this.db.close(); }
}
