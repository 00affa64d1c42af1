// The email workflow on its own (pure: control-service/src/emails/workflow.ts):
// which emails a change or the passing of time decides, as docs/control-service.md
// (Behavioural emails) promises them.
import { expect } from 'chai';
import type { Customer } from '../../../control-service/src/customer';
import { planEmails, planRecurring } from '../../../control-service/src/emails/workflow';
import type { EmailTemplate } from '../../../control-service/src/emails/templates';

const customer = (fields: Partial<Customer> = {}): Customer => ({
  id: 'cus_a', balance: 0, currency: 'usd', name: 'Ada Lovelace', email: 'ada@example.com', metadata: {}, ...fields,
});

describe('email workflow (pure)', () => {
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
