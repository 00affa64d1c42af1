// What an operator sees of settlements Stripe refused for good (failed), ones
// being resent (retrying) and emails that were not sent because they were no
// longer true (stale, with the reason): counted on the overview, filterable on
// their pages.
import { expect } from 'chai';
import { customerFixture, startConsoleFixture, type ConsoleFixture, type Session } from '../support/console-fixture';

interface SettlementsAnswer { counts: Record<string, number>; settlements: Array<{ customer: string; customer_name: string | null; status: string; last_error: string | null; stripe_ref: string | null }> }

describe('console: failed and retrying settlements, stale emails', function () {
  this.timeout(20_000);
  let fx: ConsoleFixture;
  let session: Session;
  const get = async <T>(path: string): Promise<T> => {
    const res = await fx.call('GET', `/console/api/${path}`, { session });
    expect(res.status, path).to.equal(200);
    return (await res.json()) as T;
  };

  before(async () => {
    const now = Date.now();
    fx = await startConsoleFixture({
      // Customer 6 owes $2.50 (a positive Stripe balance).
      customers: [...[1, 2, 3, 4, 5].map((i) => customerFixture(i, -5000, now)), customerFixture(6, 250, now)],
      config: { metering: { default_cost: 100 } },
    });
    session = await fx.signIn();
    // One $1 call each for customers 1-4, then one settlement each: 1 waits, 2 is retrying, 3 failed, 4 confirmed.
    await fx.engine.ingestUsage([1, 2, 3, 4].map((i) => ({ id: `ev-${i}`, consumer: `consumer-${i}`, at: now, route: 'r', status: 200 })));
    const rows = await fx.store.openSettlements(now, 'balance_transactions', () => 'usd');
    const of = (i: number) => rows.find((r) => r.customerId === customerFixture(i, 0).id)!;
    await fx.engine.settlementsOpened(rows);
    await fx.store.settlementAttemptFailed(of(2).id, 'Stripe answered 503');
    await fx.engine.settlementFailed(of(3), 'Stripe refused: No such customer');
    await fx.engine.settlementConfirmed(of(4), 'cbtxn_spec_4', -5100);
    // Two emails: one stale (the customer left the cohort before it went), one failed.
    await fx.store.enqueueEmails([
      { dedupeKey: 'k-stale', templateId: 'out-of-credit', customerId: 'cus_000005', to: 'c5@example.com', context: '{}', createdAt: now },
      { dedupeKey: 'k-failed', templateId: 'out-of-credit', customerId: 'cus_000001', to: 'c1@example.com', context: '{}', createdAt: now },
    ]);
    const log = await fx.store.emailLog({ limit: 10 });
    await fx.store.finishEmail(log.find((e) => e.dedupeKey === 'k-stale')!.id, { status: 'stale', at: now, error: 'customer left no-credit since' });
    await fx.store.finishEmail(log.find((e) => e.dedupeKey === 'k-failed')!.id, { status: 'failed', at: now, error: '550 mailbox unavailable', answered: true });
  });
  after(() => fx?.stop());

  it('the overview counts settlements pending, retrying, failed and confirmed apart, and stale emails apart from failed ones', async () => {
    const o = await get<{ settlements: Record<string, number>; emails: Record<string, number> }>('overview');
    expect(o.settlements).to.deep.equal({ pending: 1, retrying: 1, failed: 1, confirmed: 1 });
    expect(o.emails).to.include({ stale: 1, failed: 1 });
  });

  it('the overview counts who owes, and how much', async () => {
    const o = await get<{ owing: unknown }>('overview');
    expect(o.owing).to.deep.equal({ customers: 1, amounts: { usd: 250 } });
  });

  it('the settlements page filters by status and shows why one failed', async () => {
    const all = await get<SettlementsAnswer>('settlements');
    expect(all.settlements.map((s) => s.status).sort()).to.deep.equal(['confirmed', 'failed', 'pending', 'retrying']);
    const failed = await get<SettlementsAnswer>('settlements?status=failed');
    expect(failed.settlements).to.have.length(1);
    expect(failed.settlements[0]).to.include({ customer: 'cus_000003', customer_name: 'Customer 3', status: 'failed', last_error: 'Stripe refused: No such customer' });
    const retrying = await get<SettlementsAnswer>('settlements?status=retrying');
    expect(retrying.settlements.map((s) => [s.customer, s.last_error])).to.deep.equal([['cus_000002', 'Stripe answered 503']]);
    expect((await get<SettlementsAnswer>('settlements?status=pending')).settlements.map((s) => s.customer)).to.deep.equal(['cus_000001']);
    const confirmed = await get<SettlementsAnswer>('settlements?status=confirmed');
    expect(confirmed.settlements.map((s) => [s.customer, s.stripe_ref])).to.deep.equal([['cus_000004', 'cbtxn_spec_4']]);
    expect(all.counts).to.deep.equal({ pending: 1, retrying: 1, failed: 1, confirmed: 1 });
  });

  it('an unknown settlement status is refused with the choices named', async () => {
    const res = await fx.call('GET', '/console/api/settlements?status=failing', { session });
    expect(res.status).to.equal(400);
    expect(((await res.json()) as { message: string }).message).to.equal('status: one of pending, retrying, failed, confirmed');
  });

  it('a customer page shows that customer\'s failed settlement', async () => {
    const c = await get<{ settlements: SettlementsAnswer['settlements'] }>('customers/cus_000003');
    expect(c.settlements.map((s) => s.status)).to.deep.equal(['failed']);
  });

  it('the email log shows a stale email with its reason and filters by stale', async () => {
    const stale = await get<{ emails: Array<{ customer: string; status: string; last_error: string }> }>('emails/log?status=stale');
    expect(stale.emails).to.have.length(1);
    expect(stale.emails[0]).to.include({ customer: 'cus_000005', status: 'stale', last_error: 'customer left no-credit since' });
    const all = await get<{ emails: Array<{ status: string }> }>('emails/log');
    expect(all.emails.map((e) => e.status).sort()).to.deep.equal(['failed', 'stale']);
  });
});
