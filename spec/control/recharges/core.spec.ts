// Auto-recharge, the pure core: settings from metadata within bounds, one
// recharge per crossing, never past the monthly cap (seeded random histories
// with concurrent crossings, slow and failing payments across month ends),
// the minimum interval, failure → pause, Stripe's answers as outcomes.
import { expect } from 'chai';
import {
  countedAgainstCap,
  afterFailure, COUNTS_AGAINST_CAP, crossed, META, metadataFor, monthOf, OPEN, outcomeOfError, outcomeOfIntent, planRecharge, settingsOf,
  type RechargeOptions, type RechargeSettings, type RechargeStatus,
} from '../../../control-service/src/recharges/core';
import { seededFor } from '../../support/seeded-random';

const OPTIONS: RechargeOptions = {
  enabled: true, threshold: 500, amount: 2000, monthlyCap: 10000, minAmount: 500, maxAmount: 50000, maxThreshold: 20000,
  maxMonthlyCap: 200000, minIntervalMs: 60_000, maxConsecutiveFailures: 3, pollIntervalMs: 1000,
};

describe('auto-recharge: the pure core', () => {
  describe('settings from Stripe customer metadata', () => {
    it('off unless payg_auto_recharge is "on" and the operator enabled it', () => {
      expect(settingsOf({}, OPTIONS).kind).to.equal('off');
      expect(settingsOf({ [META.enabled]: 'yes' }, OPTIONS).kind).to.equal('off');
      expect(settingsOf({ [META.enabled]: 'on' }, { ...OPTIONS, enabled: false }).kind).to.equal('off');
    });
    it('defaults from config; own values within bounds; anything else is invalid and names the key', () => {
      expect(settingsOf({ [META.enabled]: 'on' }, OPTIONS)).to.deep.equal({ kind: 'on', settings: { threshold: 500, amount: 2000, monthlyCap: 10000 } });
      expect(settingsOf(metadataFor({ threshold: 1000, amount: 5000, monthlyCap: 20000 }), OPTIONS)).to.deep.equal({ kind: 'on', settings: { threshold: 1000, amount: 5000, monthlyCap: 20000 } });
      expect(settingsOf({ [META.enabled]: 'on', [META.amount]: '100' }, OPTIONS)).to.include({ kind: 'invalid', field: META.amount });
      expect(settingsOf({ [META.enabled]: 'on', [META.amount]: '20.5' }, OPTIONS)).to.include({ kind: 'invalid', field: META.amount });
      expect(settingsOf({ [META.enabled]: 'on', [META.threshold]: '999999' }, OPTIONS)).to.include({ kind: 'invalid', field: META.threshold });
      // A cap below one recharge could never be charged: refused.
      expect(settingsOf({ [META.enabled]: 'on', [META.amount]: '3000', [META.cap]: '2000' }, OPTIONS)).to.include({ kind: 'invalid', field: META.cap });
      expect(settingsOf({ [META.enabled]: 'on', [META.cap]: '-5' }, OPTIONS)).to.include({ kind: 'invalid', field: META.cap });
    });
  });

  it('a crossing is from at-or-above the threshold to below it, once', () => {
    expect(crossed(600, 400, 500)).to.equal(true);
    expect(crossed(500, 499, 500)).to.equal(true);
    expect(crossed(400, 300, 500), 'already below').to.equal(false);
    expect(crossed(600, 500, 500), 'at the threshold').to.equal(false);
    expect(crossed(undefined, 0, 500), 'a customer seen for the first time').to.equal(false);
  });

  it('months are UTC calendar months', () => {
    expect(monthOf(Date.UTC(2026, 11, 31, 23, 59, 59, 999))).to.equal('2026-12');
    expect(monthOf(Date.UTC(2027, 0, 1))).to.equal('2027-01');
  });

  describe('planning', () => {
    const s: RechargeSettings = { threshold: 500, amount: 2000, monthlyCap: 5000 };
    const h = (spent: number, extra: { open?: boolean; lastDueAt?: number; paused?: boolean } = {}) => ({ spentIn: () => spent, open: false, lastDueAt: undefined, paused: false, ...extra });
    const now = Date.UTC(2026, 5, 10);
    it('plans the amount, due now', () => expect(planRecharge(s, h(0), now, 60_000)).to.deep.equal({ kind: 'plan', amount: 2000, dueAt: now, month: '2026-06' }));
    it('up to the cap exactly, never past it', () => {
      expect(planRecharge(s, h(3000), now, 60_000).kind).to.equal('plan');
      expect(planRecharge(s, h(3001), now, 60_000)).to.deep.equal({ kind: 'skip', reason: 'cap' });
    });
    it('not while one is open, nor while paused', () => {
      expect(planRecharge(s, h(0, { open: true }), now, 60_000)).to.deep.equal({ kind: 'skip', reason: 'open' });
      expect(planRecharge(s, h(0, { paused: true }), now, 60_000)).to.deep.equal({ kind: 'skip', reason: 'paused' });
    });
    it('the minimum interval after the last one: planned, due when it has passed', () => {
      expect(planRecharge(s, h(0, { lastDueAt: now - 10_000 }), now, 60_000)).to.include({ kind: 'plan', dueAt: now + 50_000 });
      expect(planRecharge(s, h(0, { lastDueAt: now - 90_000 }), now, 60_000)).to.include({ kind: 'plan', dueAt: now });
    });
  });

  it('failures in a row pause at the limit', () => {
    expect(afterFailure(0, 3)).to.deep.equal({ failures: 1, pause: false });
    expect(afterFailure(2, 3)).to.deep.equal({ failures: 3, pause: true });
  });

  it("Stripe's answers: declines, 3-D Secure, and what is retried with the same key", () => {
    expect(outcomeOfError({ type: 'StripeCardError', statusCode: 402, code: 'card_declined', message: 'Your card was declined.' })).to.include({ kind: 'declined', code: 'card_declined' });
    expect(outcomeOfError({ type: 'StripeCardError', statusCode: 402, code: 'authentication_required', payment_intent: { id: 'pi_1' } })).to.deep.equal({ kind: 'action_required', code: 'authentication_required', paymentIntent: 'pi_1' });
    for (const e of [{ statusCode: 429 }, { statusCode: 500 }, { statusCode: 503 }, { statusCode: 409 }, { type: 'StripeConnectionError' }, {}]) {
      expect(outcomeOfError(e).kind, JSON.stringify(e)).to.equal('retry');
    }
    expect(outcomeOfIntent({ id: 'pi_2', status: 'succeeded' })).to.deep.equal({ kind: 'succeeded', paymentIntent: 'pi_2' });
    expect(outcomeOfIntent({ id: 'pi_3', status: 'processing' }).kind).to.equal('processing');
    expect(outcomeOfIntent({ id: 'pi_4', status: 'requires_action' }).kind).to.equal('action_required');
    expect(outcomeOfIntent({ id: 'pi_5', status: 'requires_payment_method', last_payment_error: { code: 'card_declined' } })).to.include({ kind: 'declined', code: 'card_declined' });
  });

  describe('seeded random histories: the cap is never exceeded, recharges stay the interval apart', () => {
    // A model of the store: every crossing is decided under the customer's lock
    // (as in the store's transaction), payments resolve later in any order,
    // succeed, fail or stay processing across month ends.
    interface Row { dueAt: number; month: string; amount: number; status: RechargeStatus }
    const { seed, random } = seededFor('recharges/core');
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)];
    for (let run = 0; run < 60; run++) {
      it(`history ${run}`, () => {
        const cap = pick([2000, 5000, 10000, 12345]);
        const amount = pick([500, 1999, 2000, 5000].filter((a) => a <= cap));
        const settings: RechargeSettings = { threshold: 500, amount, monthlyCap: cap };
        const interval = pick([0, 1000, 60_000, 3_600_000]);
        const rows: Row[] = [];
        let failures = 0;
        let paused = false;
        // Start near a month end so months turn over during the history.
        let now = Date.UTC(2026, Math.floor(random() * 12), 28) + Math.floor(random() * 4 * 86_400_000);
        for (let step = 0; step < 200; step++) {
          now += Math.floor(random() ** 3 * 6 * 3_600_000);
          const r = random();
          if (r < 0.5) {
            // A crossing (usage, a Stripe change), possibly several racing: each decided in turn under the lock.
            for (let k = 1 + Math.floor(random() * 3); k > 0; k--) {
              const d = planRecharge(settings, {
                spentIn: (m) => rows.filter((x) => x.month === m && COUNTS_AGAINST_CAP.includes(x.status)).reduce((a, x) => a + x.amount, 0),
                open: rows.some((x) => OPEN.includes(x.status)),
                lastDueAt: rows.length ? Math.max(...rows.map((x) => x.dueAt)) : undefined,
                paused,
              }, now, interval);
              if (d.kind === 'plan') rows.push({ dueAt: d.dueAt, month: d.month, amount: d.amount, status: 'planned' });
            }
          } else if (r < 0.9) {
            // A payment resolves (retries and replays never change the row's amount or month).
            const open = rows.filter((x) => OPEN.includes(x.status) && x.dueAt <= now);
            if (open.length) {
              const x = pick(open);
              const o = pick(['succeeded', 'succeeded', 'succeeded', 'processing', 'failed', 'action_required'] as const);
              x.status = o;
              if (o === 'succeeded') failures = 0;
              if (o === 'failed' || o === 'action_required') {
                const f = afterFailure(failures, 3);
                failures = f.failures;
                paused = paused || f.pause;
              }
            }
          } else if (paused && random() < 0.5) {
            paused = false; // a manual top-up re-arms
            failures = 0;
          }
          const byMonth = new Map<string, number>();
          for (const x of rows) if (COUNTS_AGAINST_CAP.includes(x.status)) byMonth.set(x.month, (byMonth.get(x.month) ?? 0) + x.amount);
          for (const [m, sum] of byMonth) expect(sum, `seed ${seed}: month ${m} over the cap ${cap}`).to.be.at.most(cap);
          const dues = rows.map((x) => x.dueAt).sort((a, b) => a - b);
          for (let i = 1; i < dues.length; i++) expect(dues[i] - dues[i - 1], `seed ${seed}: recharges closer than ${interval} ms`).to.be.at.least(interval);
          expect(rows.filter((x) => OPEN.includes(x.status)).length, `seed ${seed}: more than one open`).to.be.at.most(1);
        }
      });
    }
  });

  describe('what a recharge counts against the monthly cap (the console shows the same as the cap check counts)', () => {
    it('its amount less what refunds took back; failed debits take nothing back; a dispute counts it in full', () => {
      expect(countedAgainstCap(2000, [])).to.equal(2000);
      expect(countedAgainstCap(2000, [{ kind: 'refund', amount: 500, status: 'confirmed' }, { kind: 'refund', amount: 700, status: 'pending' }])).to.equal(800);
      expect(countedAgainstCap(2000, [{ kind: 'refund', amount: 2000, status: 'failed' }])).to.equal(2000);
      expect(countedAgainstCap(2000, [{ kind: 'refund', amount: 2000, status: 'confirmed' }])).to.equal(0);
      expect(countedAgainstCap(2000, [{ kind: 'refund', amount: 500, status: 'confirmed' }, { kind: 'dispute', amount: 1500, status: 'pending' }])).to.equal(2000);
    });
  });
});
