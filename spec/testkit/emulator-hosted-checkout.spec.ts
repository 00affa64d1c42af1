// A headless Chromium walks the emulator's hosted Checkout page: a declined
// card shows Stripe's message and leaves the session open, a good card pays
// and lands on success_url with the session id; "Back" goes to cancel_url.
import { expect } from 'chai';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type Stripe from 'stripe';
import type { Page } from 'playwright-core';
import { StripeEmulator } from '../../testkit/stripe-emulator';
import { launchChromium, type HeadlessBrowser } from '../../testkit/chromium';
import { sdkFor } from './sdk';

describe('Stripe emulator: the hosted Checkout page in Chromium', function () {
  this.timeout(60_000);
  let emu: StripeEmulator;
  let stripe: Stripe;
  let chrome: HeadlessBrowser;
  let page: Page;
  let shop: http.Server;
  let shopUrl: string;
  before(async () => {
    emu = await new StripeEmulator().start();
    stripe = sdkFor(emu);
    shop = http.createServer((req, res) => res.writeHead(200, { 'content-type': 'text/html' }).end(`<h1>${req.url?.startsWith('/ok') ? 'Thank you' : 'Cancelled'}</h1>`));
    await new Promise<void>((r) => shop.listen(0, '127.0.0.1', r));
    shopUrl = `http://127.0.0.1:${(shop.address() as AddressInfo).port}`;
    chrome = await launchChromium();
    page = await chrome.browser.newPage();
    await page.route('**/*', (route) => (/^http:\/\/127\.0\.0\.1:\d+\//.test(route.request().url()) ? route.continue() : route.abort()));
  });
  after(async () => {
    await chrome?.close();
    await emu?.stop();
    shop?.closeAllConnections();
    await new Promise((r) => shop?.close(r));
  });

  const session = async () => stripe.checkout.sessions.create({
    mode: 'payment', customer: emu.create({ email: 'ada@example.com', name: 'Ada' }).id,
    line_items: [{ quantity: 1, price_data: { currency: 'usd', unit_amount: 2500, product_data: { name: 'API credit' } } }],
    success_url: `${shopUrl}/ok?session={CHECKOUT_SESSION_ID}`, cancel_url: `${shopUrl}/cancel`,
  });

  it('declined, then paid with Visa: back at success_url with the session id, the session complete and paid', async () => {
    const s = await session();
    const res = await page.goto(s.url!);
    expect(res!.headers()['content-security-policy']).to.include("default-src 'none'");
    await page.getByRole('row', { name: /API credit/ }).waitFor();
    expect(await page.getByRole('button', { name: 'Pay 25.00 USD' }).isVisible()).to.equal(true);
    await page.getByLabel(/0002 \(declined\)/).check();
    await page.getByRole('button', { name: /^Pay/ }).click();
    await page.getByRole('alert').filter({ hasText: 'Your card was declined.' }).waitFor();
    expect((await stripe.checkout.sessions.retrieve(s.id)).status).to.equal('open');
    await page.getByLabel('Email').fill('ada@example.org');
    await page.getByLabel(/4242/).check();
    await page.getByRole('button', { name: /^Pay/ }).click();
    await page.waitForURL(`${shopUrl}/ok?session=${s.id}`);
    expect(await page.getByRole('heading').textContent()).to.equal('Thank you');
    const done = await stripe.checkout.sessions.retrieve(s.id);
    expect(done).to.include({ status: 'complete', payment_status: 'paid' });
    expect(done.customer_details?.email).to.equal('ada@example.org');
    await page.goto(s.url!.replace(/\/c\/pay\/.*/, `/c/pay/${s.id}`));
    await page.getByText("You're all done here.").waitFor();
  });

  it('"Back" leads to cancel_url and pays nothing', async () => {
    const s = await session();
    await page.goto(s.url!);
    await page.getByRole('link', { name: /Back/ }).click();
    await page.waitForURL(`${shopUrl}/cancel`);
    expect((await stripe.checkout.sessions.retrieve(s.id))).to.include({ status: 'open', payment_intent: null });
  });
});
