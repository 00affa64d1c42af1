// The Stripe gateway (control-service/src/stripe/gateway.ts) with its sleep
// injected and no network: the pacing, Retry-After, backoff and retries that
// docs/control-service.md (Configuration: stripe.*) promises.
import { expect } from 'chai';
import { StripeGateway, StripeUnavailable } from '../../../control-service/src/stripe/gateway';

describe('the Stripe gateway (injected sleep, no network)', () => {
  /** A gateway whose waits are recorded and skipped. */
  function gateway(extra: { maxRequestsPerSecond?: number; maxAttempts?: number } = {}) {
    const sleeps: number[] = [];
    /** When each wait would have ended (the slot the request was given). */
    const wakes: number[] = [];
    const gw = new StripeGateway({
      secretKey: 'sk_test_x', apiBase: new URL('http://127.0.0.1:9'), maxRequestsPerSecond: extra.maxRequestsPerSecond ?? 1000, timeoutMs: 1000,
      maxAttempts: extra.maxAttempts ?? 6, baseDelayMs: 10, maxDelayMs: 40, sleep: async (ms) => { sleeps.push(ms); wakes.push(Date.now() + ms); },
    });
    return { gw, sleeps, wakes };
  }
  const stripeError = (statusCode: number, headers: Record<string, string> = {}) => Object.assign(new Error(`status ${statusCode}`), { statusCode, headers });

  it('stripe.max_requests_per_second: requests are given slots 1/rate apart (20/s: every 50 ms)', async () => {
    const { gw, wakes } = gateway({ maxRequestsPerSecond: 20 });
    for (let i = 0; i < 10; i++) await gw.call(async () => i);
    expect(wakes.length, 'every request after the first waits for its slot').to.equal(9);
    const gaps = wakes.slice(1).map((t, i) => t - wakes[i]);
    for (const gap of gaps) expect(gap).to.be.closeTo(50, 1);
  });

  it('Retry-After is honoured: a 429 saying 3 s holds the next request 3 s', async () => {
    const { gw, sleeps } = gateway();
    let calls = 0;
    const result = await gw.call(async () => { if (++calls === 1) throw stripeError(429, { 'retry-after': '3' }); return 'ok'; });
    expect(result).to.equal('ok');
    expect(calls).to.equal(2);
    expect(Math.max(...sleeps)).to.be.within(2900, 3000);
  });

  it('a 429 without Retry-After backs off instead, within retry.max_delay_ms', async () => {
    const { gw, sleeps } = gateway();
    let calls = 0;
    await gw.call(async () => { if (++calls <= 3) throw stripeError(429); return 'ok'; });
    expect(calls).to.equal(4);
    expect(sleeps.length).to.be.at.least(3);
    expect(Math.max(...sleeps)).to.be.at.most(40);
  });

  it('Stripe 5xx is retried until it answers; other 4xx fail at once; retries end at max_attempts', async () => {
    const { gw } = gateway({ maxAttempts: 4 });
    let calls = 0;
    expect(await gw.call(async () => { if (++calls <= 2) throw stripeError(500 + calls); return 'ok'; })).to.equal('ok');
    expect(calls).to.equal(3);
    calls = 0;
    const notFound = await gw.call(async () => { calls++; throw stripeError(404); }).catch((e: unknown) => e);
    expect([calls, (notFound as { statusCode: number }).statusCode]).to.deep.equal([1, 404]);
    calls = 0;
    const down = await gw.call(async () => { calls++; throw stripeError(503); }).catch((e: unknown) => e);
    expect(down).to.be.instanceOf(StripeUnavailable);
    expect(calls).to.equal(4);
  });
});
