// Promises of docs/control-service.md and docs/operations.md that need the running control service: the Stripe emulator
// behind it, the SMTP capture (or no SMTP at all), its HTTP API and its store.
// Each test names what an operator or a customer would see.
import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { parseConfig } from '../../../control-service/src/config';
import { Engine } from '../../../control-service/src/engine';
import { startService, type RunningService } from '../../../control-service/src/service';
import { SqliteStore } from '../../../control-service/src/store/sqlite';
import { SmtpCapture } from '../../../testkit/smtp-capture';
import { StripeEmulator } from '../../../testkit/stripe-emulator';
import { until } from '../../support/until';

const ADMIN = 'admin-token-for-tests';
const CONTROL = 'control-token-for-tests';
const WEBHOOK_SECRET = 'whsec_promises';
const NEVER = '0 0 1 1 *'; // cron: once a year, i.e. not during a test

describe('docs/control-service.md and docs/operations.md promises: the running control service', function () {
  this.timeout(20_000);
  let dir: string;
  let stripe: StripeEmulator;
  let smtp: SmtpCapture | undefined;
  let svc: RunningService | undefined;

  const entryEmail = (extra: Record<string, unknown> = {}) => ({
    id: 'out-of-credit', cohort: 'no-credit', from: { address: 'billing@example.com' }, subject: 'Out of credit', text: 'out.txt.hbs', ...extra,
  });
  const doc = (overrides: Record<string, unknown> = {}) => ({
    listen: { port: 0 }, store: { sqlite: path.join(dir, 'payg.sqlite') },
    stripe: { poll: NEVER, max_requests_per_second: 100, retry: { max_attempts: 2, base_delay_ms: 10, max_delay_ms: 20 }, timeout_ms: 2000 },
    cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }, { id: 'pro', filter: { metadata: { plan: { equals: 'pro' } } } }],
    rules: [{ id: 'block', cohort: 'no-credit', body: '{"error":"payment_required"}' }],
    metering: { default_cost: 1, settle: { schedule: NEVER } },
    email_delivery: { messages_per_second: 200, poll_interval_ms: 20, retry_base_delay_ms: 20, retry_max_delay_ms: 50 },
    ...overrides,
  });
  const env = (withSmtp: boolean) => ({
    STRIPE_SECRET_KEY: stripe.secretKey, STRIPE_API_BASE: stripe.url, STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET,
    PAYG_ADMIN_TOKEN: ADMIN, PAYG_CONTROL_TOKEN: CONTROL, ...(withSmtp && smtp ? { SMTP_URL: smtp.url } : {}),
  });
  async function start(overrides: Record<string, unknown> = {}, opts: { smtp?: boolean } = {}): Promise<RunningService> {
    const config = parseConfig(doc(overrides), env(opts.smtp ?? false), dir);
    svc = await startService(config, { log: pino({ level: 'silent' }), sweepOnStart: false });
    stripe.webhook = { url: `${svc.url}/webhooks/stripe`, secret: WEBHOOK_SECRET };
    return svc;
  }
  async function restart(overrides: Record<string, unknown> = {}, opts: { smtp?: boolean } = {}): Promise<RunningService> {
    await svc?.stop();
    svc = undefined;
    return start(overrides, opts);
  }
  const admin = async (p: string, init: RequestInit = {}) => {
    const res = await fetch(`${svc!.url}/admin/${p}`, { ...init, headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' } });
    return { status: res.status, body: await res.json() as any };
  };
  const emailLog = async (q = '') => (await admin(`emails/log${q}`)).body.emails as Array<Record<string, any>>;
  const sweep = async () => { const r = await svc!.sync!.sweep(); expect(r.ok, r.error).to.equal(true); };
  const postUsage = async (events: unknown[]) => {
    const res = await fetch(`${svc!.url}/v1/usage`, { method: 'POST', body: JSON.stringify({ events }), headers: { 'content-type': 'application/json', authorization: `Bearer ${CONTROL}` } });
    return { status: res.status, body: await res.json() as any };
  };
  let seq = 0;
  const usage = (consumer: string, extra: Record<string, unknown> = {}) => ({ id: `u-${++seq}`, consumer, at: new Date().toISOString(), route: null, status: 200, ...extra });

  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-promises-'));
    fs.writeFileSync(path.join(dir, 'out.txt.hbs'), 'Hi {{customer.name}}, your credit is used up.');
    stripe = await new StripeEmulator().start();
    stripe.autoDeliver = false;
  });
  afterEach(async () => {
    try { await svc?.stop(); } finally {
      svc = undefined;
      await stripe.stop();
      await smtp?.stop();
      smtp = undefined;
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  describe('Stripe state', () => {
    it('an older Stripe state never rolls back a newer one (whatever path it comes by)', async () => {
      const store = new SqliteStore(path.join(dir, 'engine.sqlite'));
      try {
        const engine = new Engine(parseConfig(doc(), {}, dir), store);
        await engine.init();
        const ada = { id: 'cus_ada', balance: -500, currency: 'usd', name: 'Ada', email: null, metadata: {} };
        await engine.apply([{ ...ada, balance: 0, version: 2000 }], []);
        expect(JSON.parse(engine.decide('cus_ada').json).allow).to.equal(false);
        await engine.apply([{ ...ada, version: 1000 }], []); // a slow sweep page or a late event, read earlier
        expect(JSON.parse(engine.decide('cus_ada').json).allow, 'still blocked: the older credit is ignored').to.equal(false);
        await engine.apply([{ ...ada, version: 3000 }], []);
        expect(JSON.parse(engine.decide('cus_ada').json).allow, 'a newer state applies').to.equal(true);
      } finally { await store.close(); }
    });

    it('sweeps never overlap: a sweep asked for while one runs joins it', async () => {
      for (let i = 0; i < 250; i++) stripe.create({ balance: -100 });
      await start({ stripe: { ...doc().stripe, page_size: 100 } });
      const [a, b] = await Promise.all([svc!.sync!.sweep(), svc!.sync!.sweep()]);
      expect(a).to.include({ ok: true, customers: 250 });
      expect(b).to.equal(a);
      expect(stripe.requests.filter((r) => r.path === '/v1/customers'), 'three pages listed once').to.have.length(3);
    });

    it('a webhook that could not be applied answers 5xx, so Stripe retries it, and the retry applies', async () => {
      const c = stripe.create({ balance: -500 });
      await start();
      await sweep();
      stripe.customers.get(c.id)!.balance = 0;
      const event = stripe.events.find((e) => e.type === 'customer.created')!;
      const sync = svc!.sync!;
      const real = sync.applyEvent.bind(sync);
      sync.applyEvent = async () => { throw new Error('store busy'); };
      expect(await stripe.deliver(event)).to.be.within(500, 599);
      sync.applyEvent = real;
      expect(await stripe.deliver(event), 'the retry is not taken for a replay').to.equal(200);
      expect(JSON.parse(svc!.engine.decide(c.id).json).allow).to.equal(false);
    });
  });

  describe('metering and settlement', () => {
    it('a usage id repeated inside one batch is counted once', async () => {
      const c = stripe.create({ balance: -1000 });
      await start();
      await sweep();
      const e = usage(c.id);
      expect((await postUsage([e, e, usage(c.id), e])).body).to.include({ accepted: 2, duplicates: 2 });
      expect((await admin(`customers/${c.id}`)).body).to.include({ unsettled_usage: 2, estimated_balance: -998 });
    });

    it('count_upstream_5xx: true charges a request the upstream answered 5xx', async () => {
      const c = stripe.create({ balance: -1000 });
      await start({ metering: { default_cost: 1, count_upstream_5xx: true, settle: { schedule: NEVER } } });
      await sweep();
      await postUsage([usage(c.id, { status: 502 }), usage(c.id, { status: 200 })]);
      expect((await admin(`customers/${c.id}`)).body).to.include({ unsettled_usage: 2 });
    });

    it('usage of a consumer that maps to no Stripe customer is stored but never billed', async () => {
      const c = stripe.create({ balance: -1000, metadata: { kong_consumer: 'ada' } });
      await start();
      await sweep();
      expect((await postUsage([usage('ada'), usage('cus_later'), usage('cus_later')])).body).to.include({ accepted: 3, duplicates: 0 });
      // The unmapped consumer turns up in Stripe afterwards: its earlier usage still bills no one.
      stripe.create({ id: 'cus_later', balance: -1000 });
      await sweep();
      expect(await svc!.settler!.settle()).to.include({ confirmed: 1, amount: 1 });
      expect(stripe.balanceTransactions.map((t) => [t.customer, t.amount])).to.deep.equal([[c.id, 1]]);
      expect((await admin('customers/cus_later')).body).to.include({ unsettled_usage: 0, estimated_balance: -1000 });
    });

    it('the settlement schedule fires by itself (settle.schedule every second)', async () => {
      const c = stripe.create({ balance: -1000 });
      await start({ metering: { default_cost: 1, settle: { schedule: '* * * * * *' } } });
      await sweep();
      await postUsage([usage(c.id), usage(c.id), usage(c.id)]);
      await until(() => stripe.balanceTransactions.length === 1, 5000, 'no settlement within 5 s of a per-second schedule');
      expect(stripe.balanceTransactions[0]).to.include({ customer: c.id, amount: 3 });
    });

    it('meter_events: an identifier Stripe already holds (sent past the key\'s life) confirms the settlement, charging once', async () => {
      const c = stripe.create({ balance: -1000 });
      await start({ stripe: { ...doc().stripe, timeout_ms: 300 }, metering: { default_cost: 1, settle: { mode: 'meter_events', schedule: NEVER } } });
      await sweep();
      await postUsage([usage(c.id), usage(c.id)]);
      stripe.holdAnswers(/meter_events/); // Stripe records the event; we never hear it
      expect(await svc!.settler!.settle()).to.include({ confirmed: 0, retrying: 1 });
      stripe.holdAnswers(undefined);
      stripe.forgetIdempotencyKeys();
      expect(await svc!.settler!.settle()).to.include({ confirmed: 1, failed: 0 });
      expect(stripe.meterEvents).to.have.length(1);
      const [row] = (await admin(`settlements?customer=${c.id}`)).body.settlements;
      expect(row).to.include({ status: 'confirmed', amount: 2 });
    });
  });

  it('top_up.metadata_key: a blocked customer\'s 402 body links to their own top-up page, others to top_up.url', async () => {
    const own = stripe.create({ balance: 0, metadata: { top_up_link: 'https://vip.example.com/ada' } });
    const plain = stripe.create({ balance: 0 });
    await start({
      top_up: { url: 'https://pay.example.com/{customer_id}', metadata_key: 'top_up_link' },
      rules: [{ id: 'block', cohort: 'no-credit', body: '{"top_up":"{{top_up_url}}"}' }],
    });
    await sweep();
    const body = async (id: string) => JSON.parse(JSON.parse(svc!.engine.decide(id).json).body);
    expect(await body(own.id)).to.deep.equal({ top_up: 'https://vip.example.com/ada' });
    expect(await body(plain.id)).to.deep.equal({ top_up: `https://pay.example.com/${plain.id}` });
  });

  describe('emails', () => {
    it('config edits send no email: a restart whose new filter puts customers in a cohort enqueues nothing', async () => {
      stripe.create({ name: 'Ada', email: 'ada@example.com', balance: -100 });
      await start({ emails: [entryEmail()] });
      await sweep();
      expect(await emailLog()).to.have.length(0);
      const cohorts = [{ id: 'no-credit', filter: { balance: { gte: -1000 } } }, doc().cohorts[1]];
      await restart({ cohorts, emails: [entryEmail()] });
      expect((await admin('cohorts/no-credit/members')).body.members, 'the edit moved her in').to.have.length(1);
      await sweep();
      expect(await emailLog()).to.have.length(0);
    });

    it('re-enrollment emails wait in the outbox when SMTP_URL is unset', async () => {
      const c = stripe.create({ name: 'Ada', email: 'ada@example.com', balance: 0 });
      await start({ emails: [entryEmail({ recurring: { reenroll_after: '300ms' } })], email_delivery: { ...doc().email_delivery, recurring_check_interval: '50ms' } });
      await sweep();
      await until(async () => (await emailLog()).length >= 2, 5000, 'no re-enrollment email was decided');
      const rows = await emailLog();
      expect(rows.map((r) => [r.customer, r.status])).to.deep.equal([[c.id, 'pending'], [c.id, 'pending']]);
    });

    it('a template switched off stays off across a restart', async () => {
      const c = stripe.create({ name: 'Ada', email: 'ada@example.com', balance: -100 });
      await start({ emails: [entryEmail()] });
      await sweep();
      expect((await admin('emails/out-of-credit', { method: 'PUT', body: JSON.stringify({ active: false }) })).status).to.equal(200);
      await restart({ emails: [entryEmail()] });
      expect((await admin('emails')).body.emails[0]).to.include({ id: 'out-of-credit', active: false });
      stripe.addBalanceTransaction(c.id, 100);
      await sweep();
      expect((await admin('cohorts/no-credit/members')).body.members).to.deep.equal([c.id]);
      expect(await emailLog(), 'she entered the cohort, and got nothing').to.have.length(0);
    });

    it('email_delivery.messages_per_second paces delivery (10/s: ten emails take at least 0.9 s)', async () => {
      smtp = await new SmtpCapture().start();
      for (let i = 0; i < 10; i++) stripe.create({ name: `C${i}`, email: `c${i}@example.com`, balance: 0 });
      await start({ emails: [entryEmail()], email_delivery: { ...doc().email_delivery, messages_per_second: 10 } }, { smtp: true });
      const decided = Date.now();
      await sweep();
      await smtp.waitForCount(10, 10_000);
      // Sends start 100 ms apart, the first no earlier than the sweep that decided them.
      // (Gaps between single arrivals are not checked: the first one also waits for the connection.)
      expect(smtp.acceptedAt[9] - decided).to.be.at.least(900 - 5);
    });

    it('admin: a test send without SMTP answers 503; the email log filters by customer, template, status and limit', async () => {
      const a = stripe.create({ name: 'Ada', email: 'ada@example.com', balance: 0, metadata: { plan: 'pro' } });
      const b = stripe.create({ name: 'Bob', email: 'bob@example.com', balance: 0 });
      const welcome = { id: 'welcome-pro', cohort: 'pro', from: { address: 'billing@example.com' }, subject: 'Welcome', text: 'out.txt.hbs' };
      await start({ emails: [entryEmail(), welcome] });
      await sweep();
      expect((await admin('emails/out-of-credit/test', { method: 'POST', body: JSON.stringify({ to: 'ops@example.com' }) }))).to.deep.equal({ status: 503, body: { error: 'smtp_not_configured' } });
      const pick = (rows: Array<Record<string, any>>) => rows.map((r) => `${r.template}:${r.customer === a.id ? 'a' : 'b'}`).sort();
      expect(pick(await emailLog())).to.deep.equal(['out-of-credit:a', 'out-of-credit:b', 'welcome-pro:a']);
      expect(pick(await emailLog(`?customer=${a.id}`))).to.deep.equal(['out-of-credit:a', 'welcome-pro:a']);
      expect(pick(await emailLog('?template=welcome-pro'))).to.deep.equal(['welcome-pro:a']);
      expect(pick(await emailLog(`?customer=${b.id}&template=out-of-credit`))).to.deep.equal(['out-of-credit:b']);
      expect(await emailLog('?limit=2')).to.have.length(2);
      expect(await emailLog('?status=delivered')).to.have.length(0);
      expect(await emailLog('?status=pending')).to.have.length(3);
      await admin('emails/welcome-pro', { method: 'PUT', body: JSON.stringify({ active: false }) });
      expect(pick(await emailLog('?status=cancelled'))).to.deep.equal(['welcome-pro:a']);
      expect((await admin('emails/log?status=lost')).status).to.equal(400);
    });
  });

  describe('operating it', () => {
    it('admin cohorts: each cohort with its filter and size, and its members', async () => {
      const a = stripe.create({ balance: 0, metadata: { plan: 'pro' } });
      const b = stripe.create({ balance: 0 });
      stripe.create({ balance: -100 });
      await start();
      await sweep();
      expect((await admin('cohorts')).body.cohorts).to.deep.equal([
        { id: 'no-credit', filter: { balance: { gte: 0 } }, size: 2 },
        { id: 'pro', filter: { metadata: { plan: { equals: 'pro' } } }, size: 1 },
      ]);
      expect((await admin('cohorts/no-credit/members')).body.members.sort()).to.deep.equal([a.id, b.id].sort());
      expect((await admin('cohorts/pro/members')).body.members).to.deep.equal([a.id]);
      expect((await admin('cohorts/nobody/members')).status).to.equal(404);
    });

    it('/health answers 503 "down" when the store is unreachable', async () => {
      await start();
      await sweep();
      const ok = await fetch(`${svc!.url}/health`);
      expect(ok.status).to.equal(200);
      svc!.store.ping = async () => { throw new Error('disk gone'); };
      const down = await fetch(`${svc!.url}/health`);
      expect(down.status).to.equal(503);
      expect(await down.json()).to.include({ status: 'down', store: 'unreachable' });
    });

    it('/metrics carries every series docs/control-service.md and docs/operations.md name, with the values they count', async () => {
      smtp = await new SmtpCapture().start();
      const c = stripe.create({ name: 'Ada', email: 'ada@example.com', balance: 0, metadata: { kong_consumer: 'shared' } });
      stripe.create({ balance: -100, metadata: { kong_consumer: 'shared' } });
      await start({ emails: [entryEmail()] }, { smtp: true });
      stripe.failNext(1, 500);
      await sweep();
      await smtp.waitForCount(1);
      await fetch(`${svc!.url}/v1/decisions/${c.id}`, { headers: { authorization: `Bearer ${CONTROL}` } });
      await postUsage([usage(c.id)]);
      await svc!.settler!.settle();
      await stripe.deliver(stripe.events[0]);
      const text = await (await fetch(`${svc!.url}/metrics`)).text();
      const value = (series: string) => {
        const line = text.split('\n').find((l) => l.startsWith(`${series} `));
        return line === undefined ? undefined : Number(line.slice(series.length + 1));
      };
      expect(value('payg_last_successful_sweep_age_seconds')).to.be.within(0, 60);
      expect(value('payg_customers')).to.equal(2);
      expect(value('payg_cohort_size{cohort="no-credit"}')).to.equal(1);
      expect(value('payg_sweeps_total{result="ok"}')).to.equal(1);
      expect(value('payg_sweep_duration_seconds_count{result="ok"}')).to.equal(1);
      expect(value('payg_stripe_errors_total{status="500"}')).to.equal(1);
      expect(value('payg_decisions_total{outcome="block"}')).to.equal(1);
      expect(value('payg_consumer_conflicts')).to.equal(1);
      expect(value('payg_emails_total{template="out-of-credit",result="delivered"}')).to.equal(1);
      expect(value('payg_emails_pending')).to.equal(0);
      expect(value('payg_usage_events_total{result="accepted"}')).to.equal(1);
      expect(value('payg_settlements_total{result="failed"}')).to.equal(0);
      expect(value('payg_webhooks_total{result="applied"}')).to.equal(1);
    });
  });
});
