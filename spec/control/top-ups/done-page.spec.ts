// The page a customer comes back to from Checkout (issue 21's success page)
// says what is true, read from Stripe through the SDK (emulator), with no
// webhook delivered: paid → credited; paid but the credit not confirmed yet →
// "being added", refreshing; a bank debit still clearing → "processing",
// refreshing a bounded number of times; left unpaid, expired or bounced →
// "not completed" with a link to try again, and no refresh.
import { expect } from 'chai';
import Stripe from 'stripe';
import type { RunningService } from '../../../control-service/src/service';
import { DONE_REFRESH_MAX } from '../../../control-service/src/top-ups/page';
import type { StripeEmulator } from '../../../testkit/stripe-emulator';
import { serviceFixture } from '../../support/fixture';
import { until } from '../../support/until';
import { formOf, freePort } from './support';

describe('top-ups: the page back from Checkout says what is true (emulator)', function () {
  this.timeout(30_000);
  const fx = serviceFixture({ prefix: 'payg-top-up-done-' });
  let stripe: StripeEmulator;
  let svc: RunningService;
  let sdk: Stripe;

  beforeEach(async () => {
    stripe = fx.stripe;
    sdk = new Stripe(stripe.secretKey, { host: '127.0.0.1', port: Number(new URL(stripe.url).port), protocol: 'http', telemetry: false });
    const port = await freePort();
    svc = await fx.start({
      listen: { port },
      stripe: { retry: { max_attempts: 2, base_delay_ms: 10, max_delay_ms: 20 }, timeout_ms: 3000 },
      top_up: { checkout: { public_url: `http://127.0.0.1:${port}`, currencies: { usd: { presets: [1000, 2500], min: 500, max: 50_000 } } } },
      rules: [{ id: 'block', cohort: 'no-credit', status: 402, body: '{"error":"payment_required","top_up_url":"{{top_up_url}}"}' }],
      metering: undefined,
    }, { env: { PAYG_TOP_UP_SECRET: 'top-up-secret-for-done-page-specs-0123456789', PAYG_ADMIN_TOKEN: undefined, PAYG_CONTROL_TOKEN: undefined } });
  });

  /** A customer with no credit buys $10.00 through the 402's link: the session, the page's link and the success URL. */
  async function buy(): Promise<{ customer: string; session: Record<string, any>; link: string; done: string }> {
    const customer = stripe.create({ name: 'Carol', balance: 0, currency: 'usd' }).id;
    await svc.sync!.sweep();
    const decision = await (await fetch(`${svc.url}/v1/decisions/${customer}`)).json() as { body: string };
    const link = JSON.parse(decision.body).top_up_url as string;
    const { nonce, action } = formOf(await (await fetch(link)).text());
    const res = await fetch(new URL(action, link), { method: 'POST', redirect: 'manual', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams({ nonce, preset: '1000' }).toString() });
    expect(res.status).to.equal(303);
    const session = [...stripe.checkoutSessions.values()].find((s: any) => s.url === res.headers.get('location')) as Record<string, any>;
    return { customer, session, link, done: session.success_url };
  }
  const view = async (url: string) => {
    const res = await fetch(url);
    expect(res.status).to.equal(200);
    expect(res.headers.get('content-security-policy')).to.match(/default-src 'none'/);
    const html = await res.text();
    return { html, title: /<h1>([^<]+)<\/h1>/.exec(html)?.[1], refresh: /<meta http-equiv="refresh" content="([^"]+)">/.exec(html)?.[1]?.replace(/&amp;/g, '&') };
  };
  const tryAgain = (html: string) => /<a href="([^"]+)">Try again<\/a>/.exec(html)?.[1];

  it('left unpaid: "not completed", a link back to the payment and to try again, no refresh; nothing credited', async () => {
    const { customer, session, link, done } = await buy();
    // Ten at once (a refresh storm): one read of the session from Stripe.
    const reads = () => stripe.requests.filter((r) => r.method === 'GET' && r.path === `/v1/checkout/sessions/${session.id}`).length;
    const storm = await Promise.all(Array.from({ length: 10 }, () => view(done)));
    expect(storm.map((p) => p.title)).to.deep.equal(Array(10).fill('Payment not completed'));
    expect(reads()).to.equal(1);
    const page = await view(done);
    expect(page.title).to.equal('Payment not completed');
    expect(page.html).to.include('You have not paid yet').and.include(`<a href="${session.url}">Continue to payment</a>`);
    expect(page.refresh, 'no refresh').to.equal(undefined);
    expect(tryAgain(page.html)).to.equal(new URL(link).pathname);
    expect(stripe.customers.get(customer)!.balance).to.equal(0);
  });

  it('expired: "not completed", try again, no refresh', async () => {
    const { session, done } = await buy();
    await sdk.checkout.sessions.expire(session.id);
    const page = await view(done);
    expect(page.title).to.equal('Payment not completed');
    expect(page.html).to.include('expired before it was paid');
    expect(page.refresh).to.equal(undefined);
    expect(tryAgain(page.html)).to.match(/^\/top-up\/v1\./);
  });

  it('a bank debit: "processing", refreshing a bounded number of times; bounced → "not completed", no refresh', async () => {
    const { customer, session, done } = await buy();
    stripe.completeCheckoutSession(session.id, 'pm_usBankAccount_insufficientFunds');
    const first = await view(done);
    expect(first.title).to.equal('Payment processing');
    expect(first.refresh).to.equal(`2; url=${new URL(done).pathname}?wait=1`);
    const later = await view(`${done}?wait=7`);
    expect(later.refresh).to.equal(`2; url=${new URL(done).pathname}?wait=8`);
    // The last of the refreshes: the page stops updating and says so.
    const last = await view(`${done}?wait=${DONE_REFRESH_MAX}`);
    expect(last.title).to.equal('Payment processing');
    expect(last.refresh).to.equal(undefined);
    expect(last.html).to.include('stopped updating');
    stripe.settlePaymentIntent(stripe.checkoutSessions.get(session.id)!.payment_intent as string, 'failed');
    // Stripe is asked again at most every few seconds per top-up.
    let page = await view(done);
    await until(async () => (page = await view(done)).title === 'Payment not completed', 10_000, 'the bounce shown');
    expect(page.html).to.include('The payment failed');
    expect(page.refresh).to.equal(undefined);
    expect(tryAgain(page.html)).to.match(/^\/top-up\/v1\./);
    expect(stripe.customers.get(customer)!.balance).to.equal(0);
  });

  it('paid: credited from the page itself (no webhook), no refresh; paid but the credit not confirmed: "being added", refreshing', async () => {
    const { customer, session, done } = await buy();
    stripe.completeCheckoutSession(session.id, 'pm_card_visa');
    const page = await view(done);
    expect(page.title).to.equal('Credit added');
    expect(page.html).to.include('$10.00 of API credit has been added');
    expect(page.refresh).to.equal(undefined);
    expect(stripe.customers.get(customer)!.balance).to.equal(-1000);
    // Another: Stripe refuses the credit for now (500s): paid, being added, the page refreshes.
    const second = await buy();
    stripe.completeCheckoutSession(second.session.id, 'pm_card_visa');
    stripe.failNextMatching(/^\/v1\/customers\/[^/]+\/balance_transactions$/, 2, 500, { method: 'POST' });
    const waiting = await view(second.done);
    expect(waiting.title).to.equal('Payment received');
    expect(waiting.html).to.include('your credit is being added');
    expect(waiting.refresh).to.match(/^2; url=\/top-up\/v1\.[^?]+\/done\/tu_[^?]+\?wait=1$/);
  });
});
