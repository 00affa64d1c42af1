// The access phase through the real payg-pluginserver, driven as Kong drives it.
import { expect } from 'chai';
import { until } from '../support/until';
import { KongHarness, accessPdk, type Consumer } from '../../testkit/kong-harness';
import { startPluginServer, type PluginServerProcess } from '../../testkit/pluginserver-process';
import { FakeControlService, allow, block, leased } from '../../testkit/fake-control-service';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const alice: Consumer = { id: '8f0d6a0e-0000-4000-8000-000000000001', username: 'alice', custom_id: 'cus_alice' };
const PAYMENT_BODY = '{"error":"payment_required","message":"Alice, your credit is used up.","top_up":"https://pay.example/t?c=cus_alice&x=\\u00e9"}';

describe('payg access phase (through the plugin server)', function () {
  let server: PluginServerProcess;
  let kong: KongHarness;
  let svc: FakeControlService;
  let plugin = 0;

  before(async () => {
    server = await startPluginServer();
    kong = new KongHarness(server.socketPath);
  });
  after(async () => {
    kong?.close();
    await server?.stop();
  });
  beforeEach(async () => { svc = await new FakeControlService().start(); });
  afterEach(async () => { await svc.stop(); });

  /** A fresh plugin instance (its own control-service URL, so its own cache). */
  async function instance(config: Record<string, unknown> = {}): Promise<string> {
    return kong.startInstance('payg', { control_service_url: svc.url, ...config }, `plugin-${++plugin}`);
  }
  const access = (id: string, consumer: Consumer | null = alice) => kong.handleEvent(id, 'access', accessPdk(consumer ?? undefined));

  it('allow: passes the request (no exit)', async () => {
    const id = await instance();
    const res = await access(id);
    expect(res.exit).to.equal(undefined);
    expect(res.pdkCalls).to.deep.equal(['kong.client.get_consumer']);
    expect(svc.decisionPaths).to.deep.equal(['/v1/decisions/cus_alice']);
  });

  it('402: ends the request with the decision\'s status, headers and body byte for byte', async () => {
    const headers = { 'Content-Type': 'application/json; charset=utf-8', 'X-Payg-Rule': 'block-no-credit', 'Retry-After': '3600' };
    svc.decide = () => block(PAYMENT_BODY, { headers });
    const id = await instance();
    const res = await access(id);
    expect(res.exit).to.deep.equal({ status: 402, body: PAYMENT_BODY, headers });
    expect(Buffer.from(res.exit!.body!)).to.deep.equal(Buffer.from(PAYMENT_BODY));
  });

  it('an allow with a lease serves that many requests (the fetching one included), then asks again, giving the lease back', async () => {
    let left = 3;
    svc.decide = () => (left > 0 ? leased(left, { id: `lease-${left}` }) : block('{"error":"payment_required"}'));
    const id = await instance();
    const statuses: number[] = [];
    for (let i = 0; i < 5; i++) {
      const res = await access(id);
      statuses.push(res.exit?.status ?? 200);
      left--;
    }
    expect(statuses).to.deep.equal([200, 200, 200, 402, 402]);
    expect(svc.decisionPaths, 'asked once for 3 requests, then again when spent').to.have.length(2);
    expect(svc.leaseRequests[1].previous).to.deep.equal({ id: 'lease-3', drawn: 3 });
  });

  it('a spent lease is no fallback when the service is down: fail_open decides', async () => {
    svc.decide = () => leased(1);
    const id = await instance({ fail_open: false });
    expect((await access(id)).exit).to.equal(undefined);
    await svc.stop();
    expect((await access(id)).exit?.status).to.equal(503);
    svc = await new FakeControlService().start(); // a running one again, for the next test
  });

  it('passes a request with no authenticated consumer without asking the service', async () => {
    svc.decide = () => block('{}');
    const id = await instance();
    const res = await access(id, null);
    expect(res.exit).to.equal(undefined);
    expect(svc.decisionPaths).to.deep.equal([]);
  });

  for (const [field, expected] of [['custom_id', 'cus_alice'], ['username', 'alice'], ['id', alice.id]] as const) {
    it(`consumer_field=${field} asks for the consumer's ${field}`, async () => {
      const id = await instance({ consumer_field: field });
      await access(id);
      expect(svc.decisionPaths).to.deep.equal([`/v1/decisions/${encodeURIComponent(expected)}`]);
    });
  }

  it('passes a consumer that lacks the configured field (not a billed customer)', async () => {
    svc.decide = () => block('{}');
    const id = await instance({ consumer_field: 'custom_id' });
    const res = await access(id, { id: 'c-1', username: 'internal-batch' });
    expect(res.exit).to.equal(undefined);
    expect(svc.decisionPaths).to.deep.equal([]);
  });

  it('cache hit: a second request makes no network call; its PDK calls are get_consumer, the refusal mark and the exit', async () => {
    svc.decide = () => block(PAYMENT_BODY);
    const id = await instance();
    // The stream's first hello drops what was fetched before it (news may have been missed): let it land first.
    await until(() => svc.streamCount() === 1, 3000, 'no stream');
    await sleep(300);
    await access(id);
    const second = await access(id);
    expect(second.exit?.status).to.equal(402);
    expect(second.pdkCalls).to.deep.equal(['kong.client.get_consumer', 'kong.ctx.shared.set', 'kong.response.exit']);
    expect(svc.decisionPaths).to.have.length(1);
  });

  it('report_usage=false: a refusal makes no ctx call', async () => {
    svc.decide = () => block(PAYMENT_BODY);
    const id = await instance({ report_usage: false });
    expect((await access(id)).pdkCalls).to.deep.equal(['kong.client.get_consumer', 'kong.response.exit']);
  });

  it('TTL: a decision is reused for min(ttl_ms, cache_ttl_ms), then asked again', async () => {
    // TTLs run on the plugin server's own clock (another process): wide enough that a busy
    // machine's slow round trip still lands inside them.
    let answer = block(PAYMENT_BODY, { ttlMs: 1500 });
    svc.decide = () => answer;
    const id = await instance({ cache_ttl_ms: 5000 });
    // The stream's first hello drops what was fetched meanwhile (news may have been missed): wait for it.
    await until(() => svc.streamCount() === 1, 3000, 'no stream');
    await sleep(100);
    expect((await access(id)).exit?.status).to.equal(402);
    answer = allow(60_000); // credit restored
    expect((await access(id)).exit?.status, 'still cached').to.equal(402);
    await sleep(1600);
    expect((await access(id)).exit, 'after the service\'s ttl_ms').to.equal(undefined);
    expect(svc.decisionPaths).to.have.length(2);

    // cache_ttl_ms bounds a long ttl_ms from the service (this instance shares the decision
    // fetched above, under its own cache_ttl_ms)
    const capped = await instance({ cache_ttl_ms: 100 });
    answer = allow(60_000);
    await access(capped);
    await sleep(150);
    const before = svc.decisionPaths.length;
    await access(capped);
    expect(svc.decisionPaths).to.have.length(before + 1);
  });

  it('concurrent misses for one consumer make one call', async () => {
    svc.decide = () => ({ ...block(PAYMENT_BODY), delayMs: 50 });
    const id = await instance();
    const results = await Promise.all(Array.from({ length: 20 }, () => access(id)));
    expect(results.every((r) => r.exit?.status === 402)).to.equal(true);
    expect(svc.decisionPaths).to.have.length(1);
  });

  describe('when the control service fails', () => {
    const failures: Array<[string, () => FakeControlService['decide']]> = [
      ['answers 500', () => () => ({ status: 500, body: '{"error":"boom"}' })],
      ['answers garbage JSON', () => () => ({ body: '{"allow": tru' })],
      ['answers a decision of the wrong shape', () => () => ({ body: JSON.stringify({ allow: false, status: '402', body: 1 }) })],
      ['answers a block with a success status', () => () => ({ body: JSON.stringify({ allow: false, status: 200, body: '' }) })],
      ['is slower than timeout_ms', () => () => ({ ...allow(), delayMs: 400 })],
    ];
    for (const [what, script] of failures) {
      it(`fail_open=false: 503 with a JSON error when it ${what}`, async () => {
        svc.decide = script();
        const id = await instance({ fail_open: false, timeout_ms: 100 });
        const res = await access(id);
        expect(res.exit?.status).to.equal(503);
        expect(res.exit?.headers).to.deep.equal({ 'Content-Type': 'application/json' });
        expect(JSON.parse(res.exit!.body!)).to.have.property('error', 'payg_unavailable');
      });
      it(`fail_open=true: passes when it ${what}`, async () => {
        svc.decide = script();
        const id = await instance({ fail_open: true, timeout_ms: 100 });
        expect((await access(id)).exit).to.equal(undefined);
      });
    }

    it('timeout: answers within about timeout_ms, not when the service finally replies', async () => {
      svc.decide = () => ({ ...allow(), delayMs: 2000 });
      const id = await instance({ fail_open: false, timeout_ms: 100 });
      const started = Date.now();
      const res = await access(id);
      expect(res.exit?.status).to.equal(503);
      expect(Date.now() - started).to.be.below(1000);
    });

    it('a lease answered after timeout_ms is not lost: the next requests draw on it, with no second call', async () => {
      svc.decide = () => ({ ...leased(5, { id: 'late' }), delayMs: 300 });
      const id = await instance({ fail_open: false, timeout_ms: 100 });
      expect((await access(id)).exit?.status, 'the waiting request gets the fail mode at timeout_ms').to.equal(503);
      await sleep(400); // the service answers meanwhile
      svc.decide = () => leased(5, { id: 'second' });
      for (let i = 0; i < 5; i++) expect((await access(id)).exit, `request ${i + 1} drawn on the late lease`).to.equal(undefined);
      // Before: the late lease was dropped (its credit stranded until ttl + usage grace) and a second one asked for.
      expect(svc.leaseRequests).to.have.length(1);
    });

    it('fail_open=false: 503 when the connection is refused', async () => {
      const id = await kong.startInstance('payg', { control_service_url: 'http://127.0.0.1:9', fail_open: false }, `plugin-${++plugin}`);
      expect((await access(id)).exit?.status).to.equal(503);
    });

    it('stale-on-failure: a cached block younger than stale_ttl_ms still applies', async () => {
      svc.decide = () => block(PAYMENT_BODY, { ttlMs: 50 });
      const id = await instance({ fail_open: true, stale_ttl_ms: 60_000 });
      expect((await access(id)).exit?.status).to.equal(402);
      await sleep(80);
      svc.decide = () => ({ status: 503, body: 'down' });
      const res = await access(id);
      expect(res.exit?.status, 'stale block, not fail-open').to.equal(402);
      expect(res.exit?.body).to.equal(PAYMENT_BODY);
    });

    it('stale-on-failure: after stale_ttl_ms the fail mode decides', async () => {
      svc.decide = () => allow(20);
      const id = await instance({ fail_open: false, stale_ttl_ms: 800 });
      expect((await access(id)).exit).to.equal(undefined);
      svc.decide = () => ({ status: 500, body: '' });
      await sleep(40);
      expect((await access(id)).exit, 'stale allow still serves').to.equal(undefined);
      await sleep(800);
      expect((await access(id)).exit?.status).to.equal(503);
    });

    it('a failing get_consumer PDK call applies the fail mode (no exception escapes)', async () => {
      const id = await instance({ fail_open: false });
      const res = await kong.handleEvent(id, 'access', { 'kong.client.get_consumer': () => ({ pdkError: 'no ctx' }) });
      expect(res.exit?.status).to.equal(503);
    });
  });

  it('URL-encodes consumer ids so they cannot change the path', async () => {
    const ids = ['a/b', 'x?admin=1', '100%', 'frag#ment', '../../v1/admin', 'Zoë 東京 🚀'];
    const id = await instance({ consumer_field: 'username' });
    const seen: string[] = [];
    svc.decide = (consumer) => { seen.push(consumer); return allow(); };
    for (const username of ids) await access(id, { id: `c-${username}`, username });
    expect(seen).to.deep.equal(ids);
    for (const p of svc.decisionPaths) expect(p).to.match(/^\/v1\/decisions\/[^/?#]+$/);
  });

  it('sends control_service_token as a bearer token', async () => {
    const id = await instance({ control_service_token: 's3cret-token' });
    await access(id);
    expect(svc.authorizations.length, 'the lease call (and the change stream)').to.be.at.least(1);
    expect(new Set(svc.authorizations)).to.deep.equal(new Set(['Bearer s3cret-token']));
  });

  it('rejects an invalid config at StartInstance, naming the field', async () => {
    let error: Error | undefined;
    try {
      await kong.startInstance('payg', { control_service_url: svc.url, timeout_ms: 'fast' }, 'plugin-bad');
    } catch (err) { error = err as Error; }
    expect(error?.message).to.match(/timeout_ms/);
  });
});
