// The store for several replicas: one PostgreSQL database through `pg`.
// Versioned migrations (schema_migrations) run in one transaction under an
// advisory lock, so replicas starting together apply each version once.
// Everything another replica may do at the same moment is a single statement
// or a row lock: usage dedupe by a unique id, running totals by upsert, one
// pending settlement per customer by a partial unique index, email claims by
// FOR UPDATE SKIP LOCKED. saveChanges notifies the other replicas when it
// commits: a commit of usage alone on `payg_usage` (per customer: micros added
// and the running totals' new version), any other on `payg_changes` (the
// customer ids touched, which followers read again).

import { POSTGRES_ADD_SPEND, POSTGRES_CONSUMER_SPEND_MIGRATION, spendFromRows, spendRows } from './consumer-spend';
import { periodStart, type ConsumerSpend } from '../caps/caps';
import { createHash } from 'node:crypto';
import pg from 'pg';
import type { LeaseChanges, LeaseRow, EmailStatus, OutboxRecord, OutboxRow, SavedChanges, SettlementMode, SettlementRow, Store, StoreChanges, StoredCustomer, TransitionRecord, UsageAdded, UsageRecord } from './store';
import { toLease, toOutboxRow, toSettlement } from './rows';
import { toMove, toTopUp, topUpSchema, type MoveRow, type TopUpRow } from '../top-ups/store';
// ---- auto-recharge (issue 22) ----
import { decideCrossing, monthFloor, newRechargeId, pg as toPg, rechargeSchema, SQL as RSQL, stateAfter, toRecharge, type CrossingRead, type RechargeCrossing, type RechargeRow, type RechargeState, type PendingOptIn, toOptIn } from '../recharges/store';
// ---- end auto-recharge ----
import type { MoveIntent } from '../top-ups/core';
import type { ReloadedCustomer } from '../engine';

/** The NOTIFY channel saveChanges writes to; its payload is a JSON array of customer ids. */
export const CHANGES_CHANNEL = 'payg_changes';
/**
 * The NOTIFY channel a commit of usage alone writes to; its payload is a JSON array of
 * [customer id, micros added, running-totals version]: followers add it to their books
 * in version order without reading anything back (a gap in versions: they reload).
 */
export const USAGE_CHANNEL = 'payg_usage';
/** [customer id, micros added, version] entries per usage NOTIFY (ids ≤ 60 characters: under 8000 bytes). */
const USAGE_NOTIFY_CHUNK = 60;
/** The NOTIFY channel rule and template switches write to; its payload names which: `rules` or `templates`. */
export const SWITCHES_CHANNEL = 'payg_switches';
export type SwitchKind = 'rules' | 'templates';
/** The advisory lock key migrations run under (any constant unique to payg). */
const MIGRATION_LOCK = 0x70617967; // "payg"
/** NOTIFY payloads must stay under 8000 bytes. */
const MAX_NOTIFY_BYTES = 7000;

/** The largest PostgreSQL integer. */
const INT4_MAX = 2_147_483_647;

const MIGRATIONS: string[] = [
  // 1: everything the SQLite store has at its version 3 (never edit a released version: add one)
  `CREATE TABLE customers (
     id TEXT PRIMARY KEY, balance BIGINT NOT NULL, currency TEXT, name TEXT, email TEXT,
     metadata TEXT NOT NULL, version BIGINT NOT NULL);
   CREATE TABLE memberships (customer_id TEXT NOT NULL, cohort TEXT NOT NULL, since BIGINT NOT NULL,
     PRIMARY KEY (customer_id, cohort));
   CREATE TABLE cohort_transitions (id BIGSERIAL PRIMARY KEY, customer_id TEXT NOT NULL,
     cohort TEXT NOT NULL, kind TEXT NOT NULL CHECK (kind IN ('enter','leave')), at BIGINT NOT NULL, balance BIGINT NOT NULL);
   CREATE INDEX cohort_transitions_customer ON cohort_transitions (customer_id, id);
   CREATE TABLE rule_overrides (rule_id TEXT PRIMARY KEY, enabled BOOLEAN NOT NULL);
   CREATE TABLE webhook_events (id TEXT PRIMARY KEY, at BIGINT NOT NULL);
   CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
   CREATE TABLE email_outbox (id BIGSERIAL PRIMARY KEY, dedupe_key TEXT NOT NULL UNIQUE,
     template_id TEXT NOT NULL, customer_id TEXT NOT NULL, to_address TEXT NOT NULL, context TEXT NOT NULL,
     status TEXT NOT NULL CHECK (status IN ('pending','sending','delivered','failed','cancelled')),
     attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at BIGINT NOT NULL, last_error TEXT, message_id TEXT,
     created_at BIGINT NOT NULL, delivered_at BIGINT);
   CREATE INDEX email_outbox_due ON email_outbox (status, next_attempt_at, id);
   CREATE INDEX email_outbox_customer ON email_outbox (customer_id, id);
   CREATE TABLE template_overrides (template_id TEXT PRIMARY KEY, active BOOLEAN NOT NULL);
   CREATE TABLE usage_events (seq BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, customer_id TEXT,
     consumer TEXT NOT NULL, at BIGINT NOT NULL, route TEXT, status INTEGER NOT NULL, cost_micros BIGINT NOT NULL);
   CREATE TABLE usage_totals (customer_id TEXT PRIMARY KEY, used_micros BIGINT NOT NULL, last_seq BIGINT NOT NULL,
     charged BIGINT NOT NULL DEFAULT 0, settled BIGINT NOT NULL DEFAULT 0);
   CREATE TABLE settlements (id BIGSERIAL PRIMARY KEY, customer_id TEXT NOT NULL, from_seq BIGINT NOT NULL,
     upto_seq BIGINT NOT NULL, amount BIGINT NOT NULL CHECK (amount > 0), currency TEXT NOT NULL, mode TEXT NOT NULL,
     idempotency_key TEXT NOT NULL UNIQUE, status TEXT NOT NULL CHECK (status IN ('pending','confirmed')),
     attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, stripe_ref TEXT, created_at BIGINT NOT NULL, confirmed_at BIGINT);
   CREATE INDEX settlements_customer ON settlements (customer_id, id);
   -- At most one pending settlement per customer, whichever replica opens it.
   CREATE UNIQUE INDEX settlements_one_pending ON settlements (customer_id) WHERE status = 'pending';`,
  // 2: as SQLite's 4 and 5 (and a transition's estimated balance keeps its fraction, as SQLite does): when each usage event was received (pruning goes by it); settlements Stripe
  // refused for good are 'failed'; emails cancelled at delivery as no longer true are 'stale'
  `ALTER TABLE usage_events ADD COLUMN received_at BIGINT;
   UPDATE usage_events SET received_at = at;
   CREATE INDEX usage_events_received ON usage_events (received_at);
   ALTER TABLE settlements DROP CONSTRAINT settlements_status_check,
     ADD CONSTRAINT settlements_status_check CHECK (status IN ('pending','confirmed','failed'));
   ALTER TABLE email_outbox DROP CONSTRAINT email_outbox_status_check,
     ADD CONSTRAINT email_outbox_status_check CHECK (status IN ('pending','sending','delivered','failed','cancelled','stale'));
   -- A transition records the estimated balance, which holds fractions of a cent of unsettled usage.
   ALTER TABLE cohort_transitions ALTER COLUMN balance TYPE DOUBLE PRECISION;`,
  // 3: as SQLite's 6: the console's usage by route for one customer reads that customer's recent events only (console-queries-postgres.ts)
  'CREATE INDEX usage_events_customer_at ON usage_events (customer_id, at);',
  // 4: running totals carry a version, one more per commit that adds usage, so followers can apply
  // the usage other replicas NOTIFY in order, and know when they missed some
  `ALTER TABLE usage_totals ADD COLUMN version BIGINT NOT NULL DEFAULT 0;`,
  // 5: as SQLite's 7: durable leases, written in the transaction that checks the customer's available
  // credit under its row lock, so any replica grants and none can grant the same credit twice
  `CREATE TABLE leases (id TEXT PRIMARY KEY, node TEXT NOT NULL, customer_id TEXT NOT NULL, consumer TEXT NOT NULL,
     requests INTEGER NOT NULL, cost_micros BIGINT NOT NULL, micros BIGINT NOT NULL, granted_at BIGINT NOT NULL,
     expires_at BIGINT NOT NULL, held_until BIGINT NOT NULL, drawn INTEGER, drawn_micros BIGINT,
     settled_micros BIGINT NOT NULL DEFAULT 0);
   CREATE INDEX leases_customer ON leases (customer_id, held_until);
   CREATE INDEX leases_held_until ON leases (held_until);`,
  // 6: top-ups (issue 21): the top-ups payg created Checkout Sessions for, and the money outbox (as SQLite's 8)
  topUpSchema('postgres'),
  // 7: as SQLite's 9: team caps (issue 23): each consumer's spend in its current daily and monthly periods
  POSTGRES_CONSUMER_SPEND_MIGRATION,
  // 8: as SQLite's 10: auto-recharge (issue 22): the recharge outbox and failures in a row per customer
  rechargeSchema('postgres'),
];

/**
 * Settles leases from the usage events counted now (`ins`: their ids) and their inputs (`x`: id i,
 * consumer co, lease le, reserved rs): each lets go of what it reserved (default the lease's
 * cost_micros), only from its own consumer's lease, never beyond what the lease drew.
 */
const SETTLE_LEASES_SQL = `UPDATE leases l SET settled_micros = LEAST(COALESCE(l.drawn_micros, l.micros), l.settled_micros + s.reserved + s.unsized * l.cost_micros)
        FROM (SELECT x.le, x.co, COALESCE(SUM(x.rs), 0)::bigint AS reserved, COUNT(*) FILTER (WHERE x.rs IS NULL) AS unsized
              FROM ins JOIN x ON x.i = ins.id WHERE x.le IS NOT NULL GROUP BY x.le, x.co) s
        WHERE l.id = s.le AND l.consumer = s.co RETURNING l.customer_id`;

/** Lease news for the other replicas (payload JSON): consumers to recall from nodes, customers whose credit came back. */
export const LEASES_CHANNEL = 'payg_leases';
export interface LeaseNotice { recall?: string[]; freed?: string[] }

/** What a grant sees of one customer, under its row lock: credit before reservations, and what leases hold. */
export interface CreditState { creditMicros: number; heldMicros: number; othersHoldMicros: number; consumerOthersHoldMicros?: number }
/** Issue 23: a consumer's spend this period and what its leases hold (micros), read in the grant's transaction. */
export interface ConsumerCapState { heldMicros: number; spend: ConsumerSpend }


// BIGINT columns hold milliseconds and micros: well inside 2^53, so read them as numbers.
const types = {
  getTypeParser: ((oid: number, format?: string) =>
    oid === pg.types.builtins.INT8 ? Number : pg.types.getTypeParser(oid, format as 'text')) as typeof pg.types.getTypeParser,
};

/** Only usage, for customer ids short enough that 100 of them fit one NOTIFY payload. */
function isUsageOnly(c: StoreChanges): boolean {
  return Boolean(c.usage?.length) && !c.upserts.length && !c.deletes.length && !c.transitions.length && !c.emails?.length
    && !c.confirmSettlements?.length && !c.failSettlement && !c.webhookEvent && !c.recharges?.length
    && c.usage!.every((u) => u.customerId === null || u.customerId.length <= 60);
}

/** A USAGE_CHANNEL payload, checked: [[customer id, micros, version], …]. */
function parseUsageAdded(doc: unknown): UsageAdded[] {
  if (!Array.isArray(doc)) throw new Error('usage notification is not an array');
  return doc.map((e) => {
    if (!Array.isArray(e) || typeof e[0] !== 'string' || !Number.isSafeInteger(e[1]) || !Number.isSafeInteger(e[2])) throw new Error('usage notification entry is malformed');
    return { customerId: e[0], micros: e[1], version: e[2] };
  });
}

function parseLeaseNotice(doc: unknown): LeaseNotice {
  const strings = (v: unknown) => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : undefined);
  const d = (doc ?? {}) as { recall?: unknown; freed?: unknown };
  return { recall: strings(d.recall), freed: strings(d.freed) };
}

/** Splits ids into JSON arrays that each fit one NOTIFY payload. */
export function notifyPayloads(ids: Iterable<string>): string[] {
  const out: string[] = [];
  let batch: string[] = [];
  let size = 2;
  for (const id of ids) {
    const bytes = Buffer.byteLength(JSON.stringify(id)) + 1;
    if (batch.length && size + bytes > MAX_NOTIFY_BYTES) { out.push(JSON.stringify(batch)); batch = []; size = 2; }
    batch.push(id);
    size += bytes;
  }
  if (batch.length) out.push(JSON.stringify(batch));
  return out;
}

/** A lease given back: what its node drew from it (requests, and micros when it knows), and which node (undefined: any). */
export interface LeaseClose { id: string; drawn: number; drawnMicros?: number; node?: string }

/** `drawn` is clamped to int4 before the cast: one node's absurd count must not fail the whole batch (it is LEAST'd to the lease's requests anyway). */
function clampDrawn(drawn: number): number {
  return Math.min(INT4_MAX, Math.max(0, Math.floor(drawn)));
}

/** Closes leases given back (params: ids, drawn, drawn micros, nodes), each only by its node and only once; answers them as they are now. */
const CLOSE_LEASES_SQL = `UPDATE leases l SET drawn = LEAST(l.requests, x.d),
        drawn_micros = LEAST(l.micros, COALESCE(x.dm, LEAST(l.requests, x.d)::bigint * l.cost_micros))
      FROM unnest($1::text[], $2::int[], $3::bigint[], $4::text[]) AS x(i, d, dm, n)
      WHERE l.id = x.i AND l.drawn IS NULL AND (x.n IS NULL OR l.node = x.n)
      RETURNING l.*`;

const INSERT_LEASES_SQL = `INSERT INTO leases (id, node, customer_id, consumer, requests, cost_micros, micros, granted_at, expires_at, held_until)
      SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[])
      ON CONFLICT (id) DO NOTHING`;

function insertLeasesArgs(rows: LeaseRow[]): unknown[][] {
  return [rows.map((l) => l.id), rows.map((l) => l.node), rows.map((l) => l.customerId), rows.map((l) => l.consumer), rows.map((l) => l.requests),
    rows.map((l) => l.costMicros), rows.map((l) => l.micros), rows.map((l) => l.grantedAt), rows.map((l) => l.expiresAt), rows.map((l) => l.heldUntil)];
}

/**
 * The grant's statements, prepared once per connection (SQL PREPARE: its plan is kept, and EXECUTE
 * runs in a simple-protocol message beside others, each with its own snapshot).
 */
const GRANT_STATEMENTS: Record<string, { types: string; sql: string }> = {
  payg_close_leases: { types: 'text[], int[], bigint[], text[]', sql: CLOSE_LEASES_SQL },
  payg_lock_customers: { types: 'text[]', sql: 'SELECT id FROM customers WHERE id = ANY($1) ORDER BY id FOR UPDATE' },
  payg_credit_states: { types: 'text[], bigint', sql: '' }, // filled below
  payg_consumer_caps: { types: 'text[], bigint', sql: '' },
  payg_insert_leases: { types: 'text[], text[], text[], text[], int[], bigint[], bigint[], bigint[], bigint[], bigint[]', sql: INSERT_LEASES_SQL },
};

/** A value as an SQL literal for EXECUTE's arguments (no parameters in the simple protocol): strings escaped by pg, numbers only as safe integers. */
function sqlArray(values: unknown[], type: 'text' | 'int' | 'bigint'): string {
  if (!values.length) return `'{}'::${type}[]`;
  return `ARRAY[${values.map((v) => {
    if (v === null || v === undefined) return 'NULL';
    if (type === 'text') { if (typeof v !== 'string') throw new Error('text value expected'); return pg.escapeLiteral(v); }
    if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw new Error('safe integer expected');
    return String(v);
  }).join(',')}]::${type}[]`;
}

/**
 * Per customer (`ids`: a text[] expression): credit before reservations (−balance − unsettled usage,
 * micros), what its leases hold, and what leases of nodes other than `node` hold, in one snapshot.
 */
function creditStatesSql(ids: string, now: string, node: string, consumer = 'NULL'): string {
  const others = `l.node IS DISTINCT FROM ${node}::text AND (l.drawn IS NOT NULL OR l.expires_at > ${now}::bigint)`;
  return `SELECT c.id, -(c.balance * 1000000) - COALESCE(t.used_micros - t.settled * 1000000, 0) AS credit,
        COALESCE(h.held, 0)::bigint AS held, COALESCE(h.others, 0)::bigint AS others, COALESCE(h.consumer_others, 0)::bigint AS consumer_others
      FROM customers c LEFT JOIN usage_totals t ON t.customer_id = c.id
      LEFT JOIN LATERAL (SELECT SUM(GREATEST(0, COALESCE(l.drawn_micros, l.micros) - l.settled_micros)) AS held,
          SUM(GREATEST(0, COALESCE(l.drawn_micros, l.micros) - l.settled_micros)) FILTER (WHERE ${others}) AS others,
          SUM(GREATEST(0, COALESCE(l.drawn_micros, l.micros) - l.settled_micros)) FILTER (WHERE ${others} AND l.consumer = ${consumer}::text) AS consumer_others
        FROM leases l WHERE l.customer_id = c.id AND l.held_until > ${now}::bigint) h ON true
      WHERE c.id = ANY(${ids})`;
}

function creditStatesOf(rows: Array<Record<string, any>>): Map<string, CreditState> {
  return new Map(rows.map((row) => [row.id as string, { creditMicros: Number(row.credit), heldMicros: Number(row.held), othersHoldMicros: Number(row.others), consumerOthersHoldMicros: Number(row.consumer_others) }]));
}

// ---- issue 23 (team caps) ----
/**
 * Per consumer (`consumers`: a text[] expression): its spend in its current periods and what its
 * leases hold, in one statement (one snapshot: a usage commit that adds spend and settles a lease is
 * seen whole or not at all).
 */
function consumerCapStatesSql(consumers: string, now: string): string {
  return `SELECT x.consumer,
        (SELECT COALESCE(SUM(GREATEST(0, COALESCE(l.drawn_micros, l.micros) - l.settled_micros)), 0)::bigint FROM leases l WHERE l.consumer = x.consumer AND l.held_until > ${now}::bigint) AS held,
        (SELECT json_agg(json_build_array(s.period, s.period_start, s.micros)) FROM consumer_spend s WHERE s.consumer = x.consumer)::text AS spend
      FROM unnest(${consumers}) AS x(consumer)`;
}

GRANT_STATEMENTS.payg_credit_states.sql = creditStatesSql('$1', '$2', 'NULL');
GRANT_STATEMENTS.payg_consumer_caps.sql = consumerCapStatesSql('$1', '$2');

function consumerCapStatesOf(rows: Array<Record<string, any>>): Map<string, ConsumerCapState> {
  return new Map(rows.map((row) => {
    const parts = (row.spend ? JSON.parse(row.spend) : []) as Array<[string, number, number]>;
    const spend = spendFromRows(parts.map(([period, start, micros]) => ({ consumer: row.consumer, period, period_start: start, micros }))).get(row.consumer);
    return [row.consumer as string, { heldMicros: Number(row.held), spend: spend ?? { daily: { start: 0, micros: 0 }, monthly: { start: 0, micros: 0 } } }];
  }));
}
// ---- end issue 23 ----

export class PostgresStore implements Store {
  private constructor(readonly pool: pg.Pool, readonly url: string) {}

  /** Backend process ids of this store's pool connections (a NOTIFY names the session that sent it). */
  private readonly ownSessions = new Set<number>();

  /** Connects and brings the schema up to date (once, however many replicas start together). */
  static async open(url: string, opts: { poolSize?: number } = {}): Promise<PostgresStore> {
    const pool = new pg.Pool({ connectionString: url, max: opts.poolSize ?? 10, types, application_name: 'payg-control' });
    // An idle client that loses its server emits 'error'; the pool drops it and the next query reconnects.
    pool.on('error', () => {});
    const store = new PostgresStore(pool, url);
    // Our own commits are already in this replica's book: the listener skips notifications from these sessions.
    pool.on('connect', (c) => { store.ownSessions.add((c as unknown as { processID: number }).processID); });
    pool.on('remove', (c) => { store.ownSessions.delete((c as unknown as { processID: number }).processID); });
    try {
      await store.migrate();
    } catch (err) {
      await pool.end();
      throw err;
    }
    return store;
  }

  get schemaVersion(): number {
    return MIGRATIONS.length;
  }

  private async migrate(): Promise<void> {
    await this.tx(async (c) => {
      // Replicas starting together queue here; the first applies, the others find nothing left to do.
      await c.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
      await c.query('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)');
      const done = new Set((await c.query('SELECT version FROM schema_migrations')).rows.map((r) => r.version as number));
      for (let v = 1; v <= MIGRATIONS.length; v++) {
        if (done.has(v)) continue;
        await c.query(MIGRATIONS[v - 1]);
        await c.query('INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)', [v, Date.now()]);
      }
    });
  }

  /** Runs `fn` in one transaction on one connection; rolls back on any error. */
  private async tx<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    const c = await this.pool.connect();
    try {
      await c.query('BEGIN');
      const result = await fn(c);
      await c.query('COMMIT');
      return result;
    } catch (err) {
      await c.query('ROLLBACK').catch(() => {});
      throw err;
    } finally {
      c.release();
    }
  }

  private async rows(sql: string, args: unknown[] = []): Promise<Array<Record<string, any>>> {
    return (await this.pool.query(sql, args)).rows;
  }

  async loadCustomers(): Promise<StoredCustomer[]> {
    return this.customerRows('SELECT * FROM customers');
  }

  private async customerRows(sql: string, args: unknown[] = []): Promise<StoredCustomer[]> {
    return (await this.rows(sql, args)).map((r) => ({
      id: r.id, balance: r.balance, currency: r.currency, name: r.name, email: r.email,
      metadata: JSON.parse(r.metadata), version: r.version,
    }));
  }

  /**
   * The stored state of these customers as a replica serves it: the customer,
   * its memberships, its unsettled usage (micros) and its pending settlements,
   * read in one snapshot.
   */
  async readCustomers(ids: string[]): Promise<ReloadedCustomer[]> {
    if (!ids.length) return [];
    // One statement is one snapshot, and one round trip (followers run this for every batch of changes).
    const rows = await this.rows(`SELECT c.*,
        (SELECT COALESCE(array_agg(m.cohort ORDER BY m.since, m.cohort), '{}') FROM memberships m WHERE m.customer_id = c.id) AS cohorts,
        (SELECT t.used_micros - t.settled * 1000000 FROM usage_totals t WHERE t.customer_id = c.id) AS unsettled_micros,
        (SELECT t.version FROM usage_totals t WHERE t.customer_id = c.id) AS usage_version,
        (SELECT COALESCE(json_agg(s ORDER BY s.id), '[]') FROM settlements s WHERE s.customer_id = c.id AND s.status = 'pending') AS pending
      FROM customers c WHERE c.id = ANY($1)`, [ids]);
    return rows.map((r) => ({
      customer: { id: r.id, balance: r.balance, currency: r.currency, name: r.name, email: r.email, metadata: JSON.parse(r.metadata), version: r.version },
      cohorts: r.cohorts as string[], unsettledMicros: r.unsettled_micros ?? 0, usageVersion: r.usage_version ?? 0,
      pending: (r.pending as Array<Record<string, any>>).map(toSettlement),
    }));
  }

  /**
   * Follows other replicas' changes: LISTEN on a dedicated connection and call
   * `onIds` with the customer ids each commit touched, `onUsage` with what a commit
   * of usage alone added (in commit order), `onSwitches` when rule or
   * template switches changed. When the connection is lost it reconnects and
   * calls `onResync` (notifications in between are lost).
   */
  listenForChanges(handlers: {
    onIds(ids: string[]): void; onUsage(added: UsageAdded[]): void; onSwitches(kind: SwitchKind): void; onResync(): void; onError(err: Error): void;
    onLeases?(notice: LeaseNotice): void;
  }, retryMs = 500): { ready: Promise<void>; stop(): Promise<void> } {
    const { onIds, onUsage, onSwitches, onResync, onError } = handlers;
    let client: pg.Client | undefined;
    let stopped = false;
    let timer: NodeJS.Timeout | undefined;
    let first = true;
    const connect = async () => {
      const c = new pg.Client({ connectionString: this.url, keepAlive: true, application_name: 'payg-control listener' });
      client = c;
      const lost = (err: Error) => {
        if (client !== c) return;
        client = undefined;
        c.end().catch(() => undefined);
        if (stopped) return;
        onError(err);
        timer = setTimeout(() => { void connect(); }, retryMs);
      };
      c.on('error', lost);
      c.on('end', () => lost(new Error('listener connection ended')));
      c.on('notification', (n) => {
        if (this.ownSessions.has(n.processId)) return;
        if (n.channel === SWITCHES_CHANNEL && (n.payload === 'rules' || n.payload === 'templates')) { onSwitches(n.payload); return; }
        if (!n.payload) return;
        try {
          if (n.channel === USAGE_CHANNEL) onUsage(parseUsageAdded(JSON.parse(n.payload)));
          else if (n.channel === CHANGES_CHANNEL) onIds(JSON.parse(n.payload) as string[]);
          else if (n.channel === LEASES_CHANNEL) handlers.onLeases?.(parseLeaseNotice(JSON.parse(n.payload)));
        } catch (err) { onError(err as Error); }
      });
      try {
        await c.connect();
        await c.query(`LISTEN ${CHANGES_CHANNEL}; LISTEN ${USAGE_CHANNEL}; LISTEN ${SWITCHES_CHANNEL}; LISTEN ${LEASES_CHANNEL}`);
        if (!first) onResync();
        first = false;
      } catch (err) {
        lost(err as Error);
      }
    };
    // Ready once the first LISTEN is in place (or failed and is being retried).
    const ready = connect();
    return {
      ready,
      async stop() {
        stopped = true;
        clearTimeout(timer);
        const c = client;
        client = undefined;
        await c?.end().catch(() => undefined);
      },
    };
  }

  /** Every stored customer id (for a full resync). */
  async customerIds(): Promise<string[]> {
    return (await this.rows('SELECT id FROM customers')).map((r) => r.id as string);
  }

  async saveChanges(changes: StoreChanges): Promise<SavedChanges> {
    if (isUsageOnly(changes)) return this.saveUsage(changes.usage!);
    const touched = new Set<string>();
    const usageAdded: UsageAdded[] = [];
    await this.tx(async (c) => {
      const usage = changes.usage ?? [];
      if (usage.length) {
        const inserted = await c.query(`INSERT INTO usage_events (id, customer_id, consumer, at, route, status, cost_micros, received_at)
          SELECT i, cu, co, a, r, st, m, $8::bigint FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::int[], $7::bigint[])
            AS x(i, cu, co, a, r, st, m)
          ON CONFLICT (id) DO NOTHING RETURNING id, seq, customer_id, cost_micros`, [
          usage.map((u) => u.id), usage.map((u) => u.customerId), usage.map((u) => u.consumer), usage.map((u) => u.at),
          usage.map((u) => u.route), usage.map((u) => u.status), usage.map((u) => u.costMicros), Date.now()]);
        // The events counted now let go of what they reserved from their leases, in this same commit.
        const counted = new Set(inserted.rows.map((r) => r.id as string));
        const settling = usage.filter((u) => u.lease !== undefined && counted.has(u.id));
        if (settling.length) {
          await c.query(`WITH x AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS x(i, co, le, rs)),
            ins AS (SELECT i AS id FROM x) ${SETTLE_LEASES_SQL}`,
          [settling.map((u) => u.id), settling.map((u) => u.consumer), settling.map((u) => u.lease), settling.map((u) => u.reserved ?? null)]);
        }
        // Issue 23: the consumers' spend, in the transaction that stores their usage (only the events stored now).
        const spend = spendRows(usage.filter((u) => counted.has(u.id)));
        if (spend.consumers.length) await c.query(POSTGRES_ADD_SPEND, [spend.consumers, spend.periods, spend.starts, spend.micros]);
        // Running totals per customer, so settlement never scans the events.
        const added = new Map<string, { micros: number; seq: number }>();
        for (const r of inserted.rows) {
          if (!r.customer_id) continue;
          const t = added.get(r.customer_id) ?? { micros: 0, seq: 0 };
          t.micros += r.cost_micros;
          t.seq = Math.max(t.seq, r.seq);
          added.set(r.customer_id, t);
        }
        // Rows locked in id order, so two replicas adding usage for the same customers never deadlock.
        const ids = [...added.keys()].sort();
        if (ids.length) {
          const totals = await c.query(`INSERT INTO usage_totals (customer_id, used_micros, last_seq, version)
            SELECT *, 1 FROM unnest($1::text[], $2::bigint[], $3::bigint[])
            ON CONFLICT (customer_id) DO UPDATE SET used_micros = usage_totals.used_micros + excluded.used_micros,
              last_seq = GREATEST(usage_totals.last_seq, excluded.last_seq), version = usage_totals.version + 1
            RETURNING customer_id, version`,
          [ids, ids.map((id) => added.get(id)!.micros), ids.map((id) => added.get(id)!.seq)]);
          for (const r of totals.rows) usageAdded.push({ customerId: r.customer_id, micros: added.get(r.customer_id)!.micros, version: r.version });
        }
        for (const id of ids) touched.add(id);
      }
      for (const confirm of changes.confirmSettlements ?? []) {
        const row = (await c.query(`UPDATE settlements SET status = 'confirmed', stripe_ref = $1, confirmed_at = $2, attempts = attempts + 1
          WHERE id = $3 AND status = 'pending' RETURNING customer_id, amount`, [confirm.stripeRef, confirm.at, confirm.id])).rows[0];
        if (row) {
          await c.query('UPDATE usage_totals SET settled = settled + $1 WHERE customer_id = $2', [row.amount, row.customer_id]);
          touched.add(row.customer_id);
        }
      }
      const fail = changes.failSettlement;
      if (fail) {
        const row = (await c.query(`UPDATE settlements SET status = 'failed', last_error = $1, attempts = attempts + 1
          WHERE id = $2 AND status = 'pending' RETURNING customer_id`, [fail.error, fail.id])).rows[0];
        if (row) touched.add(row.customer_id);
      }
      if (changes.webhookEvent) {
        await c.query('INSERT INTO webhook_events (id, at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING', [changes.webhookEvent.id, changes.webhookEvent.at]);
      }
      const emails = changes.emails ?? [];
      if (emails.length) await this.insertEmails(c, emails);
      // Auto-recharge (issue 22): crossings decided under each customer's lock, ids in order (no deadlock between replicas).
      for (const r of [...(changes.recharges ?? [])].sort((a, b) => (a.customerId < b.customerId ? -1 : a.customerId > b.customerId ? 1 : 0))) await this.planRecharge(c, r);
      const upserts = [...changes.upserts].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
      if (upserts.length) {
        await c.query(`INSERT INTO customers (id, balance, currency, name, email, metadata, version)
          SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[])
          ON CONFLICT (id) DO UPDATE SET balance = excluded.balance, currency = excluded.currency, name = excluded.name,
            email = excluded.email, metadata = excluded.metadata, version = excluded.version`, [
          upserts.map((u) => u.id), upserts.map((u) => u.balance), upserts.map((u) => u.currency), upserts.map((u) => u.name),
          upserts.map((u) => u.email), upserts.map((u) => JSON.stringify(u.metadata)), upserts.map((u) => u.version)]);
        for (const u of upserts) touched.add(u.id);
      }
      if (changes.deletes.length) {
        await c.query('DELETE FROM customers WHERE id = ANY($1)', [changes.deletes]);
        for (const id of changes.deletes) touched.add(id);
      }
      for (const t of changes.transitions) {
        await c.query('INSERT INTO cohort_transitions (customer_id, cohort, kind, at, balance) VALUES ($1, $2, $3, $4, $5)',
          [t.customerId, t.cohort, t.kind, t.at, t.balance]);
        if (t.kind === 'enter') {
          await c.query(`INSERT INTO memberships (customer_id, cohort, since) VALUES ($1, $2, $3)
            ON CONFLICT (customer_id, cohort) DO UPDATE SET since = excluded.since`, [t.customerId, t.cohort, t.at]);
        } else {
          await c.query('DELETE FROM memberships WHERE customer_id = $1 AND cohort = $2', [t.customerId, t.cohort]);
        }
        touched.add(t.customerId);
      }
      // Delivered to listeners only when this transaction commits.
      for (const payload of notifyPayloads(touched)) await c.query('SELECT pg_notify($1, $2)', [CHANGES_CHANNEL, payload]);
    });
    return { usageAdded };
  }

  /**
   * A batch of usage and nothing else (the hot path): one statement, so one round
   * trip and one commit. It stores the events not seen before, adds them to the
   * running totals (rows locked in id order, version + 1) and NOTIFYs on
   * USAGE_CHANNEL what each customer's total gained and its new version, in chunks
   * of USAGE_NOTIFY_CHUNK; it answers the same, read from those payloads.
   */
  private async saveUsage(usage: UsageRecord[]): Promise<SavedChanges> {
    const r = await this.pool.query(`WITH x AS (
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::int[], $7::bigint[], $11::text[], $12::bigint[])
          AS x(i, cu, co, a, r, st, m, le, rs)
      ), ins AS (
        INSERT INTO usage_events (id, customer_id, consumer, at, route, status, cost_micros, received_at)
        SELECT i, cu, co, a, r, st, m, $8::bigint FROM x
        ON CONFLICT (id) DO NOTHING RETURNING id, seq, customer_id, cost_micros
      ), settle AS (
        ${SETTLE_LEASES_SQL}
      ), spend_rows AS (
        -- issue 23: the consumers' spend, in this same statement (see store/consumer-spend.ts)
        SELECT y.co, y.period, y.start, SUM(y.m) AS micros
        FROM (SELECT i, co, 'daily' AS period, ds AS start, m FROM unnest($1::text[], $3::text[], $13::bigint[], $7::bigint[]) AS d(i, co, ds, m)
              UNION ALL SELECT i, co, 'monthly', ms, m FROM unnest($1::text[], $3::text[], $14::bigint[], $7::bigint[]) AS d(i, co, ms, m)) y
          JOIN ins ON ins.id = y.i
        WHERE ins.customer_id IS NOT NULL AND y.m > 0
        GROUP BY y.co, y.period, y.start
      ), spend AS (
        INSERT INTO consumer_spend (consumer, period, period_start, micros)
        SELECT DISTINCT ON (co, period) co, period, start, micros FROM spend_rows ORDER BY co, period, start DESC
        ON CONFLICT (consumer, period) DO UPDATE SET
          micros = CASE WHEN excluded.period_start > consumer_spend.period_start THEN excluded.micros
                        WHEN excluded.period_start = consumer_spend.period_start THEN consumer_spend.micros + excluded.micros ELSE consumer_spend.micros END,
          period_start = GREATEST(consumer_spend.period_start, excluded.period_start)
      ), added AS (
        SELECT customer_id, SUM(cost_micros)::bigint AS micros, MAX(seq) AS seq FROM ins WHERE customer_id IS NOT NULL GROUP BY customer_id
      ), totals AS (
        INSERT INTO usage_totals (customer_id, used_micros, last_seq, version)
        SELECT customer_id, micros, seq, 1 FROM added ORDER BY customer_id
        ON CONFLICT (customer_id) DO UPDATE SET used_micros = usage_totals.used_micros + excluded.used_micros,
          last_seq = GREATEST(usage_totals.last_seq, excluded.last_seq), version = usage_totals.version + 1
        RETURNING customer_id, version
      ), payloads AS (
        SELECT json_agg(json_build_array(t.customer_id, a.micros, t.version))::text AS p
        FROM (SELECT customer_id, version, (row_number() OVER (ORDER BY customer_id) - 1) / $10 AS chunk FROM totals) t
          JOIN added a USING (customer_id)
        GROUP BY t.chunk
      )
      SELECT p, pg_notify($9, p) FROM payloads`, [
      usage.map((u) => u.id), usage.map((u) => u.customerId), usage.map((u) => u.consumer), usage.map((u) => u.at),
      usage.map((u) => u.route), usage.map((u) => u.status), usage.map((u) => u.costMicros), Date.now(), USAGE_CHANNEL, USAGE_NOTIFY_CHUNK,
      usage.map((u) => u.lease ?? null), usage.map((u) => u.reserved ?? null),
      usage.map((u) => periodStart('daily', u.spentAt ?? u.at)), usage.map((u) => periodStart('monthly', u.spentAt ?? u.at))]);
    return { usageAdded: r.rows.flatMap((row) => parseUsageAdded(JSON.parse(row.p))) };
  }

  // ---- issue 23 (team caps) ----
  async consumerSpend(consumers?: string[]): Promise<Map<string, ConsumerSpend>> {
    const rows = consumers === undefined
      ? await this.rows('SELECT * FROM consumer_spend')
      : await this.rows('SELECT * FROM consumer_spend WHERE consumer = ANY($1)', [consumers]);
    return spendFromRows(rows as Array<{ consumer: string; period: string; period_start: number; micros: number }>);
  }
  // ---- end issue 23 ----

  private async insertEmails(c: pg.PoolClient, emails: OutboxRecord[]): Promise<number> {
    // A reminder makes the earlier pending reminders of its template and customer stale, in order: one at a time.
    if (emails.some((e) => e.reminder)) {
      let added = 0;
      for (const e of emails) {
        const n = await this.insertEmailBatch(c, [e]);
        added += n;
        if (n && e.reminder) {
          await c.query(`UPDATE email_outbox SET status = 'stale', last_error = 'replaced by a newer reminder'
            WHERE template_id = $1 AND customer_id = $2 AND status IN ('pending', 'sending') AND dedupe_key LIKE '%|repeat:%' AND dedupe_key <> $3`,
          [e.templateId, e.customerId, e.dedupeKey]);
        }
      }
      return added;
    }
    return this.insertEmailBatch(c, emails);
  }

  private async insertEmailBatch(c: pg.PoolClient, emails: OutboxRecord[]): Promise<number> {
    const r = await c.query(`INSERT INTO email_outbox (dedupe_key, template_id, customer_id, to_address, context, status, next_attempt_at, created_at)
      SELECT d, t, cu, a, cx, 'pending', at, at FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[]) AS x(d, t, cu, a, cx, at)
      ON CONFLICT (dedupe_key) DO NOTHING`, [
      emails.map((e) => e.dedupeKey), emails.map((e) => e.templateId), emails.map((e) => e.customerId), emails.map((e) => e.to),
      emails.map((e) => e.context), emails.map((e) => e.createdAt)]);
    return r.rowCount ?? 0;
  }

  async loadMemberships(): Promise<Map<string, string[]>> {
    return this.membershipsOf('SELECT customer_id, cohort FROM memberships ORDER BY since, cohort');
  }

  private async membershipsOf(sql: string, args: unknown[] = []): Promise<Map<string, string[]>> {
    const out = new Map<string, string[]>();
    for (const row of await this.rows(sql, args)) {
      const list = out.get(row.customer_id) ?? [];
      list.push(row.cohort);
      out.set(row.customer_id, list);
    }
    return out;
  }

  async knownUsageIds(ids: string[]): Promise<Set<string>> {
    if (!ids.length) return new Set();
    return new Set((await this.rows('SELECT id FROM usage_events WHERE id = ANY($1)', [ids])).map((r) => r.id as string));
  }

  async usageTotals(): Promise<Map<string, { usedMicros: number; settled: number }>> {
    const rows = await this.rows('SELECT customer_id, used_micros, settled FROM usage_totals');
    return new Map(rows.map((r) => [r.customer_id, { usedMicros: r.used_micros, settled: r.settled }]));
  }

  async openSettlements(now: number, mode: SettlementMode, currencyOf: (customerId: string) => string | undefined): Promise<SettlementRow[]> {
    return this.tx(async (c) => {
      // The totals rows are locked, so `charged` is current while we add to it; a replica
      // opening settlements at the same moment skips the customers this one holds.
      const due = (await c.query(`
        SELECT t.customer_id, t.used_micros, t.last_seq, t.charged,
          COALESCE((SELECT MAX(s.upto_seq) FROM settlements s WHERE s.customer_id = t.customer_id), 0) AS prev_upto
        FROM usage_totals t
        WHERE t.used_micros / 1000000 > t.charged
          AND NOT EXISTS (SELECT 1 FROM settlements s WHERE s.customer_id = t.customer_id AND s.status = 'pending')
        ORDER BY t.customer_id
        FOR UPDATE OF t SKIP LOCKED`)).rows;
      const openedFor: string[] = [];
      for (const r of due) {
        // Charged so far + this amount = floor(all usage up to last_seq): exact, the fraction carries over.
        const amount = Math.floor(r.used_micros / 1_000_000) - r.charged;
        const currency = currencyOf(r.customer_id);
        if (amount < 1 || !currency) continue;
        // The key names exactly what is charged: this customer's events after prev_upto up to last_seq, for this amount.
        const key = `payg-settle-${createHash('sha256').update(`${r.customer_id}|${r.prev_upto}|${r.last_seq}|${amount}|${currency}|${mode}`).digest('hex').slice(0, 40)}`;
        const opened = await c.query(`INSERT INTO settlements (customer_id, from_seq, upto_seq, amount, currency, mode, idempotency_key, status, created_at)
          VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8) ON CONFLICT DO NOTHING`,
        [r.customer_id, r.prev_upto + 1, r.last_seq, amount, currency, mode, key, now]);
        if (opened.rowCount) {
          await c.query('UPDATE usage_totals SET charged = charged + $1 WHERE customer_id = $2', [amount, r.customer_id]);
          openedFor.push(r.customer_id);
        }
      }
      // Other replicas learn of the settlement in flight (a plain balance read must not be applied meanwhile).
      for (const payload of notifyPayloads(openedFor)) await c.query('SELECT pg_notify($1, $2)', [CHANGES_CHANNEL, payload]);
      return (await c.query(`SELECT * FROM settlements WHERE status = 'pending' ORDER BY id`)).rows.map(toSettlement);
    });
  }

  async prune(opts: { usageBefore: number; webhooksBefore: number }): Promise<{ usageEvents: number; webhookEvents: number }> {
    const usage = await this.pool.query(`DELETE FROM usage_events e WHERE e.received_at < $1 AND (e.customer_id IS NULL OR e.cost_micros = 0
      OR e.seq <= COALESCE((SELECT MAX(s.upto_seq) FROM settlements s WHERE s.customer_id = e.customer_id AND s.status = 'confirmed'), 0))`,
    [opts.usageBefore]);
    const hooks = await this.pool.query('DELETE FROM webhook_events WHERE at < $1', [opts.webhooksBefore]);
    return { usageEvents: usage.rowCount ?? 0, webhookEvents: hooks.rowCount ?? 0 };
  }

  async pendingSettlements(): Promise<SettlementRow[]> {
    return (await this.rows(`SELECT * FROM settlements WHERE status = 'pending' ORDER BY id`)).map(toSettlement);
  }

  async settlementAttemptFailed(id: number, error: string): Promise<void> {
    await this.pool.query('UPDATE settlements SET attempts = attempts + 1, last_error = $1 WHERE id = $2', [error, id]);
  }

  async settlements(customerId?: string): Promise<SettlementRow[]> {
    const rows = customerId
      ? await this.rows('SELECT * FROM settlements WHERE customer_id = $1 ORDER BY id', [customerId])
      : await this.rows('SELECT * FROM settlements ORDER BY id');
    return rows.map(toSettlement);
  }

  async membersSince(cohort: string): Promise<Array<{ customerId: string; since: number }>> {
    return (await this.rows('SELECT customer_id, since FROM memberships WHERE cohort = $1', [cohort]))
      .map((r) => ({ customerId: r.customer_id, since: r.since }));
  }

  async membershipSince(customerId: string, cohort: string): Promise<number | undefined> {
    return (await this.rows('SELECT since FROM memberships WHERE customer_id = $1 AND cohort = $2', [customerId, cohort]))[0]?.since;
  }

  async enqueueEmails(emails: OutboxRecord[]): Promise<number> {
    return emails.length ? this.tx((c) => this.insertEmails(c, emails)) : 0;
  }

  async claimDueEmail(now: number): Promise<OutboxRow | undefined> {
    // One statement: the row is locked while claimed, and a concurrent claimer skips it.
    // Attempts count server answers only (finishEmail/retryEmail), as in SqliteStore.
    const row = (await this.rows(`UPDATE email_outbox SET status = 'sending'
      WHERE id = (SELECT id FROM email_outbox WHERE status = 'pending' AND next_attempt_at <= $1
                  ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
      RETURNING *`, [now]))[0];
    return row ? toOutboxRow(row) : undefined;
  }

  async nextEmailDueAt(): Promise<number | undefined> {
    const row = (await this.rows(`SELECT MIN(next_attempt_at) AS due FROM email_outbox WHERE status = 'pending'`))[0];
    return row.due ?? undefined;
  }

  async finishEmail(id: number, outcome: { status: 'delivered' | 'failed' | 'cancelled' | 'stale'; at: number; messageId?: string; error?: string; answered?: boolean }): Promise<void> {
    await this.pool.query(`UPDATE email_outbox SET status = $1, delivered_at = $2, message_id = COALESCE($3, message_id), last_error = COALESCE($4, last_error),
      attempts = attempts + $5 WHERE id = $6`,
    [outcome.status, outcome.status === 'delivered' ? outcome.at : null, outcome.messageId ?? null, outcome.error ?? null, outcome.answered ? 1 : 0, id]);
  }

  async retryEmail(id: number, nextAttemptAt: number, error: string, answered: boolean): Promise<void> {
    // Only a row still being sent goes back to the queue: one replaced meanwhile (stale) stays so.
    await this.pool.query(`UPDATE email_outbox SET status = 'pending', next_attempt_at = $1, last_error = $2, attempts = attempts + $3 WHERE id = $4 AND status = 'sending'`,
      [nextAttemptAt, error, answered ? 1 : 0, id]);
  }

  async requeueInterruptedEmails(): Promise<number> {
    return (await this.pool.query(`UPDATE email_outbox SET status = 'pending' WHERE status = 'sending'`)).rowCount ?? 0;
  }

  async cancelPendingEmails(templateId: string, at: number): Promise<number> {
    return (await this.pool.query(`UPDATE email_outbox SET status = 'cancelled', last_error = 'template switched off', delivered_at = NULL, next_attempt_at = $1
      WHERE template_id = $2 AND status = 'pending'`, [at, templateId])).rowCount ?? 0;
  }

  async countEmails(status: EmailStatus): Promise<number> {
    return Number((await this.rows('SELECT COUNT(*) AS n FROM email_outbox WHERE status = $1', [status]))[0].n);
  }

  async emailLog(filter: { customerId?: string; templateId?: string; status?: EmailStatus; limit: number }): Promise<OutboxRow[]> {
    const where: string[] = [];
    const args: unknown[] = [];
    if (filter.customerId) { args.push(filter.customerId); where.push(`customer_id = $${args.length}`); }
    if (filter.templateId) { args.push(filter.templateId); where.push(`template_id = $${args.length}`); }
    if (filter.status) { args.push(filter.status); where.push(`status = $${args.length}`); }
    args.push(filter.limit);
    const sql = `SELECT * FROM email_outbox ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id DESC LIMIT $${args.length}`;
    return (await this.rows(sql, args)).map(toOutboxRow);
  }

  async templateOverrides(): Promise<Map<string, boolean>> {
    return new Map((await this.rows('SELECT template_id, active FROM template_overrides')).map((r) => [r.template_id, r.active]));
  }

  async setTemplateActive(templateId: string, active: boolean): Promise<void> {
    await this.tx(async (c) => {
      await c.query(`INSERT INTO template_overrides (template_id, active) VALUES ($1, $2)
        ON CONFLICT (template_id) DO UPDATE SET active = excluded.active`, [templateId, active]);
      await c.query('SELECT pg_notify($1, $2)', [SWITCHES_CHANNEL, 'templates' satisfies SwitchKind]);
    });
  }

  async history(customerId: string): Promise<TransitionRecord[]> {
    return (await this.rows('SELECT * FROM cohort_transitions WHERE customer_id = $1 ORDER BY id', [customerId]))
      .map((r) => ({ customerId: r.customer_id, cohort: r.cohort, kind: r.kind, at: r.at, balance: r.balance }));
  }

  async ruleOverrides(): Promise<Map<string, boolean>> {
    return new Map((await this.rows('SELECT rule_id, enabled FROM rule_overrides')).map((r) => [r.rule_id, r.enabled]));
  }

  async setRuleEnabled(ruleId: string, enabled: boolean): Promise<void> {
    await this.tx(async (c) => {
      await c.query(`INSERT INTO rule_overrides (rule_id, enabled) VALUES ($1, $2)
        ON CONFLICT (rule_id) DO UPDATE SET enabled = excluded.enabled`, [ruleId, enabled]);
      await c.query('SELECT pg_notify($1, $2)', [SWITCHES_CHANNEL, 'rules' satisfies SwitchKind]);
    });
  }

  async webhookEventSeen(eventId: string): Promise<boolean> {
    return (await this.rows('SELECT 1 FROM webhook_events WHERE id = $1', [eventId])).length > 0;
  }

  async recordLeases(changes: LeaseChanges): Promise<void> {
    if (changes.open?.length) await this.insertLeases(this.pool, changes.open);
    if (changes.close?.length) await this.closeLeases(undefined, changes.close);
  }

  private async insertLeases(c: pg.Pool | pg.PoolClient, rows: LeaseRow[]): Promise<void> {
    await c.query(INSERT_LEASES_SQL, insertLeasesArgs(rows));
  }

  /**
   * Nodes give leases back, saying what they drew from each (capped at the lease): each only its
   * own (`node`; undefined: any), each only once. Answers the leases closed, as they are now.
   */
  async closeLeases(node: string | undefined, returns: LeaseClose[]): Promise<LeaseRow[]> {
    if (!returns.length) return [];
    const r = await this.pool.query(CLOSE_LEASES_SQL,
      [returns.map((x) => x.id), returns.map((x) => clampDrawn(x.drawn)), returns.map((x) => x.drawnMicros ?? null), returns.map((x) => x.node ?? node ?? null)]);
    return r.rows.map(toLease);
  }

  async heldLeases(now: number, customerId?: string): Promise<LeaseRow[]> {
    const rows = customerId === undefined
      ? await this.rows('SELECT * FROM leases WHERE held_until > $1 ORDER BY granted_at', [now])
      : await this.rows('SELECT * FROM leases WHERE held_until > $1 AND customer_id = $2 ORDER BY granted_at', [now, customerId]);
    return rows.map(toLease);
  }

  async pruneLeases(now: number): Promise<number> {
    return (await this.pool.query(`DELETE FROM leases WHERE held_until <= $1
      OR (drawn_micros IS NOT NULL AND settled_micros >= drawn_micros)`, [now])).rowCount ?? 0;
  }

  /**
   * Per customer: credit before reservations (−balance − unsettled usage, micros), what its leases
   * hold, and what leases of nodes other than `node` hold, in one snapshot.
   */
  private async creditStates(c: pg.Pool | pg.PoolClient, ids: string[], now: number, node: string | null, consumer: string | null = null): Promise<Map<string, CreditState>> {
    return creditStatesOf((await c.query(creditStatesSql('$1::text[]', '$2', '$3', '$4'), [ids, now, node, consumer])).rows);
  }

  // ---- issue 23 (team caps) ----
  /**
   * Per consumer: its spend in its current periods and what its leases hold, in one statement
   * (one snapshot: a usage commit that adds spend and settles a lease is seen whole or not at all).
   */
  // ---- end issue 23 ----

  /** Credit states read without locks (to wake starved customers, or decide on a recall). */
  readCreditStates(ids: string[], now: number, node?: string, consumer?: string): Promise<Map<string, CreditState>> {
    return this.creditStates(this.pool, ids, now, node ?? null, consumer ?? null);
  }

  /** Connections whose session has the grant's statements prepared. */
  private readonly preparedGrants = new WeakSet<pg.PoolClient>();

  private async prepareGrants(c: pg.PoolClient): Promise<void> {
    if (this.preparedGrants.has(c)) return;
    await c.query(Object.entries(GRANT_STATEMENTS).map(([name, st]) => `PREPARE ${name}(${st.types}) AS ${st.sql}`).join(';\n'));
    this.preparedGrants.add(c);
  }

  /**
   * Grants leases for a batch of requests in one transaction: the leases given back with them are
   * closed first (`closes`, each only by its own node and only once), the customers' rows are locked
   * (in id order, so replicas never deadlock), their credit and what their leases hold read after the
   * locks are taken (a statement of its own, so its snapshot includes every lease another replica
   * committed before it let go of the lock), `decide` sizes the leases from that, and they are
   * inserted before the commit. Two replicas can never grant the same credit: the second waits for
   * the first's commit and sees its leases.
   *
   * Two round trips: BEGIN, the closings, the locks and the reads go as one simple-protocol message
   * (statements run in order, each with its own snapshot), and the inserts with COMMIT as another.
   * The statements are prepared once per connection (no planning per batch); their arguments travel
   * as literals (strings escaped by pg's escapeLiteral, numbers checked as safe integers), since that
   * protocol has no parameters.
   */
  async grantLeases(customerIds: string[], now: number, decide: (states: Map<string, CreditState>, consumers: Map<string, ConsumerCapState>, closed: LeaseRow[]) => LeaseRow[],
    opts: { consumers?: string[]; closes?: LeaseClose[] } = {}): Promise<{ granted: LeaseRow[]; closed: LeaseRow[] }> {
    const ids = [...new Set(customerIds)].sort();
    const consumers = [...new Set(opts.consumers ?? [])];
    const closes = opts.closes ?? [];
    const now_ = String(Math.floor(now));
    const idArray = sqlArray(ids, 'text');
    const statements = ['BEGIN'];
    if (closes.length) {
      statements.push(`EXECUTE payg_close_leases(${sqlArray(closes.map((x) => x.id), 'text')}, ${sqlArray(closes.map((x) => clampDrawn(x.drawn)), 'int')}, ${
        sqlArray(closes.map((x) => (x.drawnMicros === undefined || x.drawnMicros === null ? null : Math.max(0, Math.min(Number.MAX_SAFE_INTEGER, Math.floor(x.drawnMicros))))), 'bigint')}, ${sqlArray(closes.map((x) => x.node ?? null), 'text')})`);
    }
    statements.push(`EXECUTE payg_lock_customers(${idArray})`);
    statements.push(`EXECUTE payg_credit_states(${idArray}, ${now_})`);
    if (consumers.length) statements.push(`EXECUTE payg_consumer_caps(${sqlArray(consumers, 'text')}, ${now_})`);
    for (let attempt = 0; ; attempt++) {
      const c = await this.pool.connect();
      let open = false;
      let broken: Error | undefined;
      try {
        await this.prepareGrants(c);
        open = true;
        const results = (await c.query(statements.join(';\n'))) as unknown as pg.QueryResult[];
        let i = 1;
        const closed = closes.length ? results[i++].rows.map(toLease) : [];
        i++; // the locks
        const states = creditStatesOf(results[i++].rows);
        const capStates = consumers.length ? consumerCapStatesOf(results[i++].rows) : new Map<string, ConsumerCapState>();
        const granted = decide(states, capStates, closed);
        const insert = granted.length
          ? `EXECUTE payg_insert_leases(${insertLeasesArgs(granted).map((col, k) => sqlArray(col, k < 4 ? 'text' : k === 4 ? 'int' : 'bigint')).join(', ')});\n`
          : '';
        await c.query(`${insert}COMMIT`);
        open = false;
        return { granted, closed };
      } catch (err) {
        // A connection that cannot even roll back (or prepare) is not given back to the pool.
        if (open) await c.query('ROLLBACK').catch((e: Error) => { broken = e; });
        else broken = err as Error;
        // A deadlock or serialization failure with another replica's batch: try again. A session that lost
        // its prepared statements (26000: a pooler in front gave us another server session) prepares them again.
        const code = (err as { code?: string }).code;
        if (code === '26000') this.preparedGrants.delete(c);
        if (attempt < 3 && (code === '40P01' || code === '40001' || code === '26000')) continue;
        throw err;
      } finally {
        c.release(broken);
      }
    }
  }

  /** Tells the other replicas (and nodes streaming from them) about leases: recalls, credit come back. */
  async notifyLeases(notice: LeaseNotice): Promise<void> {
    const payload = JSON.stringify(notice);
    if (Buffer.byteLength(payload) > MAX_NOTIFY_BYTES) {
      for (const part of notifyPayloads([...(notice.recall ?? [])])) await this.notifyLeases({ recall: JSON.parse(part) });
      for (const part of notifyPayloads([...(notice.freed ?? [])])) await this.notifyLeases({ freed: JSON.parse(part) });
      return;
    }
    await this.pool.query('SELECT pg_notify($1, $2)', [LEASES_CHANNEL, payload]);
  }

  async getMeta(key: string): Promise<string | undefined> {
    return (await this.rows('SELECT value FROM meta WHERE key = $1', [key]))[0]?.value;
  }

  async setMeta(key: string, value: string): Promise<void> {
    await this.pool.query('INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value', [key, value]);
  }

  // ---- top-ups (issue 21): TopUpStore -------------------------------------------------------
  // Replicas race here by unique keys (top-up id, move ref) and a row lock on the top-up for debits.
  async recordTopUp(row: { id: string; customerId: string; amount: number; currency: string; createdAt: number }): Promise<TopUpRow> {
    await this.pool.query('INSERT INTO top_ups (id, customer_id, amount, currency, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING',
      [row.id, row.customerId, row.amount, row.currency, row.createdAt]);
    return (await this.topUp(row.id))!;
  }

  async setTopUpSession(id: string, sessionId: string, sessionUrl: string | null): Promise<void> {
    await this.pool.query('UPDATE top_ups SET session_id = $2, session_url = COALESCE($3, session_url) WHERE id = $1 AND (session_id IS NULL OR session_id = $2)', [id, sessionId, sessionUrl]);
  }

  async setTopUpPaymentIntent(id: string, paymentIntent: string): Promise<void> {
    await this.pool.query('UPDATE top_ups SET payment_intent = $2 WHERE id = $1 AND payment_intent IS NULL', [id, paymentIntent]);
  }

  async topUp(id: string): Promise<TopUpRow | undefined> {
    const [r] = await this.rows('SELECT * FROM top_ups WHERE id = $1', [id]);
    return r && toTopUp(r);
  }

  async topUpByPaymentIntent(paymentIntent: string): Promise<TopUpRow | undefined> {
    const [r] = await this.rows('SELECT * FROM top_ups WHERE payment_intent = $1', [paymentIntent]);
    return r && toTopUp(r);
  }

  async topUps(customerId: string, limit: number): Promise<TopUpRow[]> {
    return (await this.rows('SELECT * FROM top_ups WHERE customer_id = $1 ORDER BY created_at DESC, id LIMIT $2', [customerId, limit])).map(toTopUp);
  }

  private async insertMove(c: pg.PoolClient | pg.Pool, intent: MoveIntent, now: number): Promise<boolean> {
    const r = await c.query(`INSERT INTO top_up_moves (ref, kind, top_up_id, customer_id, amount, currency, idempotency_key, description, metadata, status, created_at)
      VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10) ON CONFLICT DO NOTHING`,
      [intent.ref, intent.kind, intent.topUpId, intent.customerId, intent.amount, intent.currency, intent.idempotencyKey, intent.description, JSON.stringify(intent.metadata), now]);
    return (r.rowCount ?? 0) > 0;
  }

  async enqueueMove(intent: MoveIntent, now: number): Promise<{ row: MoveRow; created: boolean }> {
    const created = await this.insertMove(this.pool, intent, now);
    const [r] = await this.rows('SELECT * FROM top_up_moves WHERE ref = $1', [intent.ref]);
    return { row: toMove(r), created };
  }

  async enqueueDebit(intent: Omit<MoveIntent, 'amount'>, amountFor: (debitedBefore: number) => number, now: number, pauseRecharges = false): Promise<{ row: MoveRow | undefined; created: boolean }> {
    return this.tx(async (c) => {
      // One debit of a payment at a time, whichever replica: the sum read here is the sum the new row adds to. A lock
      // on the payment's id, not its top_ups row: an auto-recharge's debits name a recharge, which has no such row.
      await c.query(`SELECT pg_advisory_xact_lock(hashtextextended('payg-debit:' || $1, 0))`, [intent.topUpId]);
      const [held] = (await c.query('SELECT * FROM top_up_moves WHERE ref = $1', [intent.ref])).rows;
      if (held) return { row: toMove(held), created: false };
      const before = Number((await c.query(`SELECT COALESCE(SUM(amount), 0) AS n FROM top_up_moves WHERE top_up_id = $1 AND kind <> 'credit' AND status <> 'failed'`, [intent.topUpId])).rows[0].n);
      const amount = amountFor(before);
      if (amount <= 0) return { row: undefined, created: false };
      // Auto-recharge paused with the debit's row (recharges/core.ts pauseReason): the debit's crossing charges nothing.
      // Lock order top_ups row → recharge_state row; a crossing (saveChanges) locks recharge_state only.
      if (pauseRecharges) {
        await c.query(toPg(RSQL.ensureState), [intent.customerId]);
        await c.query(toPg(RSQL.pause), [now, intent.customerId]);
      }
      const created = await this.insertMove(c, { ...intent, amount }, now);
      const [r] = (await c.query('SELECT * FROM top_up_moves WHERE ref = $1', [intent.ref])).rows;
      return { row: toMove(r), created };
    });
  }

  async pendingMoves(): Promise<MoveRow[]> {
    return (await this.rows(`SELECT * FROM top_up_moves WHERE status = 'pending' ORDER BY id`)).map(toMove);
  }

  async moves(filter: { topUpId?: string; customerId?: string }): Promise<MoveRow[]> {
    const rows = filter.topUpId ? await this.rows('SELECT * FROM top_up_moves WHERE top_up_id = $1 ORDER BY id', [filter.topUpId])
      : filter.customerId ? await this.rows('SELECT * FROM top_up_moves WHERE customer_id = $1 ORDER BY id', [filter.customerId])
      : await this.rows('SELECT * FROM top_up_moves ORDER BY id');
    return rows.map(toMove);
  }

  async moveAttemptFailed(id: number, error: string): Promise<void> {
    await this.pool.query('UPDATE top_up_moves SET attempts = attempts + 1, last_error = $2 WHERE id = $1', [id, error]);
  }

  async confirmMove(id: number, stripeRef: string, at: number): Promise<boolean> {
    const r = await this.pool.query(`UPDATE top_up_moves SET status = 'confirmed', stripe_ref = $2, confirmed_at = $3, attempts = attempts + 1 WHERE id = $1 AND status = 'pending'`, [id, stripeRef, at]);
    return (r.rowCount ?? 0) > 0;
  }

  async failMove(id: number, error: string, at: number): Promise<void> {
    await this.pool.query(`UPDATE top_up_moves SET status = 'failed', last_error = $2, confirmed_at = $3, attempts = attempts + 1 WHERE id = $1 AND status = 'pending'`, [id, error, at]);
  }
  // ---- end top-ups ----------------------------------------------------------------------------

  async ping(): Promise<void> {
    await this.pool.query('SELECT 1');
  }

  async close(): Promise<void> {
    await this.pool.end();
  }

  // ---- auto-recharge (issue 22) ----
  /** Inside saveChanges' transaction: the customer's recharge_state row locked, so replicas decide one crossing at a time. */
  private async planRecharge(c: pg.PoolClient, r: RechargeCrossing): Promise<void> {
    const q = async (sql: string, args: unknown[]) => (await c.query(toPg(sql), args)).rows;
    await q(RSQL.ensureState, [r.customerId]);
    const [state] = await q(RSQL.lockState, [r.customerId]);
    const read: CrossingRead = {
      state: state as CrossingRead['state'],
      open: Number((await q(RSQL.open, [r.customerId]))[0].n),
      lastDue: (await q(RSQL.lastDue, [r.customerId]))[0].t,
      spent: (await q(RSQL.spent, [r.customerId, monthFloor(r.at)])) as CrossingRead['spent'],
    };
    const d = decideCrossing(r, read);
    if (d.kind === 'plan') await q(RSQL.insert, [newRechargeId(), r.customerId, d.amount, r.currency, d.month, d.dueAt, r.at]);
  }

  async dueRecharges(now: number): Promise<RechargeRow[]> {
    return (await this.rows(toPg(RSQL.due), [now])).map(toRecharge);
  }

  async nextRechargeDueAt(): Promise<number | undefined> {
    return (await this.rows(RSQL.nextDue))[0]?.t ?? undefined;
  }

  async recharges(customerId: string, limit: number): Promise<RechargeRow[]> {
    return (await this.rows(toPg(RSQL.byCustomer), [customerId, limit])).map(toRecharge);
  }

  async recharge(id: string): Promise<RechargeRow | undefined> {
    const [r] = await this.rows(toPg(RSQL.byId), [id]);
    return r && toRecharge(r);
  }

  async rechargeState(customerId: string): Promise<RechargeState> {
    const [r] = await this.rows(toPg(RSQL.state), [customerId]);
    return { failures: r?.failures ?? 0, pausedAt: r?.paused_at ?? null };
  }

  async fixRechargePaymentMethod(id: string, paymentMethod: string): Promise<string> {
    await this.rows(toPg(RSQL.fixMethod), [paymentMethod, id]);
    return (await this.rows(toPg(RSQL.byId), [id]))[0].payment_method;
  }

  async rechargeAttemptFailed(id: string, error: string): Promise<void> {
    await this.rows(toPg(RSQL.attemptFailed), [error.slice(0, 500), id]);
  }

  async rechargeProcessing(id: string, paymentIntent: string): Promise<void> {
    await this.rows(toPg(RSQL.processing), [paymentIntent, id]);
  }

  async finishRecharge(id: string, end: { status: 'succeeded' | 'failed' | 'action_required'; paymentIntent: string | null; failureCode?: string; error?: string; at: number }, maxFailures: number): Promise<{ changed: boolean; state: RechargeState }> {
    return this.tx(async (c) => {
      const q = async (sql: string, args: unknown[]) => (await c.query(toPg(sql), args));
      const [row] = (await q(RSQL.byId, [id])).rows;
      if (!row) return { changed: false, state: { failures: 0, pausedAt: null } };
      await q(RSQL.ensureState, [row.customer_id]);
      const before = (await q(RSQL.lockState, [row.customer_id])).rows[0] as { failures: number; paused_at: number | null };
      const changed = ((await q(RSQL.finish, [end.status, end.paymentIntent, end.failureCode ?? null, end.error?.slice(0, 500) ?? null, end.at, id])).rowCount ?? 0) > 0;
      if (!changed) return { changed, state: { failures: before.failures, pausedAt: before.paused_at } };
      const state = stateAfter(before, end.status, end.at, maxFailures);
      await q(RSQL.setState, [state.failures, state.pausedAt, row.customer_id]);
      return { changed, state };
    });
  }

  async rearmRecharges(customerId: string, _at: number): Promise<boolean> {
    return ((await this.pool.query('UPDATE recharge_state SET failures = 0, paused_at = NULL WHERE customer_id = $1 AND (paused_at IS NOT NULL OR failures > 0)', [customerId])).rowCount ?? 0) > 0;
  }

  async pausedRecharges(): Promise<Array<{ customerId: string; pausedAt: number }>> {
    return (await this.rows(RSQL.paused)).map((r) => ({ customerId: r.customer_id, pausedAt: Number(r.paused_at) }));
  }
  async recordOptIn(o: PendingOptIn, at: number): Promise<void> {
    await this.rows(toPg(RSQL.recordOptIn), [o.topUpId, o.customerId, o.sessionId, JSON.stringify(o.settings), at]);
  }

  async pendingOptIns(): Promise<PendingOptIn[]> {
    return (await this.rows(RSQL.pendingOptIns)).map(toOptIn);
  }

  async optInDone(topUpId: string, at: number): Promise<void> {
    await this.rows(toPg(RSQL.optInDone), [at, topUpId]);
  }
  // ---- end auto-recharge ----
}
