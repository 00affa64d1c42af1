// What the credit header shows, per consumer, on this node. Pure bookkeeping (no I/O).
//
// A lease carries `credit`: the service's estimate of the customer's credit when it granted
// the lease (Stripe balance and counted usage, before any reservation). This node also knows
// what it reserved itself since, and which of those reservations the service had counted when
// it answered. So, in micros:
//
//   estimate = credit of the latest grant − (this node's reservations the service had not
//              counted when that grant's call was sent)
//            = (credit + settled before the call) − drawn so far
//
// where `drawn` sums the reservations of this node's reported requests and `settled` those
// whose usage events left the queue for good (taken by the service, or dropped: either way the
// service's estimate will never count them later). The shown value is the running minimum of
// the estimate: a renewal whose estimate is higher (the real costs were below the reservations,
// or usage the node held was counted) does not raise it. It rises only when a grant's credit is
// above the previous grant's, which only credit added to the customer's balance can do (a
// top-up, a refund credited): then by exactly that difference.

const MICROS_PER_UNIT = 1_000_000;

interface State {
  /** Reservations (micros) of this node's reported requests, ever. */
  drawn: number;
  /** Of those, the ones whose usage left the queue for good. */
  settled: number;
  /** credit of the latest grant + `settled` when its call was sent; undefined before any. */
  base: number | undefined;
  /** credit (micros) of the latest grant. */
  lastCredit: number | undefined;
  /** The last value shown (micros); the next never exceeds it except by a credit rise. */
  shown: number | undefined;
}

export class CreditBook {
  private readonly states = new Map<string, State>();
  /** Usage events whose reservation counts in `drawn` (events of a previous run do not). */
  private readonly tracked = new WeakSet<object>();

  constructor(private readonly maxConsumers: number) {}

  private state(consumer: string): State {
    let s = this.states.get(consumer);
    if (!s) {
      s = { drawn: 0, settled: 0, base: undefined, lastCredit: undefined, shown: undefined };
      this.states.set(consumer, s);
      if (this.states.size > this.maxConsumers) this.states.delete(this.states.keys().next().value as string);
    }
    return s;
  }

  /** A reported request drew `micros` from its lease at access. */
  drew(consumer: string, micros: number): void {
    this.state(consumer).drawn += micros;
  }

  /** The usage event of a request counted in `drew`: its settlement is followed. */
  track(event: object): void {
    this.tracked.add(event);
  }

  /** Usage events left the queue for good: taken by the service (counted) or dropped (never counted). */
  done(events: ReadonlyArray<{ consumer: string; reserved?: number }>): void {
    for (const e of events) {
      if (!this.tracked.has(e)) continue;
      this.tracked.delete(e);
      const s = this.states.get(e.consumer);
      if (s) s.settled += e.reserved ?? 0;
    }
  }

  /** Read just before a lease call is sent: what the service has certainly counted by its answer. */
  settledSoFar(consumer: string): number {
    return this.states.get(consumer)?.settled ?? 0;
  }

  /** A lease arrived carrying `credit` (smallest currency unit); `settledBefore` as read when its call was sent. */
  granted(consumer: string, credit: number, settledBefore: number): void {
    const s = this.state(consumer);
    // Most recently granted last, so an evicted consumer is one not granted for longest.
    this.states.delete(consumer);
    this.states.set(consumer, s);
    const micros = Math.round(credit * MICROS_PER_UNIT);
    // Only credit added to the balance raises a grant's credit: the shown value may rise by as much.
    if (s.lastCredit !== undefined && s.shown !== undefined && micros > s.lastCredit) s.shown += micros - s.lastCredit;
    s.lastCredit = micros;
    s.base = micros + settledBefore;
  }

  /** The value to show now (smallest currency unit), or undefined before any grant with a credit. */
  show(consumer: string): number | undefined {
    const s = this.states.get(consumer);
    if (s?.base === undefined) return undefined;
    const estimate = s.base - s.drawn;
    const value = Math.max(0, s.shown === undefined ? estimate : Math.min(s.shown, estimate));
    s.shown = value;
    return value / MICROS_PER_UNIT;
  }
}
