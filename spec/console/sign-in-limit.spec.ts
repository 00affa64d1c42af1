// The console's sign-in limiter exactly as the service builds it (no
// signInLimit passed, as control-service/src/console/index.ts starts it), on
// an injected clock: 5 wrong tokens lock the address out for a whole minute.
// A window shortened by mistake (60 ms instead of 60 s) fails here.
import { expect } from 'chai';
import { CONSOLE_TOKEN, startConsoleFixture, type ConsoleFixture } from '../support/console-fixture';

describe('console sign-in limiter as the service builds it (default window)', function () {
  this.timeout(20_000);
  let fx: ConsoleFixture;
  let clock = Date.UTC(2026, 0, 1);

  before(async () => { fx = await startConsoleFixture({ console: { now: () => clock } }); });
  after(() => fx?.stop());

  const signIn = (token: string) => fx.call('POST', '/console/api/session', { body: { token } });

  it('5 wrong tokens lock the address out: still refused 59 s later, even with the right token; free again at 60 s', async () => {
    const start = clock;
    for (let i = 0; i < 5; i++) expect((await signIn(`guess-${i}`)).status, `wrong token ${i + 1}`).to.equal(401);
    const locked = await signIn(CONSOLE_TOKEN);
    expect(locked.status, 'right after the 5th failure').to.equal(429);
    expect(Number(locked.headers.get('retry-after'))).to.equal(60);

    clock = start + 1_000;
    expect((await signIn(CONSOLE_TOKEN)).status, 'after 1 s').to.equal(429);
    clock = start + 30_000;
    const half = await signIn(CONSOLE_TOKEN);
    expect(half.status, 'after 30 s').to.equal(429);
    expect(Number(half.headers.get('retry-after'))).to.equal(30);
    clock = start + 59_000;
    const late = await signIn(CONSOLE_TOKEN);
    expect(late.status, 'after 59 s').to.equal(429);
    expect(Number(late.headers.get('retry-after'))).to.equal(1);
    expect(late.headers.get('set-cookie')).to.equal(null);

    clock = start + 60_000;
    expect((await signIn(CONSOLE_TOKEN)).status, 'after 60 s').to.equal(200);
  });

  it('4 wrong tokens do not lock the address out; the 5th within the minute does', async () => {
    const start = clock += 120_000;
    for (let i = 0; i < 4; i++) expect((await signIn(`guess-${i}`)).status).to.equal(401);
    clock = start + 50_000;
    expect((await signIn(CONSOLE_TOKEN)).status, 'right token after 4 failures').to.equal(200);
    // A success clears the count: 5 new failures are needed again.
    for (let i = 0; i < 4; i++) expect((await signIn(`again-${i}`)).status).to.equal(401);
    expect((await signIn(CONSOLE_TOKEN)).status).to.equal(200);
    for (let i = 0; i < 5; i++) expect((await signIn(`third-${i}`)).status).to.equal(401);
    expect((await signIn(CONSOLE_TOKEN)).status, 'after 5 failures').to.equal(429);
  });
});
