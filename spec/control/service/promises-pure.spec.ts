// Promises of docs/control-service.md whose behaviour lives in pure modules (cohorts, rules, the
// email workflow, merge tags, pricing) or in the Stripe gateway with its I/O
// and its sleep injected. Each test names what a user would see.
import { expect } from 'chai';
import { matches, type Filter } from '../../../control-service/src/cohorts';
import type { Customer } from '../../../control-service/src/customer';
import { planEmails, planRecurring } from '../../../control-service/src/emails/workflow';
import type { EmailTemplate } from '../../../control-service/src/emails/templates';
import { mergeContext } from '../../../control-service/src/merge-tags';
import { costOf, fixedPrice } from '../../../control-service/src/pricing';
import { verdict, type RuleDef } from '../../../control-service/src/rules';
import { StripeGateway, StripeUnavailable } from '../../../control-service/src/stripe/gateway';

const customer = (fields: Partial<Customer> = {}): Customer => ({
  id: 'cus_a', balance: 0, currency: 'usd', name: 'Ada Lovelace', email: 'ada@example.com', metadata: {}, ...fields,
});

describe('docs/control-service.md promises: cohorts, rules, emails, merge tags, pricing (pure)', () => {
  describe('cohort filters: every operator', () => {
    const at = (balance: number, filter: Filter) => matches(filter, customer({ balance }));
    it('balance gte / gt / lte / lt / eq hold exactly at their bounds', () => {
      expect([at(-1, { balance: { gte: 0 } }), at(0, { balance: { gte: 0 } })]).to.deep.equal([false, true]);
      expect([at(-500, { balance: { gt: -500 } }), at(-499, { balance: { gt: -500 } })]).to.deep.equal([false, true]);
      expect([at(-100, { balance: { lte: -100 } }), at(-99, { balance: { lte: -100 } })]).to.deep.equal([true, false]);
      expect([at(-101, { balance: { lt: -100 } }), at(-100, { balance: { lt: -100 } })]).to.deep.equal([true, false]);
      expect([at(7, { balance: { eq: 7 } }), at(8, { balance: { eq: 7 } })]).to.deep.equal([true, false]);
      expect([at(-1, { balance: { gte: -5, lt: 0 } }), at(0, { balance: { gte: -5, lt: 0 } })], 'keys of one comparison all hold').to.deep.equal([true, false]);
    });
    it('metadata equals and exists', () => {
      const plan = { metadata: { plan: { equals: 'pro' } } };
      expect(matches(plan, customer({ metadata: { plan: 'pro' } }))).to.equal(true);
      expect(matches(plan, customer({ metadata: { plan: 'free' } }))).to.equal(false);
      expect(matches(plan, customer())).to.equal(false);
      expect(matches({ metadata: { vip: { exists: true } } }, customer({ metadata: { vip: '' } }))).to.equal(true);
      expect(matches({ metadata: { vip: { exists: true } } }, customer())).to.equal(false);
      expect(matches({ metadata: { vip: { exists: false } } }, customer())).to.equal(true);
      expect(matches({ metadata: { vip: { exists: false } } }, customer({ metadata: { vip: 'y' } }))).to.equal(false);
    });
    it('email present true / false', () => {
      expect(matches({ email: { present: true } }, customer())).to.equal(true);
      expect(matches({ email: { present: true } }, customer({ email: null }))).to.equal(false);
      expect(matches({ email: { present: false } }, customer({ email: null }))).to.equal(true);
      expect(matches({ email: { present: false } }, customer())).to.equal(false);
    });
    it('all needs every filter, any needs one, and keys of one filter all hold', () => {
      const pro = { metadata: { plan: { equals: 'pro' } } };
      const broke = { balance: { gte: 0 } };
      const proBroke = customer({ balance: 0, metadata: { plan: 'pro' } });
      const proRich = customer({ balance: -100, metadata: { plan: 'pro' } });
      const freeRich = customer({ balance: -100, metadata: { plan: 'free' } });
      expect([proBroke, proRich, freeRich].map((c) => matches({ all: [pro, broke] }, c))).to.deep.equal([true, false, false]);
      expect([proBroke, proRich, freeRich].map((c) => matches({ any: [pro, broke] }, c))).to.deep.equal([true, true, false]);
      expect([proBroke, proRich, freeRich].map((c) => matches({ ...pro, ...broke }, c))).to.deep.equal([true, false, false]);
    });
  });

  describe('rule order', () => {
    const rule = (id: string, cohort: string, extra: Partial<RuleDef> = {}): RuleDef => ({
      id, cohort, enabled: true, logOnly: false, status: 402, headers: {}, render: () => id, ...extra,
    });
    const on = (r: RuleDef) => r.enabled;
    it('the first enabled, blocking rule whose cohort holds the customer decides', () => {
      const rules = [rule('watch', 'low', { logOnly: true }), rule('off', 'low', { enabled: false }), rule('first', 'low', { status: 402 }), rule('second', 'low', { status: 403 })];
      const v = verdict(rules, ['low'], on);
      expect(v.outcome).to.equal('BLOCK');
      expect(v.outcome === 'BLOCK' && v.rule.id).to.equal('first');
      expect(v.wouldBlock, 'the log-only rule before it is reported').to.deep.equal(['watch']);
      expect((verdict([...rules].reverse(), ['low'], on) as { rule: RuleDef }).rule.id, 'file order, not specificity').to.equal('second');
    });
    it('a rule whose cohort does not hold the customer is skipped; log-only alone allows', () => {
      expect((verdict([rule('a', 'x'), rule('b', 'y')], ['y'], on) as { rule: RuleDef }).rule.id).to.equal('b');
      expect(verdict([rule('w', 'y', { logOnly: true })], ['y'], on)).to.deep.equal({ outcome: 'ALLOW', wouldBlock: ['w'] });
    });
  });

  describe('emails', () => {
    const template = (id: string, trigger: EmailTemplate['trigger'], reenrollAfterMs?: number): EmailTemplate => ({
      id, trigger, active: true, from: { address: 'billing@example.com' }, subject: () => id, html: undefined, text: () => id, reenrollAfterMs,
    });
    const low = template('low', { kind: 'low_balance', belowCents: [1000, 500, 200] });
    const entry = template('entry', { kind: 'cohort', cohort: 'no-credit', on: 'enter' }, 3_600_000);
    const all = () => true;

    it('several low-balance thresholds crossed at once send one warning, for the lowest', () => {
      const out = planEmails([low], all, { before: customer({ balance: -1500 }), after: customer({ balance: -100 }), transitions: [], at: 1 }, {});
      expect(out).to.have.length(1);
      expect(JSON.parse(out[0].context).threshold.cents).to.equal(200);
      const one = planEmails([low], all, { before: customer({ balance: -1500 }), after: customer({ balance: -900 }), transitions: [], at: 2 }, {});
      expect(one.map((r) => JSON.parse(r.context).threshold.cents)).to.deep.equal([1000]);
    });
    it('a customer without an email address gets nothing: entry, warning or re-enrollment', () => {
      const noEmail = customer({ email: null, balance: 0 });
      const change = { before: customer({ email: null, balance: -1500 }), after: noEmail, transitions: [{ customerId: 'cus_a', cohort: 'no-credit', kind: 'enter' as const, at: 5, balance: 0 }], at: 5 };
      expect(planEmails([low, entry], all, change, {})).to.deep.equal([]);
      expect(planRecurring(entry, [{ customer: noEmail, since: 0 }], 10 * 3_600_000, {})).to.deep.equal([]);
      // The same change with an address sends both: the empty answers above are about the address.
      expect(planEmails([low, entry], all, { ...change, before: customer({ balance: -1500 }), after: customer({ balance: 0 }) }, {})).to.have.length(2);
    });
    it('after a long outage one re-enrollment email goes, not one per missed window', () => {
      const since = 1_000_000;
      const late = planRecurring(entry, [{ customer: customer({ balance: 0 }), since }], since + 5.5 * 3_600_000, {});
      expect(late).to.have.length(1);
      // Checked again later in the same window: the same dedupe key, so the outbox keeps one.
      const again = planRecurring(entry, [{ customer: customer({ balance: 0 }), since }], since + 5.9 * 3_600_000, {});
      expect(again.map((r) => r.dedupeKey)).to.deep.equal(late.map((r) => r.dedupeKey));
      expect(planRecurring(entry, [{ customer: customer({ balance: 0 }), since }], since + 0.9 * 3_600_000, {}), 'nothing before a full window').to.deep.equal([]);
    });
  });

  describe('merge tags', () => {
    it('top_up.metadata_key: the customer\'s own top-up link wins over top_up.url', () => {
      const topUp = { url: 'https://pay.example.com/{customer_id}', metadata_key: 'top_up' };
      expect(mergeContext(customer({ metadata: { top_up: 'https://vip.example.com/ada' } }), topUp).top_up_url).to.equal('https://vip.example.com/ada');
      expect(mergeContext(customer(), topUp).top_up_url).to.equal('https://pay.example.com/cus_a');
    });
  });

  describe('pricing', () => {
    it('count_upstream_5xx: an upstream 5xx costs nothing unless it is set', () => {
      const pricing = {
        defaultCostMicros: 1_000_000, routeCostMicros: new Map([['search', 2_500_000]]),
        defaultPrice: fixedPrice(1_000_000), routePrices: new Map([['search', fixedPrice(2_500_000)]]), countUpstream5xx: false,
      };
      expect([costOf(pricing, null, 200), costOf(pricing, null, 404), costOf(pricing, null, 502), costOf(pricing, 'search', 500)]).to.deep.equal([1_000_000, 1_000_000, 0, 0]);
      const counted = { ...pricing, countUpstream5xx: true };
      expect([costOf(counted, null, 502), costOf(counted, 'search', 500)]).to.deep.equal([1_000_000, 2_500_000]);
    });
  });
});

describe('docs/control-service.md promises: the Stripe gateway (injected sleep, no network)', () => {
  /** A gateway whose waits are recorded and skipped. */
  function gateway(extra: { maxRequestsPerSecond?: number; maxAttempts?: number } = {}) {
    const sleeps: number[] = [];
    /** When each wait would have ended (the slot the request was given). */
    const wakes: number[] = [];
    const gw = new StripeGateway({
      secretKey: 'sk_test_x', apiBase: new URL('http://127.0.0.1:9'), maxRequestsPerSecond: extra.maxRequestsPerSecond ?? 1000, timeoutMs: 1000,
      maxAttempts: extra.maxAttempts ?? 6, baseDelayMs: 10, maxDelayMs: 40, sleep: async (ms) => { sleeps.push(ms); wakes.push(Date.now() + ms); },
    });
    return { gw, sleeps, wakes };
  }
  const stripeError = (statusCode: number, headers: Record<string, string> = {}) => Object.assign(new Error(`status ${statusCode}`), { statusCode, headers });

  it('stripe.max_requests_per_second: requests are given slots 1/rate apart (20/s: every 50 ms)', async () => {
    const { gw, wakes } = gateway({ maxRequestsPerSecond: 20 });
    for (let i = 0; i < 10; i++) await gw.call(async () => i);
    expect(wakes.length, 'every request after the first waits for its slot').to.equal(9);
    const gaps = wakes.slice(1).map((t, i) => t - wakes[i]);
    for (const gap of gaps) expect(gap).to.be.closeTo(50, 1);
  });

  it('Retry-After is honoured: a 429 saying 3 s holds the next request 3 s', async () => {
    const { gw, sleeps } = gateway();
    let calls = 0;
    const result = await gw.call(async () => { if (++calls === 1) throw stripeError(429, { 'retry-after': '3' }); return 'ok'; });
    expect(result).to.equal('ok');
    expect(calls).to.equal(2);
    expect(Math.max(...sleeps)).to.be.within(2900, 3000);
  });

  it('a 429 without Retry-After backs off instead, within retry.max_delay_ms', async () => {
    const { gw, sleeps } = gateway();
    let calls = 0;
    await gw.call(async () => { if (++calls <= 3) throw stripeError(429); return 'ok'; });
    expect(calls).to.equal(4);
    expect(sleeps.length).to.be.at.least(3);
    expect(Math.max(...sleeps)).to.be.at.most(40);
  });

  it('Stripe 5xx is retried until it answers; other 4xx fail at once; retries end at max_attempts', async () => {
    const { gw } = gateway({ maxAttempts: 4 });
    let calls = 0;
    expect(await gw.call(async () => { if (++calls <= 2) throw stripeError(500 + calls); return 'ok'; })).to.equal('ok');
    expect(calls).to.equal(3);
    calls = 0;
    const notFound = await gw.call(async () => { calls++; throw stripeError(404); }).catch((e: unknown) => e);
    expect([calls, (notFound as { statusCode: number }).statusCode]).to.deep.equal([1, 404]);
    calls = 0;
    const down = await gw.call(async () => { calls++; throw stripeError(503); }).catch((e: unknown) => e);
    expect(down).to.be.instanceOf(StripeUnavailable);
    expect(calls).to.equal(4);
  });
});
