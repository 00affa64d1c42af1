// The embedded store: one SQLite file through better-sqlite3, WAL mode,
// versioned migrations applied in order inside a transaction.

import Database from 'better-sqlite3';
import type { Store, StoredCustomer, TransitionRecord } from './store';

const MIGRATIONS: string[] = [
  // 1: customers, cohort memberships and their history, rule switches, webhook dedupe, meta
  `CREATE TABLE customers (
     id TEXT PRIMARY KEY, balance INTEGER NOT NULL, currency TEXT, name TEXT, email TEXT,
     metadata TEXT NOT NULL, version INTEGER NOT NULL);
   CREATE TABLE memberships (customer_id TEXT NOT NULL, cohort TEXT NOT NULL, since INTEGER NOT NULL,
     PRIMARY KEY (customer_id, cohort));
   CREATE TABLE cohort_transitions (id INTEGER PRIMARY KEY AUTOINCREMENT, customer_id TEXT NOT NULL,
     cohort TEXT NOT NULL, kind TEXT NOT NULL CHECK (kind IN ('enter','leave')), at INTEGER NOT NULL, balance INTEGER NOT NULL);
   CREATE INDEX cohort_transitions_customer ON cohort_transitions (customer_id, id);
   CREATE TABLE rule_overrides (rule_id TEXT PRIMARY KEY, enabled INTEGER NOT NULL);
   CREATE TABLE webhook_events (id TEXT PRIMARY KEY, at INTEGER NOT NULL);
   CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);`,
];

export class SqliteStore implements Store {
  private readonly db: Database.Database;

  constructor(file: string) {
    this.db = new Database(file);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = NORMAL');
    this.db.pragma('busy_timeout = 5000');
    this.migrate();
    this.stmt = this.prepareStatements();
  }

  private readonly stmt: ReturnType<SqliteStore['prepareStatements']>;

  private prepareStatements() {
    return {
      upsertCustomer: this.db.prepare(`INSERT INTO customers (id, balance, currency, name, email, metadata, version)
        VALUES (@id, @balance, @currency, @name, @email, @metadata, @version)
        ON CONFLICT (id) DO UPDATE SET balance = excluded.balance, currency = excluded.currency, name = excluded.name,
          email = excluded.email, metadata = excluded.metadata, version = excluded.version`),
      deleteCustomer: this.db.prepare('DELETE FROM customers WHERE id = ?'),
      logTransition: this.db.prepare('INSERT INTO cohort_transitions (customer_id, cohort, kind, at, balance) VALUES (?, ?, ?, ?, ?)'),
      enter: this.db.prepare('INSERT OR REPLACE INTO memberships (customer_id, cohort, since) VALUES (?, ?, ?)'),
      leave: this.db.prepare('DELETE FROM memberships WHERE customer_id = ? AND cohort = ?'),
    };
  }

  get schemaVersion(): number {
    return this.db.pragma('user_version', { simple: true }) as number;
  }

  private migrate(): void {
    const from = this.schemaVersion;
    for (let v = from; v < MIGRATIONS.length; v++) {
      this.db.transaction(() => {
        this.db.exec(MIGRATIONS[v]);
        this.db.pragma(`user_version = ${v + 1}`);
      })();
    }
  }

  async loadCustomers(): Promise<StoredCustomer[]> {
    return (this.db.prepare('SELECT * FROM customers').all() as Array<Record<string, any>>).map((r) => ({
      id: r.id, balance: r.balance, currency: r.currency, name: r.name, email: r.email,
      metadata: JSON.parse(r.metadata), version: r.version,
    }));
  }

  async saveChanges(changes: { upserts: StoredCustomer[]; deletes: string[]; transitions: TransitionRecord[] }): Promise<void> {
    this.db.transaction(() => {
      for (const c of changes.upserts) this.stmt.upsertCustomer.run({ ...c, metadata: JSON.stringify(c.metadata) });
      for (const id of changes.deletes) this.stmt.deleteCustomer.run(id);
      for (const t of changes.transitions) {
        this.stmt.logTransition.run(t.customerId, t.cohort, t.kind, t.at, t.balance);
        if (t.kind === 'enter') this.stmt.enter.run(t.customerId, t.cohort, t.at); else this.stmt.leave.run(t.customerId, t.cohort);
      }
    })();
  }

  async loadMemberships(): Promise<Map<string, string[]>> {
    const out = new Map<string, string[]>();
    for (const row of this.db.prepare('SELECT customer_id, cohort FROM memberships ORDER BY since').all() as Array<{ customer_id: string; cohort: string }>) {
      const list = out.get(row.customer_id) ?? [];
      list.push(row.cohort);
      out.set(row.customer_id, list);
    }
    return out;
  }

  async history(customerId: string): Promise<TransitionRecord[]> {
    return (this.db.prepare('SELECT * FROM cohort_transitions WHERE customer_id = ? ORDER BY id').all(customerId) as Array<Record<string, any>>)
      .map((r) => ({ customerId: r.customer_id, cohort: r.cohort, kind: r.kind, at: r.at, balance: r.balance }));
  }

  async ruleOverrides(): Promise<Map<string, boolean>> {
    const rows = this.db.prepare('SELECT rule_id, enabled FROM rule_overrides').all() as Array<{ rule_id: string; enabled: number }>;
    return new Map(rows.map((r) => [r.rule_id, r.enabled === 1]));
  }

  async setRuleEnabled(ruleId: string, enabled: boolean): Promise<void> {
    this.db.prepare('INSERT OR REPLACE INTO rule_overrides (rule_id, enabled) VALUES (?, ?)').run(ruleId, enabled ? 1 : 0);
  }

  async claimWebhookEvent(eventId: string, at: number): Promise<boolean> {
    return this.db.prepare('INSERT OR IGNORE INTO webhook_events (id, at) VALUES (?, ?)').run(eventId, at).changes === 1;
  }

  async forgetWebhookEvent(eventId: string): Promise<void> {
    this.db.prepare('DELETE FROM webhook_events WHERE id = ?').run(eventId);
  }

  async getMeta(key: string): Promise<string | undefined> {
    return (this.db.prepare('SELECT value FROM meta WHERE key = ?').get(key) as { value: string } | undefined)?.value;
  }

  async setMeta(key: string, value: string): Promise<void> {
    this.db.prepare('INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)').run(key, value);
  }

  async ping(): Promise<void> {
    this.db.prepare('SELECT 1').get();
  }

  async close(): Promise<void> {
    this.db.close();
  }
}
