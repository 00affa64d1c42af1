// Team caps on PostgreSQL replicas whose clocks disagree at midnight (issue
// 23): once the replica ahead has counted usage in the new UTC day, the store
// holds the new day's spend only; the replica still in the old day must not
// read that as "nothing spent today" and grant the old day's cap again.
import { expect } from 'chai';
import type { RunningService } from '../../../control-service/src/service';
import { CONTROL, serviceFixture } from '../../support/fixture';
import { freshDatabase } from '../../support/postgres';

describe('caps: two PostgreSQL replicas whose clocks disagree at midnight', function () {
  this.timeout(60_000);
  const fx = serviceFixture({ prefix: 'payg-caps-skew-' });

  it('the replica behind does not grant the old day\'s cap again once the replica ahead has started the new day', async () => {
    let ahead = Date.UTC(2025, 7, 1, 0, 0, 1); // 1 August, just after midnight
    let behind = Date.UTC(2025, 6, 31, 23, 59, 50); // still 31 July
    const env = { PAYG_DATABASE_URL: await freshDatabase() };
    const doc = {
      store: { sqlite: undefined, postgres: {} }, cohorts: [], rules: [{ id: 'no-credit', limit: 'no_credit' }],
      metering: { default_cost: 1, settle: { enabled: false } }, leases: { recall_wait_ms: 0 },
    };
    const a: RunningService = await fx.start(doc, { env, now: () => ahead });
    const b: RunningService = await fx.start(doc, { env, now: () => behind });
    const team = fx.stripe.create({ balance: -100, metadata: { kong_consumer: 'app', 'payg_cap_daily.app': '5' } });
    for (const s of [a, b]) await s.sync!.sweep();
    const post = async (s: RunningService, path: string, body: unknown) => {
      const res = await fetch(`${s.url}${path}`, { method: 'POST', body: JSON.stringify(body), headers: { authorization: `Bearer ${CONTROL}`, 'content-type': 'application/json' } });
      expect(res.status).to.equal(200);
      return res.json() as Promise<any>;
    };
    let seq = 0;
    const drawAll = async (s: RunningService, node: string, at: number, want: number) => {
      const answer = await post(s, '/v1/leases', { node, consumer: 'app', want });
      if (!answer.lease) return { served: 0, answer };
      const n = Math.min(want, answer.lease.requests as number); // draws what it wants, gives the rest back
      await post(s, '/v1/usage', { events: Array.from({ length: n }, () => ({ id: `e${++seq}`, consumer: 'app', at, route: 'r', status: 200, lease: answer.lease.id })) });
      await post(s, '/v1/leases/release', { node, leases: [{ id: answer.lease.id, drawn: n }] });
      return { served: n, answer };
    };
    // 31 July at the replica behind: the day's cap, 5, then a cap refusal.
    let oldDay = (await drawAll(b, 'n-b', behind, 5)).served;
    expect(oldDay).to.equal(5);
    expect((await drawAll(b, 'n-b', behind, 1)).answer).to.include({ allow: false, reason: 'consumer_cap' });
    // 1 August at the replica ahead: 2 served in the new day.
    expect((await drawAll(a, 'n-a', ahead, 2)).served).to.equal(2);
    // Still 31 July behind: nothing more today.
    behind += 5000;
    const again = await drawAll(b, 'n-b', behind, 5);
    oldDay += again.served;
    expect(oldDay, 'served on 31 July').to.equal(5);
    expect(again.answer).to.include({ allow: false, reason: 'consumer_cap', resets_at: '2025-08-01T00:00:00.000Z' });
    // Its clock past midnight too: 1 August's 3 left.
    behind = ahead += 10_000;
    expect((await drawAll(b, 'n-b', behind, 5)).served).to.equal(3);
    void team;
  });
});
