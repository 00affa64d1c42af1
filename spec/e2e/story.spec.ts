// The pay-as-you-go story end to end, exactly as `npm run demo` plays it:
// Stripe emulator, control service on SQLite, SMTP capture, the real
// payg-pluginserver behind the local front that stands in for Kong.
import { expect } from 'chai';
import { startStack, type Stack } from '../../demo/stack';
import { playStory, type StoryResult } from '../../demo/story';

describe('end to end: the demo story', function () {
  this.timeout(60_000);
  let stack: Stack;
  let result: StoryResult;

  before(async () => {
    stack = await startStack({ logLevel: 'silent' });
    result = await playStory(stack, () => undefined);
  });
  after(async () => { await stack?.stop(); });

  it('afterwards the gateway serves Alice (topped up) and refuses Bob (credit spent) with the rule\'s 402', async () => {
    // Asked here, not read from what the story printed: the state it left must hold.
    const call = async (key: string) => {
      const res = await fetch(`${stack.gateway.url}/api/hello`, { headers: { apikey: key } });
      return { status: res.status, body: await res.text() };
    };
    expect((await call(stack.keys.alice)).status).to.equal(200);
    const bob = await call(stack.keys.bob);
    expect(bob.status).to.equal(402);
    expect(JSON.parse(bob.body)).to.include({ error: 'payment_required' });
  });

  it('402 with the rule\'s JSON body, within about a second of the balance change', () => {
    const { top_up: link, ...rest } = result.aliceBlockedBody as Record<string, string>;
    expect(rest).to.deep.equal({ error: 'payment_required', message: 'Alice, your API credit is used up.', balance: '$0.00' });
    // The demo sells credit on payg's own page (top_up.checkout): a signed link through the gateway.
    expect(link.startsWith(`${stack.gateway.url}/top-up/v1.`), link).to.equal(true);
    expect(result.aliceBlockedAfterMs).to.be.below(3000);
  });

  it('the out-of-credit and restored emails arrive with their merge tags', () => {
    expect(result.outOfCreditEmail).to.include({ subject: 'Alice, your API credit has run out', to: 'alice@example.com' });
    expect(result.outOfCreditEmail.text).to.match(new RegExp(`${stack.gateway.url.replace(/[.]/g, '\\.')}/top-up/v1\\.\\S+`));
    expect(result.restoredEmail).to.include({ subject: 'API access restored', to: 'alice@example.com' });
    expect(result.restoredEmail.text).to.match(/you have \$19\.\d\d of credit/);
  });

  it('metering blocks Bob after exactly the 50 calls his $0.50 pays for, and settles them to Stripe', () => {
    expect(result.bobServed).to.equal(50);
    expect(result.settledCents.cus_demo_bob).to.equal(50);
  });
});
