// Auto-recharge, the crossing the engine hands to the store (issue 24: the
// engine coordinates, recharges/core.ts decides): on for the customer, a
// currency known, the estimated credit crossing the threshold downwards.
import { expect } from 'chai';
import { META, rechargeCrossing, type RechargeOptions } from '../../../control-service/src/recharges/core';

const OPTIONS: RechargeOptions = {
  enabled: true, threshold: 500, amount: 2000, monthlyCap: 10000, minAmount: 500, maxAmount: 50000, maxThreshold: 20000,
  maxMonthlyCap: 200000, minIntervalMs: 60_000, maxConsecutiveFailures: 3, pollIntervalMs: 1000,
};
const on = { [META.enabled]: 'on' };

describe('auto-recharge: the crossing of a change (pure)', () => {
  it('credit $6 → $4 crosses $5: one crossing with the settings, the currency in lower case and the interval', () => {
    expect(rechargeCrossing({ id: 'cus_a', metadata: on, currency: 'USD' }, -600, -400, 1000, OPTIONS, 'eur')).to.deep.equal({
      customerId: 'cus_a', currency: 'usd', settings: { threshold: 500, amount: 2000, monthlyCap: 10000 }, at: 1000, minIntervalMs: 60_000,
    });
  });
  it('the page\'s default currency when the customer has none; none at all → nothing', () => {
    expect(rechargeCrossing({ id: 'cus_a', metadata: on, currency: null }, -600, -400, 1, OPTIONS, 'EUR')?.currency).to.equal('eur');
    expect(rechargeCrossing({ id: 'cus_a', metadata: on, currency: null }, -600, -400, 1, OPTIONS, undefined)).to.equal(undefined);
  });
  it('nothing when staying below, going up, staying above, off for the customer or the operator, or settings out of bounds', () => {
    const c = { id: 'cus_a', metadata: on, currency: 'usd' };
    expect(rechargeCrossing(c, -400, -300, 1, OPTIONS, 'usd')).to.equal(undefined);
    expect(rechargeCrossing(c, -400, -600, 1, OPTIONS, 'usd')).to.equal(undefined);
    expect(rechargeCrossing(c, -900, -500, 1, OPTIONS, 'usd')).to.equal(undefined);
    expect(rechargeCrossing({ ...c, metadata: {} }, -600, -400, 1, OPTIONS, 'usd')).to.equal(undefined);
    expect(rechargeCrossing(c, -600, -400, 1, { ...OPTIONS, enabled: false }, 'usd')).to.equal(undefined);
    expect(rechargeCrossing({ ...c, metadata: { ...on, [META.amount]: '1' } }, -600, -400, 1, OPTIONS, 'usd')).to.equal(undefined);
  });
});
