// The lease book alone (pure): whatever nodes ask, draw, report and give back, in
// any order, the credit reserved plus the usage counted never exceeds the credit.
import { expect } from 'chai';
import { LeaseBook, type Lease } from '../../../control-service/src/leases';

/** mulberry32: a small seeded PRNG, so a failing sequence can be replayed. */
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const OPTS = { ttlMs: 1000, usageGraceMs: 500, initialRequests: 4, maxRequests: 64 };
const COST = 1_000_000; // one cent a request

describe('lease book (pure)', () => {
  it('grants only free credit: a customer with 10 requests of credit gets at most 10 over any number of nodes', () => {
    const book = new LeaseBook(OPTS);
    let granted = 0;
    for (let i = 0; i < 50; i++) {
      const o = book.grant({ customerId: 'c', consumer: 'c', node: `n${i % 4}`, creditMicros: 10 * COST, costMicros: COST, want: 3, now: 0 });
      if (o.kind === 'GRANTED') granted += o.lease.requests;
    }
    expect(granted).to.equal(10);
    expect(book.reservedMicros('c', 0)).to.equal(10 * COST);
  });

  it('an expired lease gives its credit back after ttl + usage grace, not before', () => {
    const book = new LeaseBook(OPTS);
    const o = book.grant({ customerId: 'c', consumer: 'c', node: 'dead', creditMicros: 10 * COST, costMicros: COST, want: 10, now: 0 });
    expect(o.kind).to.equal('GRANTED');
    expect(book.reservedMicros('c', 1499)).to.equal(10 * COST);
    expect(book.reservedMicros('c', 1500)).to.equal(0);
    expect(book.expire(1500), 'noticed by the read above, reported once').to.deep.equal(['c']);
    expect(book.expire(1600)).to.deep.equal([]);
  });

  it('closing returns what was not drawn; usage events settle what was, each event once', () => {
    const book = new LeaseBook(OPTS);
    const o = book.grant({ customerId: 'c', consumer: 'c', node: 'a', creditMicros: 10 * COST, costMicros: COST, want: 8, now: 0 });
    const lease = (o as { lease: Lease }).lease;
    expect(lease.requests).to.equal(8);
    expect(book.close('b', lease.id, 0, 1), 'only the holder closes it').to.equal(undefined);
    expect(book.close('a', lease.id, 3, 1)).to.equal('c');
    expect(book.reservedMicros('c', 1)).to.equal(3 * COST);
    expect(book.settle(lease.id, 'e1', 2)).to.equal(true);
    expect(book.settle(lease.id, 'e1', 2), 'a resent event').to.equal(false);
    expect(book.reservedMicros('c', 2)).to.equal(2 * COST);
    book.settle(lease.id, 'e2', 3);
    book.settle(lease.id, 'e3', 3);
    expect(book.reservedMicros('c', 3)).to.equal(0);
    expect(book.size).to.equal(0);
  });

  it('lease size adapts: doubles while leases run out fast, never above half the free credit unless requests wait for it', () => {
    const book = new LeaseBook(OPTS);
    const sizes: number[] = [];
    let now = 0;
    for (let i = 0; i < 6; i++) {
      const o = book.grant({ customerId: 'c', consumer: 'c', node: 'a', creditMicros: 1000 * COST, costMicros: COST, want: 1, now });
      const l = (o as { lease: Lease }).lease;
      sizes.push(l.requests);
      book.close('a', l.id, l.requests, now + 10);
      for (let k = 0; k < l.requests; k++) book.settle(l.id, `e${i}-${k}`, now + 10);
      now += 20;
    }
    expect(sizes).to.deep.equal([4, 8, 16, 32, 64, 64]);
    const near = book.grant({ customerId: 'd', consumer: 'd', node: 'a', creditMicros: 5 * COST, costMicros: COST, want: 1, now });
    expect((near as { lease: Lease }).lease.requests, 'half of 5, rounded up').to.equal(3);
    const burst = book.grant({ customerId: 'e', consumer: 'e', node: 'a', creditMicros: 5 * COST, costMicros: COST, want: 200, now });
    expect((burst as { lease: Lease }).lease.requests, 'all 5 for 200 waiting').to.equal(5);
  });

  for (const seed of [1, 2, 3, 42, 1234, 99991]) {
    it(`sum of what may still be served and what was served never exceeds the credit (random interleaving, seed ${seed})`, () => {
      const rand = prng(seed);
      const book = new LeaseBook(OPTS);
      const creditRequests = 50 + Math.floor(rand() * 200);
      let usedMicros = 0; // unsettled usage the service counted
      let served = 0;
      let now = 0;
      let eventSeq = 0;
      // What each node holds: open leases with what it drew, and usage events not yet delivered.
      const nodes = ['a', 'b', 'c', 'd'].map((name) => ({ name, leases: [] as Array<{ lease: Lease; drawn: number; closed: boolean }>, queue: [] as Array<{ id: string; lease: string; cost: number; at: number }> }));
      const deliver = (e: { id: string; lease: string; cost: number }) => {
        usedMicros += e.cost;
        book.settle(e.lease, e.id, now);
        if (rand() < 0.2) book.settle(e.lease, e.id, now); // a resent batch
      };
      for (let step = 0; step < 3000; step++) {
        now += Math.floor(rand() * 20);
        // The bound the book relies on (docs/control-service.md, Exact credit on every node: Bounds): a live node's usage arrives within usage_grace_ms.
        for (const n of nodes) while (n.queue.length && n.queue[0].at <= now - OPTS.usageGraceMs + 20) deliver(n.queue.shift()!);
        const node = nodes[Math.floor(rand() * nodes.length)];
        const r = rand();
        if (r < 0.35) {
          const credit = creditRequests * COST - usedMicros;
          const o = book.grant({ customerId: 'c', consumer: 'c', node: node.name, creditMicros: credit, costMicros: COST, want: 1 + Math.floor(rand() * 5), now });
          if (o.kind === 'GRANTED') node.leases.push({ lease: o.lease, drawn: 0, closed: false });
        } else if (r < 0.7) {
          // Draw: only on an open lease within its ttl, as the plugin does.
          const l = node.leases.find((x) => !x.closed && x.drawn < x.lease.requests && now < x.lease.expiresAt);
          if (l) {
            l.drawn++;
            served++;
            // Real cost is at most the dearest price.
            node.queue.push({ id: `e${++eventSeq}`, lease: l.lease.id, cost: rand() < 0.5 ? COST : COST / 4, at: now });
          }
        } else if (r < 0.85) {
          // Deliver some usage (maybe a resent batch, maybe out of order).
          const n = Math.floor(rand() * 4);
          for (const e of node.queue.splice(0, n)) deliver(e);
        } else if (r < 0.95) {
          const l = node.leases.find((x) => !x.closed);
          if (l) { l.closed = true; book.close(node.name, l.lease.id, l.drawn, now); }
        } else if (r < 0.97) {
          // The node dies: its leases and queued usage are gone.
          node.leases = [];
          node.queue = [];
        } else {
          book.expire(now);
        }
        // The invariant, seen from outside: what the service counts (used) plus what it
        // reserves never exceeds the credit, and nothing was served beyond it.
        const inFlight = nodes.reduce((s, n) => s + n.queue.reduce((q, e) => q + e.cost, 0), 0);
        expect(usedMicros + inFlight, `served beyond credit at step ${step}`).to.be.at.most(creditRequests * COST);
        expect(usedMicros + book.reservedMicros('c', now), `reserved beyond credit at step ${step}`).to.be.at.most(creditRequests * COST);
      }
      expect(served).to.be.greaterThan(0);
    });
  }
});
