// The estimated balance stays exact when Stripe loses answers, answers late,
// reorders events or refuses a settlement. The service runs in-process
// against the Stripe emulator through the SDK.
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import type { RunningService } from '../../../control-service/src/service';
import type { StripeEmulator } from '../../../testkit/stripe-emulator';
import { serviceFixture } from '../../support/fixture';

const WHSEC = 'whsec_exact_balance';

describe('exact balance when Stripe is unreliable', function () {
  this.timeout(20_000);
  const fx = serviceFixture({ prefix: 'payg-exact-' });
  let stripe: StripeEmulator;
  let svc: RunningService;
  let logLines: string[];

  async function start(metering: Record<string, unknown> = {}, stripeOpts: Record<string, unknown> = {}): Promise<RunningService> {
    const sink = new Writable({ write(chunk, _enc, cb) { logLines.push(String(chunk)); cb(); } });
    svc = await fx.start({
      stripe: { timeout_ms: 400, retry: { max_attempts: 1 }, ...stripeOpts },
      metering: { default_cost: 1, ...metering },
      emails: [
        { id: 'out-of-credit', cohort: 'no-credit', from: { address: 'billing@example.com' }, subject: 'out', text: 'out.txt.hbs' },
        { id: 'restored', cohort: 'no-credit', on: 'leave', from: { address: 'billing@example.com' }, subject: 'restored', text: 'out.txt.hbs' },
      ],
    }, { env: { STRIPE_WEBHOOK_SECRET: WHSEC, PAYG_CONTROL_TOKEN: undefined }, log: pino({ level: 'warn' }, sink) });
    stripe.webhook = { url: `${svc.url}/webhooks/stripe`, secret: WHSEC };
    return svc;
  }
  const admin = async (p: string) => (await fx.admin(`/admin/${p}`)).body;
  const usage = async (customer: string, n: number, prefix: string) => {
    const events = Array.from({ length: n }, (_, i) => ({ id: `${prefix}-${i}`, consumer: customer, at: Date.now(), route: null, status: 200 }));
    const res = await fetch(`${svc.url}/v1/usage`, { method: 'POST', body: JSON.stringify({ events }) });
    expect(res.status).to.equal(200);
  };
  const lastEventOf = (id: string) => [...stripe.events].reverse().find((e) => (e.data.object as { id: string }).id === id)!;

  beforeEach(() => {
    stripe = fx.stripe;
    fs.writeFileSync(path.join(fx.dir, 'out.txt.hbs'), 'Hi {{customer.name}}');
    logLines = [];
  });

  for (const via of ['webhook', 'sweep'] as const) {
    it(`$1.00 of credit, 60¢ used, settlement applied but its answer lost, then a ${via} shows −40¢: estimate −40¢, allowed, no email`, async () => {
      const c = stripe.create({ name: 'Ada', email: 'ada@example.com', balance: -100 });
      await start();
      await svc.sync!.sweep();
      await usage(c.id, 60, via);
      stripe.holdAnswers(/\/balance_transactions$/, 'POST'); // carried out; the answer comes after our timeout
      expect(await svc.settler!.settle()).to.include({ confirmed: 0, retrying: 1 });
      stripe.holdAnswers(undefined);
      expect(stripe.customers.get(c.id)!.balance, 'Stripe applied it').to.equal(-40);
      if (via === 'webhook') expect(await stripe.deliver(lastEventOf(c.id))).to.equal(200);
      else expect((await svc.sync!.sweep()).ok).to.equal(true);
      const state = await admin(`customers/${c.id}`);
      expect(state.estimated_balance).to.equal(-40);
      expect(state.cohorts).to.deep.equal([]);
      expect(state.decision.allow).to.equal(true);
      expect((await admin('emails/log')).emails, 'no out-of-credit nor restored email').to.deep.equal([]);
      expect((await admin(`settlements?customer=${c.id}`)).settlements[0]).to.include({ status: 'confirmed', amount: 60 });
      // The resend finds nothing to send: charged once.
      await svc.settler!.settle();
      expect(stripe.balanceTransactions).to.have.length(1);
      expect((await admin(`customers/${c.id}`)).estimated_balance).to.equal(-40);
    });
  }

  it('a top-up seen by webhook stands when the lost settlement answer is resent and replayed from Stripe\'s idempotency store', async () => {
    const c = stripe.create({ name: 'Ada', balance: -1000 });
    await start();
    await svc.sync!.sweep();
    await usage(c.id, 60, 'topup');
    stripe.holdAnswers(/\/balance_transactions$/, 'POST');
    await svc.settler!.settle();
    stripe.holdAnswers(undefined);
    stripe.addBalanceTransaction(c.id, -1000, 'usd', 'top-up');
    expect(await stripe.deliver(lastEventOf(c.id))).to.equal(200);
    expect((await admin(`customers/${c.id}`)).estimated_balance).to.equal(-1940);
    await svc.settler!.settle();
    expect((await admin(`customers/${c.id}`)).estimated_balance, 'not rolled back to the replayed ending_balance').to.equal(-1940);
    expect(stripe.balanceTransactions.filter((t) => t.description !== 'top-up'), 'charged once').to.have.length(1);
  });

  it('a webhook whose customer cannot be re-read gets 503 and changes nothing; Stripe\'s retries, newest first in one second, end at the newest', async () => {
    const c = stripe.create({ name: 'Ada', balance: -1000 });
    await start();
    await svc.sync!.sweep();
    stripe.pinClock(Math.floor(Date.now() / 1000));
    stripe.update(c.id, { balance: -500 });
    const older = lastEventOf(c.id);
    stripe.update(c.id, { balance: -200 });
    const newer = lastEventOf(c.id);
    expect(older.created).to.equal(newer.created);
    stripe.failNext(2, 500);
    expect(await stripe.deliver(newer)).to.equal(503);
    expect(await stripe.deliver(older)).to.equal(503);
    expect((await admin(`customers/${c.id}`)).estimated_balance, 'the events\' own objects are not trusted').to.equal(-1000);
    expect(await stripe.deliver(newer)).to.equal(200);
    expect(await stripe.deliver(older)).to.equal(200);
    expect((await admin(`customers/${c.id}`)).estimated_balance).to.equal(-200);
  });

  it('a meter event refused because its identifier exists (no error code) counts as delivered; later usage settles', async () => {
    const c = stripe.create({ name: 'Ada', balance: -1000 });
    stripe.errorCodes = false;
    await start({ settle: { mode: 'meter_events', schedule: '0 0 1 1 *' } });
    await svc.sync!.sweep();
    await usage(c.id, 5, 'meter');
    stripe.holdAnswers(/meter_events$/, 'POST');
    await svc.settler!.settle();
    stripe.holdAnswers(undefined);
    stripe.forgetIdempotencyKeys(); // past the key's 24 hours: Stripe answers "An event already exists with identifier …"
    expect(await svc.settler!.settle()).to.include({ confirmed: 1, failed: 0 });
    await usage(c.id, 3, 'meter-later');
    expect(await svc.settler!.settle()).to.include({ confirmed: 1 });
    const rows = (await admin(`settlements?customer=${c.id}`)).settlements;
    expect(rows.map((r: any) => [r.status, r.amount])).to.deep.equal([['confirmed', 5], ['confirmed', 3]]);
    expect(stripe.meterEvents).to.have.length(2);
  });

  it('a settlement Stripe refuses for good is marked failed (admin, metric, error log) and the customer\'s later usage still settles', async () => {
    const c = stripe.create({ name: 'Ada', balance: -1000 });
    await start();
    await svc.sync!.sweep();
    await usage(c.id, 7, 'refused');
    stripe.failNext(1, 400);
    expect(await svc.settler!.settle()).to.include({ confirmed: 0, failed: 1 });
    await usage(c.id, 4, 'after');
    expect(await svc.settler!.settle()).to.include({ confirmed: 1, failed: 0 });
    const rows = (await admin(`settlements?customer=${c.id}`)).settlements;
    expect(rows.map((r: any) => [r.status, r.amount])).to.deep.equal([['failed', 7], ['confirmed', 4]]);
    // The refused 7¢ were served: they stay counted against the estimate.
    expect((await admin(`customers/${c.id}`)).estimated_balance).to.equal(-1000 + 4 + 7);
    const metrics = await (await fetch(`${svc.url}/metrics`)).text();
    expect(metrics).to.match(/payg_settlements_total\{result="failed"\} 1\b/);
    expect(logLines.some((l) => l.includes('"level":50') && l.includes('settlement refused'))).to.equal(true);
  });
});
