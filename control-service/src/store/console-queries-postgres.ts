// The console's read model on PostgreSQL (several replicas): the same answers
// as SqliteConsoleQueries, so a console on any replica, leader or follower,
// reads what every replica wrote. It has a small pool of its own (2
// connections, read-only sessions, a statement timeout): an operator's page
// cannot take connections from the decision and usage path, nor write.

import pg from 'pg';
import { toMove, toTopUp, type MoveRow, type TopUpRow } from '../top-ups/store';
import { toSettlement } from './rows';
import { noEmails, noSettlements, TOP_UP_TOTALS_SQL, VIEW_SQL, type ConsoleQueries, type SettlementView, type TopUpTotal } from './console-queries';
import type { EmailStatus, SettlementRow } from './store';

const DAY = 86_400_000;
/** Connections of the console's own pool (docs/operations.md, "Several replicas on PostgreSQL": plan max_connections with it). */
export const CONSOLE_POOL_SIZE = 2;

// COUNT(*) and BIGINT columns (milliseconds, micros) are well inside 2^53: read them as numbers.
const types = {
  getTypeParser: ((oid: number, format?: string) =>
    oid === pg.types.builtins.INT8 ? Number : pg.types.getTypeParser(oid, format as 'text')) as typeof pg.types.getTypeParser,
};

export class PostgresConsoleQueries implements ConsoleQueries {
  private readonly pool: pg.Pool;

  /** `url` is the store's (a secret: never logged). */
  constructor(url: string) {
    this.pool = new pg.Pool({
      connectionString: url, max: CONSOLE_POOL_SIZE, types, application_name: 'payg-console',
      options: '-c default_transaction_read_only=on -c statement_timeout=10000',
    });
    // An idle client that loses its server emits 'error'; the pool drops it and the next query reconnects.
    this.pool.on('error', () => {});
  }

  private async rows<T>(sql: string, args: unknown[] = []): Promise<T[]> {
    return (await this.pool.query(sql, args)).rows as T[];
  }

  async cohortNetByDay(since: number) {
    // BIGINT / BIGINT truncates, as SQLite's INTEGER division does (times are positive).
    return this.rows<{ cohort: string; day: number; net: number }>(`SELECT cohort, at / ${DAY} AS day, SUM(CASE kind WHEN 'enter' THEN 1 ELSE -1 END)::bigint AS net
      FROM cohort_transitions WHERE at >= $1 GROUP BY cohort, day`, [since]);
  }

  async usageByRoute(customerId: string, since: number) {
    // Ties go by route in byte order with no route first, as SQLite orders them.
    return (await this.rows<{ route: string | null; requests: number; cost: number }>(`SELECT route, COUNT(*) AS requests, SUM(cost_micros)::bigint AS cost
      FROM usage_events WHERE customer_id = $1 AND at >= $2 GROUP BY route ORDER BY cost DESC, requests DESC, route COLLATE "C" NULLS FIRST LIMIT 100`,
    [customerId, since])).map((r) => ({ route: r.route, requests: r.requests, costMicros: r.cost }));
  }

  async settlementCounts() {
    const out = noSettlements();
    const rows = await this.rows<{ view: SettlementView; n: number }>(`SELECT CASE WHEN status = 'pending' AND last_error IS NOT NULL THEN 'retrying' ELSE status END AS view,
      COUNT(*) AS n FROM settlements GROUP BY 1`);
    for (const r of rows) out[r.view] = r.n;
    return out;
  }

  async settlements(filter: { status?: SettlementView; customerId?: string; limit: number }): Promise<SettlementRow[]> {
    const where = [filter.status ? VIEW_SQL[filter.status] : 'TRUE'];
    const args: unknown[] = [];
    if (filter.customerId) { args.push(filter.customerId); where.push(`customer_id = $${args.length}`); }
    args.push(filter.limit);
    return (await this.rows<Record<string, unknown>>(`SELECT * FROM settlements WHERE ${where.join(' AND ')} ORDER BY id DESC LIMIT $${args.length}`, args)).map(toSettlement);
  }

  async emailCounts() {
    const out = noEmails();
    for (const r of await this.rows<{ status: EmailStatus; n: number }>('SELECT status, COUNT(*) AS n FROM email_outbox GROUP BY status')) out[r.status] = r.n;
    return out;
  }

  async topUps(customerId: string, limit: number): Promise<TopUpRow[]> {
    // Ties by id in byte order, as SQLite orders text.
    return (await this.rows<Record<string, unknown>>('SELECT * FROM top_ups WHERE customer_id = $1 ORDER BY created_at DESC, id COLLATE "C" LIMIT $2', [customerId, limit])).map(toTopUp);
  }

  async topUpMoves(customerId: string, limit: number): Promise<MoveRow[]> {
    return (await this.rows<Record<string, unknown>>('SELECT * FROM top_up_moves WHERE customer_id = $1 ORDER BY id DESC LIMIT $2', [customerId, limit])).map(toMove);
  }

  async topUpTotals(from: number, to: number): Promise<TopUpTotal[]> {
    // Kinds and currencies are ASCII: ORDER BY gives SQLite's order under any collation but "C" is asked for anyway.
    const sql = TOP_UP_TOTALS_SQL((n) => `$${n}`).replace('ORDER BY kind, currency', 'ORDER BY kind COLLATE "C", currency COLLATE "C"');
    return (await this.rows<{ kind: MoveRow['kind']; currency: string; n: number; amount: number }>(sql, [from, to]))
      .map((r) => ({ kind: r.kind, currency: r.currency, count: r.n, amount: Number(r.amount) }));
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}
