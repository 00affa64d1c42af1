// Top-ups end to end against the Stripe emulator through the official SDK: the
// 402's signed link, the page, one Checkout Session per form, crediting exactly
// once however Stripe delivers, refunds and disputes, bad input and hostile links.
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import Stripe from 'stripe';
import type { RunningService } from '../../../control-service/src/service';
import { signToken } from '../../../control-service/src/top-ups/token';
import type { StripeEmulator, EmuEvent } from '../../../testkit/stripe-emulator';
import { SmtpCapture } from '../../../testkit/smtp-capture';
import { serviceFixture } from '../../support/fixture';
import { until } from '../../support/until';
import { formOf, freePort } from './support';

const WEBHOOK_SECRET = 'whsec_top_up_tests';
const TOP_UP_SECRET = 'top-up-secret-for-tests-0123456789abcdef';

describe('top-ups through Stripe Checkout (emulator)', function () {
  this.timeout(30_000);
  const fx = serviceFixture({ prefix: 'payg-top-ups-' });
  let stripe: StripeEmulator;
  let smtp: SmtpCapture;
  let svc: RunningService;
  let base: string;
  let sdk: Stripe;

  async function start(topUp: Record<string, unknown> = {}, checkout: Record<string, unknown> = {}): Promise<RunningService> {
    const port = await freePort();
    base = `http://127.0.0.1:${port}`;
    svc = await fx.start({
      listen: { port },
      stripe: { retry: { max_attempts: 3, base_delay_ms: 20, max_delay_ms: 50 }, timeout_ms: 3000 },
      top_up: { checkout: { public_url: base, currencies: { usd: { presets: [1000, 2500], min: 500, max: 50_000 } }, ...checkout }, ...topUp },
      rules: [{ id: 'block', cohort: 'no-credit', status: 402, body: '{"error":"payment_required","top_up_url":"{{top_up_url}}"}' }],
      emails: [{ id: 'restored', cohort: 'no-credit', on: 'leave', from: { address: 'billing@example.com' }, subject: 'Access restored', text: path.join(fx.dir, 'restored.txt') }],
      email_delivery: { poll_interval_ms: 20 },
      metering: undefined,
    }, { env: { STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET, PAYG_TOP_UP_SECRET: TOP_UP_SECRET, SMTP_URL: smtp.url, PAYG_ADMIN_TOKEN: undefined, PAYG_CONTROL_TOKEN: undefined } });
    stripe.webhook = { url: `${svc.url}/webhooks/stripe`, secret: WEBHOOK_SECRET };
    await svc.sync!.sweep();
    return svc;
  }
  const decision = async (id: string) => (await fetch(`${svc.url}/v1/decisions/${id}`)).json() as Promise<any>;
  const linkOf = async (id: string): Promise<string> => JSON.parse((await decision(id)).body).top_up_url;
  const ours = (customer: string) => stripe.balanceTransactions.filter((t) => t.customer === customer && (t.metadata as Record<string, string>)?.payg_top_up);
  const debits = (customer: string) => stripe.balanceTransactions.filter((t) => t.customer === customer && ((t.metadata as Record<string, string>)?.payg_top_up_refund || (t.metadata as Record<string, string>)?.payg_top_up_dispute));
  const sessions = () => [...stripe.checkoutSessions.values()] as Array<Record<string, any>>;
  const post = (url: string, form: Record<string, string>) => fetch(url, { method: 'POST', redirect: 'manual', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(form).toString() });
  const eventsOf = (type: string) => stripe.events.filter((e) => e.type === type);

  /** Through the page: the link, a preset, the redirect to Checkout. */
  async function buy(customer: string, amount: { preset?: string; custom?: string }): Promise<{ session: Record<string, any>; link: string; location: string }> {
    const link = await linkOf(customer);
    const page = await fetch(link);
    expect(page.status).to.equal(200);
    const { nonce, action } = formOf(await page.text());
    const res = await post(new URL(action, link).toString(), { nonce, ...amount });
    expect(res.status, await res.clone().text()).to.equal(303);
    const location = res.headers.get('location')!;
    const session = sessions().find((s) => s.url === location)!;
    expect(session, location).to.not.equal(undefined);
    return { session, link, location };
  }

  beforeEach(async () => {
    fs.writeFileSync(path.join(fx.dir, 'restored.txt'), 'Hi {{customer.first_name}}, your credit is {{credit.formatted}}.');
    stripe = fx.stripe;
    smtp = await new SmtpCapture().start();
    sdk = new Stripe(stripe.secretKey, { host: '127.0.0.1', port: Number(new URL(stripe.url).port), protocol: 'http', telemetry: false });
  });
  afterEach(() => smtp.stop()); // after the fixture's own afterEach has stopped the service

  it('the 402\'s link → the page → one session per form → paid → credited once, however the webhooks come; access and the restored email follow', async () => {
    const alice = stripe.create({ name: 'Alice Liddell', email: 'alice@example.com', balance: 0, currency: 'usd' });
    await start();
    const blocked = await decision(alice.id);
    expect(blocked).to.include({ allow: false, status: 402 });
    const link = await linkOf(alice.id);
    expect(link.startsWith(`${base}/top-up/v1.`)).to.equal(true);

    const page = await fetch(link);
    const html = await page.text();
    expect(page.headers.get('content-type')).to.equal('text/html; charset=utf-8');
    expect(page.headers.get('content-security-policy')).to.match(/default-src 'none'/);
    expect(html).to.include('Alice Liddell').and.include('$0.00').and.include('$10.00').and.include('$25.00').and.not.include('<script');

    // The form sent twice (a double click), and twice at once: one session.
    const { nonce, action } = formOf(html);
    const target = new URL(action, link).toString();
    const answers = await Promise.all([post(target, { nonce, preset: '2500' }), post(target, { nonce, preset: '2500' })]);
    const again = await post(target, { nonce, preset: '2500' });
    const locations = new Set([...answers, again].map((r) => { expect(r.status).to.equal(303); return r.headers.get('location'); }));
    expect(locations.size, 'one session').to.equal(1);
    expect(sessions()).to.have.length(1);
    const session = sessions()[0];
    expect(session).to.include({ mode: 'payment', customer: alice.id, amount_subtotal: 2500, currency: 'usd' });
    expect(session.metadata.payg_top_up_id).to.match(/^tu_/);
    expect(session.success_url).to.match(new RegExp(`^${base}/top-up/v1\\.[^/]+/done/tu_`));

    expect(stripe.completeCheckoutSession(session.id, 'pm_card_visa').kind).to.equal('complete');
    const all = [...stripe.events];
    // Redelivered, reordered, concurrent: every event three times, newest first, all at once.
    const statuses = await Promise.all([...all, ...all, ...all].reverse().map((e) => stripe.deliver(e)));
    expect(statuses.every((s) => s === 200), String(statuses)).to.equal(true);
    await until(() => ours(alice.id).length === 1 && stripe.customers.get(alice.id)!.balance === -2500, 5000, 'credited');
    expect(ours(alice.id)[0]).to.deep.include({ amount: -2500, currency: 'usd' });
    expect((ours(alice.id)[0].metadata as Record<string, string>).payg_top_up).to.equal(session.id);
    await until(async () => (await decision(alice.id)).allow === true, 3000, 'access back');
    // Redelivered again after the credit was confirmed, one by one.
    for (const e of all) expect(await stripe.deliver(e)).to.equal(200);

    // The customer comes back to the success page: the credit shows.
    const done = await (await fetch(session.success_url)).text();
    expect(done).to.include('$25.00 of API credit has been added');
    await until(() => smtp.raw.length === 1, 5000, 'restored email');
    expect((await smtp.inbox())[0].subject).to.equal('Access restored');
    expect(ours(alice.id)).to.have.length(1);
  });

  it('async payments credit when they clear; an unpaid completion credits nothing', async () => {
    const bob = stripe.create({ name: 'Bob', balance: 0, currency: 'usd' });
    await start();
    const { session } = await buy(bob.id, { custom: '12.50' });
    expect(session.amount_subtotal).to.equal(1250);
    stripe.completeCheckoutSession(session.id, 'pm_usBankAccount');
    for (const e of eventsOf('checkout.session.completed')) expect(await stripe.deliver(e)).to.equal(200);
    expect(ours(bob.id), 'not paid yet').to.have.length(0);
    stripe.settlePaymentIntent(stripe.checkoutSessions.get(session.id)!.payment_intent as string, 'succeeded');
    const succeeded = eventsOf('checkout.session.async_payment_succeeded');
    expect(succeeded).to.have.length(1);
    await Promise.all([stripe.deliver(succeeded[0]), stripe.deliver(succeeded[0]), ...eventsOf('checkout.session.completed').map((e) => stripe.deliver(e))]);
    await until(() => ours(bob.id).length === 1, 5000, 'credited after clearing');
    expect(stripe.customers.get(bob.id)!.balance).to.equal(-1250);
  });

  it('refunds debit what was refunded, once per refund; a dispute too; either can block again', async () => {
    const carol = stripe.create({ name: 'Carol', balance: 0, currency: 'usd' });
    await start();
    const { session } = await buy(carol.id, { preset: '2500' });
    stripe.completeCheckoutSession(session.id, 'pm_card_visa');
    for (const e of eventsOf('checkout.session.completed')) await stripe.deliver(e);
    await until(() => stripe.customers.get(carol.id)!.balance === -2500, 5000, 'credited');
    const pi = stripe.checkoutSessions.get(session.id)!.payment_intent as string;

    await sdk.refunds.create({ payment_intent: pi, amount: 1000 });
    const first = eventsOf('charge.refunded');
    await Promise.all([...first, ...first].map((e) => stripe.deliver(e)));
    await until(() => debits(carol.id).length === 1, 5000, 'first refund debited');
    expect(debits(carol.id)[0]).to.deep.include({ amount: 1000 });
    await sdk.refunds.create({ payment_intent: pi, amount: 1500 });
    const all = eventsOf('charge.refunded');
    await Promise.all([...all, ...all].reverse().map((e) => stripe.deliver(e)));
    await until(() => debits(carol.id).length === 2, 5000, 'second refund debited');
    for (const e of all) await stripe.deliver(e);
    expect(debits(carol.id).map((t) => t.amount)).to.deep.equal([1000, 1500]);
    expect(stripe.customers.get(carol.id)!.balance).to.equal(0);
    await until(async () => (await decision(carol.id)).allow === false, 3000, 'blocked again');

    // A dispute of another top-up.
    const second = await buy(carol.id, { preset: '1000' });
    stripe.completeCheckoutSession(second.session.id, 'pm_card_visa');
    for (const e of eventsOf('checkout.session.completed')) await stripe.deliver(e);
    await until(() => stripe.customers.get(carol.id)!.balance === -1000, 5000, 'credited');
    stripe.openDispute(stripe.checkoutSessions.get(second.session.id)!.payment_intent as string);
    for (const e of [...eventsOf('charge.dispute.created'), ...eventsOf('charge.dispute.created')]) expect(await stripe.deliver(e)).to.equal(200);
    await until(() => debits(carol.id).length === 3, 5000, 'dispute debited');
    expect(debits(carol.id)[2]).to.deep.include({ amount: 1000 });
    expect(stripe.customers.get(carol.id)!.balance).to.equal(0);
  });

  it('with invoice_creation and automatic_tax the session asks Stripe for both, and the credit is the amount chosen, before tax', async () => {
    const ivy = stripe.create({ name: 'Ivy', email: 'ivy@example.com', balance: 0, currency: 'usd' });
    await start({}, { invoice_creation: true, automatic_tax: true, product_name: 'Credits for the Example API' });
    const { session } = await buy(ivy.id, { preset: '2500' });
    expect(session.automatic_tax.enabled).to.equal(true);
    expect(session.invoice_creation.enabled).to.equal(true);
    const [line] = (await sdk.checkout.sessions.listLineItems(session.id)).data;
    expect(line).to.include({ description: 'Credits for the Example API', amount_subtotal: 2500 });
    stripe.completeCheckoutSession(session.id, 'pm_card_visa');
    for (const e of eventsOf('checkout.session.completed')) await stripe.deliver(e);
    await until(() => ours(ivy.id).length === 1, 5000, 'credited');
    expect(ours(ivy.id)[0]).to.deep.include({ amount: -2500 });
  });

  it('with debit_disputes: false a dispute takes nothing back', async () => {
    const dan = stripe.create({ name: 'Dan', balance: 0, currency: 'usd' });
    await start({ debit_disputes: false });
    const { session } = await buy(dan.id, { preset: '1000' });
    stripe.completeCheckoutSession(session.id, 'pm_card_visa');
    for (const e of eventsOf('checkout.session.completed')) await stripe.deliver(e);
    await until(() => stripe.customers.get(dan.id)!.balance === -1000, 5000, 'credited');
    stripe.openDispute(stripe.checkoutSessions.get(session.id)!.payment_intent as string);
    for (const e of eventsOf('charge.dispute.created')) expect(await stripe.deliver(e)).to.equal(200);
    expect(debits(dan.id)).to.have.length(0);
    expect(stripe.customers.get(dan.id)!.balance).to.equal(-1000);
  });

  it('bad input credits nothing: amounts out of range or not whole, sessions we did not create, of another customer or currency', async () => {
    const erin = stripe.create({ name: 'Erin', balance: 0, currency: 'usd' });
    const frank = stripe.create({ name: 'Frank', balance: 0, currency: 'usd' });
    await start();
    const link = await linkOf(erin.id);
    const { nonce, action } = formOf(await (await fetch(link)).text());
    const target = new URL(action, link).toString();
    for (const [form, message] of [
      [{ custom: '4.99' }, 'The smallest top-up is $5.00.'], [{ custom: '500.01' }, 'The largest top-up is $500.00.'],
      [{ custom: '12.345' }, 'at most 2 decimals'], [{ custom: 'ten' }, 'not a number'], [{ preset: '1' }, 'The smallest top-up is $5.00.'], [{}, 'Choose an amount.'],
    ] as Array<[Record<string, string>, string]>) {
      const res = await post(target, { nonce, ...form });
      expect(res.status, JSON.stringify(form)).to.equal(422);
      expect(await res.text()).to.include(message);
    }
    expect((await post(target, { preset: '1000' })).status, 'no nonce').to.equal(400);
    expect(sessions(), 'no session for bad input').to.have.length(0);

    // Sessions made outside the page, paid: none of them credits.
    const real = await buy(erin.id, { preset: '1000' });
    const topUpId = real.session.metadata.payg_top_up_id as string;
    const line = (currency: string, amount: number) => [{ quantity: 1, price_data: { currency, unit_amount: amount, product_data: { name: 'API credit' } } }];
    const urls = { success_url: 'http://127.0.0.1/s', cancel_url: 'http://127.0.0.1/c' };
    const forged = [
      await sdk.checkout.sessions.create({ mode: 'payment', customer: erin.id, line_items: line('usd', 1000), ...urls }),
      await sdk.checkout.sessions.create({ mode: 'payment', customer: erin.id, line_items: line('usd', 1000), metadata: { payg_top_up_id: 'tu_madeup' }, ...urls }),
      await sdk.checkout.sessions.create({ mode: 'payment', customer: frank.id, line_items: line('usd', 1000), metadata: { payg_top_up_id: topUpId }, ...urls }),
      await sdk.checkout.sessions.create({ mode: 'payment', customer: erin.id, line_items: line('eur', 1000), metadata: { payg_top_up_id: topUpId }, ...urls }),
      await sdk.checkout.sessions.create({ mode: 'payment', customer: erin.id, line_items: line('usd', 50_000), metadata: { payg_top_up_id: topUpId }, ...urls }),
    ];
    for (const s of forged) stripe.completeCheckoutSession(s.id, 'pm_card_visa');
    for (const e of eventsOf('checkout.session.completed')) expect(await stripe.deliver(e)).to.equal(200);
    expect(ours(erin.id), 'nothing credited to Erin').to.have.length(0);
    expect(ours(frank.id), 'nothing credited to Frank').to.have.length(0);
    // The real one still credits, once.
    stripe.completeCheckoutSession(real.session.id, 'pm_card_visa');
    for (const e of eventsOf('checkout.session.completed')) await stripe.deliver(e);
    await until(() => ours(erin.id).length === 1, 5000, 'the real one credited');
    expect(stripe.customers.get(erin.id)!.balance).to.equal(-1000);
  });

  it('hostile links: tampered, expired, another customer\'s, unknown paths: a clear 4xx page and nothing created', async () => {
    const gina = stripe.create({ name: 'Gina', balance: 0, currency: 'usd' });
    const hank = stripe.create({ name: 'Hank', balance: 0, currency: 'usd' });
    await start();
    const link = await linkOf(gina.id);
    const token = link.split('/top-up/')[1];
    const [v, , exp, mac] = token.split('.');
    const cases: Array<[string, number, string]> = [
      [`${base}/top-up/${[v, token.split('.')[1], exp, mac.slice(0, 10) + (mac[10] === 'A' ? 'B' : 'A') + mac.slice(11)].join('.')}`, 403, 'not valid'],
      [`${base}/top-up/${[v, Buffer.from(hank.id).toString('base64url'), exp, mac].join('.')}`, 403, 'not valid'],
      [`${base}/top-up/${signToken(TOP_UP_SECRET, gina.id, Date.now() - 1000)}`, 410, 'expired'],
      [`${base}/top-up/${signToken('another-secret-another-secret-0123456789', gina.id, Date.now() + 60_000)}`, 403, 'not valid'],
      [`${base}/top-up/garbage`, 400, 'not valid'],
      [`${base}/top-up/${signToken(TOP_UP_SECRET, 'cus_nobody', Date.now() + 60_000)}`, 404, 'No billing account'],
    ];
    for (const [url, status, text] of cases) {
      for (const method of ['GET', 'POST']) {
        const res = await fetch(url, { method, redirect: 'manual', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: method === 'POST' ? 'nonce=AAAAAAAAAAAAAAAAAAAAAA&preset=1000' : undefined });
        expect(res.status, `${method} ${url}`).to.equal(status);
        expect(res.headers.get('content-security-policy')).to.match(/default-src 'none'/);
        expect(await res.text()).to.include(text);
      }
    }
    expect(sessions()).to.have.length(0);
    // A leaked link cannot open Checkout Sessions without end (it would spend the Stripe request budget).
    const hankLink = await linkOf(hank.id);
    const statuses: number[] = [];
    for (let i = 0; i < 12; i++) statuses.push((await post(hankLink, { nonce: `flood-nonce-${String(i).padStart(8, '0')}`, preset: '1000' })).status);
    expect(statuses.filter((s) => s === 303), 'ten new sessions per customer per 10 minutes').to.have.length(10);
    expect(statuses.slice(10)).to.deep.equal([429, 429]);
    expect((await post(hankLink, { nonce: 'flood-nonce-00000000', preset: '1000' })).status, 'the same form again still leads to its session').to.equal(303);
    expect(sessions()).to.have.length(10);
    // Another customer's top-up on one's own link is not shown.
    const session = sessions()[0];
    expect(session.customer).to.equal(hank.id);
    const res = await fetch(`${link}/done/${session.metadata.payg_top_up_id}`);
    expect(res.status).to.equal(404);
  });
});
