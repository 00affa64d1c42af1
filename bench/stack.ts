// The stack the top-up and recharge benchmarks run on: a temp folder, the
// Stripe emulator on loopback, the control service in process on a port known
// before it listens (the top-up page's public URL names it), and real
// payg-pluginserver processes driven as Kong drives them.
import fs from 'node:fs';
import { freePort } from '../testkit/ports';
export { freePort };
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { parseConfig } from '../control-service/src/config';
import { startService, type RunningService } from '../control-service/src/service';
import { StripeEmulator } from '../testkit/stripe-emulator';
import { KongHarness, accessPdk, logPdk, requestCtx, type Consumer } from '../testkit/kong-harness';
import { startPluginServer, type PluginServerProcess } from '../testkit/pluginserver-process';

export const CONTROL = 'bench-control-token';
export const TOP_UP_SECRET = 'bench-top-up-secret-0123456789abcdef0123';

/** The p-th percentile of `xs`. */
export const pct = (xs: number[], p: number) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]; };

/** One gateway node: a plugin server, its Kong-side harness and its payg instance. */
export interface BenchNode { ps: PluginServerProcess; kong: KongHarness; plugin: string }

/** One request through a node: access, and (when let through) its log phase, not waited for. Answers the status Kong would send. */
export async function request(node: BenchNode, consumer: Consumer): Promise<number> {
  const ctx = requestCtx();
  const res = await node.kong.handleEvent(node.plugin, 'access', accessPdk(consumer, ctx));
  const status = res.exit?.status ?? 200;
  if (status === 200) void node.kong.handleEvent(node.plugin, 'log', logPdk({ consumer, route: { id: 'r', name: 'api' }, status }, ctx));
  return status;
}

export class BenchStack {
  svc: RunningService | undefined;

  private constructor(readonly dir: string, readonly stripe: StripeEmulator, readonly port: number) {}

  /** A temp folder, the emulator (delivering webhooks by itself unless `autoDeliver` is false) and a free port. */
  static async open(opts: { prefix: string; autoDeliver?: boolean }): Promise<BenchStack> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), opts.prefix));
    const stripe = await new StripeEmulator().start();
    stripe.autoDeliver = opts.autoDeliver ?? true;
    return new BenchStack(dir, stripe, await freePort());
  }

  /** Where the service listens (and the top-up page's public URL). */
  get url(): string { return `http://127.0.0.1:${this.port}`; }

  /**
   * Starts the control service (silent, no sweep at start) on `doc` with listen and store filled
   * in; its environment is the emulator's key and URL, the control token, the top-up secret and `env`.
   */
  async startService(doc: Record<string, unknown>, env: Record<string, string> = {}): Promise<RunningService> {
    const config = parseConfig({ ...doc, listen: { port: this.port }, store: { sqlite: path.join(this.dir, 'payg.sqlite') } }, {
      STRIPE_SECRET_KEY: this.stripe.secretKey, STRIPE_API_BASE: this.stripe.url, PAYG_CONTROL_TOKEN: CONTROL, PAYG_TOP_UP_SECRET: TOP_UP_SECRET, ...env,
    }, this.dir);
    this.svc = await startService(config, { log: pino({ level: 'silent' }), sweepOnStart: false });
    return this.svc;
  }

  /** `count` nodes at once, each with a payg instance pointed at the service with the control token, and `config`. */
  startNodes(count: number, config: Record<string, unknown> = {}): Promise<BenchNode[]> {
    return Promise.all(Array.from({ length: count }, async () => {
      const ps = await startPluginServer();
      const kong = new KongHarness(ps.socketPath);
      const plugin = await kong.startInstance('payg', { control_service_url: this.svc!.url, control_service_token: CONTROL, ...config });
      return { ps, kong, plugin };
    }));
  }

  async stopNodes(nodes: BenchNode[]): Promise<void> {
    for (const n of nodes) { n.kong.close(); await n.ps.stop(); }
  }

  /** A customer with a saved card (pm_card_visa as the default payment method) who opted in to auto-recharge. */
  async optedInCustomer(fields: Record<string, unknown>): Promise<string> {
    const c = this.stripe.create(fields);
    const pm = await (await fetch(`${this.stripe.url}/v1/payment_methods/pm_card_visa/attach`, { method: 'POST', headers: { authorization: `Bearer ${this.stripe.secretKey}`, 'content-type': 'application/x-www-form-urlencoded' }, body: `customer=${c.id}` })).json() as { id: string };
    this.stripe.update(c.id, { invoice_settings: { custom_fields: null, default_payment_method: pm.id, footer: null, rendering_options: null }, metadata: { payg_auto_recharge: 'on' } });
    return c.id;
  }

  /** Stops the service and the emulator, and removes the folder. */
  async close(): Promise<void> {
    await this.svc?.stop();
    await this.stripe.stop();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
