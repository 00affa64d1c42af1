// Invariants of the pure ledger (control-service/src/ledger.ts), checked over
// random histories from a seeded generator. The seed is printed; replay a
// failure with PAYG_TEST_SEED=<seed>.
//
// The model: Stripe holds a list of balance transactions (a snapshot k is the
// first k of them). Our reads are stamped when they start and served later
// (capturing the snapshot of that moment; Stripe serves reads in the order
// they started), then delivered in any order, possibly twice. A settlement's
// own answer carries the ending_balance of its transaction; it may be lost,
// late or replayed. Whatever the order, the ledger's balance must be some
// snapshot's balance, and its unsettled usage exactly the usage that snapshot
// does not contain: never counted twice, never skipped.
import { expect } from 'chai';
import { addUsage, applyRead, estimatedBalance, openLedger, openSettlement, type BalanceRead, type LedgerState, type PendingSettlement } from '../../../control-service/src/ledger';

const M = 1_000_000;

function seeded(seed: number): () => number {
  let s = seed >>> 0;
  return () => { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; return s / 2 ** 32; };
}
const SEED = Number(process.env.PAYG_TEST_SEED ?? Date.now() % 1_000_000);

interface Txn { endingBalance: number; amount: number; settlementId?: number }
interface Inflight { id: number; kind: 'plain' | 'reconciled'; startedAt: number; snapshot?: number }
interface Answer { settlementId: number; stripeRef: string; endingBalance: number; snapshot: number }

/** One customer: Stripe's side, our ledger, and what is in flight between them. */
class World {
  clock = 100;
  readonly txns: Txn[] = [];
  usageMicros = 0;
  chargedUnits = 0;
  nextSettlement = 1;
  /** Opened and not yet applied by Stripe: the settlement pass sends it (again) until answered. */
  open: { id: number; amount: number } | undefined;
  lastOpened: PendingSettlement | undefined;
  /** Applied by Stripe; answers that may still be delivered (first or replayed). */
  readonly answers: Answer[] = [];
  readonly inflight: Inflight[] = [];
  nextRead = 1;
  state: LedgerState;
  /** Which Stripe snapshot the held balance is. */
  held: number;
  readonly log: string[] = [];

  constructor(readonly random: () => number, initial: number) {
    if (initial !== 0) this.txns.push({ endingBalance: initial, amount: initial });
    this.held = this.txns.length;
    this.state = openLedger(this.balanceAt(this.held), this.stamp());
  }

  stamp(): number { return ++this.clock; }
  balanceAt(k: number): number { return k === 0 ? 0 : this.txns[k - 1].endingBalance; }
  settledIn(k: number): number { return this.txns.slice(0, k).reduce((sum, t) => sum + (t.settlementId ? t.amount : 0), 0); }
  appliedIn(k: number): Map<number, string> {
    return new Map(this.txns.slice(0, k).flatMap((t, i) => (t.settlementId ? [[t.settlementId, `cbtxn_${i}`] as [number, string]] : [])));
  }
  stripeBalance(): number { return this.balanceAt(this.txns.length); }
  /** What the estimate must be once every read is in: Stripe's balance plus the usage Stripe has not been charged. */
  trueEstimateMicros(): number { return this.stripeBalance() * M + this.usageMicros - this.settledIn(this.txns.length) * M; }
  estimateMicros(): number { return this.state.balance * M + this.state.unsettledMicros; }
  pick<T>(xs: readonly T[]): T { return xs[Math.floor(this.random() * xs.length)]; }

  apply(read: BalanceRead, snapshot: number): void {
    const out = applyRead(this.state, read);
    this.log.push(`${read.kind}${'settlementId' in read ? ` #${read.settlementId}` : ''} @${snapshot} → ${out.kind}`);
    if (out.kind === 'applied') {
      this.state = out.state;
      this.held = snapshot;
    } else if (out.kind === 'needs_reconcile') {
      // What sync.ts does: read the balance transactions instead.
      this.inflight.push({ id: this.nextRead++, kind: 'reconciled', startedAt: this.stamp() });
    }
    this.check();
  }

  /** The held balance is one snapshot's, and unsettled usage is exactly what that snapshot lacks. */
  check(): void {
    expect(this.state.balance, `balance is snapshot ${this.held}'s`).to.equal(this.balanceAt(this.held));
    expect(this.state.unsettledMicros, `unsettled usage against snapshot ${this.held}`).to.equal(this.usageMicros - this.settledIn(this.held) * M);
  }

  step(): void {
    const r = this.random();
    if (r < 0.15) {
      const micros = Math.floor(this.random() * 3 * M);
      this.usageMicros += micros;
      this.state = addUsage(this.state, micros);
      this.log.push(`usage ${micros}`);
      this.check();
    } else if (r < 0.25) {
      // Settlement pass: opens one per customer when none is in flight (as store.openSettlements does).
      const amount = Math.floor(this.usageMicros / M) - this.chargedUnits;
      if (this.open || this.state.pending.length || amount < 1) return;
      this.open = { id: this.nextSettlement++, amount };
      this.chargedUnits += amount;
      this.lastOpened = { id: this.open.id, amount, mode: 'balance_transactions', createdAt: this.clock };
      this.state = openSettlement(this.state, this.lastOpened);
      this.log.push(`open #${this.open.id} ${amount}`);
    } else if (r < 0.35) {
      // Stripe applies the settlement (a send, or a resend after a lost answer).
      if (!this.open) return;
      const t: Txn = { amount: this.open.amount, endingBalance: this.stripeBalance() + this.open.amount, settlementId: this.open.id };
      this.txns.push(t);
      this.answers.push({ settlementId: this.open.id, stripeRef: `cbtxn_${this.txns.length - 1}`, endingBalance: t.endingBalance, snapshot: this.txns.length });
      this.log.push(`stripe applies #${this.open.id}`);
      this.open = undefined;
    } else if (r < 0.45) {
      // A settlement's answer arrives (first time, late, or replayed from the idempotency store); or is lost.
      if (!this.answers.length) return;
      const a = this.pick(this.answers);
      if (this.random() < 0.3) return; // lost this time
      this.apply({ kind: 'confirmation', settlementId: a.settlementId, stripeRef: a.stripeRef, endingBalance: a.endingBalance, heardAt: this.stamp() }, a.snapshot);
    } else if (r < 0.48) {
      // A settlement pass read its pending rows just before a reconciled read confirmed one: it opens it again.
      if (!this.lastOpened) return;
      this.state = openSettlement(this.state, this.lastOpened);
      this.log.push(`re-open #${this.lastOpened.id}`);
    } else if (r < 0.52) {
      const amount = -Math.ceil(this.random() * 1000);
      this.txns.push({ amount, endingBalance: this.stripeBalance() + amount });
      this.log.push(`top-up ${amount}`);
    } else if (r < 0.65) {
      // A webhook re-read or a sweep page starts.
      this.inflight.push({ id: this.nextRead++, kind: 'plain', startedAt: this.stamp() });
    } else if (r < 0.75) {
      this.serveOldest();
    } else {
      this.deliverAny();
    }
  }

  /** Stripe serves the oldest unserved read: it sees every transaction made so far. */
  serveOldest(): void {
    const next = this.inflight.find((f) => f.snapshot === undefined);
    if (next) next.snapshot = this.txns.length;
  }

  /** A served read arrives; sometimes it stays in flight to arrive again (a duplicate). */
  deliverAny(): void {
    const served = this.inflight.filter((f) => f.snapshot !== undefined);
    if (!served.length) return;
    const f = this.pick(served);
    if (this.random() < 0.8) this.inflight.splice(this.inflight.indexOf(f), 1);
    this.deliver(f);
  }

  deliver(f: Inflight): void {
    const k = f.snapshot!;
    const read: BalanceRead = f.kind === 'plain'
      ? { kind: 'plain', balance: this.balanceAt(k), startedAt: f.startedAt }
      : { kind: 'reconciled', balance: this.balanceAt(k), startedAt: f.startedAt, applied: this.appliedIn(k) };
    this.apply(read, k);
  }

  /** Everything in flight arrives, then one fresh read: the estimate must then be exact. */
  settle(): void {
    for (;;) {
      while (this.inflight.some((f) => f.snapshot === undefined)) this.serveOldest();
      const f = this.inflight.shift();
      if (!f) break;
      this.deliver(f);
    }
    this.inflight.push({ id: this.nextRead++, kind: 'plain', startedAt: this.stamp() });
    while (this.inflight.length) {
      this.serveOldest();
      this.deliver(this.inflight.shift()!);
    }
  }
}

/** The failure with `note` added to its message (chai's errors keep theirs apart). */
function annotated(err: unknown, note: string): Error {
  const e = err as Error & { actual?: unknown; expected?: unknown; showDiff?: boolean };
  const out = Object.assign(new Error(`${e.message}\n  ${note}`), { actual: e.actual, expected: e.expected, showDiff: false });
  out.stack = `${out.message}\n${(e.stack ?? '').split('\n').slice(1).join('\n')}`;
  return out;
}

function history(seed: number, steps: number): World {
  const random = seeded(seed);
  const w = new World(random, -Math.floor(random() * 5000));
  try {
    for (let i = 0; i < steps; i++) w.step();
  } catch (err) {
    throw annotated(err, `history: ${w.log.join('; ')}`);
  }
  return w;
}

/** Runs `body` for `runs` histories, naming the seed and the history of the one that fails. */
function forSeeds(runs: number, body: (seed: number) => void): void {
  for (let i = 0; i < runs; i++) {
    const seed = SEED + i;
    try {
      body(seed);
    } catch (err) {
      throw annotated(err, `replay with PAYG_TEST_SEED=${seed} (this run started at ${SEED})`);
    }
  }
}

describe('the ledger (pure), over random histories', () => {
  before(() => console.log(`    ledger invariants: seed ${SEED} (replay with PAYG_TEST_SEED=${SEED})`));

  it('the estimated balance is Stripe balance + unsettled usage, never counting a settled amount twice nor skipping it, however usage, settlements, lost/replayed answers, reads and top-ups interleave', () => {
    forSeeds(300, (seed) => {
      const w = history(seed, 120);
      try {
        w.settle();
        expect(w.state.pending.map((p) => p.id), 'only what Stripe has not applied is in flight').to.deep.equal(w.open ? [w.open.id] : []);
        expect(w.estimateMicros(), 'estimate once every read is in').to.equal(w.trueEstimateMicros());
        expect(estimatedBalance(w.state) * M).to.be.closeTo(w.trueEstimateMicros(), 1e-3);
      } catch (err) {
        throw annotated(err, `history: ${w.log.join('; ')}`);
      }
    });
  });

  it('applying the same read twice ends where applying it once does', () => {
    forSeeds(300, (seed) => {
      const w = history(seed, 80);
      const random = seeded(seed ^ 0x5bd1e995);
      const k = Math.floor(random() * (w.txns.length + 1));
      const reads: BalanceRead[] = [
        { kind: 'plain', balance: w.balanceAt(k), startedAt: w.stamp() },
        { kind: 'reconciled', balance: w.balanceAt(k), startedAt: w.stamp(), applied: w.appliedIn(k) },
        { kind: 'reconciled', balance: w.balanceAt(w.txns.length), startedAt: w.state.asOf - 1, applied: w.appliedIn(w.txns.length) },
        ...w.answers.map((a): BalanceRead => ({ kind: 'confirmation', settlementId: a.settlementId, stripeRef: a.stripeRef, endingBalance: a.endingBalance, heardAt: w.stamp() })),
      ];
      for (const read of reads) {
        const once = applyRead(w.state, read);
        const after = once.kind === 'applied' ? once.state : w.state;
        const twice = applyRead(after, read);
        const end = twice.kind === 'applied' ? twice.state : after;
        expect(end, `${read.kind} applied twice (seed ${seed})`).to.deep.equal(after);
      }
    });
  });

  it('a confirmation before or after the reconciled read that contains it ends in the same estimate', () => {
    forSeeds(300, (seed) => {
      const random = seeded(seed);
      const usage = Math.floor(random() * 500 * M);
      const amount = Math.max(1, Math.floor(usage / M));
      let s = addUsage(openLedger(-10_000, 10), usage);
      s = openSettlement(s, { id: 7, amount, mode: 'balance_transactions', createdAt: 10 });
      // Stripe: maybe a top-up before, the settlement, maybe top-ups after; the reconciled read sees all of it.
      let balance = -10_000;
      if (random() < 0.5) balance -= Math.ceil(random() * 1000);
      balance += amount;
      const ending = balance;
      if (random() < 0.5) balance -= Math.ceil(random() * 1000);
      // Stamps: the read may start before or after the answer is heard.
      const readAt = 20 + Math.floor(random() * 20);
      const heardAt = 20 + Math.floor(random() * 20);
      const confirmation: BalanceRead = { kind: 'confirmation', settlementId: 7, stripeRef: 'cbtxn_7', endingBalance: ending, heardAt };
      const reconciled: BalanceRead = { kind: 'reconciled', balance, startedAt: readAt, applied: new Map([[7, 'cbtxn_7']]) };
      const run = (first: BalanceRead, second: BalanceRead) => {
        let t = s;
        for (const r of [first, second]) { const o = applyRead(t, r); if (o.kind === 'applied') t = o.state; }
        return t;
      };
      const a = run(confirmation, reconciled);
      const b = run(reconciled, confirmation);
      expect(estimatedBalance(a), `confirmation first (seed ${seed})`).to.equal(balance + (usage - amount * M) / M);
      expect(estimatedBalance(b), `reconciled read first (seed ${seed})`).to.equal(estimatedBalance(a));
      expect(a.pending).to.deep.equal([]);
      expect(b.pending).to.deep.equal([]);
    });
  });

  it('reads applied in any order end at the newest', () => {
    forSeeds(300, (seed) => {
      const random = seeded(seed);
      // Stripe's balance moves; reads start in order and each sees the balance of its start.
      const reads: BalanceRead[] = [];
      let balance = -5000;
      for (let i = 0, n = 2 + Math.floor(random() * 8); i < n; i++) {
        balance -= Math.floor(random() * 300) - 100;
        const startedAt = 100 + i * 10;
        reads.push(random() < 0.5 ? { kind: 'plain', balance, startedAt } : { kind: 'reconciled', balance, startedAt, applied: new Map() });
      }
      const newest = reads[reads.length - 1];
      for (let i = reads.length - 1; i > 0; i--) {
        const j = Math.floor(random() * (i + 1));
        [reads[i], reads[j]] = [reads[j], reads[i]];
      }
      let s = addUsage(openLedger(-5000, 50), 3 * M);
      for (const r of reads) { const o = applyRead(s, r); if (o.kind === 'applied') s = o.state; }
      expect(s.balance, `order ${reads.map((r) => (r as { startedAt: number }).startedAt).join(',')} (seed ${seed})`).to.equal((newest as { balance: number }).balance);
      expect(s.unsettledMicros).to.equal(3 * M);
    });
  });
});
