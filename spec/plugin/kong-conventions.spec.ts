// Kong conventions (issue 15): the queue record, usage_queue for one more
// release, protocols, a generated schema.lua equal to the dump, and the values
// the log phase measures from Kong's log entry.
import { expect } from 'chai';
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { parseConfig } from '../../plugin/src/schema';
import { renderSchemaLua } from '../../plugin/src/schema-lua';
import { measure, UNREADABLE } from '../../plugin/src/measure';
import { dumpedSchema, SCHEMA_LUA } from '../../scripts/schema-lua';
import { ROOT } from '../../testkit/pluginserver-process';
import { validateConfig, type SchemaFields } from '../support/kong-schema';

describe('Kong conventions', () => {
  const schema = dumpedSchema();
  const config = (schema.fields[0] as { config: { fields: SchemaFields } }).config.fields;

  it('plugin/schema.lua is exactly the rendering of the dumped schema (run `npm run schema:lua` after changing schema.ts)', () => {
    expect(fs.readFileSync(SCHEMA_LUA, 'utf8')).to.equal(renderSchemaLua(schema));
    // and it holds every field the dump has, protocols included
    const lua = fs.readFileSync(SCHEMA_LUA, 'utf8');
    for (const entry of config) expect(lua).to.include(`${Object.keys(entry)[0]} = {`);
  });

  it('protocols are Kong\'s HTTP protocols (typedefs.protocols_http): payg judges in the access phase', () => {
    const protocols = (schema.fields[1] as { protocols: { type: string; default: string[]; elements: { one_of: string[] } } }).protocols;
    expect(protocols.type).to.equal('set');
    expect(protocols.default).to.have.members(['http', 'https', 'grpc', 'grpcs']);
    expect(protocols.elements.one_of).to.not.include.members(['tcp', 'tls', 'udp']);
  });

  it('the queue record has Kong\'s names, and a config without it gets payg\'s defaults', () => {
    const queue = Object.assign({}, ...config).queue as { fields: SchemaFields };
    expect(queue.fields.map((f) => Object.keys(f)[0])).to.deep.equal([
      'max_batch_size', 'max_coalescing_delay', 'max_entries', 'max_bytes', 'max_retry_time', 'initial_retry_delay', 'max_retry_delay', 'concurrency_limit',
    ]);
    const opts = parseConfig({ control_service_url: 'http://x' });
    expect(opts.usageQueue).to.deep.equal({
      maxBatchSize: 200, maxCoalescingDelayMs: 200, maxEntries: 10000, initialRetryDelayMs: 100, maxRetryDelayMs: 30000, maxBytes: undefined, maxRetryTimeMs: 3_600_000,
    });
    expect(opts.warnings).to.deep.equal([]);
    expect(parseConfig({ control_service_url: 'http://x', queue: { max_retry_time: -1, max_bytes: 65536 } }).usageQueue).to.include({ maxRetryTimeMs: Infinity, maxBytes: 65536 });
    expect(() => parseConfig({ control_service_url: 'http://x', queue: { concurrency_limit: 2 } })).to.throw(/queue\.concurrency_limit: expected one of: -1, 1/);
    expect(validateConfig(config, { control_service_url: 'http://x', queue: { concurrency_limit: -1, max_bytes: 1000 } })).to.deep.equal([]);
  });

  it('usage_queue is still accepted for a release: its fields win over queue\'s defaults, each with a warning naming the replacement', () => {
    const legacy = { control_service_url: 'http://x', usage_queue: { max_batch_size: 7, max_coalescing_delay: 0 } };
    expect(validateConfig(config, legacy)).to.deep.equal([]);
    const opts = parseConfig(legacy);
    expect(opts.usageQueue).to.include({ maxBatchSize: 7, maxCoalescingDelayMs: 0, maxEntries: 10000 });
    expect(opts.warnings).to.deep.equal([
      'usage_queue.max_batch_size is deprecated; set queue.max_batch_size instead (usage_queue is removed in the next release)',
      'usage_queue.max_coalescing_delay is deprecated; set queue.max_coalescing_delay instead (usage_queue is removed in the next release)',
    ]);
    expect(() => parseConfig({ control_service_url: 'http://x', usage_queue: { max_entries: 0 } })).to.throw(/usage_queue\.max_entries/);
  });

  it('header fields take only header names', () => {
    expect(parseConfig({ control_service_url: 'http://x', usage_units_header: 'X-Usage-Units' }).usageUnitsHeader).to.equal('x-usage-units');
    expect(() => parseConfig({ control_service_url: 'http://x', credit_header: 'X Credit' })).to.throw(/credit_header: is not an HTTP header name/);
  });

  it('a credit_header that would corrupt the response (Content-Length, Set-Cookie…) and a negative max_retry_time other than -1 fail StartInstance, naming the field', () => {
    expect(() => parseConfig({ control_service_url: 'http://x', credit_header: 'Content-Length' })).to.throw(/credit_header: cannot be Content-Length/);
    expect(() => parseConfig({ control_service_url: 'http://x', credit_header: 'set-cookie' })).to.throw(/credit_header: cannot be set-cookie/);
    expect(() => parseConfig({ control_service_url: 'http://x', queue: { max_retry_time: -5 } })).to.throw(/queue\.max_retry_time: must be -1/);
    expect(parseConfig({ control_service_url: 'http://x', queue: { max_retry_time: -1 } }).usageQueue.maxRetryTimeMs).to.equal(Infinity);
  });

  it('the decK example validates against the dump and takes the token from the environment', () => {
    const deck = YAML.parse(fs.readFileSync(path.join(ROOT, 'deck/kong.yaml'), 'utf8'));
    expect(deck._format_version).to.equal('3.0');
    const payg = [...(deck.plugins ?? []), ...deck.services.flatMap((s: any) => [...(s.plugins ?? []), ...(s.routes ?? []).flatMap((r: any) => r.plugins ?? [])])]
      .filter((p: any) => p.name === 'payg');
    expect(payg).to.have.length.above(0);
    for (const p of payg) {
      expect(validateConfig(config, p.config)).to.deep.equal([]);
      expect(p.config.control_service_token).to.match(/^\{vault:\/\/env\/[a-z0-9-]+\}$/);
    }
  });

  describe('what the log phase measures (kong.log.serialize())', () => {
    it('AI token counts from every ai.<plugin>.usage, bytes from request.size and response.size, the units header', () => {
      expect(measure({
        request: { size: 512 }, response: { size: 2048, headers: { 'x-usage-units': '12' } },
        ai: { payload: { request: '{}' }, proxy: { usage: { prompt_tokens: 100, completion_tokens: 40, total_tokens: 140 } }, other: { usage: { prompt_tokens: 5 } } },
      }, 'x-usage-units')).to.deep.equal({ request_bytes: 512, response_bytes: 2048, header_units: 12, prompt_tokens: 105, completion_tokens: 40 });
    });
    it('a value that is there but is not a count is reported as the largest count (charged max_cost); an absent one is not measured', () => {
      const U = UNREADABLE;
      expect(U).to.equal(Number.MAX_SAFE_INTEGER);
      expect(measure({ request: { size: -1 }, response: { size: 1.5, headers: { 'x-usage-units': ['1', '2'] } }, ai: { proxy: { usage: { prompt_tokens: 'ten' } } } }, 'x-usage-units'))
        .to.deep.equal({ request_bytes: U, response_bytes: U, header_units: U, prompt_tokens: U });
      for (const text of ['2.5', '-3', '', 'lots', '100000000000000000', '9007199254740992']) {
        expect(measure({ response: { headers: { 'x-usage-units': text } } }, 'x-usage-units'), JSON.stringify(text)).to.deep.equal({ header_units: U });
      }
      expect(measure({ response: { headers: { 'x-usage-units': ' 9007199254740991 ' } } }, 'x-usage-units')).to.deep.equal({ header_units: 9007199254740991 });
      expect(measure({ response: { headers: {} } }, 'x-usage-units'), 'no header sent').to.equal(undefined);
      expect(measure({ response: { headers: { 'x-usage-units': '3' } } }, undefined), 'no header configured').to.equal(undefined);
      // Sums saturate instead of passing 2^53 - 1.
      expect(measure({ ai: { a: { usage: { prompt_tokens: U - 1 } }, b: { usage: { prompt_tokens: 5 } } } }, undefined)).to.deep.equal({ prompt_tokens: U });
    });
    it('reads the keys every Kong version writes: ai.usage (3.6), ai.<plugin>.usage (3.7), ai.ai-proxy.usage (3.8-3.9), ai.proxy.usage (3.10+)', () => {
      expect(measure({ ai: { usage: { prompt_tokens: 28, completion_tokens: 20, total_tokens: 48, processing_time: 3 }, payload: { request: '{}' } } }, undefined), '3.6')
        .to.deep.equal({ prompt_tokens: 28, completion_tokens: 20 });
      expect(measure({ ai: {
        'ai-proxy': { usage: { prompt_tokens: 100, completion_tokens: 40, total_tokens: 140, cost: 0.01 }, meta: { provider_name: 'openai' } },
        'ai-request-transformer': { usage: { prompt_tokens: 7, completion_tokens: 3 }, meta: {} },
      } }, undefined), '3.7: each AI plugin made its own call').to.deep.equal({ prompt_tokens: 107, completion_tokens: 43 });
      expect(measure({ ai: { 'ai-proxy': { usage: { prompt_tokens: 9, completion_tokens: 1, time_per_token: 12 }, meta: {} } } }, undefined), '3.8-3.9')
        .to.deep.equal({ prompt_tokens: 9, completion_tokens: 1 });
      expect(measure({ ai: { proxy: { usage: { prompt_tokens: 11, completion_tokens: 2, total_tokens: 13, cost: 0 }, meta: {} } } }, undefined), '3.10+')
        .to.deep.equal({ prompt_tokens: 11, completion_tokens: 2 });
    });
  });
});
