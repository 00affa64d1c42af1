// The node's decision (lease) cache on its own (plugin/src/lease-cache.ts), with a
// fake transport and an injected clock: how many consumers it holds, as
// docs/plugin.md promises.
import { expect } from 'chai';
import type { LeaseOutcome } from '../../plugin/src/control-client';
import { LeaseCache } from '../../plugin/src/lease-cache';

describe('decision cache', () => {
  it('the decision cache holds at most maxEntries consumers, forgetting the least recently fetched first', async () => {
    let now = 0;
    const fetched: string[] = [];
    // a's decision is short-lived, so it is fetched again later; the others last.
    const cache = new LeaseCache({
      fetch: async (consumer): Promise<LeaseOutcome> => {
        fetched.push(consumer);
        return { kind: 'DECISION', decision: { allow: true, ttlMs: consumer === 'a' ? 1000 : 60_000 }, lease: undefined };
      },
      release: async () => true,
    }, { cacheTtlMs: 60_000, staleTtlMs: 60_000, trackDraws: false, maxEntries: 3, now: () => now });
    const held = () => ['a', 'b', 'c', 'd'].filter((c) => cache.fresh(c) !== undefined);
    for (const c of ['a', 'b', 'c']) await cache.resolve(c);
    expect(held()).to.deep.equal(['a', 'b', 'c']);
    now = 2000;
    await cache.resolve('a'); // fetched again: now the most recently fetched
    await cache.resolve('d'); // a fourth consumer: b, the least recently fetched, goes
    expect(fetched).to.deep.equal(['a', 'b', 'c', 'a', 'd']);
    expect(held()).to.deep.equal(['a', 'c', 'd']);
  });
});
