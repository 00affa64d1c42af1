// One Stripe event delivered several times at once (Stripe retries, a proxy
// that repeats): the deliveries share one re-read of the customer, since
// Stripe's rate limit is shared with the sweep; each is still answered 2xx
// only once the change is stored, and a failed re-read is not taken as done.
import { expect } from 'chai';
import type { RunningService } from '../../../control-service/src/service';
import type { StripeEmulator } from '../../../testkit/stripe-emulator';
import { serviceFixture } from '../../support/fixture';

const WEBHOOK_SECRET = 'whsec_single_flight';

describe('webhooks: concurrent deliveries of one event share one Stripe re-read', function () {
  this.timeout(30_000);
  const fx = serviceFixture({ prefix: 'payg-wh-sf-' });
  let stripe: StripeEmulator;
  let svc: RunningService | undefined;

  beforeEach(async () => {
    stripe = fx.stripe;
    svc = await fx.start({
      stripe: { poll: undefined, retry: { max_attempts: 2, base_delay_ms: 20, max_delay_ms: 50 }, timeout_ms: 5000 },
      rules: [{ id: 'block-no-credit', cohort: 'no-credit', status: 402, body: '{"error":"payment_required"}' }],
      metering: undefined,
    }, { env: { STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET, PAYG_ADMIN_TOKEN: undefined, PAYG_CONTROL_TOKEN: undefined } });
    stripe.webhook = { url: `${svc.url}/webhooks/stripe`, secret: WEBHOOK_SECRET };
  });

  const decision = async (consumer: string) => (await fetch(`${svc!.url}/v1/decisions/${encodeURIComponent(consumer)}`)).json() as Promise<{ allow: boolean }>;
  /** Reads of this one customer counted at the emulator (every answer, whatever its status). */
  const reads = (id: string) => stripe.requests.filter((r) => r.method === 'GET' && r.path === `/v1/customers/${id}`).length;

  async function usedUp(): Promise<{ id: string; event: Parameters<StripeEmulator['deliver']>[0] }> {
    const c = stripe.create({ balance: -500 });
    expect((await svc!.sync!.sweep()).ok).to.equal(true);
    expect((await decision(c.id)).allow).to.equal(true);
    stripe.addBalanceTransaction(c.id, 500); // credit used up: Stripe emits customer.updated
    const event = stripe.events.filter((e) => e.type === 'customer.updated').at(-1)!;
    return { id: c.id, event };
  }

  it('4 signed deliveries of one event at once: exactly 1 re-read, all 4 answered 200 with the change stored', async () => {
    const { id, event } = await usedUp();
    const before = reads(id);
    const statuses = await Promise.all([1, 2, 3, 4].map(() => stripe.deliver(event)));
    expect(statuses).to.deep.equal([200, 200, 200, 200]);
    expect(reads(id) - before, 're-reads of the customer').to.equal(1);
    // Answered 200 only once stored: the decision has changed already.
    expect((await decision(id)).allow).to.equal(false);
    // A later redelivery is a duplicate: no read at all.
    expect(await stripe.deliver(event)).to.equal(200);
    expect(reads(id) - before, 'after a later redelivery').to.equal(1);
  });

  it('when the one re-read fails, all 4 deliveries get 503 and nothing is remembered: the next delivery reads again and applies it', async () => {
    const { id, event } = await usedUp();
    stripe.setDown(true);
    const statuses = await Promise.all([1, 2, 3, 4].map(() => stripe.deliver(event)));
    expect(statuses).to.deep.equal([503, 503, 503, 503]);
    expect((await decision(id)).allow, 'nothing applied').to.equal(true);
    stripe.setDown(false);
    const before = reads(id);
    expect(await stripe.deliver(event)).to.equal(200);
    expect(reads(id) - before).to.equal(1);
    expect((await decision(id)).allow).to.equal(false);
  });
});
