// A control service (one process on SQLite, or several replicas on PostgreSQL) run as real
// processes on fixed ports, with real plugin servers listing every replica, driven as Kong drives
// them. Replicas can be killed (-9 or SIGTERM) and started again on their port while the load
// runs; every answer is recorded. Used by spec/control/leases/failover.spec.ts and
// bench/failover.ts.
import fs from 'node:fs';
import { freePort } from '../../testkit/ports';
import os from 'node:os';
import path from 'node:path';
import { startControlProcess, type ControlProcess } from './control-process';
import { StripeEmulator } from '../../testkit/stripe-emulator';
import { startPluginServer, type PluginServerProcess } from '../../testkit/pluginserver-process';
import { KongHarness, accessPdk, logPdk, requestCtx, type Consumer } from '../../testkit/kong-harness';

export const RIG_ADMIN = 'admin-token-for-failover';
export const RIG_CONTROL = 'control-token-for-failover';

export interface Answer { at: number; customer: string; status: number; body?: string }
export interface RigOptions {
  /** A PostgreSQL URL (several replicas), or undefined for one process on SQLite. */
  databaseUrl?: string;
  replicas: number;
  nodes: number;
  /** Customers' balances (negative: credit), in cents; each request costs one cent. */
  balances: number[];
  /** Plugin timeout_ms. */
  timeoutMs: number;
  /** Plugin cache_ttl_ms (default 5000): a node stops drawing on a lease after min(it, leases.ttl_ms). */
  cacheTtlMs?: number;
  leases?: Record<string, unknown>;
}

export class FailoverRig {
  readonly stripe = new StripeEmulator();
  readonly replicas: Array<ControlProcess | undefined> = [];
  readonly answers: Answer[] = [];
  readonly served = new Map<string, number>();
  customers: Consumer[] = [];
  urls: string[] = [];
  private dir = '';
  private configFile = '';
  private env: NodeJS.ProcessEnv = {};
  private ports: number[] = [];
  private readonly pluginServers: PluginServerProcess[] = [];
  private readonly nodes: Array<{ kong: KongHarness; plugin: string }> = [];
  private running = false;
  private load: Array<Promise<void>> = [];

  constructor(private readonly opts: RigOptions) {}

  async start(): Promise<void> {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-failover-'));
    await this.stripe.start();
    this.configFile = path.join(this.dir, 'payg.yml');
    fs.writeFileSync(this.configFile, JSON.stringify({
      listen: { port: 0 }, store: this.opts.databaseUrl ? { postgres: {} } : { sqlite: path.join(this.dir, 'payg.sqlite') },
      stripe: { poll: '0 0 1 1 *' },
      cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
      rules: [{ id: 'block', cohort: 'no-credit', body: '{"error":"payment_required"}' }],
      metering: { default_cost: 1, settle: { schedule: '0 0 1 1 *' } },
      leases: this.opts.leases ?? {},
    }));
    this.env = {
      STRIPE_SECRET_KEY: this.stripe.secretKey, STRIPE_API_BASE: this.stripe.url, PAYG_ADMIN_TOKEN: RIG_ADMIN, PAYG_CONTROL_TOKEN: RIG_CONTROL,
      ...(this.opts.databaseUrl ? { PAYG_DATABASE_URL: this.opts.databaseUrl } : {}),
    };
    this.ports = [];
    for (let i = 0; i < this.opts.replicas; i++) this.ports.push(await freePort());
    this.urls = this.ports.map((p) => `http://127.0.0.1:${p}`);
    await Promise.all(this.ports.map((_, i) => this.startReplica(i)));
    const made = this.opts.balances.map((balance, i) => this.stripe.create({ name: `Customer ${i}`, balance, currency: 'usd' }));
    this.customers = made.map((c) => ({ id: `k-${c.id}`, custom_id: c.id }));
    for (const c of this.customers) this.served.set(c.custom_id!, 0);
    await fetch(`${this.urls[0]}/admin/sweep`, { method: 'POST', headers: { authorization: `Bearer ${RIG_ADMIN}` } });
    // Every replica knows every customer before the load starts.
    for (const url of this.urls) {
      for (const c of made) {
        const deadline = Date.now() + 15_000;
        while ((await fetch(`${url}/admin/customers/${c.id}`, { headers: { authorization: `Bearer ${RIG_ADMIN}` } })).status !== 200) {
          if (Date.now() > deadline) throw new Error(`replica ${url} never knew ${c.id}`);
          await new Promise((r) => setTimeout(r, 100));
          // Swept again (a sweep asked of a replica before it leads, or a change missed while it started).
          await fetch(`${url}/admin/sweep`, { method: 'POST', headers: { authorization: `Bearer ${RIG_ADMIN}` } });
        }
      }
    }
    for (let n = 0; n < this.opts.nodes; n++) {
      const ps = await startPluginServer();
      this.pluginServers.push(ps);
      const kong = new KongHarness(ps.socketPath);
      // Each node lists every replica, starting at a different one.
      const order = this.urls.map((_, i) => this.urls[(i + n) % this.urls.length]);
      const plugin = await kong.startInstance('payg', {
        control_service_url: order[0], control_service_urls: order.slice(1), control_service_token: RIG_CONTROL,
        timeout_ms: this.opts.timeoutMs, cache_ttl_ms: this.opts.cacheTtlMs ?? 5000, fail_open: false,
        queue: { max_coalescing_delay: 0.05, initial_retry_delay: 0.05, max_retry_delay: 0.5 },
      }, `failover-${n}`);
      this.nodes.push({ kong, plugin });
    }
  }

  /** Starts replica i on its port; resolves when it answers (its "listening" line): that moment is returned. */
  async startReplica(i: number): Promise<number> {
    this.replicas[i] = await startControlProcess(this.configFile, { ...this.env, PORT: String(this.ports[i]) }, 30_000);
    return Date.now();
  }

  async stopReplica(i: number, signal: NodeJS.Signals): Promise<void> {
    const r = this.replicas[i];
    this.replicas[i] = undefined;
    await r?.kill(signal);
  }

  /** The replica that leads now (PostgreSQL), by its log. */
  leader(): number | undefined {
    const leading = this.replicas.map((r, i) => ({ r, i })).filter(({ r }) => r && /"msg":"leading/.test(r.output()) && !/no longer leading/.test(r.output()));
    return leading.length ? leading[leading.length - 1].i : undefined;
  }

  /** One request through node n (access, then its log phase when served): the status Kong returns. */
  async request(n: number, consumer: Consumer): Promise<number> {
    const node = this.nodes[n % this.nodes.length];
    const ctx = requestCtx();
    const access = await node.kong.handleEvent(node.plugin, 'access', accessPdk(consumer, ctx));
    const status = access.exit?.status ?? 200;
    this.answers.push({ at: Date.now(), customer: consumer.custom_id!, status, ...(status === 200 ? {} : { body: access.exit?.body }) });
    if (status === 200) {
      this.served.set(consumer.custom_id!, this.served.get(consumer.custom_id!)! + 1);
      await node.kong.handleEvent(node.plugin, 'log', logPdk({ consumer, route: { id: 'r1', name: 'api' }, status: 200 }, ctx));
    }
    return status;
  }

  /** `concurrency` request loops per node, over the customers in turn, until stopLoad(). */
  startLoad(concurrency: number, pick: (n: number) => Consumer = (n) => this.customers[n % this.customers.length]): void {
    this.running = true;
    let count = 0;
    this.load = this.nodes.flatMap((node) => Array.from({ length: concurrency }, async () => {
      while (this.running) {
        const status = await this.request(this.nodes.indexOf(node), pick(count++));
        if (status !== 200) await new Promise((r) => setTimeout(r, 5));
      }
    }));
  }

  async stopLoad(): Promise<void> {
    this.running = false;
    await Promise.all(this.load);
  }

  /** Asks replica i for a lease for customer c as a node of its own, until granted: when it was. */
  async firstGrant(i: number, customer: Consumer, deadlineMs: number): Promise<number | undefined> {
    const deadline = Date.now() + deadlineMs;
    while (Date.now() < deadline) {
      const res = await fetch(`${this.urls[i]}/v1/leases`, {
        method: 'POST', headers: { authorization: `Bearer ${RIG_CONTROL}`, 'content-type': 'application/json' },
        body: JSON.stringify({ node: 'probe', consumer: customer.custom_id, want: 1 }),
      }).catch(() => undefined);
      if (res?.status === 200) {
        const body = await res.json() as { lease?: { id: string } };
        if (body.lease) {
          const at = Date.now();
          await fetch(`${this.urls[i]}/v1/leases/release`, {
            method: 'POST', headers: { authorization: `Bearer ${RIG_CONTROL}`, 'content-type': 'application/json' },
            body: JSON.stringify({ node: 'probe', leases: [{ id: body.lease.id, drawn: 0 }] }),
          });
          return at;
        }
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    return undefined;
  }

  /**
   * Usage counted for a customer (cents), read from any replica: its estimated balance less the balance
   * it started with (settlements move usage into Stripe's balance; nothing else changes it here).
   */
  async usage(customerId: string): Promise<number> {
    const initial = this.opts.balances[this.customers.findIndex((c) => c.custom_id === customerId)];
    for (const url of this.urls) {
      const res = await fetch(`${url}/admin/customers/${customerId}`, { headers: { authorization: `Bearer ${RIG_ADMIN}` } }).catch(() => undefined);
      if (res?.status === 200) return Math.round((((await res.json()) as { estimated_balance: number }).estimated_balance - initial) * 1e6) / 1e6;
    }
    throw new Error('no replica answers');
  }

  async stop(): Promise<void> {
    this.running = false;
    for (const n of this.nodes) n.kong.close();
    await Promise.all(this.pluginServers.map((p) => p.stop()));
    await Promise.all(this.replicas.map((r) => r?.kill('SIGKILL')));
    await this.stripe.stop();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
