// Issue 21 point 9: a customer's walk in headless Chromium, on a phone-sized
// screen, against the demo's stack (Stripe emulator with its hosted Checkout,
// the control service, the real payg-pluginserver behind the local front that
// stands in for Kong): the 402 body's link → the top-up page → an amount →
// Checkout → pay → back on the success page with the credit → 200 at the
// gateway. No script runs on payg's pages and nothing breaks their CSP.
// PAYG_SCREENSHOTS=docs writes docs/top-up-*.png.
import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Page } from 'playwright-core';
import { startStack, type Stack } from '../../demo/stack';
import { launchChromium, type HeadlessBrowser } from '../../testkit/chromium';
import { ROOT } from '../../testkit/pluginserver-process';
import { until } from '../support/until';

describe('top-up in the browser: 402 → page → Checkout → 200 (headless Chromium)', function () {
  this.timeout(90_000);
  let stack: Stack;
  let chrome: HeadlessBrowser;
  let page: Page;
  const cspViolations: string[] = [];
  const shots = process.env.PAYG_SCREENSHOTS === 'docs' ? path.join(ROOT, 'docs') : fs.mkdtempSync(path.join(os.tmpdir(), 'payg-shots-'));
  const shot = (name: string) => page.screenshot({ path: path.join(shots, `top-up-${name}.png`), fullPage: true });
  const call = async () => {
    const res = await fetch(`${stack.gateway.url}/api/hello`, { headers: { apikey: stack.keys.alice } });
    return { status: res.status, body: await res.text() };
  };

  before(async () => {
    stack = await startStack({ logLevel: 'silent' });
    chrome = await launchChromium();
    page = await chrome.browser.newPage();
    await page.setViewportSize({ width: 390, height: 844 }); // a phone
    page.on('console', (m) => { if (/Content Security Policy/i.test(m.text())) cspViolations.push(m.text()); });
    // Loopback only: the gateway (payg's page) and the emulator (Checkout).
    const allowed = [new URL(stack.gateway.url).origin, new URL(stack.stripe.url).origin];
    await page.route('**/*', (route) => (allowed.some((o) => route.request().url().startsWith(o)) ? route.continue() : route.abort()));
  });
  after(async () => {
    await chrome?.close();
    await stack?.stop();
  });

  it('Alice, refused at $0, follows the 402\'s link, pays $20.00 on Checkout, comes back to her credit, and the gateway serves her again', async () => {
    stack.stripe.addBalanceTransaction(stack.customers.alice, 10_000); // her $100.00 spent
    await until(async () => (await call()).status === 402, 10_000, 'Alice was never refused');
    const link = JSON.parse((await call()).body).top_up as string;
    expect(link.startsWith(`${stack.gateway.url}/top-up/`), link).to.equal(true);

    const res = await page.goto(link);
    expect(res!.status()).to.equal(200);
    expect(res!.headers()['content-security-policy']).to.include("default-src 'none'");
    await page.getByRole('heading', { name: 'Add API credit' }).waitFor();
    expect(await page.locator('#credit').textContent()).to.equal('$0.00');
    expect(await page.getByText('For Alice Example').count()).to.equal(1);
    // Readable on a phone: nothing wider than the screen.
    expect(await page.evaluate('document.documentElement.scrollWidth')).to.be.at.most(390);
    expect(await page.locator('script').count()).to.equal(0);
    await shot('page');

    await page.getByRole('button', { name: '$20.00' }).click();
    await page.waitForURL((u) => u.toString().startsWith(stack.stripe.url));
    await page.getByRole('button', { name: /^Pay/ }).waitFor();
    await shot('checkout');
    await page.getByRole('button', { name: /^Pay/ }).click();

    await page.waitForURL((u) => u.toString().startsWith(`${stack.gateway.url}/top-up/`));
    await page.getByRole('heading', { name: 'Credit added' }).waitFor({ timeout: 15_000 });
    expect(await page.getByRole('status').textContent()).to.include('$20.00 of API credit has been added');
    expect(await page.locator('#credit').textContent()).to.match(/^\$(19\.\d\d|20\.00)$/);
    await shot('done');

    await until(async () => (await call()).status === 200, 10_000, 'the gateway never served Alice again');
    const credits = stack.stripe.balanceTransactions.filter((t) => (t.metadata as Record<string, string>)?.payg_top_up);
    expect(credits.map((t) => [t.customer, t.amount])).to.deep.equal([[stack.customers.alice, -2000]]);
    expect(cspViolations).to.deep.equal([]);
  });

  it('a cancelled payment comes back to a page that says nothing was charged', async () => {
    const link = JSON.parse((await fetch(`${stack.svc.url}/v1/balance`, { headers: { authorization: 'Bearer demo-control-token', 'x-consumer-custom-id': stack.customers.alice } }).then((r) => r.text()))).top_up_url as string;
    await page.goto(link);
    await page.getByLabel(/Another amount/).fill('7.50');
    await page.getByRole('button', { name: 'Continue to payment' }).click();
    await page.waitForURL((u) => u.toString().startsWith(stack.stripe.url));
    await page.getByRole('link', { name: /Back/ }).click();
    await page.getByRole('heading', { name: 'Payment cancelled' }).waitFor();
    await shot('cancelled');
    expect(stack.stripe.balanceTransactions.filter((t) => (t.metadata as Record<string, string>)?.payg_top_up)).to.have.length(1);
    expect(cspViolations).to.deep.equal([]);
  });
});
