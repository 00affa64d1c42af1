// The console answers the same on both stores: one scripted history (customers
// moving between cohorts over days, usage on several routes, settlements in
// every state, emails in every status) is played into a console on SQLite and
// one on PostgreSQL, with the same clock, and every page's API answer must be
// equal. The SQLite console's answers are themselves checked by specs 30-32;
// a few facts are asserted here too, so both stores agreeing on a wrong answer fails.
import { expect } from 'chai';
import { customerFixture, startConsoleFixture, type ConsoleFixture, type Session } from '../support/console-fixture';
import { freshDatabase } from '../support/postgres';
import { creditIntent, debitIntent } from '../../control-service/src/top-ups/core';

const DAY = 86_400_000;
const MINUTE = 60_000;

/** Plays the same history into a console; `clock` is the engine's clock, moved by the script. */
async function seed(fx: ConsoleFixture, clock: { t: number }): Promise<void> {
  const ids = Array.from({ length: 24 }, (_, i) => i + 1);
  const at = (i: number) => customerFixture(i, 0).id;
  // Day -5: everyone arrives, a third without credit (no-credit), a third with a little (low-credit), a third with plenty.
  await fx.engine.apply(ids.map((i) => customerFixture(i, [0, -300, -5000][i % 3], clock.t)), []);
  // Days -4 .. -1: some top up (leave both cohorts), some run out (enter), one is deleted.
  for (let d = 4; d >= 1; d--) {
    clock.t += DAY;
    const moved = ids.filter((i) => i % 4 === d % 4).map((i) => customerFixture(i, [-9000, 0, -200, 50][d - 1], clock.t));
    await fx.engine.apply(moved, []);
  }
  clock.t += DAY - 10 * MINUTE;
  await fx.engine.apply([], [{ id: at(24), version: clock.t }]);
  // Usage on several routes, with ties broken by route (none first, then byte order).
  const events = [
    ...[1, 2, 3].flatMap((k) => [
      { id: `u3-b-${k}`, consumer: 'consumer-3', route: 'r-b' }, { id: `u3-a-${k}`, consumer: 'consumer-3', route: 'r-a' },
      { id: `u3-A-${k}`, consumer: 'consumer-3', route: 'R-a' }, { id: `u3-n-${k}`, consumer: 'consumer-3', route: null },
    ]),
    ...[1, 2, 3, 4, 5].map((k) => ({ id: `u3-c-${k}`, consumer: 'consumer-3', route: 'r-c' })),
    ...[5, 6, 7, 8, 9, 11, 12].map((i) => ({ id: `u-${i}`, consumer: `consumer-${i}`, route: '/v1/things' })),
  ].map((e, k) => ({ ...e, at: clock.t - 1000 + k, status: 200 }));
  clock.t += MINUTE;
  await fx.engine.ingestUsage(events);
  // Settlements: one waits, one is retrying, one failed, two confirmed.
  clock.t += MINUTE;
  const rows = await fx.store.openSettlements(clock.t, 'balance_transactions', () => 'usd');
  await fx.engine.settlementsOpened(rows);
  const of = (i: number) => rows.find((r) => r.customerId === at(i))!;
  await fx.store.settlementAttemptFailed(of(5).id, 'Stripe answered 503');
  await fx.store.settlementAttemptFailed(of(6).id, 'Stripe answered 429');
  clock.t += MINUTE;
  await fx.engine.settlementFailed(of(6), 'Stripe refused: No such customer');
  await fx.engine.settlementConfirmed(of(7), 'cbtxn_7', -5100);
  await fx.engine.settlementConfirmed(of(3), 'cbtxn_3', -7000);
  // Emails in every status, for a few customers and two templates.
  clock.t += MINUTE;
  await fx.store.enqueueEmails(['out-of-credit', 'low-credit'].flatMap((template) => [3, 5, 9, 12, 15, 18].map((i) => ({
    dedupeKey: `${template}:${i}`, templateId: template, customerId: at(i), to: `c${i}@example.com`, context: '{}', createdAt: clock.t + i,
  }))));
  const log = await fx.store.emailLog({ limit: 100 });
  const finish = [
    { status: 'delivered', messageId: '<m1@payg>' }, { status: 'failed', error: '550 mailbox unavailable', answered: true },
    { status: 'stale', error: 'customer left no-credit since' }, { status: 'cancelled', error: 'template switched off' },
  ] as const;
  const byKey = log.slice().sort((a, b) => (a.dedupeKey < b.dedupeKey ? -1 : 1));
  for (const [k, row] of byKey.slice(0, finish.length * 2).entries()) await fx.store.finishEmail(row.id, { ...finish[k % finish.length], at: clock.t + 100 + k });
  clock.t += MINUTE;
  await seedTopUps(fx, clock);
}

/**
 * Top-ups in every state: customer 3 bought $25.00 three days ago (credited, then refunded $10.00 today, the
 * refund confirmed) and $10.00 today (credited, disputed today: the debit retrying); customer 5 bought €30.00
 * today (credited), ¥500 today (Stripe refused the credit for good: not counted), and left two
 * forms at the same instant (one with an open session, one before its session: ties go by id, in byte order).
 */
async function seedTopUps(fx: ConsoleFixture, clock: { t: number }): Promise<void> {
  const s = fx.store;
  const buy = async (id: string, customer: number, amount: number, currency: string, at: number, paid: 'confirmed' | 'failed' | 'open' | 'none') => {
    const customerId = customerFixture(customer, 0).id;
    await s.recordTopUp({ id, customerId, amount, currency, createdAt: at });
    if (paid === 'none') return;
    await s.setTopUpSession(id, `cs_test_${id}`, `https://checkout.stripe.com/c/pay/cs_test_${id}`);
    if (paid === 'open') return;
    await s.setTopUpPaymentIntent(id, `pi_${id}`);
    const { row } = await s.enqueueMove(creditIntent(`cs_test_${id}`, id, customerId, amount, currency), at + 1000);
    if (paid === 'confirmed') await s.confirmMove(row.id, `cbtxn_credit_${id}`, at + 2000);
    else await s.failMove(row.id, 'Stripe refused: currency mismatch', at + 2000);
  };
  const debit = async (kind: 'refund' | 'dispute', stripeId: string, topUp: string, customer: number, amount: number, at: number) => {
    const { row } = await s.enqueueDebit(debitIntent(kind, stripeId, `cs_test_${topUp}`, topUp, customerFixture(customer, 0).id, 0, 'usd'), () => amount, at);
    return row!;
  };
  await buy('tu_old3', 3, 2500, 'usd', clock.t - 3 * DAY, 'confirmed');
  await buy('tu_new3', 3, 1000, 'usd', clock.t, 'confirmed');
  await buy('tu_eur5', 5, 3000, 'eur', clock.t + 10, 'confirmed');
  await buy('tu_jpy5', 5, 500, 'jpy', clock.t + 20, 'failed');
  await buy('tu_B_open5', 5, 2500, 'usd', clock.t + 30, 'open');
  await buy('tu_a_none5', 5, 2500, 'usd', clock.t + 30, 'none');
  clock.t += MINUTE;
  const refund = await debit('refund', 're_3', 'tu_old3', 3, 1000, clock.t);
  await s.confirmMove(refund.id, 'cbtxn_refund_3', clock.t + 500);
  const dispute = await debit('dispute', 'dp_3', 'tu_new3', 3, 1000, clock.t + 1000);
  await s.moveAttemptFailed(dispute.id, 'Stripe answered 503');
  clock.t += MINUTE;
}

/**
 * What may differ between two answers a moment apart: the balance history's last
 * point is "now", the auto-recharge view's `as_of` is when it was read, and the
 * per-minute series end at the current minute (all from memory or the clock, not
 * the store, and empty here: no decisions were asked).
 */
function comparable(answer: any): unknown {
  if (answer?.balance_history) {
    const history = answer.balance_history as Array<[number, number]>;
    const recharge = answer.auto_recharge ? { auto_recharge: { ...answer.auto_recharge, as_of: 'when read' } } : {};
    return { ...answer, ...recharge, balance_history: [...history.slice(0, -1), ['now', history[history.length - 1][1]]] };
  }
  if (answer?.blocks_per_minute) {
    const series = (s: { minutes: number[] }) => ({ ...s, minutes: `${s.minutes.length} minutes` });
    return { ...answer, blocks_per_minute: series(answer.blocks_per_minute), would_blocks_per_minute: series(answer.would_blocks_per_minute) };
  }
  return answer;
}

const PAGES = [
  'overview', 'cohorts', 'rules', 'emails',
  'customers', 'customers?cohort=no-credit&per_page=5&page=2&sort=name&dir=desc', 'customers?cohort=low-credit&sort=estimated_balance',
  'customers?q=customer%201', 'customers/cus_000003', 'customers/cus_000005', 'customers/cus_000006', 'customers/cus_000007', 'customers/cus_000024',
  'customers/cus_000009',
  'settlements', 'settlements?status=pending', 'settlements?status=retrying', 'settlements?status=failed', 'settlements?status=confirmed',
  'settlements?customer=cus_000007', 'settlements?status=confirmed&customer=cus_000003',
  'emails/log', 'emails/log?status=delivered', 'emails/log?status=failed', 'emails/log?status=stale', 'emails/log?status=cancelled',
  'emails/log?status=pending', 'emails/log?template=low-credit', 'emails/log?customer=cus_000009',
];

describe('console: the same answers on SQLite and on PostgreSQL', function () {
  this.timeout(60_000);
  const consoles: Record<'sqlite' | 'postgres', { fx: ConsoleFixture; session: Session }> = {} as never;
  const answers: Record<'sqlite' | 'postgres', Map<string, { status: number; body: unknown }>> = { sqlite: new Map(), postgres: new Map() };

  before(async () => {
    // Five days ago at noon UTC, so the history spans days whatever time the spec runs.
    const start = (Math.floor(Date.now() / DAY) - 5) * DAY + DAY / 2 - 10 * MINUTE;
    for (const kind of ['sqlite', 'postgres'] as const) {
      const clock = { t: start };
      const fx = await startConsoleFixture({
        now: () => clock.t,
        files: { 'out.txt.hbs': 'Your credit ran out.', 'low.txt.hbs': 'Your credit is low.' },
        postgres: kind === 'postgres' ? await freshDatabase() : undefined,
        config: {
          metering: { default_cost: 100 },
          emails: [
            // Off: the outbox holds exactly the emails the script puts there.
            { id: 'out-of-credit', cohort: 'no-credit', active: false, from: { address: 'billing@example.com' }, subject: 'Out of credit', text: 'out.txt.hbs' },
            { id: 'low-credit', cohort: 'low-credit', active: false, from: { address: 'billing@example.com' }, subject: 'Low credit', text: 'low.txt.hbs' },
          ],
        },
      });
      consoles[kind] = { fx, session: await fx.signIn() };
      await seed(fx, clock);
    }
    // Each page from both, one right after the other (the day can only turn between them at midnight UTC).
    for (const page of PAGES) {
      for (const kind of ['sqlite', 'postgres'] as const) {
        const res = await consoles[kind].fx.call('GET', `/console/api/${page}`, { session: consoles[kind].session });
        answers[kind].set(page, { status: res.status, body: comparable(await res.json()) });
      }
    }
  });
  after(async () => {
    for (const c of Object.values(consoles)) await c?.fx.stop();
  });

  for (const page of PAGES) {
    it(`GET /console/api/${page}`, () => {
      expect(answers.postgres.get(page)).to.deep.equal(answers.sqlite.get(page));
    });
  }

  it('the seeded history shows on both (so agreeing is not agreeing on nothing)', () => {
    for (const kind of ['sqlite', 'postgres'] as const) {
      const overview = answers[kind].get('overview')!.body as any;
      expect(overview.settlements, kind).to.deep.equal({ pending: 4, retrying: 1, failed: 1, confirmed: 2 });
      expect(overview.emails, kind).to.deep.equal({ pending: 4, sending: 0, delivered: 2, failed: 2, cancelled: 2, stale: 2 });
      const noCredit = overview.cohort_history.find((h: any) => h.cohort === 'no-credit').points.map((p: [number, number]) => p[1]);
      expect(new Set(noCredit.slice(-6)).size, `${kind}: no-credit's size moves over the last days`).to.be.greaterThan(2);
      const c3 = answers[kind].get('customers/cus_000003')!.body as any;
      expect(c3.usage_by_route.map((u: any) => [u.route, u.requests]), kind)
        .to.deep.equal([['r-c', 5], [null, 3], ['R-a', 3], ['r-a', 3], ['r-b', 3]]);
      expect(c3.settlements.map((s: any) => [s.status, s.stripe_ref]), kind).to.deep.equal([['confirmed', 'cbtxn_3']]);
      expect(c3.emails.map((e: any) => e.template).sort(), kind).to.deep.equal(['low-credit', 'out-of-credit']);
      expect(answers[kind].get('customers/cus_000024')!.status, `${kind}: a deleted customer is gone`).to.equal(404);
      // Today's top-ups: the $10.00 and the €30.00 (the ¥500 was refused, the $25.00 was three days ago); one refund, one dispute.
      expect(overview.today, kind).to.deep.include({
        top_ups: { count: 2, amounts: { eur: 3000, usd: 1000 } }, refunds: { count: 1, amounts: { usd: 1000 } }, disputes: { count: 1, amounts: { usd: 1000 } },
      });
      expect(c3.top_ups.map((t: any) => [t.id, t.formatted, t.status, t.refunded, t.disputed, t.stripe_url]), kind).to.deep.equal([
        ['tu_new3', '$10.00', 'credited', 0, 1000, 'https://dashboard.stripe.com/test/payments/pi_tu_new3'],
        ['tu_old3', '$25.00', 'credited', 1000, 0, 'https://dashboard.stripe.com/test/payments/pi_tu_old3'],
      ]);
      expect(c3.top_up_debits.map((d: any) => [d.kind, d.stripe_id, d.formatted, d.status, d.balance_transaction, d.stripe_url]), kind).to.deep.equal([
        ['dispute', 'dp_3', '$10.00', 'retrying', null, 'https://dashboard.stripe.com/test/disputes/dp_3'],
        ['refund', 're_3', '$10.00', 'confirmed', 'cbtxn_refund_3', 'https://dashboard.stripe.com/test/refunds/re_3'],
      ]);
      const c5 = answers[kind].get('customers/cus_000005')!.body as any;
      expect(c5.top_ups.map((t: any) => [t.id, t.status, t.stripe_url]), kind).to.deep.equal([
        ['tu_B_open5', 'open', 'https://dashboard.stripe.com/test/checkout/sessions/cs_test_tu_B_open5'],
        ['tu_a_none5', 'not_started', null],
        ['tu_jpy5', 'failed', 'https://dashboard.stripe.com/test/payments/pi_tu_jpy5'],
        ['tu_eur5', 'credited', 'https://dashboard.stripe.com/test/payments/pi_tu_eur5'],
      ]);
      expect(c5.top_up_debits, kind).to.deep.equal([]);
    }
  });
});
