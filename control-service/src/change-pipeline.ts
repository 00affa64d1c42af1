// The one serialized change path: every change to the customer book (Stripe
// news, usage, a settlement, another replica's commit) runs alone, in arrival
// order, and sees what the previous one left. A change that fails does not
// hold up the next. A change is persisted before it is served: its store
// transaction commits first, and only then does memory move (commit()), so
// what is served is what survives a crash.
//
// Calls that arrive while a change is out can be gathered into one change
// (Gatherer): a busy replica makes fewer, larger store commits.
//
// Generic over the work; the store is passed in.

import type { SavedChanges, StoreChanges } from './store/store';

/** Something worth a store transaction in these changes. */
export function hasChanges(c: StoreChanges): boolean {
  return c.upserts.length > 0 || c.deletes.length > 0 || c.transitions.length > 0 || (c.emails?.length ?? 0) > 0
    || (c.usage?.length ?? 0) > 0 || (c.recharges?.length ?? 0) > 0 || (c.confirmSettlements?.length ?? 0) > 0
    || c.failSettlement !== undefined || c.webhookEvent !== undefined;
}

export class ChangePipeline {
  private tail: Promise<unknown> = Promise.resolve();

  constructor(private readonly store: { saveChanges(changes: StoreChanges): Promise<SavedChanges | void> }) {}

  /** Runs `change` after every change handed in before it has settled; its outcome is the caller's alone. */
  run<T>(change: () => Promise<T>): Promise<T> {
    const run = this.tail.then(change);
    this.tail = run.catch(() => undefined);
    return run;
  }

  /**
   * Persists first, then serves: `changes` go to the store in one transaction
   * (none when there is nothing to write), then `staged` moves memory, in
   * order. When the store fails, memory does not move and the error is thrown.
   */
  async commit(changes: StoreChanges, staged: ReadonlyArray<() => void>): Promise<SavedChanges | void> {
    const result = hasChanges(changes) ? await this.store.saveChanges(changes) : undefined;
    for (const step of staged) step();
    return result;
  }
}

/**
 * Gathers calls into one change: the first call of an idle gatherer queues a
 * turn on the pipeline; calls that arrive before that turn runs go into it
 * together, in arrival order, whole, up to `maxWeight` (at least one call); the
 * rest get the next turn. `work` answers each input of a turn, in order; when
 * it throws, every call of that turn fails with its error.
 */
export class Gatherer<I, R> {
  private waiting: Array<{ input: I; resolve(r: R): void; reject(err: unknown): void }> = [];

  constructor(
    private readonly pipeline: ChangePipeline,
    private readonly work: (inputs: I[]) => Promise<R[]>,
    private readonly opts: { weight(input: I): number; maxWeight: number },
  ) {}

  submit(input: I): Promise<R> {
    return new Promise((resolve, reject) => {
      this.waiting.push({ input, resolve, reject });
      if (this.waiting.length === 1) void this.pipeline.run(() => this.turn());
    });
  }

  private async turn(): Promise<void> {
    let weight = 0;
    let take = 0;
    while (take < this.waiting.length && (take === 0 || weight + this.opts.weight(this.waiting[take].input) <= this.opts.maxWeight)) {
      weight += this.opts.weight(this.waiting[take++].input);
    }
    const calls = this.waiting.splice(0, take);
    if (this.waiting.length) void this.pipeline.run(() => this.turn());
    try {
      const results = await this.work(calls.map((c) => c.input));
      calls.forEach((c, i) => c.resolve(results[i]));
    } catch (err) {
      for (const c of calls) c.reject(err);
    }
  }
}
