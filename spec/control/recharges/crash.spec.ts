// Auto-recharge survives kill -9 at any instant and several replicas: the
// real process is killed again and again while payments take their time (the
// emulator delays them), restarted, and customers keep crossing the threshold;
// replicas on one PostgreSQL all see the crossings. Each PaymentIntent is
// credited exactly once, no recharge is charged twice, and the monthly cap holds.
import { expect } from 'chai';
import path from 'node:path';
import Database from 'better-sqlite3';
import type { ControlProcess } from '../../support/control-process';
import { CONTROL, NEVER, serviceFixture } from '../../support/fixture';
import { freshDatabase } from '../../support/postgres';
import { seededFor } from '../../support/seeded-random';
import { until } from '../../support/until';
import { freePort, topUpProcessConfig } from '../top-ups/support';

const TOP_UP_SECRET = 'top-up-secret-for-recharge-crash-0123456789';

describe('auto-recharge: kill -9 and replicas', function () {
  this.timeout(120_000);
  const fx = serviceFixture({ prefix: 'payg-recharge-crash-' });
  let seq = 0;
  const launch = (configFile: string) => fx.launch(configFile, { PAYG_TOP_UP_SECRET: TOP_UP_SECRET }, 20_000);
  const config = (port: number, store: unknown, cap: number) => topUpProcessConfig(port, store, {
    stripe: { timeout_ms: 10_000, retry: { max_attempts: 3, base_delay_ms: 20, max_delay_ms: 100 } },
    auto_recharge: { enabled: true, threshold: 500, amount: 2000, monthly_cap: cap, max_monthly_cap: 1_000_000, min_interval: '1ms', poll_interval: '200ms' },
    metering: { default_cost: 100, settle: { schedule: NEVER } },
  });
  const sweep = (r: ControlProcess) => fx.adminAt(r.url, '/admin/sweep', { method: 'POST' });
  const creditAt = async (r: ControlProcess, id: string) => -((await fx.adminAt(r.url, `/admin/customers/${id}`)).body.estimated_balance as number);
  /** Spends down to $4 (a crossing when above $5). */
  const crossAt = async (r: ControlProcess, id: string) => {
    const credit = await creditAt(r, id);
    const n = Math.ceil((credit - 400) / 100);
    if (n <= 0) return;
    const events = Array.from({ length: n }, () => ({ id: `evt-${++seq}`, consumer: id, at: new Date().toISOString(), route: 'orders', status: 200 }));
    await fetch(`${r.url}/v1/usage`, { method: 'POST', body: JSON.stringify({ events }), headers: { 'content-type': 'application/json', authorization: `Bearer ${CONTROL}` } });
  };
  async function optedIn(): Promise<string> {
    const c = fx.stripe.create({ name: 'Alice', email: 'alice@example.com', balance: -1000, currency: 'usd' });
    const res = await fetch(`${fx.stripe.url}/v1/payment_methods/pm_card_visa/attach`, { method: 'POST', headers: { authorization: `Bearer ${fx.stripe.secretKey}`, 'content-type': 'application/x-www-form-urlencoded' }, body: `customer=${c.id}` });
    const pm = await res.json() as { id: string };
    fx.stripe.update(c.id, { invoice_settings: { custom_fields: null, default_payment_method: pm.id, footer: null, rendering_options: null }, metadata: { payg_auto_recharge: 'on' } });
    return c.id;
  }
  /** Every PaymentIntent credited exactly once, by the recharge it was made for; no recharge paid twice. */
  function checkExactlyOnce(customers: string[], cap: number) {
    for (const id of customers) {
      const paid = [...fx.stripe.paymentIntents.values()].filter((p: any) => p.customer === id && p.status === 'succeeded') as Array<Record<string, any>>;
      const credited = fx.stripe.balanceTransactions.filter((t) => t.customer === id && (t.metadata as Record<string, string>)?.payg_recharge);
      const byRecharge = new Map<string, number>();
      for (const p of paid) byRecharge.set(p.metadata.payg_recharge, (byRecharge.get(p.metadata.payg_recharge) ?? 0) + 1);
      expect([...byRecharge.values()].every((n) => n === 1), 'a recharge charged twice').to.equal(true);
      expect(credited.map((t) => (t.metadata as Record<string, string>).payg_top_up).sort(), 'each payment credited once').to.deep.equal(paid.map((p) => p.id).sort());
      expect(paid.reduce((a, p) => a + p.amount, 0), 'within the cap').to.be.at.most(cap);
    }
  }

  it('exactly once under a kill -9 loop while payments take their time', async () => {
    const { random } = seededFor('recharges/kill-9');
    const cap = 12_000;
    const customers = [await optedIn(), await optedIn()];
    const port = await freePort();
    const sqlite = path.join(fx.dir, 'payg.sqlite');
    const configFile = fx.writeConfig('payg.yml', config(port, { sqlite }, cap));
    fx.stripe.paymentDelayMs = 300;
    for (let round = 0; round < 6; round++) {
      const control = await launch(configFile);
      await sweep(control);
      for (const id of customers) await crossAt(control, id);
      await new Promise((r) => setTimeout(r, Math.floor(random() * 900)));
      await control.kill('SIGKILL');
    }
    // A last run: everything planned is charged and credited, nothing twice.
    const control = await launch(configFile);
    await sweep(control);
    const db = new Database(sqlite, { readonly: true });
    try {
      await until(() => (db.prepare(`SELECT COUNT(*) AS n FROM recharges WHERE status IN ('planned','processing')`).get() as { n: number }).n === 0
        && (db.prepare(`SELECT COUNT(*) AS n FROM top_up_moves WHERE status = 'pending'`).get() as { n: number }).n === 0, 30_000, 'recharges finished');
      const rows = db.prepare('SELECT status, COUNT(*) AS n FROM recharges GROUP BY status').all() as Array<{ status: string; n: number }>;
      expect(rows.every((r) => r.status === 'succeeded'), JSON.stringify(rows)).to.equal(true);
      expect(rows.reduce((a, r) => a + r.n, 0), 'some recharges happened').to.be.at.least(2);
    } finally { db.close(); }
    checkExactlyOnce(customers, cap);
  });

  it('replicas on PostgreSQL: crossings seen at each, one recharge per crossing, the cap held, the leader killed midway', async () => {
    const url = await freshDatabase();
    const cap = 6000;
    const customers = [await optedIn(), await optedIn(), await optedIn()];
    const ports = [await freePort(), await freePort(), await freePort()];
    const replicas: ControlProcess[] = [];
    for (const [i, port] of ports.entries()) {
      replicas.push(await launch(fx.writeConfig(`payg-${i}.yml`, config(port, { postgres: { url } }, cap))));
    }
    for (const r of replicas) await sweep(r);
    fx.stripe.paymentDelayMs = 200;
    // Every replica spends the same customers down at once: each crossing is seen by all, planned once.
    for (let round = 0; round < 5; round++) {
      await Promise.all(replicas.flatMap((r) => customers.map((id) => crossAt(r, id).catch(() => undefined))));
      if (round === 2) await replicas[0].kill('SIGKILL'); // the first to start leads: killed with payments in flight
      await new Promise((r) => setTimeout(r, 600));
      for (const r of replicas.slice(1)) await sweep(r);
    }
    const pgClient = new (await import('pg')).default.Client({ connectionString: url });
    await pgClient.connect();
    try {
      await until(async () => Number((await pgClient.query(`SELECT COUNT(*) AS n FROM recharges WHERE status IN ('planned','processing')`)).rows[0].n) === 0
        && Number((await pgClient.query(`SELECT COUNT(*) AS n FROM top_up_moves WHERE status = 'pending'`)).rows[0].n) === 0, 30_000, 'recharges finished');
      const perCustomer = (await pgClient.query(`SELECT customer_id, SUM(amount) AS n FROM recharges WHERE status = 'succeeded' GROUP BY customer_id`)).rows;
      for (const r of perCustomer) expect(Number(r.n)).to.be.at.most(cap);
      expect(perCustomer.length).to.equal(3);
    } finally { await pgClient.end(); }
    checkExactlyOnce(customers, cap);
  });
});
