// Everything the local demo runs, on loopback and embedded defaults: the
// Stripe emulator seeded with two customers, an SMTP capture, the control
// service on SQLite (configured by control-service/payg.example.yml with local
// overrides), the real payg-pluginserver configured from kong.yml's payg
// section, a sample upstream, and the local front standing in for Kong.
import fs from 'node:fs';
import { freePort } from '../testkit/ports';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import YAML from 'yaml';
import { parseConfig } from '../control-service/src/config';
import { startService, type RunningService } from '../control-service/src/service';
import { KongHarness, type Consumer } from '../testkit/kong-harness';
import { startPluginServer, type PluginServerProcess, ROOT } from '../testkit/pluginserver-process';
import { SmtpCapture } from '../testkit/smtp-capture';
import { StripeEmulator } from '../testkit/stripe-emulator';
import { DemoGateway, startUpstream } from './gateway';

export const ADMIN_TOKEN = 'demo-admin-token';
const CONTROL_TOKEN = 'demo-control-token';
const WEBHOOK_SECRET = 'whsec_demo';
/** Signs the demo's top-up links (a real deployment sets PAYG_TOP_UP_SECRET to its own random value). */
const TOP_UP_SECRET = 'demo-top-up-secret-0123456789abcdef0123';

export interface Stack {
  stripe: StripeEmulator;
  smtp: SmtpCapture;
  svc: RunningService;
  gateway: DemoGateway;
  keys: { alice: string; bob: string };
  customers: { alice: string; bob: string };
  stop(): Promise<void>;
}

/** kong.yml as shipped: the payg config of its route, the route, and the consumers with their keys. */
export function readKongYml(): { paygConfig: Record<string, unknown>; route: { id: string; name: string; path: string }; consumers: Array<Consumer & { key: string }>; topUpPath: string } {
  const doc = YAML.parse(fs.readFileSync(path.join(ROOT, 'kong.yml'), 'utf8'));
  const service = doc.services[0];
  const payg = service.plugins.find((p: { name: string }) => p.name === 'payg');
  const route = service.routes[0];
  // The public top-up route: no auth plugin, the path kept.
  const topUp = doc.services.find((s: { name: string }) => s.name === 'payg-top-up');
  return {
    topUpPath: topUp.routes[0].paths[0],
    paygConfig: payg.config,
    route: { id: `route-${route.name}`, name: route.name, path: route.paths[0] },
    consumers: doc.consumers.map((c: { username: string; custom_id: string; keyauth_credentials: Array<{ key: string }> }) => ({
      id: `consumer-${c.username}`, username: c.username, custom_id: c.custom_id, key: c.keyauth_credentials[0].key,
    })),
  };
}

export async function startStack(opts: { logLevel?: string } = {}): Promise<Stack> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-demo-'));
  const kongYml = readKongYml();
  const [alice, bob] = kongYml.consumers;

  const stripe = await new StripeEmulator().start();
  stripe.create({ id: alice.custom_id, name: 'Alice Example', email: 'alice@example.com', balance: -10000 }); // $100.00 of credit
  stripe.create({ id: bob.custom_id, name: 'Bob Example', email: 'bob@example.com', balance: -50 }); // $0.50
  const smtp = await new SmtpCapture().start();
  const upstream = await startUpstream();

  // The shipped example config, pointed at local things.
  const gatewayPort = Number(process.env.PAYG_DEMO_PORT ?? 0) || await freePort();
  const exampleDir = path.join(ROOT, 'control-service');
  const doc = YAML.parse(fs.readFileSync(path.join(exampleDir, 'payg.example.yml'), 'utf8'));
  Object.assign(doc, {
    listen: { host: '127.0.0.1', port: 0 },
    store: { sqlite: path.join(dir, 'payg.sqlite') },
    decision_ttl_ms: 1000, // plugins reuse a decision at most 1 s, so a webhook's change shows within about a second
    email_delivery: { ...doc.email_delivery, poll_interval_ms: 100 },
    // The operator console on its own loopback port (PAYG_CONSOLE_PORT, default: any free one).
    console: { listen: { host: '127.0.0.1', port: Number(process.env.PAYG_CONSOLE_PORT ?? 0) } },
    // Customers buy credit on payg's own page, reached through the gateway (kong.yml's payg-top-up route), and Stripe Checkout.
    top_up: {
      metadata_key: doc.top_up?.metadata_key,
      checkout: { public_url: `http://127.0.0.1:${gatewayPort}`, currencies: { usd: { presets: [1000, 2000, 5000], min: 500, max: 50_000 } } },
    },
  });
  const config = parseConfig(doc, {
    STRIPE_SECRET_KEY: stripe.secretKey, STRIPE_API_BASE: stripe.url, STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET,
    PAYG_ADMIN_TOKEN: ADMIN_TOKEN, PAYG_CONTROL_TOKEN: CONTROL_TOKEN, SMTP_URL: smtp.url, PAYG_TOP_UP_SECRET: TOP_UP_SECRET,
  }, exampleDir);
  const svc = await startService(config, { log: pino({ name: 'payg-control', level: opts.logLevel ?? 'warn' }), sweepOnStart: false });
  stripe.webhook = { url: `${svc.url}/webhooks/stripe`, secret: WEBHOOK_SECRET };
  const sweep = await svc.sync!.sweep();
  if (!sweep.ok) throw new Error(`first sweep failed: ${sweep.error}`);

  let ps: PluginServerProcess | undefined;
  let kong: KongHarness | undefined;
  try {
    ps = await startPluginServer();
    kong = new KongHarness(ps.socketPath);
    // kong.yml's payg config as is, but for where the (one) control service listens and the
    // token its vault reference would resolve to.
    const pluginId = await kong.startInstance('payg', { ...kongYml.paygConfig, control_service_url: svc.url, control_service_urls: [], control_service_token: CONTROL_TOKEN }, 'payg-example-route');
    const gateway = await new DemoGateway({
      kong, pluginId, upstream: upstream.url, route: kongYml.route, path: kongYml.route.path,
      keys: Object.fromEntries(kongYml.consumers.map(({ key, ...consumer }) => [key, consumer])),
      publicRoutes: [{ path: kongYml.topUpPath, upstream: svc.url }],
    }).start(gatewayPort);
    return {
      stripe, smtp, svc, gateway,
      keys: { alice: alice.key, bob: bob.key },
      customers: { alice: alice.custom_id!, bob: bob.custom_id! },
      async stop() {
        await gateway.stop();
        kong!.close();
        await ps!.stop();
        await svc.stop();
        await Promise.all([stripe.stop(), smtp.stop(), upstream.stop()]);
        fs.rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    kong?.close();
    await ps?.stop();
    await svc.stop();
    await Promise.all([stripe.stop(), smtp.stop(), upstream.stop()]);
    throw err;
  }
}
