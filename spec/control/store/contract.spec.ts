// One contract, every store: the same cases run against the embedded SQLite
// store and the PostgreSQL store (a real server: spec/support/postgres.ts).
import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PostgresStore } from '../../../control-service/src/store/postgres';
import { SqliteStore } from '../../../control-service/src/store/sqlite';
import type { OutboxRecord, Store, StoredCustomer, UsageRecord } from '../../../control-service/src/store/store';
import { freshDatabase } from '../../support/postgres';

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
      // The estimated balance of a transition keeps the fraction of a cent that unsettled usage adds.
      await store.saveChanges({ ...none, transitions: [{ customerId: 'cus_a', cohort: 'no-credit', kind: 'leave', at: 20, balance: -99.63 }] });
      expect(await store.loadMemberships()).to.deep.equal(new Map([['cus_a', ['low-credit']]]));
      expect(await store.membersSince('no-credit')).to.deep.equal([]);
      expect(await store.history('cus_a')).to.deep.equal([
        { customerId: 'cus_a', cohort: 'no-credit', kind: 'enter', at: 10, balance: 0 },
        { customerId: 'cus_a', cohort: 'low-credit', kind: 'enter', at: 11, balance: 0 },
        { customerId: 'cus_a', cohort: 'no-credit', kind: 'leave', at: 20, balance: -99.63 },
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
      expect(await store.pendingSettlements()).to.deep.equal(pending);
      // More usage while one is pending: no second settlement, the same one is returned.
      await store.saveChanges({ ...none, usage: [usage('u4', 'cus_a', 700_000)] });
      pending = await store.openSettlements(101, 'balance_transactions', currency);
      expect(pending.map((s) => s.id)).to.deep.equal([first.id]);
      await store.settlementAttemptFailed(first.id, 'stripe 500');
      expect((await store.settlements('cus_a'))[0]).to.include({ attempts: 1, lastError: 'stripe 500', status: 'pending' });
      expect((await store.pendingSettlements()).map((s) => [s.id, s.attempts])).to.deep.equal([[first.id, 1]]);
      await store.saveChanges({ ...none, upserts: [customer('cus_a', 200, 5)], confirmSettlements: [{ id: first.id, stripeRef: 'cbtxn_1', at: 200 }] });
      // Confirming twice changes nothing.
      await store.saveChanges({ ...none, confirmSettlements: [{ id: first.id, stripeRef: 'cbtxn_1', at: 201 }] });
      expect((await store.settlements('cus_a'))[0]).to.include({ status: 'confirmed', stripeRef: 'cbtxn_1', confirmedAt: 200, attempts: 2 });
      expect((await store.usageTotals()).get('cus_a')).to.deep.equal({ usedMicros: 3_100_000, settled: 2 });
      expect(await store.pendingSettlements()).to.deep.equal([]);
      // The fraction carried over: 3.1 units used, 2 charged, so the next one is 1, then nothing.
      pending = await store.openSettlements(300, 'balance_transactions', currency);
      expect(pending.map((s) => [s.customerId, s.amount, s.fromSeq])).to.deep.equal([['cus_a', 1, first.uptoSeq + 1]]);
      await store.saveChanges({ ...none, confirmSettlements: [{ id: pending[0].id, stripeRef: 'cbtxn_2', at: 301 }] });
      expect(await store.openSettlements(400, 'balance_transactions', currency)).to.deep.equal([]);
      expect((await store.settlements()).map((s) => s.amount)).to.deep.equal([2, 1]);
      // No currency known: nothing opened.
      await store.saveChanges({ ...none, usage: [usage('u5', 'cus_c', 5_000_000)] });
      expect(await store.openSettlements(500, 'meter_events', () => undefined)).to.deep.equal([]);
    });

    it('confirms several settlements in one change, and marks one Stripe refused for good as failed', async () => {
      await store.saveChanges({ ...none, usage: [usage('u1', 'cus_a', 2_000_000), usage('u2', 'cus_b', 3_000_000), usage('u3', 'cus_c', 4_000_000)] });
      const [a, b, c] = await store.openSettlements(100, 'balance_transactions', () => 'usd');
      await store.saveChanges({ ...none, confirmSettlements: [{ id: a.id, stripeRef: 'cbtxn_a', at: 110 }, { id: b.id, stripeRef: 'cbtxn_b', at: 111 }] });
      await store.saveChanges({ ...none, failSettlement: { id: c.id, error: 'customer deleted', at: 120 } });
      // A failed settlement is final: confirming it afterwards changes nothing.
      await store.saveChanges({ ...none, confirmSettlements: [{ id: c.id, stripeRef: 'late', at: 130 }] });
      expect((await store.settlements()).map((s) => [s.customerId, s.status, s.stripeRef, s.attempts, s.lastError])).to.deep.equal([
        ['cus_a', 'confirmed', 'cbtxn_a', 1, null], ['cus_b', 'confirmed', 'cbtxn_b', 1, null], ['cus_c', 'failed', null, 1, 'customer deleted'],
      ]);
      expect(await store.pendingSettlements()).to.deep.equal([]);
      const totals = await store.usageTotals();
      expect([totals.get('cus_a'), totals.get('cus_b'), totals.get('cus_c')]).to.deep.equal([
        { usedMicros: 2_000_000, settled: 2 }, { usedMicros: 3_000_000, settled: 3 }, { usedMicros: 4_000_000, settled: 0 },
      ]);
      // What failed is not charged again: only new usage opens a settlement.
      await store.saveChanges({ ...none, usage: [usage('u4', 'cus_c', 1_000_000)] });
      expect((await store.openSettlements(200, 'balance_transactions', () => 'usd')).map((s) => [s.customerId, s.amount])).to.deep.equal([['cus_c', 1]]);
    });

    it('keeps an outbox: dedupe, claim in due order, retry, finish, requeue and cancel', async () => {
      expect(await store.enqueueEmails([email('k1', 100), email('k2', 50), email('k1', 100)])).to.equal(2);
      await store.saveChanges({ ...none, emails: [email('k2', 50), email('k3', 300, 'low-balance')] });
      expect(await store.countEmails('pending')).to.equal(3);
      expect(await store.nextEmailDueAt()).to.equal(50);
      expect(await store.claimDueEmail(40)).to.equal(undefined);
      const a = await store.claimDueEmail(200);
      expect(a).to.include({ dedupeKey: 'k2', status: 'sending', attempts: 0, to: 'a@example.com', context: '{"x":1}' });
      const b = await store.claimDueEmail(200);
      expect(b).to.include({ dedupeKey: 'k1', status: 'sending', attempts: 0 });
      expect(await store.claimDueEmail(200), 'k3 is not due yet').to.equal(undefined);
      // Attempts count the SMTP server's answers only.
      await store.retryEmail(a!.id, 250, '421 try later', true);
      await store.finishEmail(b!.id, { status: 'delivered', at: 210, messageId: '<m1@payg>', answered: true });
      const log = await store.emailLog({ limit: 10 });
      expect(log.map((r) => [r.dedupeKey, r.status])).to.deep.equal([['k3', 'pending'], ['k2', 'pending'], ['k1', 'delivered']]);
      expect(log[2]).to.include({ messageId: '<m1@payg>', deliveredAt: 210, attempts: 1 });
      expect(log[1]).to.include({ nextAttemptAt: 250, lastError: '421 try later', attempts: 1 });
      expect((await store.emailLog({ status: 'delivered', limit: 10 })).map((r) => r.dedupeKey)).to.deep.equal(['k1']);
      expect((await store.emailLog({ templateId: 'low-balance', customerId: 'cus_a', limit: 10 })).map((r) => r.dedupeKey)).to.deep.equal(['k3']);
      expect((await store.emailLog({ limit: 1 })).length).to.equal(1);
      // A crash while sending: the row comes back pending, with its attempts.
      const c = await store.claimDueEmail(1000);
      expect(c).to.include({ dedupeKey: 'k2', attempts: 1 });
      // A connection that failed before the server answered: not an attempt.
      await store.retryEmail(c!.id, 260, 'ECONNREFUSED', false);
      expect(await store.claimDueEmail(1000)).to.include({ dedupeKey: 'k2', attempts: 1 });
      expect(await store.requeueInterruptedEmails()).to.equal(1);
      expect(await store.countEmails('sending')).to.equal(0);
      expect(await store.cancelPendingEmails('out-of-credit', 2000)).to.equal(1);
      expect(await store.countEmails('cancelled')).to.equal(1);
      expect(await store.countEmails('pending')).to.equal(1);
      const f = await store.claimDueEmail(5000);
      await store.finishEmail(f!.id, { status: 'failed', at: 5001, error: '550 no such user', answered: true });
      expect((await store.emailLog({ status: 'failed', limit: 5 }))[0]).to.include({ dedupeKey: 'k3', lastError: '550 no such user', deliveredAt: null, attempts: 1 });
      expect(await store.nextEmailDueAt()).to.equal(undefined);
    });

    it('keeps one pending reminder per template and customer, and cancels stale emails at delivery', async () => {
      const reminder = (n: number): OutboxRecord => ({ ...email(`out-of-credit|cus_a|enter:1|repeat:${n}`, 100 + n), reminder: true });
      expect(await store.enqueueEmails([email('out-of-credit|cus_a|enter:1', 100), reminder(1)])).to.equal(2);
      // A reminder being sent when a newer one arrives is made stale too; the entry email is not a reminder.
      const sending = await store.claimDueEmail(100);
      expect(sending).to.include({ dedupeKey: 'out-of-credit|cus_a|enter:1' });
      const inFlight = await store.claimDueEmail(101);
      expect(inFlight).to.include({ dedupeKey: 'out-of-credit|cus_a|enter:1|repeat:1' });
      await store.saveChanges({ ...none, emails: [reminder(2), reminder(3)] });
      const log = await store.emailLog({ limit: 10 });
      expect(log.map((r) => [r.dedupeKey.replace('out-of-credit|cus_a|enter:1', 'k'), r.status])).to.deep.equal([
        ['k|repeat:3', 'pending'], ['k|repeat:2', 'stale'], ['k|repeat:1', 'stale'], ['k', 'sending'],
      ]);
      expect(log[1].lastError).to.equal('replaced by a newer reminder');
      // The in-flight reminder's send fails: it stays stale, it does not come back.
      await store.retryEmail(inFlight!.id, 500, '421 try later', true);
      expect(await store.countEmails('stale')).to.equal(2);
      // An email whose news is no longer true when its turn comes is cancelled as stale.
      await store.finishEmail(sending!.id, { status: 'stale', at: 300, error: 'customer no longer in no-credit' });
      expect((await store.emailLog({ status: 'stale', limit: 10 })).map((r) => r.dedupeKey)).to.have.length(3);
      expect(await store.countEmails('pending')).to.equal(1);
    });

    it('records a webhook event id in the transaction that applies it, and not when that transaction fails', async () => {
      expect(await store.webhookEventSeen('evt_1')).to.equal(false);
      await store.saveChanges({ ...none, upserts: [customer('cus_a', -100, 5)], webhookEvent: { id: 'evt_1', at: 10 } });
      expect(await store.webhookEventSeen('evt_1')).to.equal(true);
      // Recorded twice (a replay raced the first): still one, and no error.
      await store.saveChanges({ ...none, webhookEvent: { id: 'evt_1', at: 11 } });
      // A change that fails as a whole records neither the customer nor the event.
      const bad = { customerId: 'cus_b', cohort: 'no-credit', kind: 'sideways' as 'enter', at: 12, balance: 0 };
      let failed = false;
      await store.saveChanges({ ...none, upserts: [customer('cus_b', 0, 6)], transitions: [bad], webhookEvent: { id: 'evt_2', at: 12 } }).catch(() => { failed = true; });
      expect(failed).to.equal(true);
      expect(await store.webhookEventSeen('evt_2')).to.equal(false);
      expect((await store.loadCustomers()).map((c) => c.id)).to.deep.equal(['cus_a']);
    });

    it('tells since when a customer is in a cohort', async () => {
      await store.saveChanges({ ...none, upserts: [customer('cus_a', 0)], transitions: [{ customerId: 'cus_a', cohort: 'no-credit', kind: 'enter', at: 42, balance: 0 }] });
      expect(await store.membershipSince('cus_a', 'no-credit')).to.equal(42);
      expect(await store.membershipSince('cus_a', 'low-credit')).to.equal(undefined);
      expect(await store.membershipSince('cus_b', 'no-credit')).to.equal(undefined);
      await store.saveChanges({ ...none, transitions: [{ customerId: 'cus_a', cohort: 'no-credit', kind: 'leave', at: 50, balance: -100 }] });
      expect(await store.membershipSince('cus_a', 'no-credit')).to.equal(undefined);
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

    it('prunes settled and unbilled usage received before the cutoff (whatever date it claims), and old webhook ids, keeping totals', async () => {
      // Every event claims to be from long ago (at = 10): pruning goes by when it arrived.
      await store.saveChanges({ ...none, usage: [usage('settled', 'cus_a', 1_000_000, 10), usage('free', null, 5, 10), usage('zero', 'cus_b', 0, 10)] });
      const [s] = await store.openSettlements(20, 'balance_transactions', () => 'usd');
      await store.saveChanges({ ...none, usage: [usage('unsettled', 'cus_a', 700_000, 10)] });
      await store.saveChanges({ ...none, confirmSettlements: [{ id: s.id, stripeRef: 'cbtxn', at: 30 }] });
      await store.saveChanges({ ...none, webhookEvent: { id: 'evt_old', at: 10 } });
      await store.saveChanges({ ...none, webhookEvent: { id: 'evt_new', at: 10_000 } });
      const all = ['settled', 'free', 'zero', 'unsettled'];
      // Received just now: an hour-old cutoff keeps them all.
      expect(await store.prune({ usageBefore: Date.now() - 3_600_000, webhooksBefore: 0 })).to.deep.equal({ usageEvents: 0, webhookEvents: 0 });
      expect(await store.knownUsageIds(all)).to.deep.equal(new Set(all));
      expect(await store.prune({ usageBefore: Date.now() + 1000, webhooksBefore: 1000 })).to.deep.equal({ usageEvents: 3, webhookEvents: 1 });
      expect(await store.knownUsageIds(all)).to.deep.equal(new Set(['unsettled']));
      expect((await store.usageTotals()).get('cus_a')).to.deep.equal({ usedMicros: 1_700_000, settled: 1 });
      expect(await store.webhookEventSeen('evt_new')).to.equal(true);
      expect(await store.webhookEventSeen('evt_old')).to.equal(false);
    });
  });
}
