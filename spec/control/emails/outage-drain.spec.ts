// After an SMTP outage long enough for the backoff to reach its cap, the
// outbox drains as soon as one delivery succeeds again: all 40 emails that
// piled up go within seconds, each exactly once, not each at the end of its
// own backoff. The sender's clock is injected and stands still while SMTP is
// back, so only the drain can send the emails not yet due.
import { expect } from 'chai';
import nodemailer from 'nodemailer';
import pino from 'pino';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseConfig } from '../../../control-service/src/config';
import { EmailSender, messageIdFor } from '../../../control-service/src/emails/sender';
import { PostgresStore } from '../../../control-service/src/store/postgres';
import { SqliteStore } from '../../../control-service/src/store/sqlite';
import type { Store } from '../../../control-service/src/store/store';
import { SmtpCapture } from '../../../testkit/smtp-capture';
import { freshDatabase } from '../../support/postgres';
import { until } from '../../support/until';

const MINUTE = 60_000;
const EMAILS = 40;

for (const kind of ['SQLite', 'PostgreSQL'] as const) {
  describe(`email outbox after an SMTP outage (${kind})`, function () {
    this.timeout(120_000);
    let dir: string;
    let smtp: SmtpCapture;
    let store: Store;
    let sender: EmailSender | undefined;

    beforeEach(async () => {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-drain-'));
      smtp = await new SmtpCapture().start();
      store = kind === 'SQLite' ? new SqliteStore(path.join(dir, 'drain.sqlite')) : await PostgresStore.open(await freshDatabase(), { poolSize: 2 });
    });
    afterEach(async () => {
      try { await sender?.stop(); } finally {
        sender = undefined;
        await smtp.stop();
        await store.close();
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });

    let clock = 0;
    const rows = Array.from({ length: EMAILS }, (_, i) => ({
      dedupeKey: `out-of-credit|cus_${i}|no-credit|enter@1`, templateId: 'out-of-credit', customerId: `cus_${i}`,
      to: `c${i}@example.com`, context: JSON.stringify({ customer: { name: `Customer ${i}` } }), createdAt: Date.UTC(2026, 0, 1),
    }));

    /** 40 emails enqueued while SMTP refuses connections for 5 minutes on the sender's clock; SMTP is then back. Returns their due times, earliest first. */
    async function afterOutage(): Promise<number[]> {
      fs.writeFileSync(path.join(dir, 'out.txt.hbs'), 'Hi {{customer.name}}, your credit has run out.');
      const config = parseConfig({
        cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
        emails: [{ id: 'out-of-credit', cohort: 'no-credit', from: { address: 'billing@example.com' }, subject: 'Out of credit', text: 'out.txt.hbs' }],
      }, {}, dir);
      expect(config.emailDelivery.retryMaxDelayMs).to.equal(5 * MINUTE);
      clock = Date.UTC(2026, 0, 1);
      sender = new EmailSender({
        store, templates: config.emails, isActive: () => true, log: pino({ level: 'silent' }), now: () => clock,
        transport: nodemailer.createTransport({ url: smtp.url, connectionTimeout: 2000 } as Parameters<typeof nodemailer.createTransport>[0]),
        // Defaults for the backoff (1 s base, 5 min cap, 8 attempts); a short poll and a fast pace so the spec runs in seconds.
        delivery: { ...config.emailDelivery, pollIntervalMs: 10, messagesPerSecond: 100 },
      });
      await smtp.down();
      expect(await store.enqueueEmails(rows)).to.equal(EMAILS);
      await sender.start();
      // 5 minutes of refused connections, in steps of 20 s on the sender's clock: every email due is tried and put off.
      const outageEnd = clock + 5 * MINUTE;
      while (clock < outageEnd) {
        clock += 20_000;
        // The sender has tried every email due by now (none is due any more, none in flight) before the clock moves on.
        await until(async () => {
          const due = await store.nextEmailDueAt();
          return due !== undefined && due > clock && await store.countEmails('sending') === 0;
        }, 20_000, 'the sender did not try the emails due');
      }
      const pending = await store.emailLog({ limit: 100 });
      expect(pending.map((r) => r.status)).to.deep.equal(Array(EMAILS).fill('pending'));
      expect(pending.every((r) => r.attempts === 0), 'no attempt used by refused connections').to.equal(true);
      const dueTimes = pending.map((r) => r.nextAttemptAt).sort((a, b) => a - b);
      expect(dueTimes.at(-1)! - clock, 'the backoff has grown to its cap').to.be.greaterThan(4 * MINUTE);
      await smtp.up();
      return dueTimes;
    }

    it(`${EMAILS} emails piled up during a 5-minute outage (backoff at its 5-minute cap) all go at once when one delivery succeeds again, each exactly once`, async () => {
      const dueTimes = await afterOutage();
      // The clock moves only to the first email's due time and stays there: only a drain sends the others.
      clock = dueTimes[0];
      await smtp.waitForCount(EMAILS, 40_000);

      const ids = (await smtp.inbox()).map((m) => m.messageId);
      expect(new Set(ids).size, 'each email exactly once').to.equal(EMAILS);
      expect([...ids].sort()).to.deep.equal(rows.map((r) => messageIdFor(r, 'billing@example.com')).sort());
      const done = await store.emailLog({ limit: 100 });
      expect(done.every((r) => r.status === 'delivered' && r.attempts === 1), JSON.stringify(done.filter((r) => r.status !== 'delivered' || r.attempts !== 1))).to.equal(true);
      // Nothing goes twice afterwards either.
      await new Promise((r) => setTimeout(r, 200));
      expect(smtp.raw).to.have.length(EMAILS);
    });

    it('when the first answer after the outage is a 451 for one email, the others still go at once; that one is tried once in the drain and waits its backoff after it', async () => {
      const dueTimes = await afterOutage();
      smtp.failNext(1, 451);
      clock = dueTimes[0];
      await smtp.waitForCount(EMAILS - 1, 40_000);
      await until(async () => await store.countEmails('delivered') === EMAILS - 1 && await store.countEmails('sending') === 0, 20_000);
      await new Promise((r) => setTimeout(r, 200));
      expect(smtp.raw, 'the refused one is not retried during the drain').to.have.length(EMAILS - 1);
      const [refused] = (await store.emailLog({ limit: 100 })).filter((r) => r.status !== 'delivered');
      expect(refused).to.include({ status: 'pending', attempts: 1 });
      expect(refused.lastError).to.match(/^451/);
      expect(refused.nextAttemptAt, 'after the drain').to.be.greaterThan(dueTimes.at(-1)!);
      clock = refused.nextAttemptAt;
      await smtp.waitForCount(EMAILS, 20_000);
      const ids = (await smtp.inbox()).map((m) => m.messageId);
      expect(new Set(ids).size, 'each email exactly once').to.equal(EMAILS);
    });
  });
}
