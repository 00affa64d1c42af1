// A grant the consumer's cap refuses waits for a recall (leases.recall_wait_ms) only when other
// nodes' leases of that same consumer hold some of its cap: what other consumers' leases hold
// frees the team's credit when recalled, never this consumer's cap. A consumer at its cap with
// nothing held elsewhere is refused at once (with reason consumer_cap), on SQLite and PostgreSQL;
// one whose own lease at another node holds its cap still waits and is granted what comes back.
import { expect } from 'chai';
import { serviceFixture } from '../../support/fixture';
import { freshDatabase } from '../../support/postgres';

const RECALL_WAIT_MS = 8_000;

for (const storeKind of ['sqlite', 'postgres'] as const) {
  describe(`leases: a consumer_cap refusal waits for a recall only when other nodes hold that consumer's cap (${storeKind})`, function () {
    this.timeout(60_000);
    const fx = serviceFixture({ prefix: `payg-cap-recall-${storeKind}-` });

    async function start() {
      const store = storeKind === 'postgres' ? { store: { sqlite: undefined, postgres: {} } } : {};
      const env = storeKind === 'postgres' ? { env: fx.env({ PAYG_DATABASE_URL: await freshDatabase() }) } : {};
      const svc = await fx.start({ ...store, metering: { default_cost: 1 }, leases: { recall_wait_ms: RECALL_WAIT_MS } }, env);
      return svc;
    }
    const lease = async (node: string, consumer: string, want = 5) => {
      const r = await fx.control('/v1/leases', { method: 'POST', body: JSON.stringify({ node, consumer, want }) });
      expect(r.status, JSON.stringify(r.body)).to.equal(200);
      return r.body as { allow: boolean; reason?: string; lease?: { id: string; requests: number } };
    };

    it('its cap held only by the asking node while a teammate\'s lease is held elsewhere: refused at once with consumer_cap, not after recall_wait_ms', async () => {
      // 1,000 cents of team credit; app-batch may spend 5 a day.
      fx.stripe.create({ balance: -1000, metadata: { kong_consumer: 'app-web, app-batch', 'payg_cap_daily.app-batch': '5' } });
      const svc = await start();
      await svc.sync!.sweep();
      // Node A holds a lease of app-web (team credit that a recall could bring back, but no cap of app-batch).
      expect((await lease('node-a', 'app-web', 20)).lease?.requests, 'node A holds a teammate\'s lease').to.be.greaterThan(0);
      // Node C holds app-batch's whole cap, draws it all and asks again (a renewal giving the lease back):
      // the cap is held only by node C's own drawn lease (its usage not yet sent), nothing of it elsewhere.
      const first = await lease('node-c', 'app-batch', 5);
      expect(first.lease?.requests, 'node C leases the whole cap').to.equal(5);

      const started = Date.now();
      const r = await fx.control('/v1/leases', { method: 'POST', body: JSON.stringify({ node: 'node-c', consumer: 'app-batch', want: 1, previous: { id: first.lease!.id, drawn: 5 } }) });
      const took = Date.now() - started;
      const c = r.body as { allow: boolean; reason?: string };
      expect(c.allow, JSON.stringify(c)).to.equal(false);
      expect(c.reason).to.equal('consumer_cap');
      // Before: it waited the whole recall_wait_ms (8 s) for node A's lease of app-web, which cannot free app-batch's cap.
      expect(took, 'refused without waiting for a recall').to.be.below(RECALL_WAIT_MS / 2);
    });

    it('at its cap while its own lease at another node holds the cap: waits for the recall and is granted what that node gives back', async () => {
      fx.stripe.create({ balance: -1000, metadata: { kong_consumer: 'app-web, app-batch', 'payg_cap_daily.app-batch': '5' } });
      const svc = await start();
      await svc.sync!.sweep();
      const a = await lease('node-a', 'app-batch', 5);
      expect(a.lease?.requests, 'node A holds app-batch\'s whole cap').to.equal(5);
      // Node B asks while A holds the cap; A gives back what it did not draw (4 of 5) a moment later, as a recalled node does.
      const asked = lease('node-b', 'app-batch', 1);
      await new Promise((r) => setTimeout(r, 300));
      const released = await fx.control('/v1/leases/release', { method: 'POST', body: JSON.stringify({ node: 'node-a', leases: [{ id: a.lease!.id, drawn: 1 }] }) });
      expect(released.body).to.deep.equal({ released: 1 });
      const b = await asked;
      expect(b.allow, JSON.stringify(b)).to.equal(true);
      expect(b.lease?.requests).to.be.greaterThan(0);
    });
  });
}
