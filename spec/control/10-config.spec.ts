// Control-service config: every error names the field and why.
import { expect } from 'chai';
import { parseConfig, ConfigError } from '../../control-service/src/config';

const base = () => ({
  cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
  rules: [{ id: 'block-no-credit', cohort: 'no-credit', body: '{"error":"payment_required","name":"{{customer.name}}"}' }],
});
function errorOf(doc: unknown): string {
  try { parseConfig(doc, {}, '/tmp'); } catch (err) { expect(err).to.be.instanceOf(ConfigError); return (err as Error).message; }
  throw new Error('expected a config error');
}

describe('control-service config', () => {
  it('accepts the DESIGN.md shape with defaults filled', () => {
    const cfg = parseConfig(base(), { PORT: '9999' }, '/tmp');
    expect(cfg.listen.port).to.equal(9999);
    expect(cfg.rules[0]).to.include({ status: 402, enabled: true, logOnly: false });
    expect(cfg.stripe.consumerMetadataKey).to.equal('kong_consumer');
  });
  it('unknown key', () => expect(errorOf({ ...base(), colors: 1 })).to.match(/colors: unknown key/));
  it('unknown nested key', () => expect(errorOf({ ...base(), stripe: { pol: 'x' } })).to.match(/stripe\.pol: unknown key/));
  it('wrong type', () => expect(errorOf({ ...base(), decision_ttl_ms: 'soon' })).to.match(/decision_ttl_ms: Expected number/));
  it('bad filter operator', () => expect(errorOf({ ...base(), cohorts: [{ id: 'x', filter: { balance: { gtee: 0 } } }], rules: [] })).to.match(/cohorts\[0\]\.filter\.balance\.gtee: unknown key/));
  it('a rule naming a cohort that does not exist', () => {
    const doc = base(); doc.rules[0].cohort = 'nobody';
    expect(errorOf(doc)).to.match(/rules\[0\]\.cohort: no cohort with id nobody/);
  });
  it('a body template that does not compile', () => {
    const doc = base(); doc.rules[0].body = '{"a":"{{#if}}"}';
    expect(errorOf(doc)).to.match(/rules\[0\]\.body: template does not compile/);
  });
  it('a body template with an unknown merge tag', () => {
    const doc = base(); doc.rules[0].body = '{"a":"{{customer.nmae}}"}';
    expect(errorOf(doc)).to.match(/rules\[0\]\.body: .*unknown merge tag \{\{customer\.nmae\}\}/);
  });
  it('a JSON body that is not JSON', () => {
    const doc = base(); doc.rules[0].body = '{"a": {{customer.name}}}';
    expect(errorOf(doc)).to.match(/rules\[0\]\.body: .*valid JSON/);
  });
  it('a bad cron string', () => expect(errorOf({ ...base(), stripe: { poll: 'every minute' } })).to.match(/stripe\.poll: is not a valid cron expression/));
  it('secrets are not config keys', () => expect(errorOf({ ...base(), stripe: { secret_key: 'sk_live_x' } })).to.match(/stripe\.secret_key: unknown key/));
});

describe('shipped control-service config', () => {
  it('control-service/payg.example.yml loads', () => {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { loadConfig } = require('../../control-service/src/config');
    const cfg = loadConfig(require('node:path').join(__dirname, '../../../control-service/payg.example.yml'), {});
    expect(cfg.rules.map((r: { id: string }) => r.id)).to.deep.equal(['block-no-credit', 'warn-under-10']);
  });
});
