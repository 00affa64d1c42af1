// Consumer caps as the service serves them (control-service/src/caps/consumer-caps.ts),
// over a customer book and a store that only answers spend: spend counted, the
// cap left, the capped answer, the spend re-read after another replica's usage.
import { expect } from 'chai';
import { ConsumerCaps } from '../../../control-service/src/caps/consumer-caps';
import { NO_SPEND, type ConsumerSpend } from '../../../control-service/src/caps/caps';
import { CustomerBook } from '../../../control-service/src/customer-book';
import { openLedger } from '../../../control-service/src/ledger';
import type { StoredCustomer, UsageRecord } from '../../../control-service/src/store/store';

const NOW = Date.UTC(2026, 5, 15, 12);
const CENT = 1_000_000;
const team = (metadata: Record<string, string>): StoredCustomer => ({
  id: 'cus_team', balance: -10_000, currency: 'usd', name: 'Team', email: null, version: 1, metadata: { kong_consumer: 'app-web, app-batch', ...metadata },
});
const usage = (consumer: string, costMicros: number, customerId: string | null = 'cus_team'): UsageRecord => ({
  id: `u-${consumer}-${costMicros}`, consumer, at: NOW, route: null, status: 200, customerId, costMicros, spentAt: NOW,
});

function setup(metadata: Record<string, string>, defaults: { daily?: number } = {}) {
  const book = new CustomerBook({
    consumerMetadataKey: 'kong_consumer',
    answer: () => ({ json: JSON.stringify({ allow: true, ttl_ms: 30_000, max_requests: 10_000, credit: 10_000 }), outcome: 'allow' }),
  });
  const c = team(metadata);
  book.put(c, [], openLedger(c.balance, c.version));
  const asked: string[][] = [];
  const stored = new Map<string, ConsumerSpend>();
  const caps = new ConsumerCaps({
    caps: { metadataPrefix: 'payg_cap', ...defaults }, rules: [], isEnabled: () => true, topUp: {}, decisionTtlMs: 30_000, dearestMicros: CENT, now: () => NOW,
  }, book, { consumerSpend: async (consumers?: string[]) => { asked.push(consumers ?? []); return stored; } });
  return { book, caps, asked, stored };
}

describe('consumer caps over the customer book', () => {
  it("spend counted in a commit is the consumer's alone; the cap left is the cap less it; a consumer of no customer has no cap", () => {
    const { caps } = setup({ 'payg_cap_daily.app-web': '500' });
    caps.counted([usage('app-web', 120 * CENT), usage('app-batch', 7 * CENT), usage('app-web', 0), usage('stranger', 50 * CENT, null)]);
    expect(caps.spendOf('app-web').daily.micros).to.equal(120 * CENT);
    expect(caps.spendOf('stranger')).to.deep.equal(NO_SPEND);
    const cap = caps.capOf('app-web')!;
    expect(cap).to.deep.include({ customerId: 'cus_team', limits: { daily: 500 } });
    expect(cap.left).to.deep.equal({ leftMicros: 380 * CENT, period: 'daily', resetsAt: Date.UTC(2026, 5, 16) });
    expect(caps.capLimitsOf('app-batch'), 'the override names one consumer').to.equal(undefined);
    expect(caps.capOf('stranger')).to.equal(undefined);
    expect(caps.consumerCaps('cus_team').map((c) => [c.consumer, c.daily.spentMicros])).to.deep.equal([['app-web', 120 * CENT], ['app-batch', 7 * CENT]]);
  });

  it('a consumer whose cap left is worth less than the dearest request is refused with consumer_cap; above it, max_requests follows the cap', () => {
    const { book, caps } = setup({ payg_cap_daily: '10' });
    caps.counted([usage('app-web', 995 * CENT / 100)]);
    const refused = caps.capped('app-web', book.get('cus_team')!)!;
    expect(refused.outcome).to.equal('block');
    expect(JSON.parse(refused.json)).to.include({ allow: false, status: 402, reason: 'consumer_cap', resets_at: '2026-06-16T00:00:00.000Z' });
    const other = JSON.parse(caps.capped('app-batch', book.get('cus_team')!)!.json) as { max_requests: number; credit: number };
    expect(other).to.include({ max_requests: 10, credit: 10 });
  });

  it("after another replica's usage, only consumers of customers a cap can apply to are read again", async () => {
    const uncapped = setup({});
    await uncapped.caps.reread(['cus_team', 'cus_gone']);
    expect(uncapped.asked).to.deep.equal([]);
    const capped = setup({}, { daily: 1000 });
    capped.stored.set('app-web', { daily: { start: Date.UTC(2026, 5, 15), micros: 42 }, monthly: { start: Date.UTC(2026, 5, 1), micros: 42 } });
    capped.caps.counted([usage('app-batch', 5 * CENT)]);
    await capped.caps.reread(['cus_team']);
    expect(capped.asked).to.deep.equal([['cus_team', 'app-web', 'app-batch']]);
    expect(capped.caps.spendOf('app-web').daily.micros).to.equal(42);
    expect(capped.caps.spendOf('app-batch'), 'not stored: none').to.deep.equal(NO_SPEND);
  });
});
