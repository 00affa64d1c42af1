// Top-ups survive kill -9 and several replicas: the service is killed after
// Stripe applied a credit and before the service heard it (with Stripe's
// idempotency key forgotten meanwhile), and replicas on one PostgreSQL get the
// same webhooks at once. One balance transaction, confirmed, in every case.
import { expect } from 'chai';
import path from 'node:path';
import Database from 'better-sqlite3';
import type { ControlProcess } from '../../support/control-process';
import { serviceFixture } from '../../support/fixture';
import { freshDatabase } from '../../support/postgres';
import { until } from '../../support/until';
import { formOf, freePort, topUpProcessConfig } from './support';

const WEBHOOK_SECRET = 'whsec_top_up_crash';
const TOP_UP_SECRET = 'top-up-secret-for-crash-tests-0123456789';

describe('top-ups: kill -9 and replicas', function () {
  this.timeout(60_000);
  const fx = serviceFixture({ prefix: 'payg-top-up-crash-' });
  /** The process, with no control token: the decision API answers anyone, as the links are read from it. */
  const launch = (configFile: string, env: Record<string, string> = {}) =>
    fx.launch(configFile, { STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET, PAYG_TOP_UP_SECRET: TOP_UP_SECRET, PAYG_CONTROL_TOKEN: undefined, ...env }, 20_000);
  const ours = (customer: string) => fx.stripe.balanceTransactions.filter((t) => t.customer === customer && (t.metadata as Record<string, string>)?.payg_top_up);
  const decision = async (r: ControlProcess, id: string) => (await fetch(`${r.url}/v1/decisions/${id}`)).json() as Promise<any>;
  const sweep = async (r: ControlProcess) => (await fx.adminAt(r.url, '/admin/sweep', { method: 'POST' })).body;

  /** Buys through the page reached at `link`; answers the session the redirect leads to. */
  async function buy(link: string, preset: string): Promise<Record<string, any>> {
    const { nonce, action } = formOf(await (await fetch(link)).text());
    const res = await fetch(new URL(action, link), { method: 'POST', redirect: 'manual', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams({ nonce, preset }).toString() });
    expect(res.status).to.equal(303);
    return [...fx.stripe.checkoutSessions.values()].find((s) => s.url === res.headers.get('location')) as Record<string, any>;
  }
  const config = (port: number, store: unknown) => topUpProcessConfig(port, store, { stripe: { timeout_ms: 60_000 } });

  it('credited by Stripe, killed before hearing it, key forgotten, restarted: one credit, found by its metadata and confirmed', async () => {
    const alice = fx.stripe.create({ name: 'Alice', balance: 0, currency: 'usd' });
    const port = await freePort();
    const sqlite = path.join(fx.dir, 'payg.sqlite');
    const configFile = fx.writeConfig('payg.yml', config(port, { sqlite }));
    let control = await launch(configFile);
    fx.stripe.webhook = { url: `${control.url}/webhooks/stripe`, secret: WEBHOOK_SECRET };
    await sweep(control);
    const link = JSON.parse((await decision(control, alice.id)).body).top_up_url as string;
    const session = await buy(link, '2500');
    fx.stripe.completeCheckoutSession(session.id, 'pm_card_visa');
    const completed = fx.stripe.events.filter((e) => e.type === 'checkout.session.completed');

    // Stripe applies the credit; its answer never comes back.
    fx.stripe.holdAnswers(/\/balance_transactions$/, 'POST');
    void fx.stripe.deliver(completed[0]).catch(() => undefined);
    await until(() => ours(alice.id).length === 1, 5000, 'Stripe never applied the credit');
    await control.kill('SIGKILL');
    fx.stripe.holdAnswers(undefined);
    fx.stripe.forgetIdempotencyKeys(); // past 24 hours: only the metadata can tell it was applied

    control = await launch(configFile);
    fx.stripe.webhook = { url: `${control.url}/webhooks/stripe`, secret: WEBHOOK_SECRET };
    for (const e of [...completed, ...completed]) expect(await fx.stripe.deliver(e)).to.equal(200);
    await until(() => {
      const db = new Database(sqlite, { readonly: true });
      try { return (db.prepare(`SELECT status FROM top_up_moves WHERE ref = ?`).get(`credit:${session.id}`) as { status: string } | undefined)?.status === 'confirmed'; } finally { db.close(); }
    }, 10_000, 'the credit was never confirmed');
    expect(ours(alice.id), 'one credit').to.have.length(1);
    expect(fx.stripe.customers.get(alice.id)!.balance).to.equal(-2500);
    await until(async () => (await decision(control, alice.id)).allow === true, 5000, 'access never came back');
  });

  it('two replicas on PostgreSQL: the same webhooks to both at once credit once; the one killed mid-credit is recovered by the other', async () => {
    const [portA, portB] = [await freePort(), await freePort()];
    const configFile = fx.writeConfig('payg.yml', config(portA, { postgres: {} }));
    const env = { PAYG_DATABASE_URL: await freshDatabase() };
    const a = await launch(configFile, env);
    const b = await launch(configFile, { ...env, PORT: String(portB) });
    const bob = fx.stripe.create({ name: 'Bob', balance: 0, currency: 'usd' });
    const carol = fx.stripe.create({ name: 'Carol', balance: 0, currency: 'usd' });
    await sweep(a);
    await sweep(b);
    const signed = (url: string) => ({ url, secret: WEBHOOK_SECRET });

    // Bob: every event to both replicas, three times, all at once.
    const bobSession = await buy(JSON.parse((await decision(a, bob.id)).body).top_up_url, '2500');
    fx.stripe.completeCheckoutSession(bobSession.id, 'pm_card_visa');
    const bobEvents = fx.stripe.events.filter((e) => e.type.startsWith('checkout.session.') && (e.data.object as { id: string }).id === bobSession.id);
    const statuses = await Promise.all([a, b, a, b, a, b].flatMap((r) => bobEvents.map((e) => fx.stripe.deliver(e, { endpoint: signed(`${r.url}/webhooks/stripe`) }))));
    expect(statuses.every((s) => s === 200), String(statuses)).to.equal(true);
    await until(() => ours(bob.id).length === 1 && fx.stripe.customers.get(bob.id)!.balance === -2500, 10_000, 'Bob never credited');
    for (const r of [a, b]) await until(async () => (await decision(r, bob.id)).allow === true, 5000, 'a replica still blocks Bob');

    // Carol: the leader (a, started first) is killed after Stripe applied her credit; b takes over and confirms it.
    const carolSession = await buy(JSON.parse((await decision(a, carol.id)).body).top_up_url, '2500');
    fx.stripe.completeCheckoutSession(carolSession.id, 'pm_card_visa');
    const carolEvent = fx.stripe.events.find((e) => e.type === 'checkout.session.completed' && (e.data.object as { id: string }).id === carolSession.id)!;
    fx.stripe.holdAnswers(/\/balance_transactions$/, 'POST');
    void fx.stripe.deliver(carolEvent, { endpoint: signed(`${a.url}/webhooks/stripe`) }).catch(() => undefined);
    await until(() => ours(carol.id).length === 1, 5000, 'Stripe never applied the credit');
    await a.kill('SIGKILL');
    fx.stripe.holdAnswers(undefined);
    fx.stripe.forgetIdempotencyKeys();
    await until(async () => (await decision(b, carol.id)).allow === true, 20_000, 'b never recovered Carol\'s credit');
    expect(await fx.stripe.deliver(carolEvent, { endpoint: signed(`${b.url}/webhooks/stripe`) })).to.equal(200);
    expect(ours(carol.id), 'one credit for Carol').to.have.length(1);
    expect(ours(bob.id), 'one credit for Bob').to.have.length(1);
  });
});
