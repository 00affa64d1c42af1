// The lease and usage APIs attacked as a buggy or hostile caller holding the
// control token would: nothing it sends may free credit that was not spent, take
// another node's lease, or crash the service. Driven over HTTP against the real
// service and the Stripe emulator.
import { expect } from 'chai';
import { randomUUID } from 'node:crypto';
import type { RunningService } from '../../../control-service/src/service';
import type { StripeEmulator } from '../../../testkit/stripe-emulator';
import { serviceFixture } from '../../support/fixture';
import { freshDatabase } from '../../support/postgres';

describe('lease API under attack: no credit is ever created', function () {
  this.timeout(20_000);
  const fx = serviceFixture({ prefix: 'payg-lease-attacks-', autoDeliver: true });
  let stripe: StripeEmulator;
  let svc: RunningService;
  beforeEach(() => { stripe = fx.stripe; });

  async function start(): Promise<void> {
    svc = await fx.start({ metering: { default_cost: 1, settle: { schedule: undefined, enabled: false } } });
    await svc.sync!.sweep();
  }

  async function post(route: string, body: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
    const r = await fx.control(route, { method: 'POST', body: JSON.stringify(body) });
    return { status: r.status, json: r.body as Record<string, unknown> };
  }
  async function lease(node: string, consumer: string, want = 1): Promise<{ id: string; requests: number } | undefined> {
    const r = await post('/v1/leases', { node, consumer, want });
    expect(r.status).to.equal(200);
    return r.json.lease as { id: string; requests: number } | undefined;
  }
  const usage = (events: Array<{ id?: string; consumer: string; lease?: string }>) =>
    post('/v1/usage', { events: events.map((e) => ({ id: e.id ?? randomUUID(), at: new Date().toISOString(), route: 'orders', status: 200, ...e })) });

  it('usage naming another customer\'s lease: that customer still gets no more than its credit', async () => {
    const alice = stripe.create({ balance: -10 });
    const mallory = stripe.create({ balance: -1000 });
    await start();
    const held = await lease('n1', alice.id, 10);
    expect(held?.requests).to.equal(10);
    // Mallory's node reports ten of her own requests as drawn from Alice's lease.
    const r = await usage(Array.from({ length: 10 }, () => ({ consumer: mallory.id, lease: held!.id })));
    expect(r.json.accepted).to.equal(10);
    expect(await lease('n2', alice.id), 'Alice\'s credit is all leased to n1').to.equal(undefined);
  });

  it('a usage id sent again naming a second lease frees nothing of that lease', async () => {
    const alice = stripe.create({ balance: -10 });
    await start();
    const l1 = await lease('n1', alice.id, 5);
    const l2 = await lease('n2', alice.id, 5);
    expect([l1?.requests, l2?.requests]).to.deep.equal([5, 5]);
    const id = randomUUID();
    expect((await usage([{ id, consumer: alice.id, lease: l1!.id }])).json.accepted).to.equal(1);
    // The same event again, now naming n2's lease: a duplicate, already counted once.
    expect((await usage([{ id, consumer: alice.id, lease: l2!.id }])).json.duplicates).to.equal(1);
    // 10 of credit = 1 spent + 4 still on n1 + 5 on n2: nothing free.
    expect(await lease('n3', alice.id)).to.equal(undefined);
  });

  it('a made-up lease id, and usage for an unknown consumer naming a real lease: accepted, nothing freed, no crash', async () => {
    const alice = stripe.create({ balance: -10 });
    await start();
    const held = await lease('n1', alice.id, 10);
    const r = await usage([
      { consumer: alice.id, lease: 'l-made-up' },
      { consumer: 'nobody-at-all', lease: held!.id },
      { consumer: alice.id, lease: 'x'.repeat(128) },
    ]);
    expect(r.status).to.equal(200);
    // Alice: 10 of credit, 2 spent, 10 still leased to n1 → nothing free (the reservation stays until n1 says what it drew).
    expect(await lease('n2', alice.id)).to.equal(undefined);
    expect((await fetch(`${svc.url}/health`)).status).to.equal(200);
  });

  it('another node cannot give back (or shrink) a lease it does not hold', async () => {
    const alice = stripe.create({ balance: -10 });
    await start();
    const held = await lease('n1', alice.id, 10);
    expect((await post('/v1/leases/release', { node: 'n2', leases: [{ id: held!.id, drawn: 0 }] })).json).to.deep.equal({ released: 0 });
    // Nor as the `previous` of its own lease request.
    expect(await lease('n2', alice.id)).to.equal(undefined);
    const r = await post('/v1/leases', { node: 'n2', consumer: alice.id, previous: { id: held!.id, drawn: 0 } });
    expect(r.json.lease).to.equal(undefined);
    // The holder can, and its undrawn credit comes back.
    expect((await post('/v1/leases/release', { node: 'n1', leases: [{ id: held!.id, drawn: 3 }] })).json).to.deep.equal({ released: 1 });
    expect((await post('/v1/leases/release', { node: 'n1', leases: [{ id: held!.id, drawn: 0 }] })).json, 'closed once').to.deep.equal({ released: 0 });
    expect((await lease('n2', alice.id, 100))?.requests).to.equal(7);
  });

  it('negative, fractional or huge want and drawn get 400 naming the field; nothing is reserved', async () => {
    const alice = stripe.create({ balance: -10 });
    await start();
    const cases: Array<[unknown, RegExp]> = [
      [{ node: 'n1', consumer: alice.id, want: -1 }, /^want: /],
      [{ node: 'n1', consumer: alice.id, want: 0 }, /^want: /],
      [{ node: 'n1', consumer: alice.id, want: 1.5 }, /^want: /],
      [{ node: 'n1', consumer: alice.id, want: 1e12 }, /^want: /],
      [{ node: 'n1', consumer: alice.id, want: '3' }, /^want: /],
      [{ node: 'n1', consumer: alice.id, previous: { id: 'l1', drawn: -5 } }, /^previous\.drawn: /],
      [{ node: 'n1', consumer: alice.id, previous: { id: 'l1', drawn: 1e400 } }, /^previous\.drawn: /],
      [{ node: '', consumer: alice.id }, /^node: /],
      [{ node: 'n\u00001', consumer: alice.id }, /^node: must not contain NUL/],
      [{ node: 'n1', consumer: `${alice.id}\u0000` }, /^consumer: must not contain NUL/],
      [{ consumer: alice.id }, /^node: /],
    ];
    for (const [body, message] of cases) {
      const r = await post('/v1/leases', body);
      expect(r.status, JSON.stringify(body)).to.equal(400);
      expect(String(r.json.message), JSON.stringify(body)).to.match(message);
    }
    const bad = await post('/v1/leases/release', { node: 'n1', leases: [{ id: 'l1', drawn: -1 }] });
    expect([bad.status, bad.json.message]).to.deep.equal([400, 'leases[0].drawn: Number must be greater than or equal to 0']);
    expect((await lease('n1', alice.id, 100))?.requests, 'all 10 still free').to.equal(10);
  });

  it('a huge drawn counts as what the lease held, no more', async () => {
    const alice = stripe.create({ balance: -10 });
    await start();
    const held = await lease('n1', alice.id, 4);
    expect(held?.requests).to.equal(5); // half of the free credit
    expect((await post('/v1/leases/release', { node: 'n1', leases: [{ id: held!.id, drawn: Number.MAX_SAFE_INTEGER }] })).json).to.deep.equal({ released: 1 });
    expect((await lease('n2', alice.id, 100))?.requests, 'all 5 drawn, unreported, still reserved').to.equal(5);
  });
});

describe('lease API under attack on PostgreSQL', function () {
  this.timeout(60_000);
  const fx = serviceFixture({ prefix: 'payg-lease-attacks-pg-', autoDeliver: true });

  it('a release with a drawn count past 2^31 closes its lease (clamped) and does not fail the other nodes\' releases gathered with it', async () => {
    const url = await freshDatabase();
    const alice = fx.stripe.create({ balance: -60 });
    const svc = await fx.start({ store: { sqlite: undefined, postgres: {} }, metering: { default_cost: 1, settle: { schedule: undefined, enabled: false } } },
      { env: fx.env({ PAYG_DATABASE_URL: url }) });
    await svc.sync!.sweep();
    const post = async (route: string, body: unknown) => { const r = await fx.control(route, { method: 'POST', body: JSON.stringify(body) }); return { status: r.status, json: r.body as Record<string, any> }; };
    const nodes = ['m0', 'm1', 'm2', 'm3', 'm4', 'm5'];
    const leases = await Promise.all(nodes.map(async (node) => (await post('/v1/leases', { node, consumer: alice.id, want: 1 })).json.lease as { id: string }));
    const answers = await Promise.all(nodes.map((node, i) => post('/v1/leases/release', { node, leases: [{ id: leases[i].id, drawn: i === 0 ? 3_000_000_000 : 0 }] })));
    expect(answers.map((a) => [a.status, a.json.released])).to.deep.equal(nodes.map(() => [200, 1]));
  });
});
