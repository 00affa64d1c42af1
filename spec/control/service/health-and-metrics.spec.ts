// What an operator watches (docs/operations.md, Metrics and health): /health
// says "down" when the store is unreachable, and /metrics carries every series
// docs/control-service.md and docs/operations.md name, with the values they count.
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { SmtpCapture } from '../../../testkit/smtp-capture';
import { serviceFixture } from '../../support/fixture';

const WEBHOOK_SECRET = 'whsec_metrics';

describe('health and metrics', function () {
  this.timeout(20_000);
  const fx = serviceFixture({ prefix: 'payg-health-' });
  let smtp: SmtpCapture | undefined;
  afterEach(async () => { await smtp?.stop(); smtp = undefined; }); // after the fixture's own afterEach has stopped the services

  it('/health answers 503 "down" when the store is unreachable', async () => {
    const svc = await fx.start();
    expect((await svc.sync!.sweep()).ok).to.equal(true);
    const ok = await fetch(`${svc.url}/health`);
    expect(ok.status).to.equal(200);
    svc.store.ping = async () => { throw new Error('disk gone'); };
    const down = await fetch(`${svc.url}/health`);
    expect(down.status).to.equal(503);
    expect(await down.json()).to.include({ status: 'down', store: 'unreachable' });
  });

  it('/metrics carries every series docs/control-service.md and docs/operations.md name, with the values they count', async () => {
    smtp = await new SmtpCapture().start();
    fs.writeFileSync(path.join(fx.dir, 'out.txt.hbs'), 'Hi {{customer.name}}, your credit is used up.');
    const stripe = fx.stripe;
    const c = stripe.create({ name: 'Ada', email: 'ada@example.com', balance: 0, metadata: { kong_consumer: 'shared' } });
    stripe.create({ balance: -100, metadata: { kong_consumer: 'shared' } });
    const svc = await fx.start({
      metering: { default_cost: 1 },
      email_delivery: { messages_per_second: 200, poll_interval_ms: 20, retry_base_delay_ms: 20, retry_max_delay_ms: 50 },
      emails: [{ id: 'out-of-credit', cohort: 'no-credit', from: { address: 'billing@example.com' }, subject: 'Out of credit', text: 'out.txt.hbs' }],
    }, { env: { SMTP_URL: smtp.url, STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET } });
    stripe.webhook = { url: `${svc.url}/webhooks/stripe`, secret: WEBHOOK_SECRET };
    stripe.failNext(1, 500);
    expect((await svc.sync!.sweep()).ok).to.equal(true);
    await smtp.waitForCount(1);
    await fx.control(`/v1/decisions/${c.id}`);
    await fx.control('/v1/usage', { method: 'POST', body: JSON.stringify({ events: [{ id: 'u-1', consumer: c.id, at: new Date().toISOString(), route: null, status: 200 }] }) });
    await svc.settler!.settle();
    await stripe.deliver(stripe.events[0]);
    const text = await (await fetch(`${svc.url}/metrics`)).text();
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
