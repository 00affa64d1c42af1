// Secrets come from the environment and never reach logs or API answers. The
// service runs as its real process (bin/payg-control) so everything it prints
// is captured; each secret is a distinctive value searched for in all of it.
import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Stripe from 'stripe';
import { startControlProcess, type ControlProcess } from '../support/control-process';
import { StripeEmulator } from '../../testkit/stripe-emulator';

const SECRETS = {
  STRIPE_SECRET_KEY: 'sk_test_SECRETstripeKEY0123456789',
  STRIPE_WEBHOOK_SECRET: 'whsec_SECRETwebhook0123456789',
  PAYG_ADMIN_TOKEN: 'SECRETadminTOKEN0123456789',
  PAYG_CONTROL_TOKEN: 'SECRETcontrolTOKEN0123456789',
  SMTP_URL: 'smtp://user:SECRETsmtpPASSWORD@127.0.0.1:1',
};
const SECRET_VALUES = [...Object.values(SECRETS), 'SECRETsmtpPASSWORD'];

describe('secrets never reach logs or API answers', function () {
  this.timeout(20_000);
  let stripe: StripeEmulator;
  let control: ControlProcess;
  let dir: string;
  let url: string;

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-secrets-'));
    stripe = await new StripeEmulator().start();
    stripe.autoDeliver = false;
    stripe.secretKey = SECRETS.STRIPE_SECRET_KEY;
    stripe.create({ name: 'Ada', balance: 0 });
    const configFile = path.join(dir, 'payg.yml');
    fs.writeFileSync(configFile, JSON.stringify({
      listen: { port: 0 }, store: { sqlite: path.join(dir, 'payg.sqlite') },
      stripe: { retry: { max_attempts: 2, base_delay_ms: 10, max_delay_ms: 20 } },
      cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
      rules: [{ id: 'block', cohort: 'no-credit', body: '{"error":"payment_required"}' }],
    }));
    control = await startControlProcess(configFile, { ...SECRETS, STRIPE_API_BASE: stripe.url, PAYG_LOG_LEVEL: 'trace' });
    url = control.url;
  });
  after(async () => {
    await control.kill('SIGKILL');
    await stripe.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('logs and answers hold none of the five secrets after failures that mention credentials', async () => {
    const answers: string[] = [];
    const call = async (p: string, init: RequestInit = {}) => {
      const res = await fetch(`${url}${p}`, init);
      answers.push(`${res.status} ${JSON.stringify([...res.headers])} ${await res.text()}`);
      return res.status;
    };
    const admin = { authorization: `Bearer ${SECRETS.PAYG_ADMIN_TOKEN}` };
    expect(await call('/admin/sweep', { method: 'POST', headers: admin })).to.equal(200);
    // Wrong tokens, a forged webhook, and Stripe refusing the key.
    expect(await call('/admin/cohorts', { headers: { authorization: 'Bearer wrong' } })).to.equal(401);
    expect(await call('/v1/decisions/x', { headers: { authorization: 'Bearer wrong' } })).to.equal(401);
    const payload = JSON.stringify({ id: 'evt_1', type: 'customer.updated', data: { object: {} } });
    const forged = Stripe.webhooks.generateTestHeaderString({ payload, secret: 'whsec_wrong' });
    expect(await call('/webhooks/stripe', { method: 'POST', headers: { 'stripe-signature': forged }, body: payload })).to.equal(400);
    stripe.secretKey = 'sk_test_rotated';
    expect(await call('/admin/sweep', { method: 'POST', headers: admin })).to.equal(200);
    for (const p of ['/health', '/metrics', '/admin/rules', '/admin/cohorts']) await call(p, { headers: admin });
    await new Promise((r) => setTimeout(r, 100)); // let the last log lines flush

    const output = control.output();
    expect(output, 'the service logged the refused sweep').to.match(/sweep failed/);
    expect(answers.join('\n'), 'the refused sweep is reported').to.match(/Invalid API Key/);
    for (const secret of SECRET_VALUES) {
      expect(output.includes(secret), `logs contain ${secret}`).to.equal(false);
      expect(answers.join('\n').includes(secret), `answers contain ${secret}`).to.equal(false);
    }
  });
});
