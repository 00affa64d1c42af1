// Exactly one out-of-credit email per customer although the service is killed
// with SIGKILL at random moments while 200 customers enter the cohort, and
// restarted each time. The outbox row is written in the same transaction as the
// cohort entry (never lost), and marked delivered right after the SMTP server's
// 250. SMTP has no idempotency: a kill between the server's 250 and that mark
// resends the one email in flight, with the same Message-ID, which mailbox
// providers collapse into one message. So the inbox here counts messages by
// Message-ID, and the test also checks that raw repeats are only such resends,
// at most one per kill.
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import type { ControlProcess } from '../../support/control-process';
import { ADMIN, serviceFixture } from '../../support/fixture';
import { SmtpCapture } from '../../../testkit/smtp-capture';
import { seededFor } from '../../support/seeded-random';
import { until } from '../../support/until';

const CUSTOMERS = 200;
const KILLS = Number(process.env.PAYG_CRASH_KILLS ?? 8);

describe('emails survive kill -9', function () {
  this.timeout(120_000); // ~20 s alone; a busy machine may double it
  // Stripe delivers its webhooks as they happen (sweeps catch what a killed service missed).
  const fx = serviceFixture({ prefix: 'payg-crash-', scope: 'suite', autoDeliver: true });
  let smtp: SmtpCapture;
  let control: ControlProcess | undefined;

  before(async () => { smtp = await new SmtpCapture().start(); });
  after(() => smtp?.stop()); // after the fixture has killed the process

  it('200 customers entering no-credit while the service is SIGKILLed 8 times: each has exactly one email', async () => {
    // The kill schedule is random, from a seed printed here: PAYG_TEST_SEED replays it.
    const { seed, random } = seededFor('email crash');
    const stripe = fx.stripe;
    fs.writeFileSync(path.join(fx.dir, 'out.txt.hbs'), 'Hi {{customer.name}}, your credit is used up.');
    const configFile = fx.writeConfig('payg.yml', {
      listen: { port: 0 }, store: { sqlite: path.join(fx.dir, 'payg.sqlite') },
      stripe: { poll: '* * * * * *', max_requests_per_second: 100, retry: { max_attempts: 2, base_delay_ms: 10, max_delay_ms: 20 } },
      cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
      rules: [{ id: 'block', cohort: 'no-credit', body: '{"error":"payment_required"}' }],
      email_delivery: { messages_per_second: 150, poll_interval_ms: 20, retry_base_delay_ms: 20, retry_max_delay_ms: 100 },
      emails: [{ id: 'out-of-credit', cohort: 'no-credit', from: { address: 'billing@example.com', name: 'Example API' }, subject: 'Out of credit', text: 'out.txt.hbs' }],
    });
    const env = { STRIPE_WEBHOOK_SECRET: 'whsec_crash', PAYG_CONTROL_TOKEN: undefined, SMTP_URL: smtp.url };
    const customers = Array.from({ length: CUSTOMERS }, (_, i) => stripe.create({ name: `Customer ${i}`, email: `c${i}@example.com`, balance: -100 }));
    const start = async () => {
      control = await fx.launch(configFile, env);
      stripe.webhook = { url: `${control.url}/webhooks/stripe`, secret: 'whsec_crash' };
    };
    await start();
    const firstSweep = await fetch(`${control!.url}/admin/sweep`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN}` } });
    expect((await firstSweep.json() as { customers: number }).customers).to.equal(CUSTOMERS);

    // Customers run out of credit a few at a time (webhooks while up, sweeps catch the rest)...
    let spent = 0;
    const spending = (async () => {
      while (spent < CUSTOMERS) {
        for (let i = 0; i < 5 && spent < CUSTOMERS; i++) stripe.addBalanceTransaction(customers[spent++].id, 100);
        await new Promise((r) => setTimeout(r, 15));
      }
    })();
    // ...while the service is killed at random moments and restarted.
    /** Emails the inbox held at each kill: the kills must land while emails are on their way. */
    const deliveredAtKill: number[] = [];
    let kills = 0;
    while (kills < KILLS) {
      // The first kill waits for delivery to begin (a busy machine starts slowly), so the kills
      // cannot all land before any email was sent; the rest come at random moments.
      if (kills === 0) await until(() => smtp.raw.length > 0, 20_000, 'no email was delivered before the first kill');
      await new Promise((r) => setTimeout(r, 30 + random() * 250));
      deliveredAtKill.push(smtp.raw.length);
      await control!.kill('SIGKILL');
      kills++;
      await start();
    }
    await spending;

    // Then it runs until every email is out.
    const deadline = Date.now() + 60_000;
    const header = (raw: Buffer, name: string) => new RegExp(`^${name}: (\\S+)`, 'im').exec(raw.toString())?.[1] ?? '?';
    /** recipient → Message-IDs received (a set: one message, however often it was handed over) */
    const inbox = () => {
      const byRecipient = new Map<string, Set<string>>();
      for (const raw of smtp.raw) {
        const to = header(raw, 'To');
        byRecipient.set(to, (byRecipient.get(to) ?? new Set()).add(header(raw, 'Message-ID')));
      }
      return byRecipient;
    };
    while (inbox().size < CUSTOMERS && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    await new Promise((r) => setTimeout(r, 300)); // anything decided twice would arrive by now
    const pending = await fetch(`${control!.url}/admin/emails/log?status=pending`, { headers: { authorization: `Bearer ${ADMIN}` } });
    expect((await pending.json() as { emails: unknown[] }).emails, 'nothing left pending').to.have.length(0);

    const byRecipient = inbox();
    expect(byRecipient.size, `every customer got the email (seed ${seed})`).to.equal(CUSTOMERS);
    const twice = [...byRecipient].filter(([, ids]) => ids.size !== 1).map(([to, ids]) => [to, [...ids]]);
    expect(twice, `no customer got two different emails (seed ${seed})`).to.deep.equal([]);
    const resends = smtp.raw.length - CUSTOMERS;
    expect(resends, `raw repeats are resends of the email in flight, at most one per kill (seed ${seed})`).to.be.at.most(KILLS);
    expect(deliveredAtKill.some((n) => n > 0 && n < CUSTOMERS), `some kill landed mid-delivery (inbox at each kill: ${deliveredAtKill.join(', ')}; seed ${seed})`).to.equal(true);
  });
});
