// Read-model queries for the operator console, on a read-only connection of
// its own to the SQLite file (WAL lets it read while the store writes). The
// store's interface stays about what the service needs; these answer what an
// operator asks: counts, per-day histories, usage by route.

import Database from 'better-sqlite3';

export interface ConsoleQueries {
  /** Per cohort and UTC day since `since`: enters minus leaves (to rebuild sizes backwards from now). */
  cohortNetByDay(since: number): Array<{ cohort: string; day: number; net: number }>;
  /** A customer's usage since `since`, by route: requests and cost in micros. */
  usageByRoute(customerId: string, since: number): Array<{ route: string | null; requests: number; costMicros: number }>;
  settlementCounts(): { pending: number; failing: number; confirmed: number };
  emailCounts(): Record<string, number>;
  close(): void;
}

const DAY = 86_400_000;

export class SqliteConsoleQueries implements ConsoleQueries {
  private readonly db: Database.Database;
  private readonly stmt;

  constructor(file: string) {
    this.db = new Database(file, { readonly: true, fileMustExist: true });
    this.stmt = {
      cohortNet: this.db.prepare(`SELECT cohort, at / ${DAY} AS day, SUM(CASE kind WHEN 'enter' THEN 1 ELSE -1 END) AS net
        FROM cohort_transitions WHERE at >= ? GROUP BY cohort, day`),
      usage: this.db.prepare(`SELECT route, COUNT(*) AS requests, SUM(cost_micros) AS cost FROM usage_events
        WHERE customer_id = ? AND at >= ? GROUP BY route ORDER BY cost DESC, requests DESC LIMIT 100`),
      settlements: this.db.prepare(`SELECT status, last_error IS NOT NULL AS failing, COUNT(*) AS n FROM settlements GROUP BY status, failing`),
      emails: this.db.prepare('SELECT status, COUNT(*) AS n FROM email_outbox GROUP BY status'),
    };
  }

  cohortNetByDay(since: number) {
    return (this.stmt.cohortNet.all(since) as Array<{ cohort: string; day: number; net: number }>).map((r) => ({ cohort: r.cohort, day: Math.floor(r.day), net: r.net }));
  }

  usageByRoute(customerId: string, since: number) {
    return (this.stmt.usage.all(customerId, since) as Array<{ route: string | null; requests: number; cost: number }>)
      .map((r) => ({ route: r.route, requests: r.requests, costMicros: r.cost }));
  }

  settlementCounts() {
    const out = { pending: 0, failing: 0, confirmed: 0 };
    for (const r of this.stmt.settlements.all() as Array<{ status: string; failing: number; n: number }>) {
      if (r.status === 'confirmed') out.confirmed += r.n;
      else { out.pending += r.n; if (r.failing) out.failing += r.n; }
    }
    return out;
  }

  emailCounts() {
    const out: Record<string, number> = { pending: 0, sending: 0, delivered: 0, failed: 0, cancelled: 0 };
    for (const r of this.stmt.emails.all() as Array<{ status: string; n: number }>) out[r.status] = r.n;
    return out;
  }

  close(): void { this.db.close(); }
}
