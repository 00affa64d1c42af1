// Several control-service replicas (control_service_urls): when the one in use
// fails, the plugin asks the next one in the same call, not after stale_ttl_ms.
import { expect } from 'chai';
import { KongHarness, accessPdk, type Consumer } from '../../testkit/kong-harness';
import { startPluginServer, type PluginServerProcess } from '../../testkit/pluginserver-process';
import { FakeControlService, block } from '../../testkit/fake-control-service';
import { parseConfig } from '../../plugin/src/schema';

const bob: Consumer = { id: '8f0d6a0e-0000-4000-8000-000000000002', username: 'bob', custom_id: 'cus_bob' };
const BODY = '{"error":"payment_required"}';

describe('payg fails over between control-service replicas', function () {
  let server: PluginServerProcess;
  let kong: KongHarness;
  let first: FakeControlService;
  let second: FakeControlService;
  let plugin = 0;

  before(async () => {
    server = await startPluginServer();
    kong = new KongHarness(server.socketPath);
  });
  after(async () => {
    kong.close();
    await server.stop();
  });
  beforeEach(async () => {
    first = await new FakeControlService().start();
    second = await new FakeControlService().start();
    second.decide = () => block(BODY);
  });
  afterEach(async () => { await Promise.all([first.stop(), second.stop()]); });

  const instance = () => kong.startInstance('payg', {
    control_service_url: first.url, control_service_urls: [second.url], fail_open: true, cache_ttl_ms: 0,
  }, `failover-${++plugin}`);
  const access = (id: string) => kong.handleEvent(id, 'access', accessPdk(bob));

  it('a 5xx from the replica in use: the next one answers in the same call, and keeps serving', async () => {
    first.decide = () => ({ status: 503, body: '{"error":"unavailable"}' });
    const id = await instance();
    const res = await access(id);
    expect(res.exit, 'the second replica\'s 402, not fail_open').to.deep.include({ status: 402, body: BODY });
    expect(first.decisionPaths).to.have.length(1);
    expect(second.decisionPaths).to.have.length(1);
    expect((await access(id)).exit).to.deep.include({ status: 402 });
    expect(first.decisionPaths, 'the failed replica is not asked first again').to.have.length(1);
  });

  it('a refused connection (replica down): the next one answers in the same call', async () => {
    await first.stop();
    const id = await instance();
    expect((await access(id)).exit).to.deep.include({ status: 402, body: BODY });
    expect(second.decisionPaths).to.have.length(1);
  });

  it('validates control_service_urls, naming the element', () => {
    const base = { control_service_url: 'http://a:1' };
    expect(parseConfig({ ...base, control_service_urls: ['http://b:2'] }).controlServiceUrls.map((u) => u.href)).to.deep.equal(['http://b:2/']);
    expect(parseConfig(base).controlServiceUrls).to.deep.equal([]);
    expect(() => parseConfig({ ...base, control_service_urls: ['http://b:2', 'ftp://c'] })).to.throw('control_service_urls[1]: must match ^https?://');
    expect(() => parseConfig({ ...base, control_service_urls: 'http://b:2' })).to.throw('control_service_urls: expected an array');
  });
});
