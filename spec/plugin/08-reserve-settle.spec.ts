// Reserve-then-settle under concurrency is exact on one node (issue 15, point 2).
// A simulated control service counts actual costs as batches arrive; one node
// serves many concurrent variable-cost requests with CreditReservations, while
// decision calls, request completions and usage batches interleave at random
// (a decision answered before a batch may arrive after it). The node never
// gets the service to charge more than the credit, and refuses only what the
// credit cannot cover at max_cost.
import { expect } from 'chai';
import { CreditReservations } from '../../plugin/src/reservations';

/** Deterministic PRNG (mulberry32), so a failure names its seed. */
function rng(seed: number): () => number {
  let t = seed >>> 0;
  return () => {
    t = (t + 0x6d2b79f5) >>> 0;
    let x = Math.imul(t ^ (t >>> 15), 1 | t);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

const C = 'cus_1';

function run(seed: number, creditMicros: number, maxCost: number) {
  const random = rng(seed);
  const node = new CreditReservations();
  let charged = 0; // what the service has counted
  const inFlight: Array<{ reserved: number; actual: number }> = []; // allowed, running upstream
  const queued: Array<{ reserved: number; actual: number }> = []; // logged, usage not yet sent
  const sending: Array<Array<{ reserved: number; actual: number }>> = []; // batches the service counted, answer not yet back
  const fetches: Array<{ ticket: number; credit: number | undefined }> = []; // decision calls under way
  let served = 0;
  let refusedWhileAffordable = 0;
  for (let step = 0; step < 3000; step++) {
    const r = random();
    if (r < 0.35) {
      // A request arrives (many at once: nothing waits for the ones before).
      if (node.reserve(C, maxCost)) {
        served++;
        inFlight.push({ reserved: maxCost, actual: Math.floor(random() * (maxCost + 1)) });
      } else if (fetches.length === 0) {
        fetches.push({ ticket: node.beginGrant(C), credit: undefined });
      }
    } else if (r < 0.55 && inFlight.length) {
      queued.push(inFlight.splice(Math.floor(random() * inFlight.length), 1)[0]); // log phase
    } else if (r < 0.65 && queued.length) {
      const batch = queued.splice(0, 1 + Math.floor(random() * queued.length));
      for (const e of batch) charged += e.actual; // the service stores and counts it
      sending.push(batch);
    } else if (r < 0.75 && sending.length) {
      for (const e of sending.shift()!) node.settle(C, e.reserved); // its 200 reaches the node
    } else if (r < 0.85 && fetches.length && fetches[0].credit === undefined) {
      fetches[0].credit = creditMicros - charged; // the service answers now...
    } else if (r < 0.95 && fetches.length && fetches[0].credit !== undefined) {
      const f = fetches.shift()!; // ...and the answer arrives later
      node.grant(C, Math.max(0, f.credit!), f.ticket);
    }
    // Checked each step (plain compare: chai per step is slow). The worst case, every running or
    // queued request at max_cost, must fit too.
    if (charged > creditMicros) throw new Error(`seed ${seed}, step ${step}: charged ${charged} beyond the credit ${creditMicros}`);
    if (charged + (inFlight.length + queued.length) * maxCost > creditMicros) throw new Error(`seed ${seed}, step ${step}: reserved beyond the credit`);
  }
  // Drain: everything finishes and is counted, then one fresh grant.
  for (const e of inFlight.splice(0)) queued.push(e);
  for (const e of queued.splice(0)) { charged += e.actual; node.settle(C, e.reserved); }
  for (const b of sending.splice(0)) for (const e of b) node.settle(C, e.reserved);
  node.grant(C, creditMicros - charged, node.beginGrant(C));
  const left = creditMicros - charged;
  if (left >= maxCost && !node.reserve(C, maxCost)) refusedWhileAffordable++;
  return { served, charged, left, refusedWhileAffordable, node };
}

describe('reserve-then-settle (CreditReservations)', () => {
  it('under concurrency is exact on one node: never charges past the credit, over 100 random interleavings', () => {
    let servedTotal = 0;
    for (let seed = 1; seed <= 100; seed++) {
      const result = run(seed, 5_000_000 + seed * 1000, 250_000);
      expect(result.refusedWhileAffordable, `seed ${seed}: refused though the credit covers max_cost`).to.equal(0);
      servedTotal += result.served;
    }
    expect(servedTotal, 'the runs did serve requests').to.be.above(100 * 15);
  });

  it('a request the remaining credit cannot cover at its max_cost is refused; the unused part returns with the next grant', () => {
    const node = new CreditReservations();
    expect(node.reserve(C, 1), 'no grant yet').to.equal(false);
    node.grant(C, 100, node.beginGrant(C));
    expect(node.reserve(C, 60)).to.equal(true);
    expect(node.reserve(C, 60), '40 left cannot cover 60').to.equal(false);
    expect(node.remaining(C)).to.equal(40);
    // The request cost 10 of its 60; the service counted it and answers 90.
    const ticket = node.beginGrant(C);
    node.settle(C, 60);
    node.grant(C, 90, ticket);
    expect(node.remaining(C), 'settled during the call: taken off again, to be safe').to.equal(30);
    node.grant(C, 90, node.beginGrant(C));
    expect(node.remaining(C), 'a grant after it: the 50 unused came back').to.equal(90);
    node.revoke(C);
    expect(node.reserve(C, 1), 'after a block').to.equal(false);
  });
});
