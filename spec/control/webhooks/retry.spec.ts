// A webhook is answered 2xx only once it is applied (docs/webhooks-and-emails.md):
// one that could not be applied gets a 5xx, so Stripe delivers it again, and
// that retry is applied, not ignored as a replay.
import { expect } from 'chai';
import { serviceFixture } from '../../support/fixture';

const WEBHOOK_SECRET = 'whsec_retry';

describe('webhooks: a delivery that could not be applied is retried by Stripe', function () {
  this.timeout(20_000);
  const fx = serviceFixture({ prefix: 'payg-wh-retry-' });

  it('a webhook that could not be applied answers 5xx, so Stripe retries it, and the retry applies', async () => {
    const stripe = fx.stripe;
    const c = stripe.create({ balance: -500 });
    const svc = await fx.start({}, { env: { STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET } });
    stripe.webhook = { url: `${svc.url}/webhooks/stripe`, secret: WEBHOOK_SECRET };
    expect((await svc.sync!.sweep()).ok).to.equal(true);
    stripe.customers.get(c.id)!.balance = 0;
    const event = stripe.events.find((e) => e.type === 'customer.created')!;
    const sync = svc.sync!;
    const real = sync.applyEvent.bind(sync);
    sync.applyEvent = async () => { throw new Error('store busy'); };
    expect(await stripe.deliver(event)).to.be.within(500, 599);
    sync.applyEvent = real;
    expect(await stripe.deliver(event), 'the retry is not taken for a replay').to.equal(200);
    expect(JSON.parse(svc.engine.decide(c.id).json).allow).to.equal(false);
  });
});
