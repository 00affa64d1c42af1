// One shared fixture for plugin specs that drive real payg-pluginserver processes
// as Kong drives them (testkit/kong-harness.ts), against the real control
// service in process with the Stripe emulator (a ServiceFixture) or against
// testkit's FakeControlService. Every node, service, emulator and temp folder a
// test starts is stopped and removed after it, even when it fails.
//
//   const fx = pluginFixture({ plugin: { cache_ttl_ms: 60_000, timeout_ms: 3000 } });
//   await fx.startControl({ metering: { default_cost: 1 } });   // swept once, webhooks delivered to it
//   const [node] = await fx.startNodes(1);
//   const { status, credit } = await fx.request(node, { id: 'k1', custom_id: c.id });
//
//   const fx = pluginFixture({ control: 'fake' });                // fx.fake scripts the answers
import type { RunningService } from '../../control-service/src/service';
import { ControlClient } from '../../plugin/src/control-client';
import { FakeControlService } from '../../testkit/fake-control-service';
import { KongHarness, accessPdk, requestCtx, type Consumer, type PdkHandlers } from '../../testkit/kong-harness';
import { startPluginServer, type PluginServerProcess } from '../../testkit/pluginserver-process';
import type { StripeEmulator } from '../../testkit/stripe-emulator';
import { CONTROL, ServiceFixture, merge, type Doc, type StartOptions } from './fixture';

/** The body of the control service's block rule (the fixture's base config). */
export const PAYMENT_BODY = '{"error":"payment_required"}';
const WEBHOOK_SECRET = 'whsec_plugin_fixture';

/** One plugin server (one gateway node) with its Kong-side harness; `plugin` is its default instance. */
export interface PluginNode { ps: PluginServerProcess; kong: KongHarness; plugin: string }

/** What Kong would send for one request: the status (200 when the plugin let it through), the exit body, the credit header. */
export interface Served { status: number; body: string | undefined; credit: number | undefined; pdkCalls: string[] }

export interface PluginFixtureOptions {
  /** 'service' (default): the real control service with the Stripe emulator; 'fake': testkit's FakeControlService. */
  control?: 'service' | 'fake';
  /** Temp folder name prefix (the real service's store lives there). */
  prefix?: string;
  /** Plugin config every instance starts with, after control_service_url (and the control token with the real service). */
  plugin?: Record<string, unknown>;
  /** The response header request() reads the credit from. */
  creditHeader?: string;
}

export class PluginFixture {
  readonly service: ServiceFixture;
  /** With control 'fake': the fake control service the nodes talk to. */
  fake!: FakeControlService;
  readonly nodes: PluginNode[] = [];

  constructor(private readonly opts: PluginFixtureOptions = {}) {
    // Stripe delivers its webhooks as they happen: a top-up or a debit reaches the nodes by push.
    this.service = new ServiceFixture({ prefix: opts.prefix ?? 'payg-plugin-', autoDeliver: true });
  }

  private get real(): boolean { return (this.opts.control ?? 'service') === 'service'; }

  async setUp(): Promise<void> {
    if (this.real) await this.service.setUp();
    else this.fake = await new FakeControlService().start();
  }

  /** Stops every node (harness first, then its process), then the control service, emulator and folder. */
  async tearDown(): Promise<void> {
    const errors: unknown[] = [];
    for (const node of this.nodes.splice(0)) {
      node.kong.close();
      try { await node.ps.stop(); } catch (err) { errors.push(err); }
    }
    try {
      if (this.real) await this.service.tearDown();
      else await this.fake?.stop();
    } catch (err) { errors.push(err); }
    if (errors.length) throw errors[0];
  }

  get stripe(): StripeEmulator { return this.service.stripe; }
  get dir(): string { return this.service.dir; }
  /** The control service started last. */
  get svc(): RunningService {
    if (!this.service.svc) throw new Error('plugin fixture: no control service started');
    return this.service.svc;
  }
  /** Where nodes reach the control service. */
  get url(): string { return this.real ? this.svc.url : this.fake.url; }

  /**
   * Starts the real control service for nodes: the fixture's base config (block rule answering
   * PAYMENT_BODY) with decisions cached 60 s, deep-merged with `overrides`; Stripe delivers its
   * webhooks to it as they happen, and one sweep has read the emulator's customers when it resolves.
   */
  async startControl(overrides: Doc = {}, opts: StartOptions & { env?: Record<string, string | undefined> } = {}): Promise<RunningService> {
    const svc = await this.service.start(merge({ decision_ttl_ms: 60_000 }, overrides), { ...opts, env: { STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET, ...opts.env } });
    this.stripe.webhook = { url: `${svc.url}/webhooks/stripe`, secret: WEBHOOK_SECRET };
    const swept = await svc.sync!.sweep();
    if (!swept.ok) throw new Error(`plugin fixture: the first sweep failed: ${swept.error}`);
    return svc;
  }

  /** A plugin server and its harness; with `instance`, the default instance starts with that config. `prefix`: Kong's prefix (kept across restarts). */
  async startNode(opts: { instance?: Record<string, unknown>; id?: string; prefix?: string } = {}): Promise<PluginNode> {
    const ps = await startPluginServer(opts.prefix ? { prefix: opts.prefix } : {});
    const node: PluginNode = { ps, kong: new KongHarness(ps.socketPath), plugin: opts.id ?? 'plugin-1' };
    this.nodes.push(node);
    if (opts.instance) await this.instance(node, opts.instance, node.plugin);
    return node;
  }

  /** `n` nodes at once, each with its default instance started with `config`. */
  async startNodes(n: number, config: Record<string, unknown> = {}): Promise<PluginNode[]> {
    // Every start is waited for, so a node that started while another failed is in `nodes` and stopped at teardown.
    const started = await Promise.allSettled(Array.from({ length: n }, () => this.startNode({ instance: config })));
    const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    return started.map((r) => (r as PromiseFulfilledResult<PluginNode>).value);
  }

  /** Stops one node now (SIGTERM, as Kong stops its plugin server). */
  async stopNode(node: PluginNode): Promise<void> {
    const i = this.nodes.indexOf(node);
    if (i >= 0) this.nodes.splice(i, 1);
    node.kong.close();
    await node.ps.stop();
  }

  /** Starts (or restarts) a payg instance on `node`: control_service_url (and token), the fixture's plugin defaults, then `config`. */
  instance(node: PluginNode, config: Record<string, unknown> = {}, id = node.plugin): Promise<string> {
    return node.kong.startInstance('payg', {
      control_service_url: this.url, ...(this.real ? { control_service_token: CONTROL } : {}), ...this.opts.plugin, ...config,
    }, id);
  }

  /**
   * One request through a node on `route`: access (Kong answers get_route; the credit header is
   * read), then, when it was let through, the log phase with Kong's log entry; `log` adds to that
   * entry (e.g. `ai` token counts, `response.headers`).
   */
  async request(node: PluginNode, consumer: Consumer, opts: { plugin?: string; route?: string; log?: Record<string, unknown> } = {}): Promise<Served> {
    const plugin = opts.plugin ?? node.plugin;
    const route = opts.route ?? 'orders';
    const kongRoute = { id: `r-${route}`, name: route };
    const header = (this.opts.creditHeader ?? 'X-Credit-Remaining').toLowerCase();
    const ctx = requestCtx();
    let credit: number | undefined;
    const access: PdkHandlers = {
      ...accessPdk(consumer, ctx),
      'kong.router.get_route': () => kongRoute,
      'kong.response.set_header': (name: unknown, value: unknown) => { if (String(name).toLowerCase() === header) credit = Number(value); return null; },
    };
    const res = await node.kong.handleEvent(plugin, 'access', access);
    const status = res.exit?.status ?? 200;
    if (status === 200) {
      const log = opts.log ?? {};
      await node.kong.handleEvent(plugin, 'log', {
        ...ctx,
        'kong.log.serialize': () => JSON.stringify({
          consumer, route: kongRoute, started_at: Date.now(), request: { method: 'GET', uri: '/anything', size: 10 },
          ...log, response: { status, size: 10, ...(log.response as object | undefined) },
        }),
      });
    }
    return { status, body: res.exit?.body, credit, pdkCalls: res.pdkCalls };
  }

  /** The admin API's view of a customer on the real service. */
  async customer(id: string): Promise<{ unsettled_usage: number; estimated_balance: number; leases: Array<{ node: string; held_requests: number; held_micros: number; open?: boolean }> }> {
    return (await this.service.admin(`/admin/customers/${id}`)).body;
  }
  async unsettled(id: string): Promise<number> { return (await this.customer(id)).unsettled_usage; }
}

/** A fixture whose hooks (beforeEach / afterEach) are registered in the calling describe block. */
export function pluginFixture(opts: PluginFixtureOptions = {}): PluginFixture {
  const fx = new PluginFixture(opts);
  beforeEach(() => fx.setUp());
  afterEach(() => fx.tearDown());
  return fx;
}

/** The plugin's control client on its own, talking to a loopback FakeControlService; both fresh for each test. */
export function controlClientFixture(): { fake: FakeControlService; client: ControlClient } {
  const fx = {} as { fake: FakeControlService; client: ControlClient };
  beforeEach(async () => {
    fx.fake = await new FakeControlService().start();
    fx.client = new ControlClient({ baseUrl: new URL(fx.fake.url), token: undefined, timeoutMs: 1000, defaultTtlMs: 5000 });
  });
  afterEach(async () => {
    fx.client.close();
    await fx.fake.stop();
  });
  return fx;
}
