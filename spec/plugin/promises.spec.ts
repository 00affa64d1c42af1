// Promises of docs/plugin.md (and the plugin's part of docs/operations.md) about the plugin's edges, checked on the modules themselves:
// the control client against a loopback fake of the control service, the
// usage queue sending through it, and the decision (lease) cache with a fake transport.
import { expect } from 'chai';
import { ControlClient, type LeaseOutcome } from '../../plugin/src/control-client';
import { LeaseCache } from '../../plugin/src/lease-cache';
import { UsageQueue, type UsageEvent } from '../../plugin/src/usage-queue';
import { FakeControlService, block } from '../../testkit/fake-control-service';

describe('docs/plugin.md promises: the plugin\'s control client, usage queue and decision cache', () => {
  let fake: FakeControlService;
  let client: ControlClient;

  beforeEach(async () => {
    fake = await new FakeControlService().start();
    client = new ControlClient({ baseUrl: new URL(fake.url), token: undefined, timeoutMs: 1000, defaultTtlMs: 5000 });
  });
  afterEach(async () => {
    client.close();
    await fake.stop();
  });

  const event = (i: number): UsageEvent => ({ id: `e${i}`, consumer: 'cus_a', at: new Date().toISOString(), route: null, status: 200 });

  for (const status of [413, 422]) {
    it(`a usage batch answered ${status} is dropped and logged as an error, not sent again`, async () => {
      let attempts = 0;
      fake.usageStatus = () => { attempts++; return status; };
      const errors: string[] = [];
      const warnings: string[] = [];
      const queue = new UsageQueue({ maxBatchSize: 10, maxCoalescingDelayMs: 0, maxEntries: 100, initialRetryDelayMs: 10, maxRetryDelayMs: 20 }, {
        send: (batch) => client.postUsage(batch, 1000), error: (_f, msg) => errors.push(msg), warn: (_f, msg) => warnings.push(msg),
      });
      queue.push(event(1));
      await queue.flushNow();
      await new Promise((r) => setTimeout(r, 100)); // five retry delays: a retry would have gone
      expect(attempts, 'sent once').to.equal(1);
      expect(queue.unreported('cus_a'), 'no longer waiting to be sent').to.equal(0);
      expect(errors, 'logged as an error').to.have.length(1);
    });
  }

  it('a usage batch answered 503 is kept and sent again', async () => {
    let attempts = 0;
    fake.usageStatus = () => (++attempts === 1 ? 503 : 200);
    expect(await client.postUsage([event(1)], 1000)).to.have.property('retry');
    expect(await client.postUsage([event(1)], 1000)).to.equal(undefined);
  });

  it('a decision answer over the size limit is treated as the service failing, not parsed', async () => {
    const padded = JSON.stringify({ allow: false, status: 402, headers: {}, body: 'x'.repeat(300 * 1024), rule: 'r', ttl_ms: 5000 });
    fake.decide = () => ({ body: padded });
    const ask = () => client.fetchLease({ node: 'node-1', consumer: 'cus_a', want: 1 });
    const outcome = await ask();
    expect(outcome).to.deep.include({ kind: 'UNAVAILABLE', reason: 'BAD_SHAPE', detail: 'response too large' });
    // A block with a body of ordinary size is a decision.
    fake.decide = () => block('{"error":"payment_required"}');
    expect((await ask()).kind).to.equal('DECISION');
  });

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
