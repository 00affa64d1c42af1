// Following Stripe's state (control-service/src/stripe/sync.ts and the engine it
// feeds), as docs/control-service.md promises: a state read earlier never rolls
// back one read later, whatever path it comes by, and sweeps never overlap.
import { expect } from 'chai';
import path from 'node:path';
import { Engine } from '../../../control-service/src/engine';
import { SqliteStore } from '../../../control-service/src/store/sqlite';
import { serviceFixture } from '../../support/fixture';

describe('following Stripe\'s state: versions and sweeps', function () {
  this.timeout(20_000);
  const fx = serviceFixture({ prefix: 'payg-sync-' });

  it('an older Stripe state never rolls back a newer one (whatever path it comes by)', async () => {
    const store = new SqliteStore(path.join(fx.dir, 'engine.sqlite'));
    try {
      const engine = new Engine(fx.config(), store);
      await engine.init();
      const ada = { id: 'cus_ada', balance: -500, currency: 'usd', name: 'Ada', email: null, metadata: {} };
      await engine.apply([{ ...ada, balance: 0, version: 2000 }], []);
      expect(JSON.parse(engine.decide('cus_ada').json).allow).to.equal(false);
      await engine.apply([{ ...ada, version: 1000 }], []); // a slow sweep page or a late event, read earlier
      expect(JSON.parse(engine.decide('cus_ada').json).allow, 'still blocked: the older credit is ignored').to.equal(false);
      await engine.apply([{ ...ada, version: 3000 }], []);
      expect(JSON.parse(engine.decide('cus_ada').json).allow, 'a newer state applies').to.equal(true);
    } finally { await store.close(); }
  });

  it('sweeps never overlap: a sweep asked for while one runs joins it', async () => {
    for (let i = 0; i < 250; i++) fx.stripe.create({ balance: -100 });
    const svc = await fx.start({ stripe: { page_size: 100 } });
    const [a, b] = await Promise.all([svc.sync!.sweep(), svc.sync!.sweep()]);
    expect(a).to.include({ ok: true, customers: 250 });
    expect(b).to.equal(a);
    expect(fx.stripe.requests.filter((r) => r.path === '/v1/customers'), 'three pages listed once').to.have.length(3);
  });
});
