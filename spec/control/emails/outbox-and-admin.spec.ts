// Emails on the running service, as docs/control-service.md (Behavioural emails,
// HTTP API) promises them: config edits and restarts decide no email, without
// SMTP_URL the outbox keeps what is due, a template switched off stays off,
// delivery keeps to messages_per_second, and the admin API's test send and
// email log.
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import type { RunningService } from '../../../control-service/src/service';
import { SmtpCapture } from '../../../testkit/smtp-capture';
import { serviceFixture } from '../../support/fixture';
import { until } from '../../support/until';

const NO_CREDIT = { id: 'no-credit', filter: { balance: { gte: 0 } } };
const PRO = { id: 'pro', filter: { metadata: { plan: { equals: 'pro' } } } };
const DELIVERY = { messages_per_second: 200, poll_interval_ms: 20, retry_base_delay_ms: 20, retry_max_delay_ms: 50 };

describe('emails: the outbox across config edits and restarts, pacing, and the admin API', function () {
  this.timeout(20_000);
  const fx = serviceFixture({ prefix: 'payg-email-outbox-' });
  let svc: RunningService;

  const entryEmail = (extra: Record<string, unknown> = {}) => ({
    id: 'out-of-credit', cohort: 'no-credit', from: { address: 'billing@example.com' }, subject: 'Out of credit', text: 'out.txt.hbs', ...extra,
  });
  /** A service with the no-credit and pro cohorts; SMTP only when `smtp` is given. */
  async function start(overrides: Record<string, unknown> = {}, smtp?: SmtpCapture): Promise<RunningService> {
    svc = await fx.start({ cohorts: [NO_CREDIT, PRO], email_delivery: DELIVERY, ...overrides }, { env: smtp ? { SMTP_URL: smtp.url } : {} });
    return svc;
  }
  async function restart(overrides: Record<string, unknown> = {}): Promise<RunningService> {
    await fx.stop();
    return start(overrides);
  }
  const admin = (p: string, init: RequestInit = {}) => fx.admin(`/admin/${p}`, init);
  const emailLog = async (q = '') => (await admin(`emails/log${q}`)).body.emails as Array<Record<string, any>>;
  const sweep = async () => { const r = await svc.sync!.sweep(); expect(r.ok, r.error).to.equal(true); };
  let capture: SmtpCapture | undefined;
  const smtpCapture = async () => (capture = await new SmtpCapture().start());

  beforeEach(() => fs.writeFileSync(path.join(fx.dir, 'out.txt.hbs'), 'Hi {{customer.name}}, your credit is used up.'));
  afterEach(async () => { await capture?.stop(); capture = undefined; }); // after the fixture's own afterEach has stopped the services

  it('config edits send no email: a restart whose new filter puts customers in a cohort enqueues nothing', async () => {
    fx.stripe.create({ name: 'Ada', email: 'ada@example.com', balance: -100 });
    await start({ emails: [entryEmail()] });
    await sweep();
    expect(await emailLog()).to.have.length(0);
    await restart({ cohorts: [{ id: 'no-credit', filter: { balance: { gte: -1000 } } }, PRO], emails: [entryEmail()] });
    expect((await admin('cohorts/no-credit/members')).body.members, 'the edit moved her in').to.have.length(1);
    await sweep();
    expect(await emailLog()).to.have.length(0);
  });

  it('re-enrollment emails wait in the outbox when SMTP_URL is unset', async () => {
    const c = fx.stripe.create({ name: 'Ada', email: 'ada@example.com', balance: 0 });
    await start({ emails: [entryEmail({ recurring: { reenroll_after: '300ms' } })], email_delivery: { ...DELIVERY, recurring_check_interval: '50ms' } });
    await sweep();
    await until(async () => (await emailLog()).length >= 2, 5000, 'no re-enrollment email was decided');
    const rows = await emailLog();
    expect(rows.map((r) => [r.customer, r.status])).to.deep.equal([[c.id, 'pending'], [c.id, 'pending']]);
  });

  it('a template switched off stays off across a restart', async () => {
    const c = fx.stripe.create({ name: 'Ada', email: 'ada@example.com', balance: -100 });
    await start({ emails: [entryEmail()] });
    await sweep();
    expect((await admin('emails/out-of-credit', { method: 'PUT', body: JSON.stringify({ active: false }) })).status).to.equal(200);
    await restart({ emails: [entryEmail()] });
    expect((await admin('emails')).body.emails[0]).to.include({ id: 'out-of-credit', active: false });
    fx.stripe.addBalanceTransaction(c.id, 100);
    await sweep();
    expect((await admin('cohorts/no-credit/members')).body.members).to.deep.equal([c.id]);
    expect(await emailLog(), 'she entered the cohort, and got nothing').to.have.length(0);
  });

  it('email_delivery.messages_per_second paces delivery (10/s: ten emails take at least 0.9 s)', async () => {
    const smtp = await smtpCapture();
    for (let i = 0; i < 10; i++) fx.stripe.create({ name: `C${i}`, email: `c${i}@example.com`, balance: 0 });
    await start({ emails: [entryEmail()], email_delivery: { ...DELIVERY, messages_per_second: 10 } }, smtp);
    const decided = Date.now();
    await sweep();
    await smtp.waitForCount(10, 10_000);
    // Sends start 100 ms apart, the first no earlier than the sweep that decided them.
    // (Gaps between single arrivals are not checked: the first one also waits for the connection.)
    expect(smtp.acceptedAt[9] - decided).to.be.at.least(900 - 5);
  });

  it('admin: a test send without SMTP answers 503; the email log filters by customer, template, status and limit', async () => {
    const a = fx.stripe.create({ name: 'Ada', email: 'ada@example.com', balance: 0, metadata: { plan: 'pro' } });
    const b = fx.stripe.create({ name: 'Bob', email: 'bob@example.com', balance: 0 });
    const welcome = { id: 'welcome-pro', cohort: 'pro', from: { address: 'billing@example.com' }, subject: 'Welcome', text: 'out.txt.hbs' };
    await start({ emails: [entryEmail(), welcome] });
    await sweep();
    const testSend = await admin('emails/out-of-credit/test', { method: 'POST', body: JSON.stringify({ to: 'ops@example.com' }) });
    expect({ status: testSend.status, body: testSend.body }).to.deep.equal({ status: 503, body: { error: 'smtp_not_configured' } });
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
