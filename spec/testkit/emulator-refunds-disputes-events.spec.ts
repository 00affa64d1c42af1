// Refunds, disputes and events through the official SDK, and webhook delivery
// as Stripe does it: signed, to every endpoint, redelivered, reordered and
// concurrent on demand.
import { expect } from 'chai';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import Stripe from 'stripe';
import { StripeEmulator } from '../../testkit/stripe-emulator';
import { until } from '../support/until';
import { sdkFor, stripeError } from './sdk';

describe('Stripe emulator: refunds, disputes, events and webhooks', () => {
  let emu: StripeEmulator;
  let stripe: Stripe;
  let customer: string;
  let receiver: http.Server;
  let received: Stripe.Event[];
  let receiverUrl: string;
  const SECRET = 'whsec_emulator_spec';
  beforeEach(async () => {
    emu = await new StripeEmulator().start();
    stripe = sdkFor(emu);
    customer = emu.create({ email: 'ada@example.com' }).id;
    received = [];
    receiver = http.createServer((req, res) => {
      let body = '';
      req.on('data', (c) => { body += c; });
      req.on('end', () => {
        try {
          received.push(stripe.webhooks.constructEvent(body, req.headers['stripe-signature'] as string, SECRET));
          res.writeHead(200).end();
        } catch { res.writeHead(400).end(); }
      });
    });
    await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r));
    receiverUrl = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hook`;
  });
  afterEach(async () => { await emu.stop(); receiver.closeAllConnections(); await new Promise((r) => receiver.close(r)); });

  const paid = async (amount = 2000) => {
    const s = await stripe.checkout.sessions.create({ mode: 'payment', customer, success_url: 'http://127.0.0.1:9/ok', line_items: [{ quantity: 1, price_data: { currency: 'usd', unit_amount: amount, product_data: { name: 'API credit' } } }] });
    emu.completeCheckoutSession(s.id, 'pm_card_visa');
    const pi = await stripe.paymentIntents.retrieve((await stripe.checkout.sessions.retrieve(s.id)).payment_intent as string);
    return { pi, charge: pi.latest_charge as string };
  };

  it('partial then full refunds: charge.refunded each time with the updated charge and previous_attributes; then charge_already_refunded', async () => {
    const { pi, charge } = await paid();
    const r1 = await stripe.refunds.create({ payment_intent: pi.id, amount: 500, metadata: { why: 'partial' } });
    expect(r1).to.include({ object: 'refund', amount: 500, charge, payment_intent: pi.id, status: 'succeeded' });
    let ch = await stripe.charges.retrieve(charge);
    expect(ch).to.include({ amount_refunded: 500, refunded: false });
    const tooMuch = await stripeError(stripe.refunds.create({ charge, amount: 1600 }));
    expect(tooMuch).to.include({ statusCode: 400, param: 'amount' });
    await stripe.refunds.create({ charge });
    ch = await stripe.charges.retrieve(charge);
    expect(ch).to.include({ amount_refunded: 2000, refunded: true });
    const events = emu.eventsOfType('charge.refunded');
    expect(events.map((e) => (e.data.object as Stripe.Charge).amount_refunded)).to.deep.equal([500, 2000]);
    expect(events[1].data.previous_attributes).to.deep.equal({ amount_refunded: 500, refunded: false });
    expect(await stripeError(stripe.refunds.create({ charge }))).to.include({ code: 'charge_already_refunded' });
    expect((await stripe.refunds.list({ payment_intent: pi.id })).data).to.have.length(2);
    expect(await stripeError(stripe.refunds.create({} as any))).to.include({ statusCode: 400 });
    expect(await stripeError(stripe.refunds.create({ charge: 'ch_nope' }))).to.include({ code: 'resource_missing', param: 'charge' });
    expect((await stripe.customers.retrieve(customer) as Stripe.Customer).balance, 'a refund does not touch the balance either').to.equal(0);
  });

  it('a dispute opened on a charge: charge.dispute.created, the charge disputed, refunds refused', async () => {
    const { pi, charge } = await paid();
    const dispute = emu.openDispute(pi.id, { reason: 'fraudulent' });
    expect((await stripe.disputes.retrieve(dispute.id))).to.include({ object: 'dispute', charge, payment_intent: pi.id, amount: 2000, status: 'needs_response', reason: 'fraudulent' });
    expect(emu.eventsOfType('charge.dispute.created').map((e) => (e.data.object as Stripe.Dispute).id)).to.deep.equal([dispute.id]);
    expect((await stripe.charges.retrieve(charge)).disputed).to.equal(true);
    expect(await stripeError(stripe.refunds.create({ charge }))).to.include({ code: 'charge_disputed' });
    emu.closeDispute(dispute.id, 'lost');
    expect((await stripe.disputes.retrieve(dispute.id)).status).to.equal('lost');
    expect(emu.eventsOfType('charge.dispute.closed')).to.have.length(1);
  });

  it('events: Stripe\'s shape, request ids, filtered lists and pagination', async () => {
    await paid();
    const all = await stripe.events.list({ limit: 100 });
    for (const e of all.data) {
      expect(e).to.include({ object: 'event', livemode: false, api_version: '2026-10-28.endive' });
      expect(e).to.have.keys('id', 'object', 'api_version', 'created', 'data', 'livemode', 'pending_webhooks', 'request', 'type');
    }
    const created = all.data.find((e) => e.type === 'customer.created')!;
    expect(created.request).to.deep.equal({ id: null, idempotency_key: null });
    const session = all.data.find((e) => e.type === 'payment_intent.created')!;
    expect(session.request).to.deep.equal({ id: null, idempotency_key: null }, 'made by the customer on the page, not by an API request');
    const viaApi = await stripe.refunds.create({ payment_intent: (await stripe.paymentIntents.list()).data[0].id }, { idempotencyKey: 'refund-1' });
    const refunded = (await stripe.events.list({ type: 'charge.refunded' })).data[0];
    expect(refunded.request!.idempotency_key).to.equal('refund-1');
    expect(refunded.request!.id).to.match(/^req_/);
    expect((refunded.data.object as Stripe.Charge).id).to.equal(viaApi.charge);
    const page1 = await stripe.events.list({ limit: 2 });
    const page2 = await stripe.events.list({ limit: 2, starting_after: page1.data[1].id });
    expect(page1.has_more).to.equal(true);
    expect(page2.data[0].id).to.not.equal(page1.data[1].id);
    expect((await stripe.events.list({ type: 'checkout.session.*' })).data.map((e) => e.type)).to.deep.equal(['checkout.session.completed']);
    expect(await stripeError(stripe.events.retrieve('evt_nope'))).to.include({ statusCode: 404, code: 'resource_missing' });
  });

  it('delivers signed events to every endpoint, and redelivers them reordered and concurrently on demand', async () => {
    emu.webhook = { url: receiverUrl, secret: SECRET };
    emu.webhookEndpoints.push({ url: receiverUrl, secret: SECRET });
    const { pi } = await paid();
    const types = ['payment_intent.succeeded', 'charge.succeeded', 'checkout.session.completed'];
    await until(() => types.every((t) => received.filter((e) => e.type === t).length === 2), 5000, 'events at both endpoints');
    expect(received.find((e) => e.type === 'checkout.session.completed')!.pending_webhooks).to.equal(2);
    received = [];
    emu.autoDeliver = false;
    await stripe.refunds.create({ payment_intent: pi.id, amount: 100 });
    await stripe.refunds.create({ payment_intent: pi.id, amount: 200 });
    expect(received).to.have.length(0);
    const refunds = emu.eventsOfType('charge.refunded');
    const statuses = await emu.redeliver(refunds, { order: 'reverse', times: 2, concurrent: true });
    expect(statuses).to.deep.equal(Array(8).fill(200));
    expect(received.filter((e) => e.id === refunds[0].id)).to.have.length(4);
    const sequential = [];
    received = [];
    await emu.redeliver(refunds, { order: 'reverse' });
    for (const e of received) sequential.push(e.id);
    expect(sequential).to.deep.equal([refunds[1].id, refunds[1].id, refunds[0].id, refunds[0].id]);
    expect(await emu.deliver(refunds[0], { secret: 'whsec_wrong' })).to.equal(400);
  });
});
