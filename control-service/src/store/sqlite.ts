// The embedded store: one SQLite file through better-sqlite3, WAL mode,
// versioned migrations applied in order inside a transaction.

import Database from 'better-sqlite3';
import { createHash } from 'node:crypto';
import type { LeaseChanges, LeaseRow, EmailStatus, OutboxRecord, OutboxRow, SettlementMode, SettlementRow, Store, StoreChanges, StoredCustomer, TransitionRecord } from './store';
import { toLease, toOutboxRow, toSettlement } from './rows';
import { toMove, toTopUp, topUpSchema, type MoveRow, type TopUpRow } from '../top-ups/store';
import type { MoveIntent } from '../top-ups/core';
import { SQLITE_ADD_SPEND, SQLITE_CONSUMER_SPEND_MIGRATION, spendFromRows } from './consumer-spend';
import { periodStart, type ConsumerSpend } from '../caps/caps';
// ---- auto-recharge (issue 22) ----
import { decideCrossing, monthFloor, newRechargeId, rechargeSchema, SQL as RSQL, stateAfter, toRecharge, type CrossingRead, type RechargeCrossing, type RechargeRow, type RechargeState, type PendingOptIn, toOptIn } from '../recharges/store';
// ---- end auto-recharge ----

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
  // 2: the email outbox and template switches
  `CREATE TABLE email_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, dedupe_key TEXT NOT NULL UNIQUE,
     template_id TEXT NOT NULL, customer_id TEXT NOT NULL, to_address TEXT NOT NULL, context TEXT NOT NULL,
     status TEXT NOT NULL CHECK (status IN ('pending','sending','delivered','failed','cancelled')),
     attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at INTEGER NOT NULL, last_error TEXT, message_id TEXT,
     created_at INTEGER NOT NULL, delivered_at INTEGER);
   CREATE INDEX email_outbox_due ON email_outbox (status, next_attempt_at, id);
   CREATE INDEX email_outbox_customer ON email_outbox (customer_id, id);
   CREATE TABLE template_overrides (template_id TEXT PRIMARY KEY, active INTEGER NOT NULL);`,
  // 3: metering: usage events, running totals per customer, and settlements to Stripe
  `CREATE TABLE usage_events (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, customer_id TEXT,
     consumer TEXT NOT NULL, at INTEGER NOT NULL, route TEXT, status INTEGER NOT NULL, cost_micros INTEGER NOT NULL);
   CREATE TABLE usage_totals (customer_id TEXT PRIMARY KEY, used_micros INTEGER NOT NULL, last_seq INTEGER NOT NULL,
     charged INTEGER NOT NULL DEFAULT 0, settled INTEGER NOT NULL DEFAULT 0);
   CREATE TABLE settlements (id INTEGER PRIMARY KEY AUTOINCREMENT, customer_id TEXT NOT NULL, from_seq INTEGER NOT NULL,
     upto_seq INTEGER NOT NULL, amount INTEGER NOT NULL CHECK (amount > 0), currency TEXT NOT NULL, mode TEXT NOT NULL,
     idempotency_key TEXT NOT NULL UNIQUE, status TEXT NOT NULL CHECK (status IN ('pending','confirmed')),
     attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, stripe_ref TEXT, created_at INTEGER NOT NULL, confirmed_at INTEGER);
   CREATE INDEX settlements_customer ON settlements (customer_id, id);
   CREATE INDEX settlements_pending ON settlements (status) WHERE status = 'pending';`,
  // 4: when each usage event was received: pruning goes by it, so an event dated far back or ahead is kept no longer than any other
  `ALTER TABLE usage_events ADD COLUMN received_at INTEGER;
   UPDATE usage_events SET received_at = at;
   CREATE INDEX usage_events_received ON usage_events (received_at);`,
  // 5: settlements Stripe refused for good are 'failed'; emails cancelled at delivery as no longer true are 'stale'
  `CREATE TABLE settlements_v4 (id INTEGER PRIMARY KEY AUTOINCREMENT, customer_id TEXT NOT NULL, from_seq INTEGER NOT NULL,
     upto_seq INTEGER NOT NULL, amount INTEGER NOT NULL CHECK (amount > 0), currency TEXT NOT NULL, mode TEXT NOT NULL,
     idempotency_key TEXT NOT NULL UNIQUE, status TEXT NOT NULL CHECK (status IN ('pending','confirmed','failed')),
     attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, stripe_ref TEXT, created_at INTEGER NOT NULL, confirmed_at INTEGER);
   INSERT INTO settlements_v4 SELECT * FROM settlements;
   DROP TABLE settlements;
   ALTER TABLE settlements_v4 RENAME TO settlements;
   CREATE INDEX settlements_customer ON settlements (customer_id, id);
   CREATE INDEX settlements_pending ON settlements (status) WHERE status = 'pending';
   CREATE TABLE email_outbox_v4 (id INTEGER PRIMARY KEY AUTOINCREMENT, dedupe_key TEXT NOT NULL UNIQUE,
     template_id TEXT NOT NULL, customer_id TEXT NOT NULL, to_address TEXT NOT NULL, context TEXT NOT NULL,
     status TEXT NOT NULL CHECK (status IN ('pending','sending','delivered','failed','cancelled','stale')),
     attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at INTEGER NOT NULL, last_error TEXT, message_id TEXT,
     created_at INTEGER NOT NULL, delivered_at INTEGER);
   INSERT INTO email_outbox_v4 SELECT * FROM email_outbox;
   DROP TABLE email_outbox;
   ALTER TABLE email_outbox_v4 RENAME TO email_outbox;
   CREATE INDEX email_outbox_due ON email_outbox (status, next_attempt_at, id);
   CREATE INDEX email_outbox_customer ON email_outbox (customer_id, id);`,
  // 6: the console's usage by route for one customer reads that customer's recent events only (bench:console)
  'CREATE INDEX usage_events_customer_at ON usage_events (customer_id, at);',
  // 7: durable leases (written before a grant is answered, so a restart counts them); the
  // "leases may be outstanding until" horizon of earlier versions is read once after upgrading, never written
  `CREATE TABLE leases (id TEXT PRIMARY KEY, node TEXT NOT NULL, customer_id TEXT NOT NULL, consumer TEXT NOT NULL,
     requests INTEGER NOT NULL, cost_micros INTEGER NOT NULL, micros INTEGER NOT NULL, granted_at INTEGER NOT NULL,
     expires_at INTEGER NOT NULL, held_until INTEGER NOT NULL, drawn INTEGER, drawn_micros INTEGER,
     settled_micros INTEGER NOT NULL DEFAULT 0);
   CREATE INDEX leases_customer ON leases (customer_id, held_until);
   CREATE INDEX leases_held_until ON leases (held_until);`,
  // 8: top-ups (issue 21): the top-ups payg created Checkout Sessions for, and the money outbox
  topUpSchema('sqlite'),
  // 9: team caps (issue 23): each consumer's spend in its current daily and monthly periods
  SQLITE_CONSUMER_SPEND_MIGRATION,
  // 10: auto-recharge (issue 22): the recharge outbox and failures in a row per customer
  rechargeSchema('sqlite'),
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
  private readonly knownIdsStmts = new Map<number, Database.Statement>();

  private prepareStatements() {
    return {
      upsertCustomer: this.db.prepare(`INSERT INTO customers (id, balance, currency, name, email, metadata, version)
        VALUES (?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (id) DO UPDATE SET balance = excluded.balance, currency = excluded.currency, name = excluded.name,
          email = excluded.email, metadata = excluded.metadata, version = excluded.version`),
      deleteCustomer: this.db.prepare('DELETE FROM customers WHERE id = ?'),
      logTransition: this.db.prepare('INSERT INTO cohort_transitions (customer_id, cohort, kind, at, balance) VALUES (?, ?, ?, ?, ?)'),
      enter: this.db.prepare('INSERT OR REPLACE INTO memberships (customer_id, cohort, since) VALUES (?, ?, ?)'),
      leave: this.db.prepare('DELETE FROM memberships WHERE customer_id = ? AND cohort = ?'),
      insertUsage: this.db.prepare(`INSERT OR IGNORE INTO usage_events (id, customer_id, consumer, at, route, status, cost_micros, received_at)
        VALUES (@id, @customerId, @consumer, @at, @route, @status, @costMicros, @receivedAt)`),
      confirmSettlement: this.db.prepare(`UPDATE settlements SET status = 'confirmed', stripe_ref = ?, confirmed_at = ?, attempts = attempts + 1 WHERE id = ? AND status = 'pending'
        RETURNING customer_id, amount`),
      failSettlement: this.db.prepare(`UPDATE settlements SET status = 'failed', last_error = ?, attempts = attempts + 1 WHERE id = ? AND status = 'pending'`),
      recordWebhook: this.db.prepare('INSERT OR IGNORE INTO webhook_events (id, at) VALUES (?, ?)'),
      addSpend: this.db.prepare(SQLITE_ADD_SPEND),
      staleReminders: this.db.prepare(`UPDATE email_outbox SET status = 'stale', last_error = 'replaced by a newer reminder'
        WHERE template_id = ? AND customer_id = ? AND status IN ('pending', 'sending') AND dedupe_key LIKE '%|repeat:%' AND dedupe_key <> ?`),
      addSettled: this.db.prepare('UPDATE usage_totals SET settled = settled + ? WHERE customer_id = ?'),
      addUsage: this.db.prepare(`INSERT INTO usage_totals (customer_id, used_micros, last_seq) VALUES (?, ?, ?)
        ON CONFLICT (customer_id) DO UPDATE SET used_micros = used_micros + excluded.used_micros, last_seq = MAX(last_seq, excluded.last_seq)`),
      enqueueEmail: this.db.prepare(`INSERT OR IGNORE INTO email_outbox
        (dedupe_key, template_id, customer_id, to_address, context, status, next_attempt_at, created_at)
        VALUES (@dedupeKey, @templateId, @customerId, @to, @context, 'pending', @createdAt, @createdAt)`),
      dueEmail: this.db.prepare(`SELECT * FROM email_outbox WHERE status = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT 1`),
      claimEmail: this.db.prepare(`UPDATE email_outbox SET status = 'sending' WHERE id = ? AND status = 'pending'`),
      insertLease: this.db.prepare(`INSERT OR IGNORE INTO leases (id, node, customer_id, consumer, requests, cost_micros, micros, granted_at, expires_at, held_until)
        VALUES (@id, @node, @customerId, @consumer, @requests, @costMicros, @micros, @grantedAt, @expiresAt, @heldUntil)`),
      closeLease: this.db.prepare('UPDATE leases SET drawn = ?, drawn_micros = ? WHERE id = ? AND drawn IS NULL'),
      // A usage event counted now lets go of what it reserved from its own consumer's lease, never beyond what the lease drew.
      settleLease: this.db.prepare(`UPDATE leases SET settled_micros = MIN(COALESCE(drawn_micros, micros), settled_micros + COALESCE(?, cost_micros))
        WHERE id = ? AND consumer = ?`),
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

  async saveChanges(changes: StoreChanges): Promise<void> {
    this.db.transaction(() => {
      // Running totals per customer, so settlement never scans the events.
      const added = new Map<string, { micros: number; seq: number }>();
      const receivedAt = Date.now();
      for (const u of changes.usage ?? []) {
        const r = this.stmt.insertUsage.run({ id: u.id, customerId: u.customerId, consumer: u.consumer, at: u.at, route: u.route, status: u.status, costMicros: u.costMicros, receivedAt });
        if (r.changes === 0) continue;
        if (u.lease !== undefined) this.stmt.settleLease.run(u.reserved ?? null, u.lease, u.consumer);
        if (!u.customerId) continue;
        // Issue 23: the consumer's spend, in the transaction that stores its usage.
        if (u.costMicros > 0) for (const period of ['daily', 'monthly'] as const) this.stmt.addSpend.run(u.consumer, period, periodStart(period, u.spentAt ?? u.at), u.costMicros);
        const t = added.get(u.customerId) ?? { micros: 0, seq: 0 };
        t.micros += u.costMicros;
        t.seq = Number(r.lastInsertRowid);
        added.set(u.customerId, t);
      }
      for (const [customerId, t] of added) this.stmt.addUsage.run(customerId, t.micros, t.seq);
      for (const confirm of changes.confirmSettlements ?? []) {
        const row = this.stmt.confirmSettlement.get(confirm.stripeRef, confirm.at, confirm.id) as { customer_id: string; amount: number } | undefined;
        if (row) this.stmt.addSettled.run(row.amount, row.customer_id);
      }
      if (changes.failSettlement) this.stmt.failSettlement.run(changes.failSettlement.error, changes.failSettlement.id);
      if (changes.webhookEvent) this.stmt.recordWebhook.run(changes.webhookEvent.id, changes.webhookEvent.at);
      for (const e of changes.emails ?? []) this.enqueueOne(e);
      for (const r of changes.recharges ?? []) this.planRecharge(r);
      for (const c of changes.upserts) this.stmt.upsertCustomer.run(c.id, c.balance, c.currency, c.name, c.email, JSON.stringify(c.metadata), c.version);
      for (const id of changes.deletes) this.stmt.deleteCustomer.run(id);
      for (const t of changes.transitions) {
        this.stmt.logTransition.run(t.customerId, t.cohort, t.kind, t.at, t.balance);
        if (t.kind === 'enter') this.stmt.enter.run(t.customerId, t.cohort, t.at); else this.stmt.leave.run(t.customerId, t.cohort);
      }
    })();
  }

  // ---- issue 23 (team caps) ----
  async consumerSpend(consumers?: string[]): Promise<Map<string, ConsumerSpend>> {
    const rows = consumers === undefined
      ? this.db.prepare('SELECT * FROM consumer_spend').all()
      : consumers.flatMap((c) => this.db.prepare('SELECT * FROM consumer_spend WHERE consumer = ?').all(c));
    return spendFromRows(rows as Array<{ consumer: string; period: string; period_start: number; micros: number }>);
  }
  // ---- end issue 23 ----

  async loadMemberships(): Promise<Map<string, string[]>> {
    const out = new Map<string, string[]>();
    for (const row of this.db.prepare('SELECT customer_id, cohort FROM memberships ORDER BY since').all() as Array<{ customer_id: string; cohort: string }>) {
      const list = out.get(row.customer_id) ?? [];
      list.push(row.cohort);
      out.set(row.customer_id, list);
    }
    return out;
  }

  async knownUsageIds(ids: string[]): Promise<Set<string>> {
    const known = new Set<string>();
    // Bound the statement's parameter count; statements are kept per chunk size (batches repeat sizes).
    for (let i = 0; i < ids.length; i += 500) {
      const chunk = ids.slice(i, i + 500);
      let stmt = this.knownIdsStmts.get(chunk.length);
      if (!stmt) {
        stmt = this.db.prepare(`SELECT id FROM usage_events WHERE id IN (${chunk.map(() => '?').join(',')})`).pluck();
        if (this.knownIdsStmts.size < 64) this.knownIdsStmts.set(chunk.length, stmt);
      }
      for (const id of stmt.all(...chunk) as string[]) known.add(id);
    }
    return known;
  }

  async usageTotals(): Promise<Map<string, { usedMicros: number; settled: number }>> {
    const rows = this.db.prepare('SELECT customer_id, used_micros, settled FROM usage_totals').all() as Array<{ customer_id: string; used_micros: number; settled: number }>;
    return new Map(rows.map((r) => [r.customer_id, { usedMicros: r.used_micros, settled: r.settled }]));
  }

  async openSettlements(now: number, mode: SettlementMode, currencyOf: (customerId: string) => string | undefined): Promise<SettlementRow[]> {
    return this.db.transaction(() => {
      const due = this.db.prepare(`
        SELECT t.customer_id, t.used_micros, t.last_seq, t.charged,
          COALESCE((SELECT MAX(s.upto_seq) FROM settlements s WHERE s.customer_id = t.customer_id), 0) AS prev_upto
        FROM usage_totals t
        WHERE t.used_micros / 1000000 > t.charged
          AND NOT EXISTS (SELECT 1 FROM settlements s WHERE s.customer_id = t.customer_id AND s.status = 'pending')`)
        .all() as Array<{ customer_id: string; used_micros: number; last_seq: number; charged: number; prev_upto: number }>;
      const insert = this.db.prepare(`INSERT INTO settlements (customer_id, from_seq, upto_seq, amount, currency, mode, idempotency_key, status, created_at)
        VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?)`);
      const charge = this.db.prepare('UPDATE usage_totals SET charged = charged + ? WHERE customer_id = ?');
      for (const c of due) {
        // Charged so far + this amount = floor(all usage up to last_seq): exact, the fraction carries over.
        const amount = Math.floor(c.used_micros / 1_000_000) - c.charged;
        const currency = currencyOf(c.customer_id);
        if (amount < 1 || !currency) continue;
        // The key names exactly what is charged: this customer's events after prev_upto up to last_seq, for this amount.
        const key = `payg-settle-${createHash('sha256').update(`${c.customer_id}|${c.prev_upto}|${c.last_seq}|${amount}|${currency}|${mode}`).digest('hex').slice(0, 40)}`;
        insert.run(c.customer_id, c.prev_upto + 1, c.last_seq, amount, currency, mode, key, now);
        charge.run(amount, c.customer_id);
      }
      return (this.db.prepare(`SELECT * FROM settlements WHERE status = 'pending' ORDER BY id`).all() as Array<Record<string, any>>).map(toSettlement);
    })();
  }

  async prune(opts: { usageBefore: number; webhooksBefore: number }): Promise<{ usageEvents: number; webhookEvents: number }> {
    const usageEvents = this.db.prepare(`DELETE FROM usage_events WHERE received_at < ? AND (customer_id IS NULL OR cost_micros = 0
      OR seq <= COALESCE((SELECT MAX(s.upto_seq) FROM settlements s WHERE s.customer_id = usage_events.customer_id AND s.status = 'confirmed'), 0))`)
      .run(opts.usageBefore).changes;
    const webhookEvents = this.db.prepare('DELETE FROM webhook_events WHERE at < ?').run(opts.webhooksBefore).changes;
    return { usageEvents, webhookEvents };
  }

  async pendingSettlements(): Promise<SettlementRow[]> {
    return (this.db.prepare(`SELECT * FROM settlements WHERE status = 'pending' ORDER BY id`).all() as Array<Record<string, any>>).map(toSettlement);
  }

  async settlementAttemptFailed(id: number, error: string): Promise<void> {
    this.db.prepare('UPDATE settlements SET attempts = attempts + 1, last_error = ? WHERE id = ?').run(error, id);
  }

  async settlements(customerId?: string): Promise<SettlementRow[]> {
    const rows = customerId
      ? this.db.prepare('SELECT * FROM settlements WHERE customer_id = ? ORDER BY id').all(customerId)
      : this.db.prepare('SELECT * FROM settlements ORDER BY id').all();
    return (rows as Array<Record<string, any>>).map(toSettlement);
  }

  async membersSince(cohort: string): Promise<Array<{ customerId: string; since: number }>> {
    return (this.db.prepare('SELECT customer_id, since FROM memberships WHERE cohort = ?').all(cohort) as Array<{ customer_id: string; since: number }>)
      .map((r) => ({ customerId: r.customer_id, since: r.since }));
  }

  async membershipSince(customerId: string, cohort: string): Promise<number | undefined> {
    return (this.db.prepare('SELECT since FROM memberships WHERE customer_id = ? AND cohort = ?').get(customerId, cohort) as { since: number } | undefined)?.since;
  }

  private enqueueOne(e: OutboxRecord): number {
    const added = this.stmt.enqueueEmail.run({ dedupeKey: e.dedupeKey, templateId: e.templateId, customerId: e.customerId, to: e.to, context: e.context, createdAt: e.createdAt }).changes;
    if (added && e.reminder) this.stmt.staleReminders.run(e.templateId, e.customerId, e.dedupeKey);
    return added;
  }

  async enqueueEmails(emails: OutboxRecord[]): Promise<number> {
    let added = 0;
    this.db.transaction(() => { for (const e of emails) added += this.enqueueOne(e); })();
    return added;
  }

  async claimDueEmail(now: number): Promise<OutboxRow | undefined> {
    return this.db.transaction(() => {
      const row = this.stmt.dueEmail.get(now) as Record<string, any> | undefined;
      if (!row) return undefined;
      this.stmt.claimEmail.run(row.id);
      return toOutboxRow({ ...row, status: 'sending' });
    })();
  }

  async nextEmailDueAt(): Promise<number | undefined> {
    const row = this.db.prepare(`SELECT MIN(next_attempt_at) AS due FROM email_outbox WHERE status = 'pending'`).get() as { due: number | null };
    return row.due ?? undefined;
  }

  async finishEmail(id: number, outcome: { status: 'delivered' | 'failed' | 'cancelled' | 'stale'; at: number; messageId?: string; error?: string; answered?: boolean }): Promise<void> {
    this.db.prepare(`UPDATE email_outbox SET status = ?, delivered_at = ?, message_id = COALESCE(?, message_id), last_error = COALESCE(?, last_error), attempts = attempts + ? WHERE id = ?`)
      .run(outcome.status, outcome.status === 'delivered' ? outcome.at : null, outcome.messageId ?? null, outcome.error ?? null, outcome.answered ? 1 : 0, id);
  }

  async retryEmail(id: number, nextAttemptAt: number, error: string, answered: boolean): Promise<void> {
    // Only a row still being sent goes back to the queue: one replaced meanwhile (stale) stays so.
    this.db.prepare(`UPDATE email_outbox SET status = 'pending', next_attempt_at = ?, last_error = ?, attempts = attempts + ? WHERE id = ? AND status = 'sending'`).run(nextAttemptAt, error, answered ? 1 : 0, id);
  }

  async requeueInterruptedEmails(): Promise<number> {
    return this.db.prepare(`UPDATE email_outbox SET status = 'pending' WHERE status = 'sending'`).run().changes;
  }

  async cancelPendingEmails(templateId: string, at: number): Promise<number> {
    return this.db.prepare(`UPDATE email_outbox SET status = 'cancelled', last_error = 'template switched off', delivered_at = NULL, next_attempt_at = ?
      WHERE template_id = ? AND status = 'pending'`).run(at, templateId).changes;
  }

  async countEmails(status: EmailStatus): Promise<number> {
    return (this.db.prepare('SELECT COUNT(*) AS n FROM email_outbox WHERE status = ?').get(status) as { n: number }).n;
  }

  async emailLog(filter: { customerId?: string; templateId?: string; status?: EmailStatus; limit: number }): Promise<OutboxRow[]> {
    const where: string[] = [];
    const args: unknown[] = [];
    if (filter.customerId) { where.push('customer_id = ?'); args.push(filter.customerId); }
    if (filter.templateId) { where.push('template_id = ?'); args.push(filter.templateId); }
    if (filter.status) { where.push('status = ?'); args.push(filter.status); }
    const sql = `SELECT * FROM email_outbox ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id DESC LIMIT ?`;
    return (this.db.prepare(sql).all(...args, filter.limit) as Array<Record<string, any>>).map(toOutboxRow);
  }

  async templateOverrides(): Promise<Map<string, boolean>> {
    const rows = this.db.prepare('SELECT template_id, active FROM template_overrides').all() as Array<{ template_id: string; active: number }>;
    return new Map(rows.map((r) => [r.template_id, r.active === 1]));
  }

  async setTemplateActive(templateId: string, active: boolean): Promise<void> {
    this.db.prepare('INSERT OR REPLACE INTO template_overrides (template_id, active) VALUES (?, ?)').run(templateId, active ? 1 : 0);
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

  async webhookEventSeen(eventId: string): Promise<boolean> {
    return this.db.prepare('SELECT 1 FROM webhook_events WHERE id = ?').get(eventId) !== undefined;
  }

  async recordLeases(changes: LeaseChanges): Promise<void> {
    if (!changes.open?.length && !changes.close?.length) return;
    this.db.transaction(() => {
      for (const l of changes.open ?? []) this.stmt.insertLease.run(l);
      for (const c of changes.close ?? []) this.stmt.closeLease.run(c.drawn, c.drawnMicros, c.id);
    })();
  }

  async heldLeases(now: number): Promise<LeaseRow[]> {
    return (this.db.prepare('SELECT * FROM leases WHERE held_until > ? ORDER BY granted_at').all(now) as Array<Record<string, any>>).map(toLease);
  }

  async pruneLeases(now: number): Promise<number> {
    return this.db.prepare(`DELETE FROM leases WHERE held_until <= ?
      OR (drawn_micros IS NOT NULL AND settled_micros >= drawn_micros)`).run(now).changes;
  }

  async getMeta(key: string): Promise<string | undefined> {
    return (this.db.prepare('SELECT value FROM meta WHERE key = ?').get(key) as { value: string } | undefined)?.value;
  }

  async setMeta(key: string, value: string): Promise<void> {
    this.db.prepare('INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)').run(key, value);
  }

  // ---- top-ups (issue 21): TopUpStore -------------------------------------------------------
  async recordTopUp(row: { id: string; customerId: string; amount: number; currency: string; createdAt: number }): Promise<TopUpRow> {
    this.db.prepare('INSERT OR IGNORE INTO top_ups (id, customer_id, amount, currency, created_at) VALUES (?, ?, ?, ?, ?)')
      .run(row.id, row.customerId, row.amount, row.currency, row.createdAt);
    return (await this.topUp(row.id))!;
  }

  async setTopUpSession(id: string, sessionId: string, sessionUrl: string | null): Promise<void> {
    this.db.prepare('UPDATE top_ups SET session_id = ?, session_url = COALESCE(?, session_url) WHERE id = ? AND (session_id IS NULL OR session_id = ?)').run(sessionId, sessionUrl, id, sessionId);
  }

  async setTopUpPaymentIntent(id: string, paymentIntent: string): Promise<void> {
    this.db.prepare('UPDATE top_ups SET payment_intent = ? WHERE id = ? AND payment_intent IS NULL').run(paymentIntent, id);
  }

  async topUp(id: string): Promise<TopUpRow | undefined> {
    const r = this.db.prepare('SELECT * FROM top_ups WHERE id = ?').get(id) as Record<string, any> | undefined;
    return r && toTopUp(r);
  }

  async topUpByPaymentIntent(paymentIntent: string): Promise<TopUpRow | undefined> {
    const r = this.db.prepare('SELECT * FROM top_ups WHERE payment_intent = ?').get(paymentIntent) as Record<string, any> | undefined;
    return r && toTopUp(r);
  }

  async topUps(customerId: string, limit: number): Promise<TopUpRow[]> {
    return (this.db.prepare('SELECT * FROM top_ups WHERE customer_id = ? ORDER BY created_at DESC, id LIMIT ?').all(customerId, limit) as Array<Record<string, any>>).map(toTopUp);
  }

  private insertMove(intent: MoveIntent, now: number): boolean {
    return this.db.prepare(`INSERT OR IGNORE INTO top_up_moves (ref, kind, top_up_id, customer_id, amount, currency, idempotency_key, description, metadata, status, created_at)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)`).run(intent.ref, intent.kind, intent.topUpId, intent.customerId, intent.amount, intent.currency,
      intent.idempotencyKey, intent.description, JSON.stringify(intent.metadata), now).changes > 0;
  }

  private moveByRef(ref: string): MoveRow | undefined {
    const r = this.db.prepare('SELECT * FROM top_up_moves WHERE ref = ?').get(ref) as Record<string, any> | undefined;
    return r && toMove(r);
  }

  async enqueueMove(intent: MoveIntent, now: number): Promise<{ row: MoveRow; created: boolean }> {
    return this.db.transaction(() => {
      const created = this.insertMove(intent, now);
      return { row: this.moveByRef(intent.ref)!, created };
    })();
  }

  async enqueueDebit(intent: Omit<MoveIntent, 'amount'>, amountFor: (debitedBefore: number) => number, now: number, pauseRecharges = false): Promise<{ row: MoveRow | undefined; created: boolean }> {
    return this.db.transaction(() => {
      const held = this.moveByRef(intent.ref);
      if (held) return { row: held, created: false };
      const before = (this.db.prepare(`SELECT COALESCE(SUM(amount), 0) AS n FROM top_up_moves WHERE top_up_id = ? AND kind <> 'credit' AND status <> 'failed'`).get(intent.topUpId) as { n: number }).n;
      const amount = amountFor(before);
      if (amount <= 0) return { row: undefined, created: false };
      // Auto-recharge paused with the debit's row (recharges/core.ts pauseReason): the debit's crossing charges nothing.
      if (pauseRecharges) {
        this.db.prepare(RSQL.ensureState).run(intent.customerId);
        this.db.prepare(RSQL.pause).run(now, intent.customerId);
      }
      this.insertMove({ ...intent, amount }, now);
      return { row: this.moveByRef(intent.ref)!, created: true };
    })();
  }

  async pendingMoves(): Promise<MoveRow[]> {
    return (this.db.prepare(`SELECT * FROM top_up_moves WHERE status = 'pending' ORDER BY id`).all() as Array<Record<string, any>>).map(toMove);
  }

  async moves(filter: { topUpId?: string; customerId?: string }): Promise<MoveRow[]> {
    const rows = filter.topUpId ? this.db.prepare('SELECT * FROM top_up_moves WHERE top_up_id = ? ORDER BY id').all(filter.topUpId)
      : filter.customerId ? this.db.prepare('SELECT * FROM top_up_moves WHERE customer_id = ? ORDER BY id').all(filter.customerId)
      : this.db.prepare('SELECT * FROM top_up_moves ORDER BY id').all();
    return (rows as Array<Record<string, any>>).map(toMove);
  }

  async moveAttemptFailed(id: number, error: string): Promise<void> {
    this.db.prepare('UPDATE top_up_moves SET attempts = attempts + 1, last_error = ? WHERE id = ?').run(error, id);
  }

  async confirmMove(id: number, stripeRef: string, at: number): Promise<boolean> {
    return this.db.prepare(`UPDATE top_up_moves SET status = 'confirmed', stripe_ref = ?, confirmed_at = ?, attempts = attempts + 1 WHERE id = ? AND status = 'pending'`).run(stripeRef, at, id).changes > 0;
  }

  async failMove(id: number, error: string, at: number): Promise<void> {
    this.db.prepare(`UPDATE top_up_moves SET status = 'failed', last_error = ?, confirmed_at = ?, attempts = attempts + 1 WHERE id = ? AND status = 'pending'`).run(error, at, id);
  }
  // ---- end top-ups ----------------------------------------------------------------------------

  async ping(): Promise<void> {
    this.db.prepare('SELECT 1').get();
  }

  async close(): Promise<void> {
    this.db.close();
  }

  // ---- auto-recharge (issue 22) ----
  /** Inside saveChanges' transaction (SQLite writes one at a time: the read and the insert cannot interleave). */
  private planRecharge(c: RechargeCrossing): void {
    const read: CrossingRead = {
      state: this.db.prepare(RSQL.state).get(c.customerId) as CrossingRead['state'],
      open: (this.db.prepare(RSQL.open).get(c.customerId) as { n: number }).n,
      lastDue: (this.db.prepare(RSQL.lastDue).get(c.customerId) as { t: number | null }).t,
      spent: this.db.prepare(RSQL.spent).all(c.customerId, monthFloor(c.at)) as CrossingRead['spent'],
    };
    const d = decideCrossing(c, read);
    if (d.kind === 'plan') this.db.prepare(RSQL.insert).run(newRechargeId(), c.customerId, d.amount, c.currency, d.month, d.dueAt, c.at);
  }

  async dueRecharges(now: number): Promise<RechargeRow[]> {
    return (this.db.prepare(RSQL.due).all(now) as Array<Record<string, any>>).map(toRecharge);
  }

  async nextRechargeDueAt(): Promise<number | undefined> {
    return (this.db.prepare(RSQL.nextDue).get() as { t: number | null }).t ?? undefined;
  }

  async recharges(customerId: string, limit: number): Promise<RechargeRow[]> {
    return (this.db.prepare(RSQL.byCustomer).all(customerId, limit) as Array<Record<string, any>>).map(toRecharge);
  }

  async recharge(id: string): Promise<RechargeRow | undefined> {
    const r = this.db.prepare(RSQL.byId).get(id) as Record<string, any> | undefined;
    return r && toRecharge(r);
  }

  async rechargeState(customerId: string): Promise<RechargeState> {
    const r = this.db.prepare(RSQL.state).get(customerId) as { failures: number; paused_at: number | null } | undefined;
    return { failures: r?.failures ?? 0, pausedAt: r?.paused_at ?? null };
  }

  async fixRechargePaymentMethod(id: string, paymentMethod: string): Promise<string> {
    return this.db.transaction(() => {
      this.db.prepare(RSQL.fixMethod).run(paymentMethod, id);
      return (this.db.prepare(RSQL.byId).get(id) as { payment_method: string }).payment_method;
    })();
  }

  async rechargeAttemptFailed(id: string, error: string): Promise<void> {
    this.db.prepare(RSQL.attemptFailed).run(error.slice(0, 500), id);
  }

  async rechargeProcessing(id: string, paymentIntent: string): Promise<void> {
    this.db.prepare(RSQL.processing).run(paymentIntent, id);
  }

  async finishRecharge(id: string, end: { status: 'succeeded' | 'failed' | 'action_required'; paymentIntent: string | null; failureCode?: string; error?: string; at: number }, maxFailures: number): Promise<{ changed: boolean; state: RechargeState }> {
    return this.db.transaction(() => {
      const row = this.db.prepare(RSQL.byId).get(id) as { customer_id: string } | undefined;
      if (!row) return { changed: false, state: { failures: 0, pausedAt: null } };
      this.db.prepare(RSQL.ensureState).run(row.customer_id);
      const before = this.db.prepare(RSQL.state).get(row.customer_id) as { failures: number; paused_at: number | null };
      const changed = this.db.prepare(RSQL.finish).run(end.status, end.paymentIntent, end.failureCode ?? null, end.error?.slice(0, 500) ?? null, end.at, id).changes > 0;
      if (!changed) return { changed, state: { failures: before.failures, pausedAt: before.paused_at } };
      const state = stateAfter(before, end.status, end.at, maxFailures);
      this.db.prepare(RSQL.setState).run(state.failures, state.pausedAt, row.customer_id);
      return { changed, state };
    })();
  }

  async rearmRecharges(customerId: string, _at: number): Promise<boolean> {
    return this.db.prepare('UPDATE recharge_state SET failures = 0, paused_at = NULL WHERE customer_id = ? AND (paused_at IS NOT NULL OR failures > 0)').run(customerId).changes > 0;
  }

  async pausedRecharges(): Promise<Array<{ customerId: string; pausedAt: number }>> {
    return (this.db.prepare(RSQL.paused).all() as Array<{ customer_id: string; paused_at: number }>).map((r) => ({ customerId: r.customer_id, pausedAt: r.paused_at }));
  }
  async recordOptIn(o: PendingOptIn, at: number): Promise<void> {
    this.db.prepare(RSQL.recordOptIn).run(o.topUpId, o.customerId, o.sessionId, JSON.stringify(o.settings), at);
  }

  async pendingOptIns(): Promise<PendingOptIn[]> {
    return (this.db.prepare(RSQL.pendingOptIns).all() as Array<Record<string, any>>).map(toOptIn);
  }

  async optInDone(topUpId: string, at: number): Promise<void> {
    this.db.prepare(RSQL.optInDone).run(at, topUpId);
  }
  // ---- end auto-recharge ----
}
