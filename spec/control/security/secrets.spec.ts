// Secrets come from the environment and never reach logs or API answers. The
// service runs as its real process (bin/payg-control) so everything it prints
// is captured; each secret is a distinctive value searched for in all of it.
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import Stripe from 'stripe';
import type { ControlProcess } from '../../support/control-process';
import { serviceFixture } from '../../support/fixture';
import { SmtpCapture } from '../../../testkit/smtp-capture';
import type { StripeEmulator } from '../../../testkit/stripe-emulator';
import { until } from '../../support/until';

const SMTP_PASSWORD = 'SECRETsmtpPASSWORD0123456789';
const SECRETS = {
  STRIPE_SECRET_KEY: 'sk_test_SECRETstripeKEY0123456789',
  STRIPE_WEBHOOK_SECRET: 'whsec_SECRETwebhook0123456789',
  PAYG_ADMIN_TOKEN: 'SECRETadminTOKEN0123456789',
  PAYG_CONTROL_TOKEN: 'SECRETcontrolTOKEN0123456789',
};
// Each secret, and its distinctive middle (a secret cut short or masked at the ends still leaks it).
const SECRET_VALUES = [...Object.values(SECRETS), SMTP_PASSWORD, 'SECRETstripeKEY', 'SECRETsmtpPASSWORD'];

describe('secrets never reach logs or API answers', function () {
  this.timeout(20_000);
  const fx = serviceFixture({ prefix: 'payg-secrets-', scope: 'suite' });
  let stripe: StripeEmulator;
  let smtp: SmtpCapture;
  let control: ControlProcess;
  let url: string;

  before(async () => {
    stripe = fx.stripe;
    stripe.secretKey = SECRETS.STRIPE_SECRET_KEY;
    stripe.echoKeyInErrors = true; // Stripe's error text carries the key the service used, in full
    stripe.create({ name: 'Ada', email: 'ada@example.com', balance: 0 });
    smtp = await new SmtpCapture().start();
    smtp.password = SMTP_PASSWORD;
    fs.writeFileSync(path.join(fx.dir, 'out.txt.hbs'), 'Hi {{customer.name}}, your credit is used up.');
    const configFile = fx.writeConfig('payg.yml', {
      listen: { port: 0 }, store: { sqlite: path.join(fx.dir, 'payg.sqlite') },
      stripe: { retry: { max_attempts: 2, base_delay_ms: 10, max_delay_ms: 20 } },
      cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
      rules: [{ id: 'block', cohort: 'no-credit', body: '{"error":"payment_required"}' }],
      email_delivery: { poll_interval_ms: 20, max_attempts: 2, retry_base_delay_ms: 20 },
      emails: [{ id: 'out-of-credit', cohort: 'no-credit', from: { address: 'billing@example.com' }, subject: 'Out of credit', text: 'out.txt.hbs' }],
    });
    control = await fx.launch(configFile, { ...SECRETS, SMTP_URL: smtp.url, PAYG_LOG_LEVEL: 'trace' });
    url = control.url;
  });
  after(() => smtp?.stop()); // after the fixture has killed the process

  const answers: string[] = [];
  const call = async (p: string, init: RequestInit = {}) => {
    const res = await fetch(`${url}${p}`, init);
    answers.push(`${res.status} ${JSON.stringify([...res.headers])} ${await res.text()}`);
    return res.status;
  };
  const admin = { authorization: `Bearer ${SECRETS.PAYG_ADMIN_TOKEN}` };
  const readEverything = async () => {
    for (const p of ['/health', '/metrics', '/admin/rules', '/admin/cohorts', '/admin/emails/log']) await call(p, { headers: admin });
    await new Promise((r) => setTimeout(r, 100)); // let the last log lines flush
  };
  const expectNoSecrets = () => {
    const output = control.output();
    for (const secret of SECRET_VALUES) {
      expect(output.includes(secret), `logs contain ${secret}`).to.equal(false);
      expect(answers.join('\n').includes(secret), `answers contain ${secret}`).to.equal(false);
    }
  };

  it('logs and answers hold none of the secrets: SMTP with a password, Stripe errors that echo the key, wrong tokens, a forged webhook', async () => {
    expect(await call('/admin/sweep', { method: 'POST', headers: admin })).to.equal(200);
    // The SMTP password is used: the out-of-credit email is delivered through it.
    await until(() => smtp.raw.length === 1, 5000, 'the email was not delivered');
    // Stripe failing with error text that carries the key: 500s until the retries give up, and a 404 on a webhook's re-read.
    stripe.failNext(2, 500);
    expect(await call('/admin/sweep', { method: 'POST', headers: admin })).to.equal(200);
    const eventPayload = JSON.stringify({ id: 'evt_gone', object: 'event', type: 'customer.updated', created: Math.floor(Date.now() / 1000), data: { object: { id: 'cus_gone', object: 'customer', balance: 0, metadata: {} } } });
    const signed = Stripe.webhooks.generateTestHeaderString({ payload: eventPayload, secret: SECRETS.STRIPE_WEBHOOK_SECRET });
    expect(await call('/webhooks/stripe', { method: 'POST', headers: { 'stripe-signature': signed, 'content-type': 'application/json' }, body: eventPayload })).to.equal(200);
    // SMTP refusing a test send: its error is answered.
    smtp.failNext(1, 550);
    expect(await call('/admin/emails/out-of-credit/test', { method: 'POST', headers: { ...admin, 'content-type': 'application/json' }, body: JSON.stringify({ to: 'ops@example.com' }) })).to.equal(502);
    // Wrong tokens and a forged webhook.
    expect(await call('/admin/cohorts', { headers: { authorization: 'Bearer wrong' } })).to.equal(401);
    expect(await call('/v1/decisions/x', { headers: { authorization: 'Bearer wrong' } })).to.equal(401);
    const payload = JSON.stringify({ id: 'evt_1', type: 'customer.updated', data: { object: {} } });
    const forged = Stripe.webhooks.generateTestHeaderString({ payload, secret: 'whsec_wrong' });
    expect(await call('/webhooks/stripe', { method: 'POST', headers: { 'stripe-signature': forged }, body: payload })).to.equal(400);
    await readEverything();

    expect(control.output(), 'the service logged the failed sweep').to.match(/sweep failed/);
    expect(answers.join('\n'), 'the refused test send is reported').to.match(/550/);
    expectNoSecrets();
  });

  // Stripe's error text can repeat the key it refused: the gateway scrubs its own key from it.
  it('a Stripe error that echoes the rejected key puts it in no log and no answer', async () => {
    stripe.secretKey = 'sk_test_rotated';
    expect(await call('/admin/sweep', { method: 'POST', headers: admin })).to.equal(200);
    await readEverything();
    expect(answers.join('\n'), 'the refused sweep is reported').to.match(/Invalid API Key/);
    expectNoSecrets();
  });
});
