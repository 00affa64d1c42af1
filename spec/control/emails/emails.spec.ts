// Behavioural emails, end to end: the control service decides from Stripe
// changes, writes the outbox, and delivers with nodemailer to a real SMTP
// server on loopback; assertions read what arrived (mailparser).
import { expect } from 'chai';
import nodemailer from 'nodemailer';
import { EmailSender } from '../../../control-service/src/emails/sender';
import { SqliteStore } from '../../../control-service/src/store/sqlite';
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { parseConfig } from '../../../control-service/src/config';
import type { RunningService } from '../../../control-service/src/service';
import type { StripeEmulator } from '../../../testkit/stripe-emulator';
import { SmtpCapture } from '../../../testkit/smtp-capture';
import { serviceFixture } from '../../support/fixture';
import { until } from '../../support/until';

const HOUR = 3_600_000;

describe('behavioural emails', function () {
  this.timeout(20_000);
  const fx = serviceFixture({ prefix: 'payg-mail-' });
  let stripe: StripeEmulator;
  let smtp: SmtpCapture;
  let svc: RunningService;

  const outOfCredit = (extra: Record<string, unknown> = {}) => ({
    id: 'out-of-credit', cohort: 'no-credit', from: { address: 'billing@example.com', name: 'Example API' },
    subject: '{{customer.first_name}}, your API credit has run out', html: 'out.html.hbs', text: 'out.txt.hbs', ...extra,
  });
  const restored = { id: 'credit-restored', cohort: 'no-credit', on: 'leave', from: { address: 'billing@example.com', name: 'Example API' }, subject: 'Access restored', text: 'restored.txt.hbs' };
  const lowBalance = { id: 'low-balance', low_balance: { below: [1000, 200] }, from: { address: 'billing@example.com' }, subject: 'Below {{threshold.formatted}}', text: 'low.txt.hbs' };

  async function start(emails: unknown[]): Promise<RunningService> {
    svc = await fx.start({
      top_up: { url: 'https://pay.example.com/top-up?c={customer_id}' },
      email_delivery: { messages_per_second: 200, retry_base_delay_ms: 40, retry_max_delay_ms: 100, poll_interval_ms: 20, max_attempts: 4 },
      emails,
    }, { env: { SMTP_URL: smtp.url } });
    return svc;
  }
  const sweep = async () => { const r = await svc.sync!.sweep(); expect(r.ok, r.error).to.equal(true); };
  const admin = (p: string, init: RequestInit = {}) => fx.admin(`/admin/${p}`, init);
  const log = async (q = '') => (await admin(`emails/log${q}`)).body.emails as Array<Record<string, any>>;
  const settle = () => until(async () => (await log()).every((e) => e.status !== 'pending' && e.status !== 'sending'));

  beforeEach(async () => {
    fs.writeFileSync(path.join(fx.dir, 'out.html.hbs'), '<p>Hi {{customer.name}}, your balance is {{credit.formatted}}.</p><a href="{{top_up_url}}">Top up</a>');
    fs.writeFileSync(path.join(fx.dir, 'out.txt.hbs'), 'Hi {{customer.name}}, your balance is {{credit.formatted}}. Top up: {{top_up_url}}');
    fs.writeFileSync(path.join(fx.dir, 'restored.txt.hbs'), 'Welcome back {{customer.first_name}}: {{credit.formatted}} of credit.');
    fs.writeFileSync(path.join(fx.dir, 'low.txt.hbs'), '{{customer.first_name}}, you have {{credit.formatted}} left, below {{threshold.formatted}}.');
    stripe = fx.stripe;
    smtp = await new SmtpCapture().start();
  });
  afterEach(() => smtp.stop()); // after the fixture's own afterEach has stopped the services

  it('entering the cohort sends the email once: subject, from name, merge tags, HTML-escaped HTML and a text part', async () => {
    const c = stripe.create({ name: 'Ada <b>Lovelace</b>', email: 'ada@example.com', balance: -500 });
    await start([outOfCredit()]);
    await sweep();
    stripe.addBalanceTransaction(c.id, 500);
    await sweep();
    const [mail] = await smtp.waitForCount(1);
    expect(mail.subject).to.equal('Ada, your API credit has run out');
    expect(mail.from?.value[0]).to.deep.equal({ address: 'billing@example.com', name: 'Example API' });
    expect(mail.to && !Array.isArray(mail.to) && mail.to.value[0].address).to.equal('ada@example.com');
    expect(mail.html).to.include('Hi Ada &lt;b&gt;Lovelace&lt;/b&gt;, your balance is $0.00.');
    expect(mail.html, 'HTML-escaped like every merge value').to.include(`href="https://pay.example.com/top-up?c&#x3D;${c.id}"`);
    expect(mail.text).to.include('Hi Ada <b>Lovelace</b>, your balance is $0.00.');
    expect(mail.messageId).to.match(/^<payg\.[0-9a-f]{32}@example\.com>$/);
    const [row] = await log();
    expect(row).to.include({ template: 'out-of-credit', customer: c.id, status: 'delivered', attempts: 1, message_id: mail.messageId });
  });

  it('no re-send without recurring: later sweeps and checks send nothing more', async () => {
    const c = stripe.create({ name: 'Ada', email: 'ada@example.com', balance: 0 });
    await start([outOfCredit()]);
    await sweep();
    stripe.addBalanceTransaction(c.id, 0);
    await sweep();
    await smtp.waitForCount(1);
    expect(await svc.engine.enqueueRecurring(Date.now() + 10 * HOUR)).to.equal(0);
    await sweep();
    await settle();
    expect(smtp.raw).to.have.length(1);
  });

  it('recurring: sent again after each re-enrollment window while still in the cohort, and anew on re-entry', async () => {
    const c = stripe.create({ name: 'Ada', email: 'ada@example.com', balance: -100 });
    await start([outOfCredit({ recurring: { reenroll_after: '1h' } })]);
    await sweep();
    stripe.addBalanceTransaction(c.id, 100);
    await sweep();
    await smtp.waitForCount(1);
    const t0 = Date.now();
    expect(await svc.engine.enqueueRecurring(t0 + 30 * 60_000), 'inside the window').to.equal(0);
    expect(await svc.engine.enqueueRecurring(t0 + 61 * 60_000), 'one window later').to.equal(1);
    await smtp.waitForCount(2);
    expect(await svc.engine.enqueueRecurring(t0 + 90 * 60_000), 'the same window again').to.equal(0);
    expect(await svc.engine.enqueueRecurring(t0 + 121 * 60_000), 'two windows later').to.equal(1);
    await smtp.waitForCount(3);
    // Leave and re-enter: a new entry, sent at once.
    stripe.addBalanceTransaction(c.id, -500);
    await sweep();
    stripe.addBalanceTransaction(c.id, 500);
    await sweep();
    await smtp.waitForCount(4);
    await settle();
    expect(smtp.raw).to.have.length(4);
  });

  it('low-balance warnings: once per downward crossing, re-armed above the threshold (down, up, down)', async () => {
    const c = stripe.create({ name: 'Ada Byron', email: 'ada@example.com', balance: -1500 });
    await start([lowBalance]);
    await sweep();
    // Each step's email is delivered before the next (a warning for credit already back above its threshold is stale).
    const step = async (balance: number) => { stripe.update(c.id, { balance }); await sweep(); await settle(); };
    await step(-900); // below $10
    await step(-800); // still below $10: nothing
    await step(-150); // below $2
    await step(-1200); // back above both: re-armed, nothing sent
    await step(-700); // below $10 again
    await settle();
    const subjects = (await smtp.inbox()).map((m) => m.subject);
    expect(subjects).to.deep.equal(['Below $10.00', 'Below $2.00', 'Below $10.00']);
    expect((await smtp.inbox())[1].text).to.include('Ada, you have $1.50 left, below $2.00.');
  });

  it('credit restored: leaving the cohort sends the restored notice', async () => {
    const c = stripe.create({ name: 'Ada', email: 'ada@example.com', balance: 0 });
    await start([outOfCredit(), restored]);
    await sweep(); // first sight: enters no-credit
    stripe.addBalanceTransaction(c.id, -2500);
    await sweep();
    await settle();
    const mails = await smtp.inbox();
    expect(mails.map((m) => m.subject)).to.deep.equal(['Ada, your API credit has run out', 'Access restored']);
    expect(mails[1].text).to.include('Welcome back Ada: $25.00 of credit.');
  });

  it('a template switched off sends nothing, and its pending emails are cancelled at once', async () => {
    const a = stripe.create({ name: 'Ada', email: 'ada@example.com', balance: -100 });
    const b = stripe.create({ name: 'Bob', email: 'bob@example.com', balance: -100 });
    await start([outOfCredit()]);
    await sweep();
    await smtp.down();
    stripe.addBalanceTransaction(a.id, 100);
    await sweep();
    await until(async () => (await log())[0]?.last_error !== null && (await log())[0]?.last_error !== undefined);
    expect((await admin('emails/out-of-credit', { method: 'PUT', body: JSON.stringify({ active: false }) })).status).to.equal(200);
    // Pending ones at once; one caught mid-attempt when it comes back to the queue.
    await until(async () => (await log())[0]?.status === 'cancelled');
    expect((await log())[0]).to.include({ status: 'cancelled', last_error: 'template switched off' });
    stripe.addBalanceTransaction(b.id, 100);
    await sweep();
    await smtp.up();
    await new Promise((r) => setTimeout(r, 200));
    expect(smtp.raw).to.have.length(0);
    expect(await log()).to.have.length(1);
    expect((await admin('emails')).body.emails[0]).to.include({ id: 'out-of-credit', active: false });
  });

  it('SMTP refusing connections for a while: retried with backoff, delivered once after', async () => {
    const c = stripe.create({ name: 'Ada', email: 'ada@example.com', balance: -100 });
    await start([outOfCredit()]);
    await sweep();
    await smtp.down();
    stripe.addBalanceTransaction(c.id, 100);
    await sweep();
    await until(async () => /ECONNREFUSED|ECONNECTION|connect/i.test((await log())[0]?.last_error ?? ''));
    const [pending] = await log();
    expect(pending.status).to.equal('pending');
    expect(pending.attempts, 'no answer from the server: no attempt used').to.equal(0);
    expect(pending.last_error).to.match(/ECONNREFUSED|ECONNECTION|connect/i);
    await smtp.up();
    await smtp.waitForCount(1);
    await settle();
    expect(smtp.raw).to.have.length(1);
    expect((await log())[0].status).to.equal('delivered');
  });

  it('SMTP answering 451 twice then 250: delivered on the third attempt, once', async () => {
    const c = stripe.create({ name: 'Ada', email: 'ada@example.com', balance: -100 });
    await start([outOfCredit()]);
    await sweep();
    smtp.failNext(2, 451);
    stripe.addBalanceTransaction(c.id, 100);
    await sweep();
    await smtp.waitForCount(1);
    await settle();
    expect((await log())[0]).to.include({ status: 'delivered', attempts: 3 });
    expect((await log())[0].last_error).to.match(/^451/);
    expect(smtp.raw).to.have.length(1);
  });

  it('SMTP answering 550: failed at once, not retried; 451 past max_attempts: failed', async () => {
    const a = stripe.create({ name: 'Ada', email: 'ada@example.com', balance: -100 });
    const b = stripe.create({ name: 'Bob', email: 'bob@example.com', balance: -100 });
    await start([outOfCredit()]);
    await sweep();
    smtp.failNext(1, 550);
    stripe.addBalanceTransaction(a.id, 100);
    await sweep();
    await settle();
    expect((await log(`?customer=${a.id}`))[0]).to.include({ status: 'failed', attempts: 1 });
    smtp.failNext(4, 451);
    stripe.addBalanceTransaction(b.id, 100);
    await sweep();
    await settle();
    expect((await log(`?customer=${b.id}`))[0]).to.include({ status: 'failed', attempts: 4 });
    expect(smtp.raw).to.have.length(0);
  });

  it('admin test send: sample data or a real customer, to the given address', async () => {
    const c = stripe.create({ name: 'Ada Lovelace', email: 'ada@example.com', balance: -1234 });
    await start([outOfCredit()]);
    await sweep();
    expect((await admin('emails/out-of-credit/test', { method: 'POST', body: JSON.stringify({ to: 'ops@example.com' }) })).status).to.equal(200);
    const sent = await admin('emails/out-of-credit/test', { method: 'POST', body: JSON.stringify({ to: 'ops@example.com', customer_id: c.id }) });
    expect(sent.body).to.include({ sent: true });
    const mails = await smtp.waitForCount(2);
    expect(mails[0].subject).to.equal('Zoë, your API credit has run out');
    expect(mails[1].subject).to.equal('Ada, your API credit has run out');
    expect(mails[1].text).to.include('your balance is $12.34');
    expect((await admin('emails/out-of-credit/test', { method: 'POST', body: JSON.stringify({ to: 'not an address' }) })).status).to.equal(400);
    expect((await admin('emails/nope/test', { method: 'POST', body: JSON.stringify({ to: 'ops@example.com' }) })).status).to.equal(404);
  });

  it('a customer email that is not exactly one address gets no email, and the log says why', async () => {
    const two = stripe.create({ name: 'Two', email: 'a@example.com,b@example.net', balance: 0 });
    const one = stripe.create({ name: 'One', email: 'one@example.com', balance: 0 });
    await start([outOfCredit()]);
    await sweep();
    await settle();
    await smtp.waitForCount(1);
    const [mail] = await smtp.inbox();
    expect(mail.to && !Array.isArray(mail.to) && mail.to.value.map((v) => v.address)).to.deep.equal(['one@example.com']);
    expect(smtp.raw, 'nothing reached a@ or b@').to.have.length(1);
    const [row] = await log(`?customer=${two.id}`);
    expect(row).to.include({ status: 'failed', last_error: 'customer email is not exactly one valid address' });
    expect((await log(`?customer=${one.id}`))[0]).to.include({ status: 'delivered' });
  });

  describe('never stale, nothing lost', () => {
    it('an out-of-credit email still waiting when the customer tops up is not sent (stale in the log); the restored one is', async () => {
      const c = stripe.create({ name: 'Ada', email: 'ada@example.com', balance: -100 });
      await start([outOfCredit(), restored]);
      await sweep();
      await smtp.down();
      stripe.addBalanceTransaction(c.id, 100);
      await sweep(); // out of credit: email waits for SMTP
      stripe.addBalanceTransaction(c.id, -2500);
      await sweep(); // restored
      await smtp.up();
      await settle();
      expect((await smtp.inbox()).map((m) => m.subject)).to.deep.equal(['Access restored']);
      const out = (await log('?template=out-of-credit'))[0];
      expect(out).to.include({ status: 'stale' });
      expect(out.last_error).to.match(/left cohort no-credit/);
    });

    it('re-enrollment reminders do not pile up while SMTP is down: at most one waits per customer and template', async () => {
      const c = stripe.create({ name: 'Ada', email: 'ada@example.com', balance: -100 });
      await smtp.down();
      await start([outOfCredit({ recurring: { reenroll_after: '100ms' } })]);
      await sweep();
      stripe.addBalanceTransaction(c.id, 100);
      await sweep();
      const svcAny = svc as any;
      for (let i = 0; i < 5; i++) {
        await new Promise((r) => setTimeout(r, 110));
        await svcAny.engine.enqueueRecurring();
      }
      const rows = await log();
      const waiting = rows.filter((r) => r.status === 'pending' || r.status === 'sending');
      expect(waiting, 'the entry email and one reminder').to.have.length(2);
      expect(rows.filter((r) => r.status === 'stale').length).to.be.greaterThan(0);
    });

    it('a template switched off while its email waits for the send slot: that email never goes', async () => {
      const a = stripe.create({ name: 'Ada', email: 'ada@example.com', balance: -100 });
      const b = stripe.create({ name: 'Bob', email: 'bob@example.com', balance: -100 });
      svc = await fx.start({
        store: { sqlite: path.join(fx.dir, 'slot.sqlite') },
        email_delivery: { messages_per_second: 1, poll_interval_ms: 20 },
        emails: [outOfCredit()],
      }, { env: { SMTP_URL: smtp.url } });
      await sweep();
      stripe.addBalanceTransaction(a.id, 100);
      stripe.addBalanceTransaction(b.id, 100);
      await sweep();
      await smtp.waitForCount(1);
      expect((await admin('emails/out-of-credit', { method: 'PUT', body: JSON.stringify({ active: false }) })).status).to.equal(200);
      await settle();
      await new Promise((r) => setTimeout(r, 1100)); // past the slot the second email waited for
      expect(smtp.raw).to.have.length(1);
      expect((await log()).map((r) => r.status).sort()).to.deep.equal(['cancelled', 'delivered']);
    });

    it('a 5-minute SMTP outage (clock 300× faster) uses no attempts and loses nothing; delivered once SMTP is back', async () => {
      const store = new SqliteStore(path.join(fx.dir, 'outage.sqlite'));
      const config = parseConfig({
        cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }], emails: [outOfCredit()],
      }, {}, fx.dir);
      const realStart = Date.now();
      const now = () => realStart + (Date.now() - realStart) * 300;
      const sender = new EmailSender({
        store, templates: config.emails, isActive: () => true, log: pino({ level: 'silent' }), now,
        transport: nodemailer.createTransport({ url: smtp.url, connectionTimeout: 500 } as Parameters<typeof nodemailer.createTransport>[0]),
        delivery: { ...config.emailDelivery, pollIntervalMs: 10 }, // defaults: 8 attempts, 1 s base delay, 5 min cap
      });
      await smtp.down();
      await store.enqueueEmails([{ dedupeKey: 'out-of-credit|cus_1|no-credit|enter@1', templateId: 'out-of-credit', customerId: 'cus_1', to: 'ada@example.com', context: JSON.stringify({ customer: { name: 'Ada' } }), createdAt: now() }]);
      await sender.start();
      try {
        await new Promise((r) => setTimeout(r, 1000)); // 5 minutes on the sender's clock
        const [row] = await store.emailLog({ limit: 1 });
        // 'sending' when the check lands during a connection attempt: still not failed, still no attempt used.
        expect(['pending', 'sending'], 'not failed after 5 minutes of refused connections').to.include(row.status);
        expect(row.attempts).to.equal(0);
        await smtp.up();
        await smtp.waitForCount(1, 5000);
      } finally {
        await sender.stop();
      }
      expect((await store.emailLog({ limit: 1 }))[0]).to.include({ status: 'delivered', attempts: 1 });
      await store.close();
    });

    it('a kill during a send uses no attempt: the email is pending again with its attempts unchanged', async () => {
      const file = path.join(fx.dir, 'kill.sqlite');
      const store = new SqliteStore(file);
      await store.enqueueEmails([{ dedupeKey: 'k|cus_1|x', templateId: 'out-of-credit', customerId: 'cus_1', to: 'ada@example.com', context: '{}', createdAt: 0 }]);
      expect(await store.claimDueEmail(Date.now())).to.not.equal(undefined); // in flight when the process dies
      await store.close();
      const restarted = new SqliteStore(file);
      expect(await restarted.requeueInterruptedEmails()).to.equal(1);
      expect((await restarted.emailLog({ limit: 1 }))[0]).to.include({ status: 'pending', attempts: 0 });
      await restarted.close();
    });
  });
});
