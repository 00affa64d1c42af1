// A console on its own, for specs that speak HTTP to it: an engine and a
// SQLite store in a temporary folder (or, with `postgres`, a store on that
// database), the console listening on a free loopback port, no Stripe and no SMTP.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { parseConfig, type Config } from '../../control-service/src/config';
import { ActivityRecorder } from '../../control-service/src/console/activity';
import { startConsole, type ConsoleServer, type ConsoleOptions } from '../../control-service/src/console/server';
import { Engine } from '../../control-service/src/engine';
import { createMetrics } from '../../control-service/src/metrics';
import { consoleQueries } from '../../control-service/src/console';
import { PostgresStore } from '../../control-service/src/store/postgres';
import { SqliteStore } from '../../control-service/src/store/sqlite';
import type { Store, StoredCustomer } from '../../control-service/src/store/store';

export const CONSOLE_TOKEN = 'console-spec-admin-token';

export interface ConsoleFixture {
  config: Config;
  engine: Engine;
  store: Store;
  server: ConsoleServer;
  /** e.g. http://127.0.0.1:12345 */
  origin: string;
  /** A fetch to the console's path, with the session (when signed in) and its CSRF token on writes. */
  call(method: string, pathname: string, opts?: { body?: unknown; headers?: Record<string, string>; session?: Session }): Promise<Response>;
  signIn(): Promise<Session>;
  stop(): Promise<void>;
}

export interface Session { cookie: string; csrf: string }

export function customerFixture(i: number, balance: number, now = Date.now()): StoredCustomer {
  const id = `cus_${String(i).padStart(6, '0')}`;
  return { id, balance, currency: 'usd', name: `Customer ${i % 97}`, email: `c${i}@example.com`, metadata: { kong_consumer: `consumer-${i}` }, version: now };
}

/** `files` are written into the config's folder first (e.g. email templates). */
/** `postgres`: a database URL (spec/support/postgres.ts) to store in instead of SQLite. */
export async function startConsoleFixture(opts: { customers?: StoredCustomer[]; config?: Record<string, unknown>; files?: Record<string, string>; console?: ConsoleOptions; postgres?: string; now?: () => number } = {}): Promise<ConsoleFixture> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-console-spec-'));
  for (const [name, text] of Object.entries(opts.files ?? {})) fs.writeFileSync(path.join(dir, name), text);
  const config = parseConfig({
    store: { sqlite: path.join(dir, 'payg.sqlite') },
    cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }, { id: 'low-credit', filter: { balance: { gt: -500 } } }],
    rules: [{ id: 'block-no-credit', cohort: 'no-credit', body: '{"error":"payment_required"}' }],
    console: { listen: { host: '127.0.0.1', port: 0 } },
    ...opts.config,
  }, { PAYG_ADMIN_TOKEN: CONSOLE_TOKEN }, dir);
  const store = opts.postgres ? await PostgresStore.open(opts.postgres, { poolSize: 4 }) : new SqliteStore(config.sqlitePath);
  const engine = new Engine(config, store, opts.now);
  await engine.init();
  const customers = opts.customers ?? [];
  for (let i = 0; i < customers.length; i += 10_000) await engine.apply(customers.slice(i, i + 10_000), []);
  const metrics = createMetrics({ customers: () => engine.size, cohortSizes: () => engine.cohortSizes(), consumerConflicts: () => 0, lastSweepAgeSeconds: () => 0, emailsPending: async () => 0 });
  const server = await startConsole({
    config, engine, store, sync: undefined, emails: undefined, metrics, activity: new ActivityRecorder(),
    queries: consoleQueries(store, config), log: pino({ level: 'silent' }), ...opts.console,
  });
  const origin = new URL(server.url).origin;
  const call: ConsoleFixture['call'] = (method, pathname, o = {}) => {
    const headers: Record<string, string> = { ...(o.body !== undefined ? { 'content-type': 'application/json' } : {}), ...o.headers };
    if (o.session) { headers.cookie ??= o.session.cookie; if (method !== 'GET') headers['x-payg-csrf'] ??= o.session.csrf; }
    return fetch(`${origin}${pathname}`, { method, headers, body: o.body === undefined ? undefined : JSON.stringify(o.body), redirect: 'manual' });
  };
  return {
    config, engine, store, server, origin, call,
    async signIn() {
      const res = await call('POST', '/console/api/session', { body: { token: CONSOLE_TOKEN } });
      if (res.status !== 200) throw new Error(`sign-in answered ${res.status}`);
      return { cookie: res.headers.get('set-cookie')!.split(';')[0], csrf: ((await res.json()) as { csrf: string }).csrf };
    },
    async stop() {
      await server.stop();
      await store.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
