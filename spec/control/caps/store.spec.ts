// Team caps in every store (issue 23): each consumer's spend in its current
// daily and monthly periods is counted in the same commit as its usage (a
// duplicate event counts once, an unbilled one not at all), resets at UTC
// boundaries, and survives reopening the store.
import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PostgresStore } from '../../../control-service/src/store/postgres';
import { SqliteStore } from '../../../control-service/src/store/sqlite';
import type { Store, StoreChanges, UsageRecord } from '../../../control-service/src/store/store';
import { freshDatabase } from '../../support/postgres';

const stores: Array<{ name: string; open(): Promise<{ store: Store; reopen(): Promise<Store> }> }> = [
  {
    name: 'SqliteStore',
    async open() {
      const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'payg-caps-')), 'payg.sqlite');
      return { store: new SqliteStore(file), reopen: async () => new SqliteStore(file) };
    },
  },
  {
    name: 'PostgresStore',
    async open() {
      const url = await freshDatabase();
      return { store: await PostgresStore.open(url), reopen: () => PostgresStore.open(url) };
    },
  },
];

const D = Date.UTC(2026, 11, 31, 23, 0); // the last hour of a month
const use = (id: string, consumer: string, micros: number, at: number, customerId: string | null = 'cus_team'): UsageRecord => ({
  id, customerId, consumer, at, route: 'r', status: 200, costMicros: micros,
});
const none = { upserts: [], deletes: [], transitions: [] };

for (const kind of stores) {
  describe(`caps store: ${kind.name}`, function () {
    this.timeout(30_000);

    for (const hot of [true, false]) {
      it(`counts each consumer's spend with its usage (${hot ? 'usage alone' : 'with other changes'}), once per event, and resets at UTC boundaries`, async () => {
        const { store, reopen } = await kind.open();
        const save = (usage: UsageRecord[]) => store.saveChanges({ ...none, usage, ...(hot ? {} : { webhookEvent: { id: `evt_${usage[0].id}`, at: 1 } }) } as StoreChanges);
        await save([use('e1', 'app-web', 300, D), use('e2', 'app-web', 200, D + 1), use('e3', 'app-batch', 7, D + 2), use('e4', 'stranger', 50, D, null), use('e5', 'app-web', 0, D)]);
        await save([use('e1', 'app-web', 300, D), use('e6', 'app-web', 1000, D + 3)]); // e1 again: counted once
        let spend = await store.consumerSpend();
        expect(spend.get('app-web')).to.deep.equal({ daily: { start: Date.UTC(2026, 11, 31), micros: 1500 }, monthly: { start: Date.UTC(2026, 11, 1), micros: 1500 } });
        expect(spend.get('app-batch')!.daily.micros).to.equal(7);
        expect(spend.has('stranger')).to.equal(false);
        // After midnight UTC on the 1st: both periods start again; a late event of the old day counts in neither.
        const next = Date.UTC(2027, 0, 1, 0, 0, 0, 5);
        await save([use('e7', 'app-web', 40, next), use('e8', 'app-web', 9, D + 4), use('e9', 'app-web', 2, next + 1)]);
        await store.close();
        const again = await reopen();
        spend = await again.consumerSpend(['app-web']);
        expect([...spend.keys()]).to.deep.equal(['app-web']);
        expect(spend.get('app-web')).to.deep.equal({ daily: { start: Date.UTC(2027, 0, 1), micros: 42 }, monthly: { start: Date.UTC(2027, 0, 1), micros: 42 } });
        await again.close();
      });
    }
  });
}
