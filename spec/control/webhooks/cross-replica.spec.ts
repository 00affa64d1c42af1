// A webhook applied by one replica reaches the gateway nodes streaming from
// another (PostgreSQL, two replica processes): the node hears `changed` for the
// customer's consumers over GET /v1/stream long before the decision TTL could
// have run out, so it drops its cached allow at once. Written against the
// stream contract: the node streams from whichever replica serves streams,
// and the webhook goes to the other one.
import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startControlProcess, type ControlProcess } from '../../support/control-process';
import { freshDatabase } from '../../support/postgres';
import { until } from '../../support/until';
import { StripeEmulator } from '../../../testkit/stripe-emulator';

const ADMIN = 'admin-token-for-tests';
const WEBHOOK_SECRET = 'whsec_cross_replica';
const DECISION_TTL_MS = 60_000;

describe('replicas on PostgreSQL: a webhook applied by one replica reaches the nodes streaming from another', function () {
  this.timeout(120_000);
  let dir: string;
  let stripe: StripeEmulator;
  let replicas: ControlProcess[] = [];
  const stop = new AbortController();

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-xreplica-'));
    stripe = await new StripeEmulator().start();
    stripe.autoDeliver = false;
    const configFile = path.join(dir, 'payg.yml');
    fs.writeFileSync(configFile, JSON.stringify({
      listen: { port: 0 }, store: { postgres: {} }, stripe: { poll: '0 0 1 1 *' },
      decision_ttl_ms: DECISION_TTL_MS,
      cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
      rules: [{ id: 'block', cohort: 'no-credit', body: '{"error":"payment_required"}' }],
    }));
    const env = { STRIPE_SECRET_KEY: stripe.secretKey, STRIPE_API_BASE: stripe.url, STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET, PAYG_ADMIN_TOKEN: ADMIN, PAYG_DATABASE_URL: await freshDatabase() };
    // One at a time into the list, so after() kills whichever started even if the other did not. 30 s each: a loaded machine starts slowly.
    for (let i = 0; i < 2; i++) replicas.push(await startControlProcess(configFile, env, 30_000));
  });
  after(async () => {
    stop.abort();
    await Promise.all(replicas.map((r) => r.kill('SIGKILL')));
    await stripe.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const decision = async (r: ControlProcess, consumer: string) => (await fetch(`${r.url}/v1/decisions/${consumer}`)).json() as Promise<Record<string, any>>;

  it('the node streaming from replica B hears `changed` for the customer within seconds of the webhook answered 200 by replica A (decision TTL 60 s)', async () => {
    const c = stripe.create({ name: 'Ada', balance: -500, metadata: { kong_consumer: 'ada' } });
    expect((await fetch(`${replicas[0].url}/admin/sweep`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN}` } })).status).to.equal(200);
    for (const r of replicas) await until(async () => (await decision(r, 'ada')).allow === true, 15_000, 'a replica never saw the customer');

    // Stream from the first replica that serves a stream (today the leader; every replica once all stream).
    let stream: Response | undefined;
    let b: ControlProcess | undefined;
    await until(async () => {
      for (const r of replicas) {
        const res = await fetch(`${r.url}/v1/stream?node=gateway-1`, { signal: stop.signal });
        if (res.status === 200) { stream = res; b = r; return true; }
        await res.body?.cancel();
      }
      return false;
    }, 20_000, 'no replica serves GET /v1/stream');
    const a = replicas.find((r) => r !== b)!;
    let heard = '';
    void (async () => {
      const decoder = new TextDecoder();
      for await (const chunk of stream!.body as unknown as AsyncIterable<Uint8Array>) heard += decoder.decode(chunk);
    })().catch(() => undefined);
    await until(() => heard.includes('event: hello'), 10_000, 'the stream never said hello');

    // Credit used up in Stripe; the event is delivered to replica A only.
    stripe.addBalanceTransaction(c.id, 500);
    const event = stripe.events.filter((e) => e.type === 'customer.updated').at(-1)!;
    stripe.webhook = { url: `${a.url}/webhooks/stripe`, secret: WEBHOOK_SECRET };
    expect(await stripe.deliver(event)).to.equal(200);
    const answered = Date.now();
    expect((await decision(a, 'ada')).status, 'replica A applied it').to.equal(402);

    const changed = () => [...heard.matchAll(/event: changed\ndata: (.*)\n/g)].map((m) => JSON.parse(m[1]) as { consumers?: string[]; all?: boolean });
    // Generous for a loaded machine (15 s; under 1 s when quiet), and still a quarter of the 60 s TTL the node would otherwise serve its cached allow for.
    await until(() => changed().some((e) => e.all || (e.consumers?.includes('ada') ?? false)), DECISION_TTL_MS / 4,
      `the node streaming from replica B never heard of the change applied by replica A (heard: ${JSON.stringify(heard)})`);
    const elapsed = Date.now() - answered;
    expect(elapsed, 'well before the decision TTL').to.be.lessThan(DECISION_TTL_MS / 4);
    expect((await decision(b!, 'ada')).status, 'replica B answers the new decision too').to.equal(402);
  });
});
