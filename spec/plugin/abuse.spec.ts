// The plugin under careless config and odd traffic: secrets stay out of logs,
// a token with a trailing newline still works, a decision with a header Kong
// must not send is refused, and usage from real requests is never refused.
import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { KongHarness, RpcError, accessPdk, logPdk, requestCtx, type Consumer, type PdkHandlers } from '../../testkit/kong-harness';
import { startPluginServer, type PluginServerProcess } from '../../testkit/pluginserver-process';
import { FakeControlService, block } from '../../testkit/fake-control-service';
import { StripeEmulator } from '../../testkit/stripe-emulator';
import { parseConfig as parseControlConfig } from '../../control-service/src/config';
import { startService, type RunningService } from '../../control-service/src/service';
import { until } from '../support/until';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const bob: Consumer = { id: 'b0b', username: 'bob', custom_id: 'cus_bob' };
const TOKEN = 'tok-SECRET-4f9a2c';
const API_KEY = 'KEY-SECRET-77e1d0';

describe('payg plugin: abuse and careless config', function () {
  this.timeout(20_000);
  let server: PluginServerProcess;
  let kong: KongHarness;
  let svc: FakeControlService;
  let n = 0;
  before(async () => { server = await startPluginServer({ env: { PAYG_LOG_LEVEL: 'trace' } }); kong = new KongHarness(server.socketPath); });
  after(async () => { kong.close(); await server.stop(); });
  beforeEach(async () => { svc = await new FakeControlService().start(); });
  afterEach(() => svc.stop());
  const instance = (config: Record<string, unknown>) => kong.startInstance('payg', { control_service_url: svc.url, ...config }, `abuse-${++n}`);

  it('logs at the most verbose level never show the control token or the client\'s API key', async () => {
    const id = await instance({ control_service_token: TOKEN, usage_queue: { max_batch_size: 1 } });
    const ctx = requestCtx();
    await kong.handleEvent(id, 'access', accessPdk(bob, ctx));
    const withSecrets: PdkHandlers = {
      ...logPdk({ consumer: bob, route: { id: 'r', name: 'orders' }, status: 200 }, ctx),
      'kong.log.serialize': () => JSON.stringify({
        consumer: bob, route: { id: 'r', name: 'orders' }, response: { status: 200 }, started_at: Date.now(),
        request: { method: 'GET', uri: `/anything?apikey=${API_KEY}`, headers: { apikey: API_KEY, authorization: `Bearer ${API_KEY}` } },
      }),
    };
    await kong.handleEvent(id, 'log', withSecrets);
    await until(() => svc.usageBatches.length === 1);
    const text = server.logs.map((l) => JSON.stringify(l)).join('\n');
    expect(text, 'RPCs are logged at this level').to.match(/rpc: #\d+ method: plugin\.StartInstance/);
    expect(text).to.not.include(TOKEN);
    expect(text).to.not.include(API_KEY);
  });

  it('a control_service_token with a trailing newline is trimmed: requests are still checked', async () => {
    svc.decide = () => block('{"error":"payment_required"}');
    const id = await instance({ control_service_token: `  ${TOKEN}\n` });
    const res = await kong.handleEvent(id, 'access', accessPdk(bob));
    expect(res.exit?.status).to.equal(402);
    // The lease call and the change stream both carry it: each exactly the trimmed token.
    expect(svc.authorizations).to.not.be.empty;
    expect([...new Set(svc.authorizations)]).to.deep.equal([`Bearer ${TOKEN}`]);
  });

  it('a control_service_token with whitespace inside fails StartInstance, naming the field, not the token', async () => {
    let error: Error | undefined;
    try { await instance({ control_service_token: 'tok en-SECRET' }); } catch (err) { error = err as Error; }
    expect(error).to.be.instanceOf(RpcError);
    expect(error!.message).to.match(/control_service_token: may hold only visible ASCII characters/);
    expect(error!.message).to.not.include('en-SECRET');
  });

  for (const [what, headers] of [
    ['a CR/LF in a header value', { 'Content-Type': 'application/json', 'X-Note': 'ok\r\nSet-Cookie: admin=1' }],
    ['an invalid header name', { 'Bad Name': 'x' }],
  ] as const) {
    it(`a decision with ${what} is invalid: fail_open=false answers 503, never hands it to Kong`, async () => {
      svc.decide = () => block('{"error":"payment_required"}', { headers });
      const id = await instance({ fail_open: false });
      const res = await kong.handleEvent(id, 'access', accessPdk(bob));
      expect(res.exit?.status).to.equal(503);
      expect(JSON.parse(res.exit!.body!)).to.include({ error: 'payg_unavailable' });
    });
  }

  it('events the control service refuses are logged and dropped; the rest of the batch is not sent again', async () => {
    svc.usageBody = (events) => JSON.stringify({ accepted: events.length - 1, duplicates: 0, refused: [{ index: 1, error: 'status: Number must be less than or equal to 599' }] });
    // The batch goes when it holds 3 events, not on a timer (a slow machine would split it).
    const id = await instance({ usage_queue: { max_batch_size: 3, max_coalescing_delay: 30 } });
    for (let i = 0; i < 3; i++) await kong.handleEvent(id, 'log', logPdk({ consumer: bob, route: { id: 'r', name: 'orders' }, status: 200 }));
    await until(() => server.logs.some((l) => /usage events refused/.test(String(l.msg))));
    await sleep(100);
    expect(svc.usageBatches).to.have.length(1);
    const line = server.logs.find((l) => /usage events refused/.test(String(l.msg)))!;
    expect(line).to.deep.include({ dropped: 1, refused: [{ id: svc.usageBatches[0][1].id, error: 'status: Number must be less than or equal to 599' }] });
  });
});

describe('payg plugin with the real control service: every real request is billed', function () {
  this.timeout(20_000);
  let server: PluginServerProcess;
  let kong: KongHarness;
  let stripe: StripeEmulator;
  let control: RunningService;
  let dir: string;
  const CONTROL = 'control-token-abuse';
  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-bill-'));
    stripe = await new StripeEmulator().start();
    stripe.autoDeliver = false;
    server = await startPluginServer();
    kong = new KongHarness(server.socketPath);
  });
  after(async () => {
    kong.close();
    await server.stop();
    await control?.stop();
    await stripe.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('20 requests, one answered 999 by the upstream and one on a 600-character route name: all 20 billed', async () => {
    const c = stripe.create({ balance: -1000, metadata: { kong_consumer: 'bob' } });
    control = await startService(parseControlConfig({
      listen: { port: 0 }, store: { sqlite: path.join(dir, 'payg.sqlite') }, stripe: { poll: '0 0 1 1 *' },
      metering: { default_cost: 1, settle: { enabled: false } },
    }, { STRIPE_SECRET_KEY: stripe.secretKey, STRIPE_API_BASE: stripe.url, PAYG_CONTROL_TOKEN: CONTROL }, dir), { log: pino({ level: 'silent' }), sweepOnStart: false });
    await control.sync!.sweep();
    const id = await kong.startInstance('payg', {
      control_service_url: control.url, control_service_token: CONTROL, consumer_field: 'username', usage_queue: { max_batch_size: 20, max_coalescing_delay: 0.05 },
    }, 'bill-1');
    for (let i = 0; i < 20; i++) {
      const route = { id: 'r-1', name: i === 9 ? 'r'.repeat(600) : 'orders' };
      await kong.handleEvent(id, 'log', logPdk({ consumer: bob, route, status: i === 5 ? 999 : 200 }));
    }
    await until(() => control.engine.customer(c.id)!.unsettledMicros === 20_000_000, 5000, `billed ${control.engine.customer(c.id)!.unsettledMicros}`);
    expect(server.logs.filter((l) => /refused/.test(String(l.msg)))).to.deep.equal([]);
  });
});
