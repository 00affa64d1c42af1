// How a replica's book follows usage on PostgreSQL, against the engine alone:
// its own commit counts what the store really added (another replica may have
// stored some of the same events first), and usage other replicas NOTIFY is
// added in totals-version order, skipped when already read, and read again
// after a gap. The store is SQLite answering as PostgreSQL would.
import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseConfig } from '../../../control-service/src/config';
import { Engine, type ReloadedCustomer } from '../../../control-service/src/engine';
import { SqliteStore } from '../../../control-service/src/store/sqlite';
import type { SavedChanges, Store, StoreChanges, UsageAdded } from '../../../control-service/src/store/store';

const M = 1_000_000;

describe('a replica\'s book following usage', () => {
  let dir: string;
  beforeEach(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-replica-books-')); });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('counts what its own commit added, adds other replicas\' usage in version order once, and reads the customer again after a gap', async () => {
    /** What the next commit answers (as PostgreSQL does), set by the test. */
    let answer: UsageAdded[] = [];
    const sqlite = new SqliteStore(path.join(dir, 'payg.sqlite'));
    const store: Store = Object.assign(Object.create(sqlite) as SqliteStore, {
      async saveChanges(changes: StoreChanges): Promise<SavedChanges> {
        await sqlite.saveChanges(changes);
        return { usageAdded: answer };
      },
    });
    try {
      const engine = new Engine(parseConfig({
        listen: { port: 0 }, store: { sqlite: path.join(dir, 'payg.sqlite') }, stripe: { poll: '0 0 1 1 *' },
        cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
        rules: [{ id: 'block', cohort: 'no-credit', body: '{"error":"payment_required"}' }],
        metering: { default_cost: 1, settle: { schedule: '0 0 1 1 *' } },
      }, {}, dir), store);
      await engine.init();
      const customer = { id: 'cus_ada', currency: 'usd', name: 'Ada', email: null, metadata: {}, balance: -1000, version: 1 };
      await engine.apply([customer], []);
      let stored = { unsettledMicros: 0, usageVersion: 3 };
      let reads = 0;
      const read = async (): Promise<ReloadedCustomer[]> => { reads++; return [{ customer, cohorts: [], pending: [], ...stored }]; };
      await engine.reload(['cus_ada'], read);
      const estimate = () => engine.customer('cus_ada')!.estimatedBalance;

      // 10 events, of which another replica stored 3 first: the store added 7.
      answer = [{ customerId: 'cus_ada', micros: 7 * M, version: 4 }];
      const r = await engine.ingestUsage(Array.from({ length: 10 }, (_, i) => ({ id: `u${i}`, consumer: 'cus_ada', at: 1, route: null, status: 200 })));
      expect(r.accepted).to.equal(10);
      expect(estimate(), 'the 3 the other replica stored come with its own notification').to.equal(-993);

      // Another replica's commit right after ours: added; heard twice, counted once.
      await engine.followUsage([{ customerId: 'cus_ada', micros: 2 * M, version: 5 }], [], read);
      await engine.followUsage([{ customerId: 'cus_ada', micros: 2 * M, version: 5 }], [], read);
      expect(estimate()).to.equal(-991);
      expect(reads).to.equal(1);

      // Version 6 was missed (its notification lost): the customer is read again, whole.
      stored = { unsettledMicros: 20 * M, usageVersion: 7 };
      await engine.followUsage([{ customerId: 'cus_ada', micros: 4 * M, version: 7 }], [], read);
      expect(reads).to.equal(2);
      expect(estimate()).to.equal(-980);
      // A notification the read already holds adds nothing.
      await engine.followUsage([{ customerId: 'cus_ada', micros: 4 * M, version: 7 }], [], read);
      expect(estimate()).to.equal(-980);
    } finally {
      sqlite.close();
    }
  });
});
