// The serialized change path alone (control-service/src/change-pipeline.ts):
// one change at a time in arrival order, a failure kept to its caller, stored
// before served, calls gathered into one write.
import { expect } from 'chai';
import { ChangePipeline, Gatherer } from '../../../control-service/src/change-pipeline';
import type { StoreChanges } from '../../../control-service/src/store/store';

function deferred(): { promise: Promise<void>; resolve(): void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => { resolve = r; });
  return { promise, resolve };
}
/** The message a promise fails with ('' when it does not fail). */
async function failure(p: Promise<unknown>): Promise<string> {
  try { await p; return ''; } catch (err) { return (err as Error).message; }
}
const tick = () => new Promise((r) => setImmediate(r));
const noStore = { saveChanges: async () => { throw new Error('no store here'); } };
const empty = (): StoreChanges => ({ upserts: [], deletes: [], transitions: [] });

describe('change pipeline: one change at a time', () => {
  it('runs changes one at a time, in arrival order: a change starts only when the one before it has settled', async () => {
    const p = new ChangePipeline(noStore);
    const log: string[] = [];
    const gates = [deferred(), deferred(), deferred()];
    const runs = gates.map((g, i) => p.run(async () => { log.push(`start ${i}`); await g.promise; log.push(`end ${i}`); return i; }));
    await tick();
    expect(log).to.deep.equal(['start 0']);
    gates[2].resolve();
    gates[1].resolve();
    await tick();
    expect(log, 'later changes wait even when ready').to.deep.equal(['start 0']);
    gates[0].resolve();
    expect(await Promise.all(runs)).to.deep.equal([0, 1, 2]);
    expect(log).to.deep.equal(['start 0', 'end 0', 'start 1', 'end 1', 'start 2', 'end 2']);
  });

  it('a failed change fails for its caller only and does not block the next', async () => {
    const p = new ChangePipeline(noStore);
    const failed = p.run(async () => { throw new Error('Stripe said no'); });
    const next = p.run(async () => 'next ran');
    expect(await failure(failed)).to.equal('Stripe said no');
    expect(await next).to.equal('next ran');
    expect(await p.run(async () => 'and the one after')).to.equal('and the one after');
  });

  it('commit stores first, then moves memory; when the store fails memory does not move; nothing to store: no transaction', async () => {
    const log: string[] = [];
    let fail = false;
    const p = new ChangePipeline({
      saveChanges: async (c: StoreChanges) => { log.push(`saved ${c.upserts.length}`); if (fail) throw new Error('disk full'); return { usageAdded: [] }; },
    });
    const c = { ...empty(), upserts: [{ id: 'cus_a', balance: 0, currency: null, name: null, email: null, metadata: {}, version: 1 }] };
    expect(await p.commit(c, [() => log.push('served')])).to.deep.equal({ usageAdded: [] });
    expect(log).to.deep.equal(['saved 1', 'served']);
    log.length = 0;
    fail = true;
    expect(await failure(p.commit(c, [() => log.push('served')]))).to.equal('disk full');
    expect(log).to.deep.equal(['saved 1']);
    log.length = 0;
    expect(await p.commit(empty(), [() => log.push('served')])).to.equal(undefined);
    expect(log).to.deep.equal(['served']);
  });
});

describe('change pipeline: calls gathered into one write', () => {
  it('calls that arrive while a change is out go together into the next write, in order, whole, up to the weight', async () => {
    const p = new ChangePipeline(noStore);
    const gate = deferred();
    const blocker = p.run(() => gate.promise);
    const writes: number[][][] = [];
    const g = new Gatherer<number[], number>(p, async (inputs) => { writes.push(inputs); return inputs.map((xs) => xs.reduce((a, b) => a + b, 0)); }, { weight: (xs) => xs.length, maxWeight: 4 });
    const answers = [g.submit([1, 2]), g.submit([3]), g.submit([4, 5]), g.submit([6])];
    await tick();
    expect(writes, 'nothing written while a change is out').to.deep.equal([]);
    gate.resolve();
    await blocker;
    expect(await Promise.all(answers)).to.deep.equal([3, 3, 9, 6]);
    expect(writes).to.deep.equal([[[1, 2], [3]], [[4, 5], [6]]]);
  });

  it('a call heavier than the weight goes alone; a failed write fails its own calls only', async () => {
    const p = new ChangePipeline(noStore);
    const gate = deferred();
    const blocker = p.run(() => gate.promise);
    const writes: string[][] = [];
    const g = new Gatherer<string, string>(p, async (inputs) => {
      writes.push(inputs);
      if (inputs.includes('bad')) throw new Error('write failed');
      return inputs.map((s) => s.toUpperCase());
    }, { weight: (s) => s.length, maxWeight: 3 });
    const heavy = g.submit('heavy');
    const bad = g.submit('bad');
    const ok = g.submit('ok');
    gate.resolve();
    await blocker;
    expect(await heavy).to.equal('HEAVY');
    expect(await failure(bad)).to.equal('write failed');
    expect(await ok).to.equal('OK');
    expect(writes).to.deep.equal([['heavy'], ['bad'], ['ok']]);
  });
});
