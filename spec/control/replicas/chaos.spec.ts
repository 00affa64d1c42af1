// Chaos: three control-service replicas on one PostgreSQL database; one of them
// is killed with SIGKILL at random every few seconds (and started again on its
// port) while usage flows through two real plugin servers that list all three,
// Stripe webhooks arrive at whichever replica is up, settlements and emails
// fall due. At the end nothing is lost or counted twice: the usage stored is
// exactly what was served, Stripe is charged exactly ⌊usage⌋ per customer,
// every email went out under one Message-ID, and every replica gives every
// customer the same estimate. The seed is printed; PAYG_TEST_SEED replays it.
import { expect } from 'chai';
import fs from 'node:fs';
import { freePort } from '../../../testkit/ports';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { startControlProcess, type ControlProcess } from '../../support/control-process';
import { freshDatabase } from '../../support/postgres';
import { until } from '../../support/until';
import { StripeEmulator } from '../../../testkit/stripe-emulator';
import { SmtpCapture } from '../../../testkit/smtp-capture';
import { startPluginServer, type PluginServerProcess } from '../../../testkit/pluginserver-process';
import { KongHarness, accessPdk, logPdk, requestCtx } from '../../../testkit/kong-harness';

const ADMIN = 'admin-token-for-tests';
const WEBHOOK_SECRET = 'whsec_chaos';
const COST_MICROS = 370_000; // 0.37 of a cent per request: the fractions must carry over exactly
const CHAOS_MS = Number(process.env.PAYG_CHAOS_MS ?? 30_000);
const MIN_KILLS = 5;

function seeded(seed: number): () => number {
  let s = seed >>> 0;
  return () => { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; return s / 2 ** 32; };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('chaos: three replicas, kill -9 at random, usage, webhooks, settlements and emails', function () {
  this.timeout(3 * CHAOS_MS + 90_000);
  let dir: string;
  let stripe: StripeEmulator;
  let smtp: SmtpCapture;
  let db: pg.Pool;
  const replicas: Array<ControlProcess | undefined> = [];
  const pluginServers: PluginServerProcess[] = [];

  after(async () => {
    await Promise.all(replicas.map((r) => r?.kill('SIGKILL')));
    await Promise.all(pluginServers.map((p) => p.stop()));
    await db?.end();
    await stripe?.stop();
    await smtp?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('loses no usage, counts none twice, charges exactly ⌊usage⌋, sends each email under one Message-ID, and the replicas agree', async () => {
    const seed = Number(process.env.PAYG_TEST_SEED ?? Date.now() % 1_000_000);
    console.log(`      chaos seed ${seed} (PAYG_TEST_SEED=${seed} replays it)`);
    const random = seeded(seed);
    const pick = <T>(list: readonly T[]): T => list[Math.floor(random() * list.length)];

    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-chaos-'));
    stripe = await new StripeEmulator().start();
    stripe.autoDeliver = false; // delivered below, to whichever replica is up, retried as Stripe retries
    smtp = await new SmtpCapture().start();
    fs.writeFileSync(path.join(dir, 'out.txt.hbs'), 'Hello {{customer.name}}, your credit has run out.');
    fs.writeFileSync(path.join(dir, 'restored.txt.hbs'), 'Hello {{customer.name}}, access is restored.');
    const configFile = path.join(dir, 'payg.yml');
    fs.writeFileSync(configFile, JSON.stringify({
      listen: { port: 0 }, store: { postgres: { pool_size: 4 } },
      stripe: { poll: '*/3 * * * * *', max_requests_per_second: 100, timeout_ms: 2000, retry: { max_attempts: 3, base_delay_ms: 20, max_delay_ms: 100 } },
      // At 0.37 a request exact leases stop a customer with less than a cent left (no request fits), and no
      // overspend ever takes the balance to 0: "no credit" here is less than one cent, so emails fall due.
      cohorts: [{ id: 'no-credit', filter: { balance: { gt: -1 } } }],
      rules: [{ id: 'block', cohort: 'no-credit', body: '{"error":"payment_required"}' }],
      metering: { default_cost: '0.37', settle: { schedule: '*/2 * * * * *' } },
      emails: [
        { id: 'out-of-credit', cohort: 'no-credit', from: { address: 'billing@example.com' }, subject: 'Out of credit', text: 'out.txt.hbs' },
        { id: 'credit-restored', cohort: 'no-credit', on: 'leave', from: { address: 'billing@example.com' }, subject: 'Access restored', text: 'restored.txt.hbs' },
      ],
      email_delivery: { messages_per_second: 500, poll_interval_ms: 50, retry_base_delay_ms: 50, retry_max_delay_ms: 200 },
    }));
    const databaseUrl = await freshDatabase();
    db = new pg.Pool({ connectionString: databaseUrl, max: 2 });
    const env = {
      STRIPE_SECRET_KEY: stripe.secretKey, STRIPE_API_BASE: stripe.url, STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET,
      PAYG_ADMIN_TOKEN: ADMIN, PAYG_DATABASE_URL: databaseUrl, SMTP_URL: smtp.url,
    };
    const ports = [await freePort(), await freePort(), await freePort()];
    const urls = ports.map((p) => `http://127.0.0.1:${p}`);
    const start = async (i: number) => { replicas[i] = await startControlProcess(configFile, { ...env, PORT: String(ports[i]) }, 20_000); };
    await Promise.all([0, 1, 2].map(start));
    const alive = () => [0, 1, 2].filter((i) => replicas[i] !== undefined);

    // Little credit each (40–200¢ at 0.37¢ a request), so customers run out within a few hundred requests even
    // on a loaded machine, and emails fall due whatever the request rate.
    const customers = [-120, -80, -60, -200, -40].map((balance, i) => stripe.create({ name: `Customer ${i}`, email: `c${i}@example.com`, balance, currency: 'usd' }));
    const served = new Map(customers.map((c) => [c.id, 0]));
    // The customers exist before their usage does: every replica knows them (a consumer unknown when its usage arrives is stored unbilled, by design).
    await until(async () => {
      await fetch(`${urls[0]}/admin/sweep`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN}` } });
      for (const url of urls) for (const c of customers) {
        if ((await fetch(`${url}/admin/customers/${c.id}`, { headers: { authorization: `Bearer ${ADMIN}` } })).status !== 200) return false;
      }
      return true;
    }, 10_000, 'the replicas never all knew the customers');

    // Webhooks: each event goes to a replica that is up; a refusal, a 5xx or a kill mid-request is retried elsewhere.
    let delivered = 0;
    let webhookRetries = 0;
    let running = true;
    const pumpWebhooks = async () => {
      while (running || delivered < stripe.events.length) {
        const event = stripe.events[delivered];
        if (!event) { await sleep(20); continue; }
        const target = alive().length ? pick(alive()) : undefined;
        if (target === undefined) { await sleep(50); continue; }
        stripe.webhook = { url: `${urls[target]}/webhooks/stripe`, secret: WEBHOOK_SECRET };
        const status = await stripe.deliver(event).catch(() => 0);
        if (status === 200) delivered++; else { webhookRetries++; await sleep(50); }
      }
    };

    // Usage: two plugin servers (Kong nodes), each listing the three replicas in its own order.
    const kongs: Array<{ kong: KongHarness; plugin: string }> = [];
    for (let n = 0; n < 2; n++) {
      const ps = await startPluginServer();
      pluginServers.push(ps);
      const kong = new KongHarness(ps.socketPath);
      const order = n === 0 ? urls : [...urls].reverse();
      const plugin = await kong.startInstance('payg', {
        control_service_url: order[0], control_service_urls: order.slice(1), timeout_ms: 300, cache_ttl_ms: 300, fail_open: true,
        usage_queue: { max_batch_size: 50, max_coalescing_delay: 0.05, initial_retry_delay: 0.05, max_retry_delay: 0.5 },
      }, `chaos-${n}`);
      kongs.push({ kong, plugin });
    }
    let requests = 0;
    let blocked = 0;
    const starved = new Set<string>(); // refused since their last top-up
    const drive = async (k: { kong: KongHarness; plugin: string }) => {
      while (running) {
        const c = pick(customers);
        const consumer = { id: `consumer-${c.id}`, custom_id: c.id };
        const ctx = requestCtx();
        const access = await k.kong.handleEvent(k.plugin, 'access', accessPdk(consumer, ctx));
        requests++;
        if (access.exit) { blocked++; starved.add(c.id); await sleep(2); continue; }
        served.set(c.id, served.get(c.id)! + 1);
        await k.kong.handleEvent(k.plugin, 'log', logPdk({ consumer, route: { id: 'r1', name: 'search' }, status: 200 }, ctx));
      }
    };

    // Top-ups: credit arrives in Stripe now and then (customer.updated webhooks) for a customer who was refused,
    // so customers leave and re-enter no-credit (a top-up to anyone at random could keep every customer in
    // credit when a loaded machine serves few requests, and no email would fall due).
    const topUps = async () => {
      while (running) {
        await sleep(800 + random() * 800);
        const refused = customers.filter((c) => starved.has(c.id));
        if (!running || !refused.length) continue;
        const c = pick(refused);
        starved.delete(c.id);
        stripe.addBalanceTransaction(c.id, -100);
      }
    };

    // Chaos: every 2–4 s one replica, at random, is killed with SIGKILL and started again on its port a moment later.
    const kills: string[] = [];
    const chaos = async () => {
      const until = Date.now() + CHAOS_MS;
      // At least MIN_KILLS, even when a loaded machine restarts replicas slowly (bounded at 3 × CHAOS_MS).
      while ((Date.now() < until || kills.length < MIN_KILLS) && Date.now() < until + 2 * CHAOS_MS) {
        await sleep(2000 + random() * 2000);
        const i = pick([0, 1, 2]);
        const r = replicas[i];
        if (!r) continue;
        replicas[i] = undefined;
        await r.kill('SIGKILL');
        kills.push(`replica ${i + 1} at ${Math.round((CHAOS_MS - (until - Date.now())) / 100) / 10}s`);
        await sleep(200 + random() * 800);
        await start(i);
      }
    };

    const startedAt = Date.now();
    const load = [pumpWebhooks(), topUps(), ...kongs.flatMap((k) => [drive(k), drive(k), drive(k)])];
    await chaos();
    running = false;
    await Promise.all(load);
    console.log(`      ${requests} requests (${blocked} blocked) in ${Math.round((Date.now() - startedAt) / 1000)} s; kills: ${kills.join(', ')}; webhook deliveries retried: ${webhookRetries}`);
    expect(kills.length).to.be.at.least(MIN_KILLS);

    // No usage lost, none counted twice: the store holds exactly what the plugins served, per customer.
    const totals = async () => new Map((await db.query('SELECT customer_id, used_micros FROM usage_totals')).rows.map((r) => [r.customer_id as string, Number(r.used_micros)]));
    const expected = new Map([...served].map(([id, n]) => [id, n * COST_MICROS]));
    await until(async () => {
      const t = await totals();
      return [...expected].every(([id, micros]) => (t.get(id) ?? 0) === micros);
    }, 15_000, 'the usage stored never matched what was served').catch(async (err) => {
      console.log('      served', Object.fromEntries(expected), 'stored', Object.fromEntries(await totals()),
        (await db.query('SELECT customer_id, consumer, COUNT(*)::int AS n FROM usage_events WHERE customer_id IS NULL GROUP BY 1, 2')).rows);
      for (const ps of pluginServers) console.log(ps.logs.filter((l) => Number(l.level) >= 40).slice(0, 8).map((l) => JSON.stringify(l)).join('\n'));
      throw err;
    });
    const events = (await db.query('SELECT customer_id, COUNT(*)::int AS n FROM usage_events GROUP BY customer_id')).rows;
    expect(new Map(events.map((r) => [r.customer_id, r.n]))).to.deep.equal(new Map([...served].filter(([, n]) => n > 0)));

    // Stripe charged exactly ⌊usage⌋ per customer, each settlement once.
    const charged = (id: string) => stripe.balanceTransactions.filter((t) => t.customer === id && (t.metadata as Record<string, string> | undefined)?.payg_settlement);
    await until(async () => {
      const pending = (await db.query(`SELECT COUNT(*)::int AS n FROM settlements WHERE status = 'pending'`)).rows[0].n;
      return pending === 0 && customers.every((c) => charged(c.id).reduce((sum, t) => sum + Number(t.amount), 0) === Math.floor(expected.get(c.id)! / 1_000_000));
    }, 20_000, 'Stripe was not charged exactly floor(usage) for every customer');
    const settlementIds = customers.flatMap((c) => charged(c.id).map((t) => (t.metadata as Record<string, string>).payg_settlement));
    expect(new Set(settlementIds).size, 'a settlement charged twice').to.equal(settlementIds.length);
    expect((await db.query(`SELECT COUNT(*)::int AS n FROM settlements WHERE status = 'failed'`)).rows[0].n).to.equal(0);

    // Every email decided went out, under exactly one Message-ID (a resend after a kill carries the same one).
    await until(async () => (await db.query(`SELECT COUNT(*)::int AS n FROM email_outbox WHERE status IN ('pending', 'sending')`)).rows[0].n === 0,
      15_000, 'emails still waiting in the outbox');
    const outbox = (await db.query(`SELECT dedupe_key, message_id, status FROM email_outbox WHERE status = 'delivered'`)).rows;
    if (!outbox.length) console.log('      outbox', (await db.query('SELECT status, COUNT(*)::int AS n, MAX(last_error) AS err FROM email_outbox GROUP BY status')).rows, 'transitions', (await db.query('SELECT COUNT(*)::int AS n FROM cohort_transitions')).rows);
    expect(outbox.length, 'no email fell due').to.be.greaterThan(0);
    expect(new Set(outbox.map((r) => r.message_id)).size, 'two outbox rows share a Message-ID').to.equal(outbox.length);
    const inbox = await smtp.inbox();
    const received = new Map<string, number>();
    for (const m of inbox) received.set(m.messageId!, (received.get(m.messageId!) ?? 0) + 1);
    expect(new Set(received.keys())).to.deep.equal(new Set(outbox.map((r) => r.message_id)));
    const resent = [...received.values()].filter((n) => n > 1).length;
    console.log(`      ${outbox.length} emails delivered (${resent} resent under the same Message-ID after a kill), ${settlementIds.length} settlements`);

    // Every replica gives every customer the same estimate: Stripe's balance + usage not yet charged.
    await until(async () => {
      for (const c of customers) {
        const want = stripe.customers.get(c.id)!.balance + expected.get(c.id)! / 1_000_000 - charged(c.id).reduce((sum, t) => sum + Number(t.amount), 0);
        for (const url of urls) {
          const got = (await (await fetch(`${url}/admin/customers/${c.id}`, { headers: { authorization: `Bearer ${ADMIN}` } })).json()) as { estimated_balance: number };
          if (Math.abs(got.estimated_balance - want) > 1e-6) return false;
        }
      }
      return true;
    }, 10_000, 'the replicas do not agree on every customer\'s estimate').catch(async (err) => {
      for (const c of customers) {
        const got = await Promise.all(urls.map(async (url) => ((await (await fetch(`${url}/admin/customers/${c.id}`, { headers: { authorization: `Bearer ${ADMIN}` } })).json()) as any).estimated_balance));
        console.log(`      ${c.id}: stripe ${stripe.customers.get(c.id)!.balance}, usage ${expected.get(c.id)! / 1e6}, charged ${charged(c.id).reduce((s, t) => s + Number(t.amount), 0)}, replicas ${got.join(' / ')}`);
      }
      throw err;
    });
  });
});
