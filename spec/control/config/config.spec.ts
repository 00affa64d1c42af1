// Control-service config: every error names the field and why.
import { expect } from 'chai';
import { parseConfig, ConfigError } from '../../../control-service/src/config';

const base = () => ({
  cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
  rules: [{ id: 'block-no-credit', cohort: 'no-credit', body: '{"error":"payment_required","name":"{{customer.name}}"}' }],
});
function errorOf(doc: unknown): string {
  try { parseConfig(doc, {}, '/tmp'); } catch (err) { expect(err).to.be.instanceOf(ConfigError); return (err as Error).message; }
  throw new Error('expected a config error');
}

describe('control-service config', () => {
  it('accepts the documented config shape with defaults filled', () => {
    const cfg = parseConfig(base(), { PORT: '9999' }, '/tmp');
    expect(cfg.listen.port).to.equal(9999);
    expect(cfg.rules[0]).to.include({ status: 402, enabled: true, logOnly: false });
    expect(cfg.stripe.consumerMetadataKey).to.equal('kong_consumer');
  });
  it('zero durations stop start-up naming the field', () => {
    expect(errorOf({ ...base(), email_delivery: { recurring_check_interval: '0ms' } })).to.match(/email_delivery\.recurring_check_interval: must be longer than zero/);
    expect(errorOf({ ...base(), metering: { keep_events: '0s' } })).to.match(/metering\.keep_events: must be longer than zero/);
    expect(errorOf({ ...base(), emails: [{ id: 'x', cohort: 'no-credit', from: { address: 'a@example.com' }, subject: 's', text: 't.hbs', recurring: { reenroll_after: '0s' } }] }))
      .to.match(/emails\[0\]\.recurring\.reenroll_after: must be longer than zero/);
    expect(errorOf({ ...base(), email_delivery: { recurring_check_interval: '-5m' } })).to.match(/email_delivery\.recurring_check_interval: is not a duration/);
  });
  it('new sections: a lease cap below the first lease, a console link that is not http(s), Authorization as the balance consumer header, zero lease and session durations: each stops start-up naming the field', () => {
    expect(errorOf({ ...base(), leases: { initial_requests: 100, max_requests: 10 } })).to.match(/leases\.max_requests: must be at least leases\.initial_requests \(100\)/);
    const consoleAt = { listen: { host: '127.0.0.1', port: 0 } };
    expect(errorOf({ ...base(), console: { ...consoleAt, stripe_dashboard_url: 'javascript:alert(1)' } })).to.match(/console\.stripe_dashboard_url: must be an http\(s\) URL/);
    expect(errorOf({ ...base(), balance_api: { consumer_header: 'authorization' } })).to.match(/balance_api\.consumer_header: cannot be Authorization/);
    expect(errorOf({ ...base(), leases: { ttl_ms: 0 } })).to.match(/leases\.ttl_ms: /);
    expect(errorOf({ ...base(), leases: { recall_wait_ms: -1 } })).to.match(/leases\.recall_wait_ms: /);
    expect(errorOf({ ...base(), console: { ...consoleAt, session_ttl: '0s' } })).to.match(/console\.session_ttl: must be longer than zero/);
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
    const { loadConfig } = require('../../../control-service/src/config');
    const cfg = loadConfig(require('node:path').join(__dirname, '../../../../control-service/payg.example.yml'), {});
    expect(cfg.rules.map((r: { id: string }) => r.id)).to.deep.equal(['block-no-credit', 'warn-under-10']);
  });
});

describe('control-service config: email templates', () => {
  const fs = require('node:fs') as typeof import('node:fs');
  const os = require('node:os') as typeof import('node:os');
  const path = require('node:path') as typeof import('node:path');
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-cfg-'));
    fs.writeFileSync(path.join(dir, 'good.hbs'), '<p>{{customer.name}}: {{credit.formatted}}</p>');
    fs.writeFileSync(path.join(dir, 'typo.hbs'), '<p>{{customer.nmae}}</p>');
    fs.writeFileSync(path.join(dir, 'broken.hbs'), '<p>{{#if}}</p>');
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));
  const email = (extra: Record<string, unknown>) => ({ ...base(), emails: [{ id: 'oc', cohort: 'no-credit', from: { address: 'billing@example.com' }, subject: 'Hi', html: 'good.hbs', ...extra }] });
  const errorIn = (doc: unknown): string => {
    try { parseConfig(doc, {}, dir); } catch (err) { expect(err).to.be.instanceOf(ConfigError); return (err as Error).message; }
    throw new Error('expected a config error');
  };

  it('accepts a template and resolves its file next to the config', () => {
    const cfg = parseConfig(email({ recurring: { reenroll_after: '1h' } }), {}, dir);
    expect(cfg.emails[0]).to.include({ id: 'oc', reenrollAfterMs: 3_600_000, active: true });
    expect(cfg.emails[0].trigger).to.deep.equal({ kind: 'cohort', cohort: 'no-credit', on: 'enter' });
  });
  it('a missing template file names the field and the file', () => {
    expect(errorIn(email({ html: 'nope.hbs' }))).to.match(/emails\[0\]\.html: cannot read template file .*nope\.hbs: ENOENT/);
  });
  it('an unknown merge tag names the file and the tag', () => {
    expect(errorIn(email({ html: 'typo.hbs' }))).to.match(/emails\[0\]\.html \(.*typo\.hbs\): .*unknown merge tag \{\{customer\.nmae\}\}/);
  });
  it('a template that does not compile names the file', () => {
    expect(errorIn(email({ html: 'broken.hbs' }))).to.match(/emails\[0\]\.html \(.*broken\.hbs\): template does not compile/);
  });
  it('an unknown merge tag in the subject', () => expect(errorIn(email({ subject: '{{balance.dollars}}' }))).to.match(/emails\[0\]\.subject: .*\{\{balance\.dollars\}\}/));
  it('a cohort that does not exist', () => expect(errorIn(email({ cohort: 'nobody' }))).to.match(/emails\[0\]\.cohort: no cohort with id nobody/));
  it('two triggers, or none', () => {
    expect(errorIn(email({ low_balance: { below: [1000] } }))).to.match(/emails\[0\]: needs exactly one trigger/);
    expect(errorIn(email({ cohort: undefined }))).to.match(/emails\[0\]: needs exactly one trigger/);
  });
  it('a bad re-enrollment window', () => expect(errorIn(email({ recurring: { reenroll_after: 'hourly' } }))).to.match(/emails\[0\]\.recurring\.reenroll_after: is not a duration/));
  it('recurring on a leave trigger', () => expect(errorIn(email({ on: 'leave', recurring: { reenroll_after: '1h' } }))).to.match(/emails\[0\]\.recurring: applies to cohort-entry emails only/));
  it('a template file outside the config folder stops start-up without printing the file', () => {
    const outside = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-outside-'));
    try {
      fs.writeFileSync(path.join(outside, 'secret.hbs'), 'SECRET-CONTENT {{#if}}');
      const viaDots = errorIn(email({ html: path.relative(dir, path.join(outside, 'secret.hbs')) }));
      expect(viaDots).to.match(/emails\[0\]\.html: template file .*secret\.hbs lies outside the config file's folder/);
      expect(viaDots).to.not.include('SECRET-CONTENT');
      fs.symlinkSync(path.join(outside, 'secret.hbs'), path.join(dir, 'link.hbs'));
      const viaLink = errorIn(email({ html: 'link.hbs' }));
      expect(viaLink, 'a symlink is followed before the check').to.match(/emails\[0\]\.html: template file .*link\.hbs lies outside/);
      expect(viaLink).to.not.include('SECRET-CONTENT');
    } finally { fs.rmSync(outside, { recursive: true, force: true }); }
  });
  it('a template that does not compile is named without quoting its source', () => {
    fs.writeFileSync(path.join(dir, 'leaky.hbs'), 'PRIVATE-LINE {{#if}}');
    const message = errorIn(email({ html: 'leaky.hbs' }));
    expect(message).to.match(/emails\[0\]\.html \(.*leaky\.hbs\): template does not compile: Parse error on line 1/);
    expect(message).to.not.include('PRIVATE-LINE');
  });
  it('a bad from address', () => expect(errorIn(email({ from: { address: 'billing' } }))).to.match(/emails\[0\]\.from\.address: Invalid email/));
});

describe('control-service config: rule headers', () => {
  const withHeaders = (headers: Record<string, string>) => ({ ...base(), rules: [{ ...base().rules[0], headers }] });
  it('a header value with CR/LF stops start-up, naming the header', () => {
    expect(errorOf(withHeaders({ 'Content-Type': 'application/json', 'X-Note': 'ok\r\nSet-Cookie: admin=1' })))
      .to.equal('config: rules[0].headers."X-Note": has a character an HTTP header value may not hold (CR, LF or another control character)');
  });
  it('an invalid header name stops start-up, naming it', () => {
    expect(errorOf(withHeaders({ 'Bad Name': 'x' }))).to.match(/^config: rules\[0\]\.headers\."Bad Name": is not a valid HTTP header name/);
    expect(errorOf(withHeaders({ 'X-A\nB': 'x' }))).to.match(/^config: rules\[0\]\.headers\."X-A\\nB": is not a valid HTTP header name/);
  });
});
