// The local pay-as-you-go demo on embedded defaults: a Stripe emulator, the
// control service on SQLite, the real payg-pluginserver, and the Kong-side
// harness standing in for Kong (Kong itself cannot run here; see README).
// Prints each step; exits non-zero naming the step that failed.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { parseConfig } from '../../control-service/src/config';
import { startService } from '../../control-service/src/service';
import { StripeEmulator } from './stripe-emulator';
import { startPluginServer } from './pluginserver-process';
import { KongHarness, accessPdk } from './kong-harness';

const serve = process.argv.includes('--serve');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-demo-'));
  const stripe = await new StripeEmulator().start();
  const alice = stripe.create({ name: 'Alice Example', email: 'alice@example.com', balance: -10000 });
  const bob = stripe.create({ name: 'Bob Example', email: 'bob@example.com', balance: -50 });
  const doc = {
    listen: { port: 0 }, store: { sqlite: path.join(dir, 'payg.sqlite') },
    cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
    rules: [{ id: 'block-no-credit', cohort: 'no-credit', body: '{"error":"payment_required","message":"{{customer.first_name}}, your API credit is used up.","top_up":"{{top_up_url}}"}' }],
    top_up: { url: 'https://billing.example.com/top-up?customer={customer_id}' },
  };
  const config = parseConfig(doc, { STRIPE_SECRET_KEY: stripe.secretKey, STRIPE_API_BASE: stripe.url, STRIPE_WEBHOOK_SECRET: 'whsec_demo', PAYG_ADMIN_TOKEN: 'demo-admin' }, dir);
  const svc = await startService(config, { log: pino({ level: 'warn' }), sweepOnStart: false });
  stripe.webhook = { url: `${svc.url}/webhooks/stripe`, secret: 'whsec_demo' };
  await svc.sync!.sweep();
  const ps = await startPluginServer();
  const kong = new KongHarness(ps.socketPath);
  const id = await kong.startInstance('payg', { control_service_url: svc.url, cache_ttl_ms: 500, report_usage: false });
  const call = (customer: string) => kong.handleEvent(id, 'access', accessPdk({ id: customer, custom_id: customer }));
  console.log(`control service ${svc.url}; Stripe emulator ${stripe.url}; plugin server ${ps.socketPath}`);
  console.log(`customers: alice ${alice.id} ($100.00 credit), bob ${bob.id} ($0.50 credit)`);

  let step = '';
  const expectStatus = async (label: string, customer: string, want: number) => {
    step = label;
    const t0 = Date.now();
    for (;;) {
      const res = await call(customer);
      const status = res.exit?.status ?? 200;
      if (status === want) {
        console.log(`✔ ${label}: ${status}${res.exit?.body ? ` ${res.exit.body}` : ''} (${Date.now() - t0} ms)`);
        return;
      }
      if (Date.now() - t0 > 5000) throw new Error(`got ${status}, wanted ${want}`);
      await sleep(25);
    }
  };
  try {
    await expectStatus('1. alice calls with credit', alice.id, 200);
    step = '2. deduct alice to $0';
    stripe.addBalanceTransaction(alice.id, 10000);
    console.log('✔ 2. balance transaction of +$100.00 debits alice\'s credit to $0 (webhook sent)');
    await expectStatus('3. alice is blocked (time from the balance change)', alice.id, 402);
    stripe.addBalanceTransaction(alice.id, -2000);
    console.log('✔ 4. alice tops up $20.00');
    await expectStatus('5. alice is allowed again (time from the top-up)', alice.id, 200);
    console.log('… emails and metering (bob spending his $0.50) come with issues 4 and 5');
  } catch (err) {
    console.error(`✘ step failed: ${step}: ${(err as Error).message}`);
    process.exitCode = 1;
  }
  if (serve && !process.exitCode) {
    console.log(`serving; try: curl ${svc.url}/v1/decisions/${alice.id}   (Ctrl-C to stop)`);
    await new Promise((r) => process.once('SIGINT', r));
  }
  kong.close();
  await ps.stop();
  await svc.stop();
  await stripe.stop();
  fs.rmSync(dir, { recursive: true, force: true });
}

void main().then(() => process.exit(process.exitCode ?? 0), (err) => { console.error(err); process.exit(1); });
