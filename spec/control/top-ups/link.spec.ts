// The top-up link a blocked customer's 402 body carries (docs/top-ups.md,
// docs/control-service.md: top_up.url and top_up.metadata_key), on the running
// service: the customer's own page when their Stripe metadata names one.
import { expect } from 'chai';
import { serviceFixture } from '../../support/fixture';

describe('top-ups: the link in a 402 body', function () {
  this.timeout(20_000);
  const fx = serviceFixture({ prefix: 'payg-top-up-link-' });

  it('top_up.metadata_key: a blocked customer\'s 402 body links to their own top-up page, others to top_up.url', async () => {
    const own = fx.stripe.create({ balance: 0, metadata: { top_up_link: 'https://vip.example.com/ada' } });
    const plain = fx.stripe.create({ balance: 0 });
    const svc = await fx.start({
      top_up: { url: 'https://pay.example.com/{customer_id}', metadata_key: 'top_up_link' },
      rules: [{ id: 'block', cohort: 'no-credit', body: '{"top_up":"{{top_up_url}}"}' }],
    });
    expect((await svc.sync!.sweep()).ok).to.equal(true);
    const body = (id: string) => JSON.parse(JSON.parse(svc.engine.decide(id).json).body);
    expect(body(own.id)).to.deep.equal({ top_up: 'https://vip.example.com/ada' });
    expect(body(plain.id)).to.deep.equal({ top_up: `https://pay.example.com/${plain.id}` });
  });
});
