// Issue 19 point 5, the service's half: a customer with credit is not refused because another
// node holds it. When a grant is short, the service recalls also when other nodes' leases hold
// reservations they drew and have not settled yet (their usage is still queued at the node), and
// waits up to leases.recall_wait_ms for releases OR settles, trying the grant again on each.
// The node (here: the spec itself, on the real stream) answers a recall by sending its queued usage.
import { expect } from 'chai';
import type { RunningService } from '../../../control-service/src/service';
import type { StripeEmulator } from '../../../testkit/stripe-emulator';
import { CONTROL, serviceFixture } from '../../support/fixture';

const auth = { authorization: `Bearer ${CONTROL}`, 'content-type': 'application/json' };

describe('leases: a short grant recalls drawn-but-unsettled reservations and waits for the settles', function () {
  this.timeout(30_000);
  const fx = serviceFixture({ prefix: 'payg-recall-', autoDeliver: true });
  let stripe: StripeEmulator;
  let svc: RunningService;
  beforeEach(() => { stripe = fx.stripe; });

  async function start(recallWaitMs: number): Promise<void> {
    svc = await fx.start({
      // A chat request reserves its max_cost (10 cents) and costs its tokens (4 cents here).
      metering: { default_cost: '0.5', routes: { chat: { completion_tokens: 1, max_cost: 10 } }, settle: { schedule: undefined, enabled: false } },
      leases: { recall_wait_ms: recallWaitMs },
    });
    await svc.sync!.sweep();
  }

  const lease = async (node: string, consumer: string) => (await (await fetch(`${svc.url}/v1/leases`, {
    method: 'POST', headers: auth, body: JSON.stringify({ node, consumer, want: 2, reserve: 10_000_000 }),
  })).json()) as { allow: boolean; lease?: { id: string; requests: number; micros: number } };

  /** A node on the real change stream: answers a recall by sending the usage it queued (as the plugin does). */
  async function streamingNode(node: string, onRecall: () => Promise<void>): Promise<{ recalls: number; close(): void }> {
    const ac = new AbortController();
    const res = await fetch(`${svc.url}/v1/stream?node=${node}`, { headers: auth, signal: ac.signal });
    const state = { recalls: 0, close: () => ac.abort() };
    void (async () => {
      const decoder = new TextDecoder();
      let buffer = '';
      try {
        for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
          buffer += decoder.decode(chunk, { stream: true });
          let end: number;
          while ((end = buffer.indexOf('\n\n')) >= 0) {
            const frame = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            if (frame.startsWith('event: recall')) { state.recalls++; await onRecall(); }
          }
        }
      } catch { /* aborted */ }
    })();
    return state;
  }

  for (const [wait, served] of [[3000, true], [0, false]] as const) {
    it(`recall_wait_ms ${wait}: node A drew all the credit and its usage is still queued; node B ${served ? 'is granted once A\'s usage settles' : 'is refused at once'}`, async () => {
      await start(wait);
      const c = stripe.create({ balance: -20 }); // 20 cents: two chat reservations
      await svc.sync!.sweep();
      const a = await lease('node-a', c.id);
      expect(a.lease?.micros, 'node A holds all the credit').to.equal(20_000_000);
      // A drew both requests and says so (its lease is closed); their usage waits in A's queue.
      expect(await (await fetch(`${svc.url}/v1/leases/release`, { method: 'POST', headers: auth, body: JSON.stringify({ node: 'node-a', leases: [{ id: a.lease!.id, drawn: 2, drawn_micros: 20_000_000 }] }) })).json())
        .to.deep.equal({ released: 1 });
      const queued = [0, 1].map((i) => ({ id: `a-${i}`, consumer: c.id, at: Date.now(), route: 'chat', status: 200, lease: a.lease!.id, reserved: 10_000_000, units: { completion_tokens: 4 } }));
      const nodeA = await streamingNode('node-a', async () => {
        await fetch(`${svc.url}/v1/usage`, { method: 'POST', headers: auth, body: JSON.stringify({ events: queued }) });
      });
      await new Promise((r) => setTimeout(r, 50)); // the stream is open
      // B asks: nothing is free until A's usage settles (8 cents spent, 12 free: one more chat reservation).
      const b = await lease('node-b', c.id);
      nodeA.close();
      if (served) {
        expect(nodeA.recalls, 'node A was asked for its credit').to.be.at.least(1);
        expect(b.allow, JSON.stringify(b)).to.equal(true);
        expect(b.lease?.micros).to.equal(10_000_000);
      } else {
        expect(b.allow).to.equal(false);
      }
    });
  }
});
