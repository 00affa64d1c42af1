// A refund and a dispute of one payment handled at once (two replicas, or one
// process) on PostgreSQL: the debits are serialized per payment, so together
// they never take back more than the payment credited. An auto-recharge's
// debits name the recharge, which has no top_ups row to lock (found by an
// adversarial review: 13 of 20 rounds took back 1,400 of a 1,000 credit).
import { expect } from 'chai';
import { freshDatabase } from '../../support/postgres';
import { PostgresStore } from '../../../control-service/src/store/postgres';
import { debitIntent, debitFor } from '../../../control-service/src/top-ups/core';

describe('top-ups on PostgreSQL: concurrent debits of one payment', function () {
  this.timeout(120_000);
  it('a refund and a dispute of one auto-recharge at once never debit more than it credited', async () => {
    const store = await PostgresStore.open(await freshDatabase());
    const totals: number[] = [];
    try {
      for (let k = 0; k < 20; k++) {
        const rechargeId = `rc_race_${k}`;
        // 300 already refunded; now a second refund (700 in all) and a dispute (all of it) arrive together.
        const refund = debitIntent('refund', `re_${k}`, 'pi_x', rechargeId, 'cus_1', 0, 'usd');
        const dispute = debitIntent('dispute', `dp_${k}`, 'pi_x', rechargeId, 'cus_1', 0, 'usd');
        const [r1, r2] = await Promise.all([
          store.enqueueDebit(refund, (before) => debitFor(400, 1000, 1000, before), 1),
          store.enqueueDebit(dispute, (before) => debitFor(1000, 1000, 1000, before), 1),
        ]);
        totals.push((r1.row?.amount ?? 0) + (r2.row?.amount ?? 0));
      }
    } finally { await store.close(); }
    expect(totals.filter((t) => t > 1000), `debited per round: ${totals.join(', ')}`).to.deep.equal([]);
  });
});
