// The customer book alone (control-service/src/customer-book.ts): which
// customer a consumer names, conflicts, cohorts, deletions. Pure: no store, no clock.
import { expect } from 'chai';
import { CustomerBook, type DecisionAnswer } from '../../../control-service/src/customer-book';
import { openLedger, type LedgerState } from '../../../control-service/src/ledger';
import type { StoredCustomer } from '../../../control-service/src/store/store';

const customer = (id: string, claims?: string, balance = -1000): StoredCustomer => ({
  id, balance, currency: 'usd', name: null, email: null, version: 1, metadata: claims === undefined ? {} : { kong_consumer: claims },
});

function book(): { book: CustomerBook; answered: string[] } {
  const answered: string[] = [];
  const b = new CustomerBook({
    consumerMetadataKey: 'kong_consumer',
    answer: (c: StoredCustomer, cohorts: string[], ledger: LedgerState): DecisionAnswer => {
      answered.push(c.id);
      return { json: JSON.stringify({ id: c.id, cohorts, credit: -ledger.balance }), outcome: cohorts.includes('no-credit') ? 'block' : 'allow' };
    },
  });
  return { book: b, answered };
}
const put = (b: CustomerBook, c: StoredCustomer, cohorts: string[] = []) => b.put(c, cohorts, openLedger(c.balance, c.version));

describe('customer book: consumers, conflicts, cohorts', () => {
  it('a consumer claimed by one customer resolves to it; a customer id resolves to itself', () => {
    const { book: b } = book();
    put(b, customer('cus_a', 'app-web, app-batch'));
    expect(b.resolve('app-web')).to.equal('cus_a');
    expect(b.resolve('app-batch')).to.equal('cus_a');
    expect(b.resolve('cus_a')).to.equal('cus_a');
    expect(b.resolve('nobody')).to.equal(undefined);
    expect(b.conflicts()).to.deep.equal([]);
  });

  it('a consumer claimed by two customers is a conflict: it resolves to none, and is reported with both', () => {
    const { book: b } = book();
    put(b, customer('cus_b', 'shared, only-b'));
    put(b, customer('cus_a', 'shared'));
    expect(b.resolve('shared')).to.equal(undefined);
    expect(b.isConflict('shared')).to.equal(true);
    expect(b.resolve('only-b'), 'the other claims stand').to.equal('cus_b');
    expect(b.isConflict('only-b')).to.equal(false);
    expect(b.conflicts()).to.deep.equal([{ consumer: 'shared', customers: ['cus_a', 'cus_b'] }]);
  });

  it('a conflict ends when one claimant drops the claim or is removed; the consumer resolves to the one left', () => {
    const { book: b } = book();
    put(b, customer('cus_a', 'shared'));
    put(b, customer('cus_b', 'shared'));
    put(b, customer('cus_c', 'shared'));
    put(b, customer('cus_a', 'elsewhere'));
    expect(b.conflicts()).to.deep.equal([{ consumer: 'shared', customers: ['cus_b', 'cus_c'] }]);
    b.remove('cus_b');
    expect(b.conflicts()).to.deep.equal([]);
    expect(b.resolve('shared')).to.equal('cus_c');
    expect(b.resolve('elsewhere')).to.equal('cus_a');
    b.remove('cus_c');
    expect(b.resolve('shared')).to.equal(undefined);
    expect(b.isConflict('shared')).to.equal(false);
  });

  it('the consumers of a customer: its id first, then its claims, without repeats', () => {
    const { book: b } = book();
    expect(b.consumersOf(customer('cus_a', 'x, cus_a, y,x'))).to.deep.equal(['cus_a', 'x', 'y']);
    expect(b.claimsOf(customer('cus_a'))).to.deep.equal([]);
  });

  it('cohort members and sizes (every configured cohort counted, at 0 when empty); a rule switch answers everyone again', () => {
    const { book: b, answered } = book();
    put(b, customer('cus_a'), ['low', 'no-credit']);
    put(b, customer('cus_b'), ['low']);
    put(b, customer('cus_c'));
    expect(b.cohortMembers('low').sort()).to.deep.equal(['cus_a', 'cus_b']);
    expect([...b.cohortSizes(['low', 'no-credit', 'vip'])]).to.deep.equal([['low', 2], ['no-credit', 1], ['vip', 0]]);
    expect(b.get('cus_a')!.answer.outcome).to.equal('block');
    answered.length = 0;
    b.reanswer();
    expect(answered.sort()).to.deep.equal(['cus_a', 'cus_b', 'cus_c']);
    expect(b.size).to.equal(3);
    expect(b.knownIds().sort()).to.deep.equal(['cus_a', 'cus_b', 'cus_c']);
  });

  it('a deleted customer is buried at the version of its deletion: reads as old or older do not bring it back', () => {
    const { book: b } = book();
    put(b, customer('cus_a'));
    b.remove('cus_a');
    b.bury('cus_a', 50);
    expect(b.get('cus_a')).to.equal(undefined);
    expect(b.buried('cus_a', 49)).to.equal(true);
    expect(b.buried('cus_a', 50)).to.equal(true);
    expect(b.buried('cus_a', 51)).to.equal(false);
    expect(b.buried('cus_b', 1)).to.equal(false);
  });

  it('restate moves customer and ledger on without answering again; removing a customer forgets its usage version', () => {
    const { book: b, answered } = book();
    put(b, customer('cus_a', 'app'));
    answered.length = 0;
    const e = b.get('cus_a')!;
    b.restate(e, { ...e.customer, version: 9 }, openLedger(-1000, 9));
    b.setLedger('cus_a', openLedger(-1000, 10, 5));
    expect(answered).to.deep.equal([]);
    expect(b.get('cus_a')!.customer.version).to.equal(9);
    expect(b.get('cus_a')!.ledger.unsettledMicros).to.equal(5);
    b.setUsageVersion('cus_a', 4);
    expect(b.usageVersion('cus_a')).to.equal(4);
    b.remove('cus_a');
    expect(b.usageVersion('cus_a')).to.equal(undefined);
    expect(b.resolve('app')).to.equal(undefined);
  });
});
