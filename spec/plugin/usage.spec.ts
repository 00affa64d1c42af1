// The log phase: one usage event per request, batched off the request path.
import net from 'node:net';
import { expect } from 'chai';
import { KongHarness, accessPdk, logPdk, requestCtx, type Consumer } from '../../testkit/kong-harness';
import { startPluginServer, type PluginServerProcess } from '../../testkit/pluginserver-process';
import { FakeControlService } from '../../testkit/fake-control-service';
import { until } from '../support/until';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const bob: Consumer = { id: 'b0b', username: 'bob', custom_id: 'cus_bob' };
const route = { id: 'r-1', name: 'orders' };

describe('payg log phase: usage reporting', function () {
  let server: PluginServerProcess;
  let kong: KongHarness;
  let svc: FakeControlService;
  let n = 0;
  before(async () => { server = await startPluginServer(); kong = new KongHarness(server.socketPath); });
  after(async () => { kong?.close(); await server?.stop(); });
  beforeEach(async () => { svc = await new FakeControlService().start(); });
  afterEach(() => svc.stop());

  const instance = (config: Record<string, unknown>) =>
    kong.startInstance('payg', { control_service_url: svc.url, ...config }, `usage-${++n}`);
  const events = () => svc.usageBatches.flat();

  it('sends one event per request in batches of max_batch_size', async () => {
    // A coalescing delay far longer than the test: only max_batch_size cuts a batch, whatever the
    // machine's load (a short delay could fire after any number of the 12 log calls). The last two
    // go when the plugin server stops (SIGTERM sends what is queued), in one batch.
    const own = await startPluginServer();
    const ownKong = new KongHarness(own.socketPath);
    try {
      const id = await ownKong.startInstance('payg', { control_service_url: svc.url, usage_queue: { max_batch_size: 5, max_coalescing_delay: 3600 } });
      const startedAt = Date.UTC(2026, 10, 25, 12, 0, 0);
      for (let i = 0; i < 12; i++) {
        const res = await ownKong.handleEvent(id, 'log', logPdk({ consumer: bob, route, status: i === 0 ? 500 : 200, startedAt }));
        // Only an error status needs to ask whether payg itself refused the request.
        expect(res.pdkCalls).to.deep.equal(i === 0 ? ['kong.log.serialize', 'kong.ctx.shared.get'] : ['kong.log.serialize']);
        expect(res.exit).to.equal(undefined);
      }
      await until(() => events().length === 10);
      await sleep(50);
      expect(svc.usageBatches.map((b) => b.length), 'two full batches; two events wait').to.deep.equal([5, 5]);
    } finally {
      ownKong.close();
      await own.stop();
    }
    expect(svc.usageBatches.map((b) => b.length)).to.deep.equal([5, 5, 2]);
    const [first] = events();
    expect(first).to.include({ consumer: 'cus_bob', at: '2026-11-25T12:00:00.000Z', route: 'orders', status: 500 });
    expect(first.id).to.match(/^[0-9a-f-]{36}$/);
    expect(new Set(events().map((e) => e.id)).size).to.equal(12);
  });

  it('reports nothing for a request payg refused (402 or fail-closed 503): it used nothing', async () => {
    const id = await instance({ usage_queue: { max_batch_size: 1 } });
    svc.decide = () => ({ body: JSON.stringify({ allow: false, status: 402, headers: {}, body: '{}', ttl_ms: 0 }) });
    const ctx = requestCtx();
    expect((await kong.handleEvent(id, 'access', accessPdk(bob, ctx))).exit?.status).to.equal(402);
    await kong.handleEvent(id, 'log', logPdk({ consumer: bob, route, status: 402 }, ctx));
    // The upstream's own 402 (another request, not refused by payg) is usage.
    await kong.handleEvent(id, 'log', logPdk({ consumer: bob, route, status: 402 }));
    await until(() => events().length === 1);
    await sleep(50);
    expect(events()).to.have.length(1);
  });

  it('reports nothing for a request without a consumer', async () => {
    const id = await instance({ usage_queue: { max_batch_size: 1 } });
    await kong.handleEvent(id, 'log', logPdk({ route, status: 200 }));
    await kong.handleEvent(id, 'log', logPdk({ consumer: bob, route, status: 200 }));
    await until(() => events().length === 1);
    await sleep(50);
    expect(events().map((e) => e.consumer)).to.deep.equal(['cus_bob']);
  });

  it('report_usage=false: makes no PDK call and sends nothing', async () => {
    const id = await instance({ report_usage: false, usage_queue: { max_batch_size: 1 } });
    const res = await kong.handleEvent(id, 'log', logPdk({ consumer: bob, route, status: 200 }));
    expect(res.pdkCalls).to.deep.equal([]);
    await sleep(50);
    expect(events()).to.deep.equal([]);
  });

  it('bounded buffer: drops past max_entries, counts and logs it, retries the rest with backoff', async () => {
    let status = 503;
    svc.usageStatus = () => status;
    const id = await instance({
      usage_queue: { max_entries: 5, max_batch_size: 100, max_coalescing_delay: 0.01, initial_retry_delay: 0.02, max_retry_delay: 0.05 },
    });
    for (let i = 0; i < 20; i++) await kong.handleEvent(id, 'log', logPdk({ consumer: bob, route, status: 200 }));
    await until(() => server.logs.some((l) => l.msg === 'usage queue full: usage events dropped'));
    const drop = server.logs.find((l) => l.msg === 'usage queue full: usage events dropped')!;
    expect(drop).to.include({ dropped: 15, droppedTotal: 15, maxEntries: 5 });
    expect(server.logs.some((l) => l.msg === 'usage batch not accepted; will retry')).to.equal(true);
    status = 202;
    await until(() => events().length === 5);
    await sleep(100);
    expect(events()).to.have.length(5); // delivered once each, no duplicates
  });

  it('a batch the control service refuses (400) is dropped and logged, not retried; the next one goes', async () => {
    let calls = 0;
    svc.usageStatus = () => (++calls === 1 ? 400 : 202);
    const id = await instance({ usage_queue: { max_batch_size: 2, max_coalescing_delay: 0.5, initial_retry_delay: 0.01 } });
    for (let i = 0; i < 4; i++) await kong.handleEvent(id, 'log', logPdk({ consumer: bob, route, status: 200 }));
    const refusedMsg = 'usage batch refused by the control service; dropped (sending it again cannot help)';
    await until(() => events().length === 2 && server.logs.some((l) => l.msg === refusedMsg));
    await sleep(100);
    expect(calls, 'the refused batch was sent once').to.equal(2);
    const refused = server.logs.find((l) => l.msg === refusedMsg);
    expect(refused).to.include({ dropped: 2, level: 50 });
  });

  it('never waits on the control service: a log event returns while usage POSTs hang', async () => {
    // A loopback server that accepts connections and never answers: every usage POST hangs.
    const silent = net.createServer(() => undefined);
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const sockets = new Set<net.Socket>();
    silent.on('connection', (socket) => { sockets.add(socket); socket.on('error', () => undefined); });
    try {
      const url = `http://127.0.0.1:${(silent.address() as net.AddressInfo).port}`;
      // Each POST may hang 10 s: a log phase that waited on one would take that long, so a
      // bound of 2 s for five of them tells waiting from not waiting even on a busy machine.
      const id = await kong.startInstance('payg', { control_service_url: url, timeout_ms: 10_000, usage_queue: { max_batch_size: 1 } }, `usage-${++n}`);
      const started = Date.now();
      for (let i = 0; i < 5; i++) await kong.handleEvent(id, 'log', logPdk({ consumer: bob, route, status: 200 }));
      expect(Date.now() - started).to.be.below(2000);
      await until(() => sockets.size > 0); // the POSTs really went out, and hang
    } finally {
      for (const socket of sockets) socket.destroy();
      await new Promise((r) => silent.close(r));
    }
  });
});
