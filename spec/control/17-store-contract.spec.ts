// One contract, every store: the same cases run against the embedded SQLite
// store and the PostgreSQL store (a real server: spec/support/postgres.ts).
import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PostgresStore } from '../../control-service/src/store/postgres';
import { SqliteStore } from '../../control-service/src/store/sqlite';
import type { OutboxRecord, Store, StoredCustomer, UsageRecord } from '../../control-service/src/store/store';
import { freshDatabase } from '../support/postgres';

const stores: Array<{ name: string; open(): Promise<Store> }> = [
  {
    name: 'SqliteStore',
    async open() {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-contract-'));
      return new SqliteStore(path.join(dir, 'payg.sqlite'));
    },
  },
  { name: 'PostgresStore', open: async () => PostgresStore.open(await freshDatabase()) },
];

const customer = (id: string, balance: number, version = 1, extra: Partial<StoredCustomer> = {}): StoredCustomer => ({
  id, balance, currency: 'usd', name: `Name ${id}`, email: `${id}@example.com`, metadata: { kong_consumer: id }, version, ...extra,
});
const usage = (id: string, customerId: string | null, costMicros: number, at = 1000): UsageRecord => ({
  id, customerId, consumer: customerId ?? 'nobody', at, route: 'search', status: 200, costMicros,
});
const email = (key: string, createdAt = 1000, templateId = 'out-of-credit'): OutboxRecord => ({
  dedupeKey: key, templateId, customerId: 'cus_a', to: 'a@example.com', context: '{"x":1}', createdAt,
});
const none = { upserts: [], deletes: [], transitions: [] };

for (const kind of stores) {
  describe(`Store contract: ${kind.name}`, function () {
    this.timeout(20_000);
    let store: Store;
    beforeEach(async () => { store = await kind.open(); });
    afterEach(async () => { await store.close(); });

    it('upserts customers with their version, metadata and nulls, and deletes them', async () => {
      await store.saveChanges({ ...none, upserts: [customer('cus_a', -500, 1), customer('cus_b', 0, 1, { name: null, email: null, currency: null })] });
      await store.saveChanges({ ...none, upserts: [customer('cus_a', -250, 2, { metadata: { kong_consumer: 'alice', tier: 'gold' } })] });
      let all = (await store.loadCustomers()).sort((x, y) => x.id.localeCompare(y.id));
      expect(all).to.deep.equal([
        customer('cus_a', -250, 2, { metadata: { kong_consumer: 'alice', tier: 'gold' } }),
        customer('cus_b', 0, 1, { name: null, email: null, currency: null }),
      ]);
      await store.saveChanges({ ...none, deletes: ['cus_b'] });
      all = await store.loadCustomers();
      expect(all.map((c) => c.id)).to.deep.equal(['cus_a']);
      // Millisecond versions and large balances survive (BIGINT, not int4).
      await store.saveChanges({ ...none, upserts: [customer('cus_a', -9_000_000_000, 1_760_000_000_123)] });
      expect((await store.loadCustomers())[0]).to.include({ balance: -9_000_000_000, version: 1_760_000_000_123 });
    });

    it('records transitions with the memberships they lead to', async () => {
      await store.saveChanges({ ...none, upserts: [customer('cus_a', 0)], transitions: [
        { customerId: 'cus_a', cohort: 'no-credit', kind: 'enter', at: 10, balance: 0 },
        { customerId: 'cus_a', cohort: 'low-credit', kind: 'enter', at: 11, balance: 0 },
      ] });
      expect(await store.loadMemberships()).to.deep.equal(new Map([['cus_a', ['no-credit', 'low-credit']]]));
      expect(await store.membersSince('no-credit')).to.deep.equal([{ customerId: 'cus_a', since: 10 }]);
      await store.saveChanges({ ...none, transitions: [{ customerId: 'cus_a', cohort: 'no-credit', kind: 'leave', at: 20, balance: -100 }] });
      expect(await store.loadMemberships()).to.deep.equal(new Map([['cus_a', ['low-credit']]]));
      expect(await store.membersSince('no-credit')).to.deep.equal([]);
      expect(await store.history('cus_a')).to.deep.equal([
        { customerId: 'cus_a', cohort: 'no-credit', kind: 'enter', at: 10, balance: 0 },
        { customerId: 'cus_a', cohort: 'low-credit', kind: 'enter', at: 11, balance: 0 },
        { customerId: 'cus_a', cohort: 'no-credit', kind: 'leave', at: 20, balance: -100 },
      ]);
    });

    it('stores each usage id once and keeps running totals per customer', async () => {
      await store.saveChanges({ ...none, usage: [usage('u1', 'cus_a', 1_500_000), usage('u2', 'cus_a', 250_000), usage('u3', null, 9_000_000)] });
      await store.saveChanges({ ...none, usage: [usage('u2', 'cus_a', 250_000), usage('u4', 'cus_b', 1)] });
      expect(await store.knownUsageIds(['u1', 'u2', 'u3', 'u4', 'u5'])).to.deep.equal(new Set(['u1', 'u2', 'u3', 'u4']));
      expect(await store.knownUsageIds([])).to.deep.equal(new Set());
      expect(await store.usageTotals()).to.deep.equal(new Map([
        ['cus_a', { usedMicros: 1_750_000, settled: 0 }],
        ['cus_b', { usedMicros: 1, settled: 0 }],
      ]));
    });

    it('opens settlements of exact whole amounts, one pending per customer, and confirms them', async () => {
      const currency = () => 'usd';
      await store.saveChanges({ ...none, usage: [usage('u1', 'cus_a', 1_500_000), usage('u2', 'cus_a', 900_000), usage('u3', 'cus_b', 999_999)] });
      let pending = await store.openSettlements(100, 'balance_transactions', currency);
      expect(pending.map((s) => [s.customerId, s.amount, s.fromSeq, s.status])).to.deep.equal([['cus_a', 2, 1, 'pending']]);
      const first = pending[0];
      expect(first.idempotencyKey).to.match(/^payg-settle-[0-9a-f]{40}$/);
      // More usage while one is pending: no second settlement, the same one is returned.
      await store.saveChanges({ ...none, usage: [usage('u4', 'cus_a', 700_000)] });
      pending = await store.openSettlements(101, 'balance_transactions', currency);
      expect(pending.map((s) => s.id)).to.deep.equal([first.id]);
      await store.settlementFailed(first.id, 'stripe 500');
      expect((await store.settlements('cus_a'))[0]).to.include({ attempts: 1, lastError: 'stripe 500', status: 'pending' });
      await store.saveChanges({ ...none, upserts: [customer('cus_a', 200, 5)], confirmSettlement: { id: first.id, stripeRef: 'cbtxn_1', at: 200 } });
      // Confirming twice changes nothing.
      await store.saveChanges({ ...none, confirmSettlement: { id: first.id, stripeRef: 'cbtxn_1', at: 201 } });
      expect((await store.settlements('cus_a'))[0]).to.include({ status: 'confirmed', stripeRef: 'cbtxn_1', confirmedAt: 200, attempts: 2 });
      expect((await store.usageTotals()).get('cus_a')).to.deep.equal({ usedMicros: 3_100_000, settled: 2 });
      // The fraction carried over: 3.1 units used, 2 charged, so the next one is 1, then nothing.
      pending = await store.openSettlements(300, 'balance_transactions', currency);
      expect(pending.map((s) => [s.customerId, s.amount, s.fromSeq])).to.deep.equal([['cus_a', 1, first.uptoSeq + 1]]);
      await store.saveChanges({ ...none, confirmSettlement: { id: pending[0].id, stripeRef: 'cbtxn_2', at: 301 } });
      expect(await store.openSettlements(400, 'balance_transactions', currency)).to.deep.equal([]);
      expect((await store.settlements()).map((s) => s.amount)).to.deep.equal([2, 1]);
      // No currency known: nothing opened.
      await store.saveChanges({ ...none, usage: [usage('u5', 'cus_c', 5_000_000)] });
      expect(await store.openSettlements(500, 'meter_events', () => undefined)).to.deep.equal([]);
    });

    it('keeps an outbox: dedupe, claim in due order, retry, finish, requeue and cancel', async () => {
      expect(await store.enqueueEmails([email('k1', 100), email('k2', 50), email('k1', 100)])).to.equal(2);
      await store.saveChanges({ ...none, emails: [email('k2', 50), email('k3', 300, 'low-balance')] });
      expect(await store.countEmails('pending')).to.equal(3);
      expect(await store.nextEmailDueAt()).to.equal(50);
      expect(await store.claimDueEmail(40)).to.equal(undefined);
      const a = await store.claimDueEmail(200);
      expect(a).to.include({ dedupeKey: 'k2', status: 'sending', attempts: 1, to: 'a@example.com', context: '{"x":1}' });
      const b = await store.claimDueEmail(200);
      expect(b).to.include({ dedupeKey: 'k1', status: 'sending', attempts: 1 });
      expect(await store.claimDueEmail(200), 'k3 is not due yet').to.equal(undefined);
      await store.retryEmail(a!.id, 250, '421 try later');
      await store.finishEmail(b!.id, { status: 'delivered', at: 210, messageId: '<m1@payg>' });
      const log = await store.emailLog({ limit: 10 });
      expect(log.map((r) => [r.dedupeKey, r.status])).to.deep.equal([['k3', 'pending'], ['k2', 'pending'], ['k1', 'delivered']]);
      expect(log[2]).to.include({ messageId: '<m1@payg>', deliveredAt: 210 });
      expect(log[1]).to.include({ nextAttemptAt: 250, lastError: '421 try later' });
      expect((await store.emailLog({ status: 'delivered', limit: 10 })).map((r) => r.dedupeKey)).to.deep.equal(['k1']);
      expect((await store.emailLog({ templateId: 'low-balance', customerId: 'cus_a', limit: 10 })).map((r) => r.dedupeKey)).to.deep.equal(['k3']);
      expect((await store.emailLog({ limit: 1 })).length).to.equal(1);
      // A crash while sending: the row comes back pending, with its attempts.
      const c = await store.claimDueEmail(1000);
      expect(c).to.include({ dedupeKey: 'k2', attempts: 2 });
      expect(await store.requeueInterruptedEmails()).to.equal(1);
      expect(await store.countEmails('sending')).to.equal(0);
      expect(await store.cancelPendingEmails('out-of-credit', 2000)).to.equal(1);
      expect(await store.countEmails('cancelled')).to.equal(1);
      expect(await store.countEmails('pending')).to.equal(1);
      const f = await store.claimDueEmail(5000);
      await store.finishEmail(f!.id, { status: 'failed', at: 5001, error: '550 no such user' });
      expect((await store.emailLog({ status: 'failed', limit: 5 }))[0]).to.include({ dedupeKey: 'k3', lastError: '550 no such user', deliveredAt: null });
      expect(await store.nextEmailDueAt()).to.equal(undefined);
    });

    it('claims a webhook event once, and again after forgetting it', async () => {
      expect(await store.claimWebhookEvent('evt_1', 10)).to.equal(true);
      expect(await store.claimWebhookEvent('evt_1', 11)).to.equal(false);
      await store.forgetWebhookEvent('evt_1');
      expect(await store.claimWebhookEvent('evt_1', 12)).to.equal(true);
    });

    it('persists rule and template switches, and meta values', async () => {
      await store.setRuleEnabled('block-no-credit', false);
      await store.setRuleEnabled('block-no-credit', true);
      await store.setRuleEnabled('warn', false);
      expect(await store.ruleOverrides()).to.deep.equal(new Map([['block-no-credit', true], ['warn', false]]));
      await store.setTemplateActive('out-of-credit', false);
      expect(await store.templateOverrides()).to.deep.equal(new Map([['out-of-credit', false]]));
      expect(await store.getMeta('last_sweep')).to.equal(undefined);
      await store.setMeta('last_sweep', '1');
      await store.setMeta('last_sweep', '2');
      expect(await store.getMeta('last_sweep')).to.equal('2');
      await store.ping();
    });

    it('prunes settled and unbilled usage past the age, and old webhook ids, keeping totals', async () => {
      await store.saveChanges({ ...none, usage: [usage('old-settled', 'cus_a', 1_000_000, 10), usage('old-free', null, 5, 10),
        usage('old-zero', 'cus_b', 0, 10), usage('new', 'cus_a', 500_000, 10_000)] });
      const [s] = await store.openSettlements(20, 'balance_transactions', () => 'usd');
      await store.saveChanges({ ...none, usage: [usage('old-unsettled', 'cus_a', 700_000, 20)] });
      await store.saveChanges({ ...none, confirmSettlement: { id: s.id, stripeRef: 'cbtxn', at: 30 } });
      await store.claimWebhookEvent('evt_old', 10);
      await store.claimWebhookEvent('evt_new', 10_000);
      expect(await store.prune({ usageBefore: 1000, webhooksBefore: 1000 })).to.deep.equal({ usageEvents: 3, webhookEvents: 1 });
      expect(await store.knownUsageIds(['old-settled', 'old-free', 'old-zero', 'new', 'old-unsettled'])).to.deep.equal(new Set(['new', 'old-unsettled']));
      expect((await store.usageTotals()).get('cus_a')).to.deep.equal({ usedMicros: 2_200_000, settled: 1 });
      expect(await store.claimWebhookEvent('evt_new', 10_001)).to.equal(false);
      expect(await store.claimWebhookEvent('evt_old', 10_001)).to.equal(true);
    });
  });
}
