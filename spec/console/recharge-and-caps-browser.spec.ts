// The console's customer page in headless Chromium (issue 22 point 1, issue
// 23 point 4) on a whole service against the Stripe emulator: a team whose two
// consumers share one balance, one capped per day, the other per month; the
// consumer caps table shows each one's spend today and this month, its caps,
// what is left and when it resets; the auto-recharge card shows the settings
// and what the service knows, refuses an amount out of bounds (Stripe
// untouched) and saves a good edit to the customer's Stripe metadata, shown
// at once. PAYG_SCREENSHOTS=docs writes docs/console-customer-recharge-caps.png.
import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import type { Page } from 'playwright-core';
import Stripe from 'stripe';
import { parseConfig } from '../../control-service/src/config';
import { startService, type RunningService } from '../../control-service/src/service';
import { launchChromium, type HeadlessBrowser } from '../../testkit/chromium';
import { ROOT } from '../../testkit/pluginserver-process';
import { StripeEmulator } from '../../testkit/stripe-emulator';
import { freePort } from '../control/top-ups/support';
import { until } from '../support/until';

const ADMIN_TOKEN = 'console-browser-recharge-caps-token';
const CONTROL = 'control-token-for-console-browser';

describe('console: consumer caps and auto-recharge settings (headless Chromium)', function () {
  this.timeout(90_000);
  let stripe: StripeEmulator;
  let svc: RunningService;
  let dir: string;
  let chrome: HeadlessBrowser;
  let page: Page;
  let team: string;
  const cspViolations: string[] = [];
  const shots = process.env.PAYG_SCREENSHOTS === 'docs' ? path.join(ROOT, 'docs') : fs.mkdtempSync(path.join(os.tmpdir(), 'payg-shots-'));

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-console-browser-caps-'));
    stripe = await new StripeEmulator().start();
    stripe.autoDeliver = false;
    const sdk = new Stripe(stripe.secretKey, { host: '127.0.0.1', port: Number(new URL(stripe.url).port), protocol: 'http', telemetry: false });
    const port = await freePort();
    const config = parseConfig({
      listen: { port }, store: { sqlite: path.join(dir, 'payg.sqlite') },
      stripe: { poll: '0 0 1 1 *', max_requests_per_second: 100, retry: { max_attempts: 3, base_delay_ms: 10, max_delay_ms: 40 }, timeout_ms: 3000 },
      top_up: { checkout: { public_url: `http://127.0.0.1:${port}`, currencies: { usd: { presets: [1000, 2500], min: 500, max: 50_000 } } } },
      auto_recharge: { enabled: true, threshold: 500, amount: 2000, monthly_cap: 10_000, min_interval: '1ms', poll_interval: '50ms' },
      caps: { daily: 500 },
      cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
      rules: [{ id: 'block', cohort: 'no-credit', status: 402, body: '{"error":"payment_required"}' }],
      metering: { default_cost: 100, settle: { schedule: '0 0 1 1 *' } },
      console: { listen: { host: '127.0.0.1', port: 0 } },
    }, {
      STRIPE_SECRET_KEY: stripe.secretKey, STRIPE_API_BASE: stripe.url, PAYG_TOP_UP_SECRET: 'top-up-secret-for-console-browser-0123456789',
      PAYG_ADMIN_TOKEN: ADMIN_TOKEN, PAYG_CONTROL_TOKEN: CONTROL,
    }, dir);
    // The team: $50.00 of credit, consumers web-app (the config's $5.00 a day) and batch-job (no daily cap, $30.00 a month), a saved card, auto-recharge on.
    team = stripe.create({ name: 'Acme Team', email: 'ops@acme.example', balance: -5000, currency: 'usd' }).id;
    const pm = await sdk.paymentMethods.attach('pm_card_visa', { customer: team });
    await sdk.customers.update(team, {
      invoice_settings: { default_payment_method: pm.id },
      metadata: { kong_consumer: 'web-app,batch-job', 'payg_cap_daily.batch-job': 'none', 'payg_cap_monthly.batch-job': '3000', payg_auto_recharge: 'on' },
    });
    svc = await startService(config, { log: pino({ level: 'silent' }), sweepOnStart: false });
    await svc.sync!.sweep();
    // web-app spends $2.00, batch-job $7.00 (usage reported by the gateway).
    let seq = 0;
    const events = [...Array.from({ length: 2 }, () => 'web-app'), ...Array.from({ length: 7 }, () => 'batch-job')]
      .map((consumer) => ({ id: `evt-${++seq}`, consumer, at: new Date().toISOString(), route: 'orders', status: 200 }));
    const res = await fetch(`${svc.url}/v1/usage`, { method: 'POST', body: JSON.stringify({ events }), headers: { 'content-type': 'application/json', authorization: `Bearer ${CONTROL}` } });
    expect(res.status).to.equal(200);
    chrome = await launchChromium();
    page = await chrome.browser.newPage();
    await page.setViewportSize({ width: 1366, height: 900 });
    page.on('console', (m) => { if (/Content Security Policy/i.test(m.text())) cspViolations.push(m.text()); });
    const origin = new URL(svc.console!.url).origin;
    await page.route('**/*', (route) => (route.request().url().startsWith(origin) ? route.continue() : route.abort()));
    await page.goto(svc.console!.url);
    await page.getByLabel('Admin token').fill(ADMIN_TOKEN);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Overview' }).waitFor();
  });
  after(async () => {
    await chrome?.close();
    try { await svc?.stop(); } finally {
      await stripe?.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the consumer caps table: each consumer\'s spend today and this month, its caps, what is left, the reset times', async () => {
    await page.goto(`${svc.console!.url}#/customers/${team}`);
    const table = page.getByTestId('consumer-caps-table');
    await table.waitFor();
    const rows = table.locator('tbody tr');
    expect(await rows.count()).to.equal(2);
    const now = new Date();
    const tomorrow = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() + 1));
    const nextMonth = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1));
    const local = (d: Date) => d.toLocaleString('en-GB', { dateStyle: 'medium', timeStyle: 'medium' });
    const web = await rows.filter({ hasText: 'web-app' }).innerText();
    expect(web).to.include('$2.00 of $5.00').and.include(`$3.00 left · resets ${local(tomorrow)}`);
    expect(web).to.match(/\$3\.00\s+\(daily cap\)/);
    const batch = await rows.filter({ hasText: 'batch-job' }).innerText();
    expect(batch).to.include('no cap').and.include('$7.00 of $30.00').and.include(`$23.00 left · resets ${local(nextMonth)}`);
    expect(batch).to.match(/\$23\.00\s+\(monthly cap\)/);
  });

  it('the auto-recharge card: settings and what the service knows; an amount out of bounds is refused, a good edit saved to Stripe and shown', async () => {
    const card = page.getByTestId('auto-recharge');
    await card.waitFor();
    expect(await page.getByTestId('recharge-status').innerText()).to.include('on').and.include('Tops up $20.00 when credit falls below $5.00, at most $100.00 a month');
    expect(await page.getByTestId('stat-recharge-month').innerText()).to.match(/This month \(\d{4}-\d\d, UTC\)\s+\$0\.00 of \$100\.00/);
    expect(await page.getByTestId('stat-recharge-failures').innerText()).to.match(/Failures in a row\s+0 of 3/);
    expect(await page.getByTestId('stat-recharge-last').innerText()).to.include('none yet');
    const before = { ...stripe.customers.get(team)!.metadata };
    // Below the configured minimum top-up ($5.00): the service refuses it, naming the field; Stripe is untouched.
    await page.getByTestId('recharge-amount').fill('2.50');
    await page.getByTestId('recharge-save').click();
    await page.getByTestId('recharge-error').filter({ hasText: 'amount: 250 is outside 500..50000' }).waitFor();
    expect(stripe.customers.get(team)!.metadata).to.deep.equal(before);
    // Not an amount: refused before it is sent.
    await page.getByTestId('recharge-threshold').fill('ten');
    await page.getByTestId('recharge-save').click();
    await page.getByTestId('recharge-error').filter({ hasText: 'When credit falls below: an amount in USD' }).waitFor();
    // A good edit: $25.00 when below $8.00, $60.00 a month.
    await page.getByTestId('recharge-amount').fill('25');
    await page.getByTestId('recharge-threshold').fill('8.00');
    await page.getByTestId('recharge-monthly_cap').fill('60');
    await page.getByTestId('recharge-save').click();
    await page.getByTestId('recharge-note').filter({ hasText: 'Saved to the customer\'s Stripe metadata' }).waitFor();
    await page.getByTestId('recharge-status').filter({ hasText: 'Tops up $25.00 when credit falls below $8.00, at most $60.00 a month' }).waitFor();
    expect(stripe.customers.get(team)!.metadata).to.include({ payg_auto_recharge_amount: '2500', payg_auto_recharge_threshold: '800', payg_auto_recharge_monthly_cap: '6000', kong_consumer: 'web-app,batch-job' });
    expect(await page.getByTestId('recharge-amount').inputValue()).to.equal('25.00');
    await page.screenshot({ path: path.join(shots, 'console-customer-recharge-caps.png'), fullPage: true });
    // Switched off from the page.
    await page.getByTestId('recharge-enabled').click();
    await page.getByTestId('recharge-save').click();
    await page.getByTestId('recharge-status').filter({ hasText: 'off' }).waitFor();
    await until(() => stripe.customers.get(team)!.metadata.payg_auto_recharge === 'off', 5000, 'switched off in Stripe');
  });

  it('no page made Chromium refuse anything under the CSP', () => {
    expect(cspViolations).to.deep.equal([]);
  });
});
