// Attacks on the ledger's coordination: races between the settlement pass,
// sweeps and webhooks, deleted customers, and Stripe forgetting idempotency
// keys. Each is named by what the customer or operator would see.
import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { parseConfig } from '../../../control-service/src/config';
import { Engine } from '../../../control-service/src/engine';
import { SqliteStore } from '../../../control-service/src/store/sqlite';
import { startService, type RunningService } from '../../../control-service/src/service';
import { StripeEmulator } from '../../../testkit/stripe-emulator';

const ADMIN = 'admin-token-for-tests';

describe('attacks on the ledger', function () {
  this.timeout(20_000);
  let dir: string;

  beforeEach(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-ledger-attack-')); });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  const doc = (metering: Record<string, unknown> = {}) => ({
    listen: { port: 0 }, store: { sqlite: path.join(dir, 'payg.sqlite') },
    stripe: { poll: '0 0 1 1 *', max_requests_per_second: 100, timeout_ms: 400, retry: { max_attempts: 1, base_delay_ms: 10, max_delay_ms: 20 } },
    cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
    rules: [{ id: 'block', cohort: 'no-credit', body: '{"error":"payment_required"}' }],
    metering: { default_cost: 1, settle: { schedule: '0 0 1 1 *' }, ...metering },
  });

  it('a settlement pass that read a settlement just before a sweep confirmed it does not give its amount back as credit when the replayed answer comes', async () => {
    const store = new SqliteStore(path.join(dir, 'payg.sqlite'));
    try {
      const engine = new Engine(parseConfig(doc(), {}, dir), store);
      await engine.init();
      const fields = { id: 'cus_ada', currency: 'usd', name: 'Ada', email: null, metadata: {} };
      await engine.apply([{ ...fields, balance: -1000, version: 1 }], []);
      await engine.ingestUsage(Array.from({ length: 60 }, (_, i) => ({ id: `u${i}`, consumer: 'cus_ada', at: 1, route: null, status: 200 })));
      expect(engine.customer('cus_ada')!.estimatedBalance).to.equal(-940);
      // Pass 1 opens the settlement and sends it; Stripe applies it, the answer is lost.
      const [row] = await store.openSettlements(2, 'balance_transactions', () => 'usd');
      await engine.settlementsOpened([row]);
      // Pass 2 reads the pending rows from the store, then a sweep's reconciled read confirms it first.
      const seenByPass2 = await store.pendingSettlements();
      await engine.applyReconciled({ ...fields, balance: -940, version: 10 }, new Map([[row.id, 'cbtxn_1']]));
      expect(engine.customer('cus_ada')!.estimatedBalance).to.equal(-940);
      await engine.settlementsOpened(seenByPass2);
      // Pass 2's resend is answered from Stripe's idempotency store with the original body.
      await engine.settlementConfirmed(row, 'cbtxn_1', -940, 11);
      expect(engine.customer('cus_ada')!.estimatedBalance, '60¢ used, charged once').to.equal(-940);
      expect(engine.customer('cus_ada')!.ledger.pending).to.deep.equal([]);
    } finally {
      await store.close();
    }
  });

  describe('against the Stripe emulator', () => {
    let stripe: StripeEmulator;
    let svc: RunningService | undefined;
    beforeEach(async () => { stripe = await new StripeEmulator().start(); stripe.autoDeliver = false; });
    afterEach(async () => { await svc?.stop(); svc = undefined; await stripe.stop(); });

    const start = async () => {
      const config = parseConfig(doc(), { STRIPE_SECRET_KEY: stripe.secretKey, STRIPE_API_BASE: stripe.url, PAYG_ADMIN_TOKEN: ADMIN }, dir);
      svc = await startService(config, { log: pino({ level: 'silent' }), sweepOnStart: false });
      return svc;
    };
    const admin = async (p: string) => (await fetch(`${svc!.url}/admin/${p}`, { headers: { authorization: `Bearer ${ADMIN}` } })).json() as Promise<any>;
    const usage = async (customer: string, n: number, prefix: string) => {
      const events = Array.from({ length: n }, (_, i) => ({ id: `${prefix}-${i}`, consumer: customer, at: Date.now(), route: null, status: 200 }));
      expect((await fetch(`${svc!.url}/v1/usage`, { method: 'POST', body: JSON.stringify({ events }) })).status).to.equal(200);
    };

    it('a customer deleted between a sweep page and its balance-transaction read (settlement in flight) does not fail the sweep for everyone else', async () => {
      const gone = stripe.create({ name: 'Gone', balance: -1000 });
      const other = stripe.create({ name: 'Other', balance: -500 });
      await start();
      await svc!.sync!.sweep();
      await usage(gone.id, 5, 'gone');
      stripe.failNext(1, 500); // the settlement is not answered: in flight
      await svc!.settler!.settle();
      stripe.update(other.id, { balance: -300 });
      // Deleted while the sweep is between the page and the balance-transaction read.
      const list = svc!.sync!['gateway'].balanceLedger.bind(svc!.sync!['gateway']);
      svc!.sync!['gateway'].balanceLedger = async (id: string, since: number) => { if (id === gone.id && stripe.customers.has(id)) stripe.remove(id); return list(id, since); };
      const result = await svc!.sync!.sweep();
      expect(result.ok, result.error).to.equal(true);
      expect((await admin(`customers/${other.id}`)).estimated_balance).to.equal(-300);
      expect((await fetch(`${svc!.url}/admin/customers/${gone.id}`, { headers: { authorization: `Bearer ${ADMIN}` } })).status).to.equal(404);
    });

    it('a settlement applied whose answer was lost, resent after Stripe forgot its idempotency key (a day down), charges the customer once', async () => {
      const c = stripe.create({ name: 'Ada', balance: -1000 });
      await start();
      await svc!.sync!.sweep();
      await usage(c.id, 60, 'day');
      stripe.holdAnswers(/\/balance_transactions$/, 'POST'); // carried out; the answer never comes
      expect(await svc!.settler!.settle()).to.include({ retrying: 1 });
      stripe.holdAnswers(undefined);
      expect(stripe.customers.get(c.id)!.balance, 'Stripe applied it').to.equal(-940);
      stripe.forgetIdempotencyKeys(); // 24 hours later
      await svc!.settler!.settle();
      expect(stripe.balanceTransactions.filter((t) => (t.metadata as Record<string, string>).payg_settlement), 'one charge in Stripe').to.have.length(1);
      expect(stripe.customers.get(c.id)!.balance).to.equal(-940);
      expect((await admin(`customers/${c.id}`)).estimated_balance).to.equal(-940);
      expect((await admin(`settlements?customer=${c.id}`)).settlements.map((s: any) => s.status)).to.deep.equal(['confirmed']);
    });
  });
});
