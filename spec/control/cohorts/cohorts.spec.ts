// Cohorts and the rules that act on them (docs/control-service.md, Configuration):
// which customers a filter holds, every operator (pure); which rule decides
// (pure); and what the admin API lists of each cohort on the running service.
import { expect } from 'chai';
import { matches, type Filter } from '../../../control-service/src/cohorts';
import type { Customer } from '../../../control-service/src/customer';
import { verdict, type RuleDef } from '../../../control-service/src/rules';
import { serviceFixture } from '../../support/fixture';

const customer = (fields: Partial<Customer> = {}): Customer => ({
  id: 'cus_a', balance: 0, currency: 'usd', name: 'Ada Lovelace', email: 'ada@example.com', metadata: {}, ...fields,
});

describe('cohort filters: every operator (pure)', () => {
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

describe('rule order (pure)', () => {
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

describe('cohorts in the admin API', function () {
  this.timeout(20_000);
  const fx = serviceFixture({ prefix: 'payg-cohorts-' });

  it('admin cohorts: each cohort with its filter and size, and its members', async () => {
    const a = fx.stripe.create({ balance: 0, metadata: { plan: 'pro' } });
    const b = fx.stripe.create({ balance: 0 });
    fx.stripe.create({ balance: -100 });
    const svc = await fx.start({ cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }, { id: 'pro', filter: { metadata: { plan: { equals: 'pro' } } } }] });
    expect((await svc.sync!.sweep()).ok).to.equal(true);
    expect((await fx.admin('/admin/cohorts')).body.cohorts).to.deep.equal([
      { id: 'no-credit', filter: { balance: { gte: 0 } }, size: 2 },
      { id: 'pro', filter: { metadata: { plan: { equals: 'pro' } } }, size: 1 },
    ]);
    expect((await fx.admin('/admin/cohorts/no-credit/members')).body.members.sort()).to.deep.equal([a.id, b.id].sort());
    expect((await fx.admin('/admin/cohorts/pro/members')).body.members).to.deep.equal([a.id]);
    expect((await fx.admin('/admin/cohorts/nobody/members')).status).to.equal(404);
  });
});
