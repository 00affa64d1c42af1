// The schema Kong reads from `payg-pluginserver --dump-all-plugins`, and the
// kong.yml we ship, checked against it.
import { expect } from 'chai';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { PAYG_PLUGINSERVER, ROOT } from '../../testkit/pluginserver-process';
import { metaschemaProblems, validateConfig, type SchemaFields } from '../support/kong-schema';
import { parseConfig } from '../../plugin/src/schema';

const CONTRACT_FIELDS = ['control_service_url', 'consumer_field', 'timeout_ms', 'cache_ttl_ms', 'stale_ttl_ms', 'fail_open', 'report_usage', 'control_service_token'];

describe('payg schema (payg-pluginserver --dump-all-plugins)', () => {
  let dump: Array<{ Name: string; Version: string; Priority: number; Phases: string[]; Schema: { name: string; fields: Array<{ config: { type: string; fields: SchemaFields } }> } }>;
  let fields: SchemaFields;
  let stdout: string;
  let stderr: string;

  before(() => {
    const run = spawnSync(process.execPath, [PAYG_PLUGINSERVER, '--dump-all-plugins'], { encoding: 'utf8' });
    expect(run.status).to.equal(0);
    stdout = run.stdout;
    stderr = run.stderr;
    dump = JSON.parse(stdout);
    fields = dump[0].Schema.fields[0].config.fields;
  });

  it('prints exactly one plugin, payg, and nothing else on stdout', () => {
    expect(stdout.trim().split('\n')).to.have.length(1);
    expect(dump.map((p) => p.Name)).to.deep.equal(['payg']);
    expect(stderr).to.equal('');
  });

  it('has an x.y.z Version, an integer Priority after auth plugins and acl, before rate-limiting', () => {
    expect(dump[0].Version).to.match(/^\d+\.\d+\.\d+$/);
    expect(Number.isInteger(dump[0].Priority)).to.equal(true);
    expect(dump[0].Priority).to.be.below(950).and.above(910); // acl 950, rate-limiting 910; hmac-auth (1030) is the lowest auth
    expect(dump[0].Phases).to.have.members(['access', 'log']);
  });

  it("carries every field of the plugin config table in docs/plugin.md, each with a description", () => {
    const names = fields.map((e) => Object.keys(e)[0]);
    expect(names).to.include.members(CONTRACT_FIELDS);
    for (const entry of fields) {
      const [name, f] = Object.entries(entry)[0];
      expect(f.description, name).to.be.a('string').and.have.length.above(10);
    }
  });

  it("gives the defaults and validation docs/plugin.md states", () => {
    const f = Object.assign({}, ...fields) as Record<string, any>;
    expect(f.control_service_url).to.include({ type: 'string', required: true });
    expect(f.consumer_field).to.deep.include({ type: 'string', default: 'custom_id', one_of: ['custom_id', 'username', 'id'] });
    expect(f.timeout_ms).to.include({ type: 'integer', default: 250 });
    expect(f.cache_ttl_ms).to.include({ type: 'integer', default: 5000 });
    expect(f.stale_ttl_ms).to.include({ type: 'integer', default: 60000 });
    expect(f.fail_open).to.include({ type: 'boolean', default: true });
    expect(f.report_usage).to.include({ type: 'boolean', default: true });
    expect(f.control_service_token).to.include({ type: 'string', required: false, referenceable: true, encrypted: true });
    for (const n of ['timeout_ms', 'cache_ttl_ms', 'stale_ttl_ms']) expect(f[n].between, n).to.be.an('array');
  });

  it('passes Kong\'s metaschema rules (types, records with fields, defaults that validate)', () => {
    expect(metaschemaProblems(fields)).to.deep.equal([]);
    expect(metaschemaProblems([{ bad: { type: 'array' } as any }])).to.deep.equal(['bad: array needs elements']);
  });

  it('the validator and the plugin both reject bad configs, naming the field', () => {
    const bad: Array<[Record<string, unknown>, RegExp]> = [
      [{}, /control_service_url/],
      [{ control_service_url: 'ftp://x' }, /control_service_url/],
      [{ control_service_url: 'http://x', consumer_field: 'email' }, /consumer_field/],
      [{ control_service_url: 'http://x', timeout_ms: 0 }, /timeout_ms/],
      [{ control_service_url: 'http://x', fail_open: 'yes' }, /fail_open/],
      [{ control_service_url: 'http://x', usage_queue: { max_entries: 0 } }, /usage_queue\.max_entries/],
    ];
    for (const [config, field] of bad) {
      expect(validateConfig(fields, config).join('; '), JSON.stringify(config)).to.match(field);
      expect(() => parseConfig(config), JSON.stringify(config)).to.throw(field);
    }
  });

  it('kong.yml\'s payg config validates against the dumped schema', () => {
    const doc = YAML.parse(fs.readFileSync(path.join(ROOT, 'kong.yml'), 'utf8'));
    const plugins = [...(doc.plugins ?? []), ...doc.services.flatMap((s: any) => [...(s.plugins ?? []), ...(s.routes ?? []).flatMap((r: any) => r.plugins ?? [])])];
    const payg = plugins.filter((p: any) => p.name === 'payg');
    expect(payg).to.have.length.above(0);
    for (const p of payg) expect(validateConfig(fields, p.config)).to.deep.equal([]);
    // every consumer maps to a Stripe customer id through payg's consumer_field
    for (const c of doc.consumers) expect(c[payg[0].config.consumer_field ?? 'custom_id']).to.match(/^cus_/);
  });

  it('--version prints the plugin version without starting a server', () => {
    expect(execFileSync(process.execPath, [PAYG_PLUGINSERVER, '--version'], { encoding: 'utf8' })).to.match(/^payg 0\.1\.0/);
  });
});
