// The caps core alone (pure, issue 23): UTC periods, a consumer's spend from
// its usage events, cap left, and the lease bound. On seeded interleavings of
// nodes asking for leases, drawing, giving back and usage arriving across
// period boundaries, what is reserved plus what is spent never exceeds
// min(team credit, the consumer's cap) in any period.
import { expect } from 'chai';
import { addSpend, boundLease, capLeft, NO_SPEND, periodEnd, periodStart, retryAfterSeconds, spendFromEvents, spentIn, type CapLimits, type ConsumerSpend } from '../../../control-service/src/caps/caps';
import { capKeysOf, capsFor } from '../../../control-service/src/caps/limits';
import { consumersOfCustomer, parseConsumerClaim } from '../../../control-service/src/consumer-claims';
import { seededFor } from '../../support/seeded-random';

const M = 1_000_000; // micros per smallest currency unit

describe('caps core (pure)', () => {
  it('periods start and reset at UTC boundaries, months of every length and leap years included', () => {
    const at = Date.UTC(2024, 1, 29, 23, 59, 59, 999);
    expect(new Date(periodStart('daily', at)).toISOString()).to.equal('2024-02-29T00:00:00.000Z');
    expect(new Date(periodEnd('daily', at)).toISOString()).to.equal('2024-03-01T00:00:00.000Z');
    expect(new Date(periodStart('monthly', at)).toISOString()).to.equal('2024-02-01T00:00:00.000Z');
    expect(new Date(periodEnd('monthly', at)).toISOString()).to.equal('2024-03-01T00:00:00.000Z');
    const dec = Date.UTC(2026, 11, 31, 12);
    expect(new Date(periodEnd('monthly', dec)).toISOString()).to.equal('2027-01-01T00:00:00.000Z');
    expect(periodStart('daily', Date.UTC(2026, 0, 1))).to.equal(Date.UTC(2026, 0, 1));
    expect(retryAfterSeconds(Date.UTC(2026, 0, 2), Date.UTC(2026, 0, 1, 23, 59, 58, 1))).to.equal(2);
    expect(retryAfterSeconds(1000, 1000)).to.equal(1);
  });

  it('a consumer claim holds several comma-separated consumers; blanks and repeats drop out', () => {
    expect(parseConsumerClaim(' app-web, app-batch,,app-web ,partner ')).to.deep.equal(['app-web', 'app-batch', 'partner']);
    expect(parseConsumerClaim(undefined)).to.deep.equal([]);
    expect(parseConsumerClaim(' , ')).to.deep.equal([]);
    expect(consumersOfCustomer('cus_1', 'a,cus_1,b')).to.deep.equal(['cus_1', 'a', 'b']);
  });

  it('caps: config defaults, customer-wide metadata, then per consumer; "none" lifts; a bad value is reported, not guessed', () => {
    const cfg = { daily: 1000, monthly: 20000, metadataPrefix: 'payg_cap' };
    expect(capsFor(cfg, {}, 'a').limits).to.deep.equal({ daily: 1000, monthly: 20000 });
    const md = { payg_cap_daily: '500', 'payg_cap_daily.b': '50', 'payg_cap_monthly.b': 'none', 'payg_cap_monthly.c': '12.5' };
    expect(capsFor(cfg, md, 'a').limits).to.deep.equal({ daily: 500, monthly: 20000 });
    expect(capsFor(cfg, md, 'b').limits).to.deep.equal({ daily: 50 });
    const c = capsFor(cfg, md, 'c');
    expect(c.limits).to.deep.equal({ daily: 500, monthly: 20000 });
    expect(c.problems).to.have.length(1);
    expect(c.problems[0].key).to.equal('payg_cap_monthly.c');
    expect(capsFor({ metadataPrefix: 'payg_cap' }, {}, 'a').limits).to.deep.equal({});
    // More than 9 digits (cap × 1,000,000 micros would not be an exact integer), a sign, a unit: reported, not guessed.
    for (const bad of ['1234567890', '-5', '$10', '1e3', '']) {
      const r = capsFor(cfg, { 'payg_cap_daily.d': bad }, 'd');
      expect(r.limits.daily, bad).to.equal(1000);
      expect(r.problems.map((p) => p.key), bad).to.deep.equal(['payg_cap_daily.d']);
    }
    expect(capsFor(cfg, { 'payg_cap_daily.d': ' 999999999 ' }, 'd').limits.daily).to.equal(999_999_999);
  });

  it('the customer\'s cap keys are checked together: a bad value, and a per-consumer key naming no consumer the customer lists (a typo), are reported', () => {
    const cfg = { metadataPrefix: 'payg_cap' };
    const md = { kong_consumer: 'app-web,app-batch', payg_cap_daily: '100', 'payg_cap_daily.app-wbe': '5', 'payg_cap_monthly.app-batch': 'lots', 'payg_cap_monthly.app-web': 'none', other: 'x' };
    const problems = capKeysOf(cfg, md, ['app-web', 'app-batch']);
    expect(problems.map((p) => p.key)).to.deep.equal(['payg_cap_daily.app-wbe', 'payg_cap_monthly.app-batch']);
    expect(problems[0].error).to.match(/"app-wbe", which this customer does not list/);
    expect(problems[1].error).to.match(/whole number/);
    // Without the list, only the values are checked.
    expect(capKeysOf(cfg, md).map((p) => p.key)).to.deep.equal(['payg_cap_monthly.app-batch']);
    // Keys that look like cap keys but are not (nothing reads them): another period, another case, no dot.
    const near = capKeysOf(cfg, { payg_cap_weekly: '5', 'PAYG_CAP_DAILY.app-web': '5', 'payg_cap_daily_app-web': '5', 'payg_cap_daily.App': '5', payg_capital: 'x' }, ['app-web', 'App']);
    expect(near.map((p) => p.key)).to.deep.equal(['payg_cap_weekly', 'PAYG_CAP_DAILY.app-web', 'payg_cap_daily_app-web']);
    expect(near[0].error).to.match(/is not a cap key: expected payg_cap_daily or payg_cap_monthly/);
  });

  it('the tighter cap binds and names its reset; no cap leaves the team credit the only bound', () => {
    const now = Date.UTC(2026, 5, 15, 10);
    let s: ConsumerSpend = NO_SPEND;
    s = addSpend(s, now - 1000, 900 * M);
    const left = capLeft({ daily: 1000, monthly: 5000 }, s, now);
    expect(left).to.deep.equal({ leftMicros: 100 * M, period: 'daily', resetsAt: Date.UTC(2026, 5, 16) });
    expect(capLeft({}, s, now).leftMicros).to.equal(undefined);
    expect(boundLease(10_000 * M, undefined)).to.deep.equal({ micros: 10_000 * M, limit: 'no_credit' });
    expect(boundLease(10_000 * M, left.leftMicros, 40 * M)).to.deep.equal({ micros: 60 * M, limit: 'consumer_cap' });
    expect(boundLease(30 * M, left.leftMicros, 40 * M)).to.deep.equal({ micros: 30 * M, limit: 'no_credit' });
    expect(boundLease(-5, 0)).to.deep.equal({ micros: 0, limit: 'no_credit' });
    // The next UTC day: the daily spend is gone, the monthly one stays.
    const tomorrow = Date.UTC(2026, 5, 16, 0, 0, 0, 1);
    expect(spentIn(s, 'daily', tomorrow)).to.equal(0);
    expect(spentIn(s, 'monthly', tomorrow)).to.equal(900 * M);
    expect(capLeft({ daily: 1000, monthly: 5000 }, s, tomorrow).leftMicros).to.equal(1000 * M);
  });

  it('a spend already counted in a later period (another replica\'s clock is past the boundary) leaves nothing of the period this clock is still in', () => {
    const before = Date.UTC(2026, 6, 31, 23, 59, 59, 500); // this replica: the last half second of July
    const after = Date.UTC(2026, 7, 1, 0, 0, 0, 200); // another replica already counted usage in August
    const s = addSpend(NO_SPEND, after, 2 * M);
    // July's spend was replaced by August's in the store: what July spent is unknown here, so no more is granted in July.
    expect(capLeft({ daily: 10 }, s, before)).to.deep.equal({ leftMicros: 0, period: 'daily', resetsAt: Date.UTC(2026, 7, 1) });
    expect(capLeft({ monthly: 10 }, s, before).leftMicros).to.equal(0);
    expect(capLeft({ daily: 10, monthly: 100 }, s, before)).to.include({ leftMicros: 0 });
    // Once this clock is in August too, August's spend counts as usual.
    expect(capLeft({ daily: 10 }, s, after).leftMicros).to.equal(8 * M);
  });

  it('on seeded interleavings, reserved + spent never exceeds min(team credit, cap) per consumer and period, and the running spend equals the events summed', function () {
    this.timeout(120_000); // a CPU-bound loop on a shared 2-core machine
    const { random } = seededFor('caps core');
    const int = (n: number) => Math.floor(random() * n);
    for (let round = 0; round < 200; round++) {
      // One team, three consumers (one uncapped), four nodes; a clock that crosses day and month boundaries.
      let now = Date.UTC(2026, int(12), 1 + int(28), int(24), int(60)) - int(3) * 3_600_000;
      const consumers = ['a', 'b', 'c'];
      const limits: Record<string, CapLimits> = {
        a: { daily: 1 + int(40) }, b: { daily: 1 + int(60), monthly: 1 + int(120) }, c: {},
      };
      let credit = int(150) * M; // the team's credit (micros), topped up now and then
      const cost = (1 + int(3)) * M;
      const spend: Record<string, ConsumerSpend> = { a: NO_SPEND, b: NO_SPEND, c: NO_SPEND };
      const events: Record<string, Array<{ at: number; micros: number }>> = { a: [], b: [], c: [] };
      interface Open { consumer: string; micros: number; drawn: number; start: { daily: number; monthly: number } }
      const open: Open[] = [];
      const settle = (l: Open) => {
        // The node reports what it drew as usage events (priced at `cost`), then the lease closes.
        for (let i = 0; i < l.drawn; i++) {
          spend[l.consumer] = addSpend(spend[l.consumer], now, cost);
          events[l.consumer].push({ at: now, micros: cost });
          credit -= cost;
        }
        open.splice(open.indexOf(l), 1);
      };
      for (let step = 0; step < 120; step++) {
        const r = random();
        if (r < 0.45) {
          const consumer = consumers[int(3)];
          // An open lease holds all it was granted until its usage is counted (drawn or not).
          const reserved = open.reduce((s, l) => s + l.micros, 0);
          const mine = open.filter((l) => l.consumer === consumer).reduce((s, l) => s + l.micros, 0);
          const left = capLeft(limits[consumer], spend[consumer], now);
          const bound = boundLease(credit - reserved, left.leftMicros, mine);
          const want = (1 + int(8)) * cost;
          const micros = Math.floor(Math.min(want, bound.micros) / cost) * cost;
          if (micros > 0) open.push({ consumer, micros, drawn: 0, start: { daily: periodStart('daily', now), monthly: periodStart('monthly', now) } });
          else expect(bound.micros).to.be.below(cost);
        } else if (r < 0.75 && open.length) {
          const l = open[int(open.length)];
          if ((l.drawn + 1) * cost <= l.micros) l.drawn++;
        } else if (r < 0.9 && open.length) {
          settle(open[int(open.length)]);
        } else if (r < 0.97) {
          // Time passes; open leases are settled before a reset (a lease lives ttl_ms, far shorter than a period).
          const next = now + int(6) * 3_600_000 + int(1000);
          if (periodStart('daily', next) !== periodStart('daily', now)) while (open.length) settle(open[0]);
          now = next;
        } else {
          credit += int(40) * M;
        }
        // Invariants, at every step.
        const reservedAll = open.reduce((s, l) => s + l.micros - l.drawn * cost, 0);
        const spentAll = open.reduce((s, l) => s + l.drawn * cost, 0);
        if (reservedAll + spentAll > Math.max(0, credit)) expect.fail(`round ${round} step ${step}: team ${reservedAll + spentAll} > credit ${credit}`);
        for (const c of consumers) {
          for (const period of ['daily', 'monthly'] as const) {
            const running = spentIn(spend[c], period, now);
            if (running !== spendFromEvents(events[c], period, now)) expect.fail(`round ${round}: ${c} ${period} running sum ${running} != events ${spendFromEvents(events[c], period, now)}`);
            const cap = limits[c][period];
            if (cap === undefined) continue;
            const held = open.filter((l) => l.consumer === c).reduce((s, l) => s + l.micros, 0);
            if (running + held > cap * M) expect.fail(`round ${round} step ${step}: ${c} ${period} spent ${running} + held ${held} > cap ${cap * M}`);
          }
        }
      }
    }
  });
});
