// Team caps (issue 23): the `caps` config section and limit rules, each error
// naming its field; the refusal a node serves says which limit refused, for
// machines (reason, default bodies, merge tags, Retry-After until the reset).
import { expect } from 'chai';
import { parseConfig, ConfigError } from '../../../control-service/src/config';
import { refusalJson } from '../../../control-service/src/caps/refusal';
import type { Customer } from '../../../control-service/src/customer';

const base = () => ({
  cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
  rules: [{ id: 'block-no-credit', cohort: 'no-credit', body: '{"error":"payment_required"}' }] as Array<Record<string, unknown>>,
});
function errorOf(doc: unknown): string {
  try { parseConfig(doc, {}, '/tmp'); } catch (err) { expect(err).to.be.instanceOf(ConfigError); return (err as Error).message; }
  throw new Error('expected a config error');
}
const customer: Customer = { id: 'cus_T', balance: -5000, currency: 'usd', name: 'Team "A"', email: null, metadata: {} };
const topUp = { url: 'https://billing.example.com/top-up?c={customer_id}' };
const on = () => true;

describe('caps config and refusals', () => {
  it('caps: defaults off, amounts validated and named, the metadata prefix checked', () => {
    expect(parseConfig(base(), {}, '/tmp').caps).to.deep.equal({ daily: undefined, monthly: undefined, metadataPrefix: 'payg_cap' });
    expect(parseConfig({ ...base(), caps: { daily: 500, monthly: 10000 } }, {}, '/tmp').caps).to.include({ daily: 500, monthly: 10000 });
    expect(errorOf({ ...base(), caps: { daily: -1 } })).to.match(/caps\.daily/);
    expect(errorOf({ ...base(), caps: { monthly: 12.5 } })).to.match(/caps\.monthly/);
    expect(errorOf({ ...base(), caps: { weekly: 5 } })).to.match(/caps\.weekly: unknown key/);
    expect(errorOf({ ...base(), caps: { metadata_prefix: 'Has Space' } })).to.match(/caps\.metadata_prefix/);
  });

  it('a rule has exactly one of cohort or limit; a limit rule may leave out its body and cannot be log-only', () => {
    const both = base(); both.rules.push({ id: 'x', cohort: 'no-credit', limit: 'consumer_cap', body: '{}' });
    expect(errorOf(both)).to.match(/rules\[1\]: needs exactly one of cohort .* or limit/);
    const none = base(); none.rules.push({ id: 'x', body: '{}' });
    expect(errorOf(none)).to.match(/rules\[1\]: needs exactly one/);
    const logOnly = base(); logOnly.rules.push({ id: 'x', limit: 'consumer_cap', log_only: true });
    expect(errorOf(logOnly)).to.match(/rules\[1\]\.log_only/);
    const bad = base(); bad.rules.push({ id: 'x', limit: 'over_quota' });
    expect(errorOf(bad)).to.match(/rules\[1\]\.limit/);
    const unknownTag = base(); unknownTag.rules.push({ id: 'x', limit: 'consumer_cap', body: '{"r":"{{limit.nope}}"}' });
    expect(errorOf(unknownTag)).to.match(/rules\[1\]\.body: .*unknown merge tag \{\{limit\.nope\}\}/);
    const noBody = base(); noBody.rules.push({ id: 'x', cohort: 'no-credit' });
    expect(errorOf(noBody)).to.match(/rules\[1\]\.body: is required/);
    const ok = base(); ok.rules.push({ id: 'cap', limit: 'consumer_cap' });
    expect(parseConfig(ok, {}, '/tmp').rules[1]).to.include({ id: 'cap', limit: 'consumer_cap', status: 402 });
  });

  it('a cap refusal by default: 402, reason consumer_cap, the default body with top_up_url and resets_at, Retry-After until the UTC reset', () => {
    const now = Date.UTC(2026, 11, 2, 23, 59, 30, 250);
    const d = JSON.parse(refusalJson({ kind: 'consumer_cap', resetsAt: Date.UTC(2026, 11, 3) }, customer, topUp, [], on, now, 5000));
    expect(d).to.include({ allow: false, status: 402, reason: 'consumer_cap', rule: 'consumer_cap', resets_at: '2026-12-03T00:00:00.000Z' });
    expect(d.headers).to.deep.equal({ 'Content-Type': 'application/json', 'Retry-After': '30' });
    expect(JSON.parse(d.body)).to.deep.equal({
      error: 'consumer_cap_reached', reason: 'consumer_cap', message: 'This API consumer has reached its spending cap for the period.',
      resets_at: '2026-12-03T00:00:00.000Z', top_up_url: 'https://billing.example.com/top-up?c=cus_T',
    });
  });

  it('a no-credit refusal is distinct: reason no_credit, no Retry-After; limit rules word each with {{limit.kind}} and {{limit.resets_at}}', () => {
    const now = Date.UTC(2026, 0, 31, 12);
    const d = JSON.parse(refusalJson({ kind: 'no_credit' }, customer, topUp, [], on, now, 5000));
    expect(d).to.include({ status: 402, reason: 'no_credit' });
    expect(d.headers).to.deep.equal({ 'Content-Type': 'application/json' });
    expect(JSON.parse(d.body)).to.include({ error: 'payment_required', reason: 'no_credit', top_up_url: 'https://billing.example.com/top-up?c=cus_T' });

    const doc = base();
    doc.rules.push({ id: 'cap-words', limit: 'consumer_cap', status: 429, body: '{"why":"{{limit.kind}}","until":"{{limit.resets_at}}","in":"{{limit.retry_after}}","who":"{{customer.name}}"}' });
    const rules = parseConfig(doc, {}, '/tmp').rules;
    const c = JSON.parse(refusalJson({ kind: 'consumer_cap', resetsAt: Date.UTC(2026, 1, 1) }, customer, topUp, rules, on, now, 5000));
    expect(c).to.include({ status: 429, rule: 'cap-words', reason: 'consumer_cap' });
    expect(c.headers['Retry-After']).to.equal(String(12 * 3600));
    expect(JSON.parse(c.body)).to.deep.equal({ why: 'consumer_cap', until: '2026-02-01T00:00:00.000Z', in: String(12 * 3600), who: 'Team "A"' });
    // The same rule switched off: the default body again.
    const off = JSON.parse(refusalJson({ kind: 'consumer_cap', resetsAt: Date.UTC(2026, 1, 1) }, customer, topUp, rules, () => false, now, 5000));
    expect(off.rule).to.equal('consumer_cap');
  });
});
