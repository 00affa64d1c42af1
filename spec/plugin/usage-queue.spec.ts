// The usage queue on its own (its I/O is a function passed in): the flush a
// decision may force, and what happens when that flush fails; then sending
// through the control client to a loopback fake of the control service, as
// docs/plugin.md (Usage events) promises: a batch refused for good is dropped,
// one the service could not take now is sent again.
import { expect } from 'chai';
import { UsageQueue, type SendOutcome, type UsageEvent } from '../../plugin/src/usage-queue';
import { controlClientFixture } from '../support/plugin-fixture';
import { until } from '../support/until';

const opts = { maxBatchSize: 10, maxCoalescingDelayMs: 60_000, maxEntries: 100, initialRetryDelayMs: 20, maxRetryDelayMs: 50 };
const event = (i: number, consumer = 'cus_a'): UsageEvent => ({ id: `e${i}`, consumer, at: new Date().toISOString(), route: null, status: 200 });

describe('usage queue', () => {
  it('flushNow sends at once instead of after the coalescing delay, and unreported() counts per consumer until sent', async () => {
    const sent: UsageEvent[][] = [];
    const q = new UsageQueue(opts, { send: async (b) => { sent.push(b); return undefined; }, warn: () => undefined });
    q.push(event(1)); q.push(event(2)); q.push(event(3, 'cus_b'));
    expect(q.unreported('cus_a')).to.equal(2);
    expect(q.unreported('cus_b')).to.equal(1);
    await q.flushNow();
    expect(sent.flat().map((e) => e.id)).to.deep.equal(['e1', 'e2', 'e3']);
    expect(q.unreported('cus_a')).to.equal(0);
  });

  it('a failed flush schedules the retry: the queue is not left waiting for the next push', async () => {
    let calls = 0;
    const sent: UsageEvent[][] = [];
    const send = async (b: UsageEvent[]): Promise<SendOutcome> => (++calls === 1 ? { retry: 'control service answered 503' } : (sent.push(b), undefined));
    const q = new UsageQueue(opts, { send, warn: () => undefined });
    q.push(event(1));
    await q.flushNow();
    expect(sent).to.have.length(0);
    expect(q.unreported('cus_a'), 'still unreported after the failure').to.equal(1);
    await until(() => sent.length === 1, 2000); // the retry, after initial_retry_delay, with no further push
    expect(q.unreported('cus_a')).to.equal(0);
  });

  describe('sent through the control client (a loopback fake of the control service)', () => {
    const cx = controlClientFixture();

    for (const status of [413, 422]) {
      it(`a usage batch answered ${status} is dropped and logged as an error, not sent again`, async () => {
        let attempts = 0;
        cx.fake.usageStatus = () => { attempts++; return status; };
        const errors: string[] = [];
        const warnings: string[] = [];
        const queue = new UsageQueue({ maxBatchSize: 10, maxCoalescingDelayMs: 0, maxEntries: 100, initialRetryDelayMs: 10, maxRetryDelayMs: 20 }, {
          send: (batch) => cx.client.postUsage(batch, 1000), error: (_f, msg) => errors.push(msg), warn: (_f, msg) => warnings.push(msg),
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
      cx.fake.usageStatus = () => (++attempts === 1 ? 503 : 200);
      expect(await cx.client.postUsage([event(1)], 1000)).to.have.property('retry');
      expect(await cx.client.postUsage([event(1)], 1000)).to.equal(undefined);
    });
  });
});
