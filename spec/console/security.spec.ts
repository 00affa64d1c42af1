// The console's port as an attacker sees it: guessing the token, planting a
// session id, forging writes from another site, reading files next to the
// front end, injecting script through an email preview, and what answers
// before sign-in.
import { expect } from 'chai';
import http from 'node:http';
import { CONSOLE_TOKEN, customerFixture, startConsoleFixture, type ConsoleFixture, type Session } from '../support/console-fixture';

const STRICT_CSP = "default-src 'none'; script-src 'self'; style-src 'self'";

/** A request whose path is sent exactly as given (fetch would normalize it). */
function rawGet(origin: string, rawPath: string, headers: Record<string, string> = {}): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  const { hostname, port } = new URL(origin);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: hostname, port, path: rawPath, method: 'GET', headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => { body += c; });
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('console security', function () {
  this.timeout(20_000);
  let fx: ConsoleFixture;
  let clock = Date.now();

  before(async () => {
    fx = await startConsoleFixture({
      customers: [{ ...customerFixture(1, 100), name: '<img src=x onerror=alert(1)>' }],
      files: { 'out.hbs': '<p>Hello {{customer.name}}</p>' },
      config: { emails: [{ id: 'out-of-credit', cohort: 'no-credit', from: { address: 'billing@example.com' }, subject: 'Out of credit', html: 'out.hbs' }] },
      console: { now: () => clock, signInLimit: { failures: 5, windowMs: 60_000 } },
    });
  });
  after(() => fx?.stop());

  describe('sign-in', () => {
    it('after 5 wrong tokens in a minute, sign-in from that address is refused with 429 and Retry-After, even with the right token, until the minute is over', async () => {
      const start = clock;
      for (let i = 0; i < 5; i++) expect((await fx.call('POST', '/console/api/session', { body: { token: `guess-${i}` } })).status).to.equal(401);
      const locked = await fx.call('POST', '/console/api/session', { body: { token: CONSOLE_TOKEN } });
      expect(locked.status).to.equal(429);
      expect(Number(locked.headers.get('retry-after'))).to.be.within(1, 60);
      expect(locked.headers.get('set-cookie')).to.equal(null);
      clock = start + 61_000;
      expect((await fx.call('POST', '/console/api/session', { body: { token: CONSOLE_TOKEN } })).status).to.equal(200);
    });

    it('a sign-in body over 4 KB is refused with 413 and not read', async () => {
      const res = await fx.call('POST', '/console/api/session', { body: { token: 'x'.repeat(5000) } });
      expect(res.status).to.equal(413);
    });

    it('signing in issues a new session id and ends the one the browser had; an id the browser made up is never accepted', async () => {
      const planted = 'payg_console=chosen-by-the-attacker';
      expect((await fx.call('GET', '/console/api/overview', { headers: { cookie: planted } })).status).to.equal(401);
      const first = await fx.signIn();
      const again = await fx.call('POST', '/console/api/session', { body: { token: CONSOLE_TOKEN }, headers: { cookie: first.cookie } });
      const second = again.headers.get('set-cookie')!.split(';')[0];
      expect(second).to.not.equal(first.cookie).and.not.equal(planted);
      expect((await fx.call('GET', '/console/api/overview', { headers: { cookie: first.cookie } })).status, 'the old session').to.equal(401);
      expect((await fx.call('GET', '/console/api/overview', { headers: { cookie: second } })).status, 'the new session').to.equal(200);
    });

    it('the session cookie is HttpOnly, SameSite=Strict and Path=/console, and Secure when the console is reached over HTTPS', async () => {
      const plain = (await fx.call('POST', '/console/api/session', { body: { token: CONSOLE_TOKEN } })).headers.get('set-cookie')!;
      expect(plain).to.match(/; Path=\/console; HttpOnly; SameSite=Strict; Max-Age=\d+$/);
      expect(plain).to.not.include('Secure');
      const proxied = (await fx.call('POST', '/console/api/session', { body: { token: CONSOLE_TOKEN }, headers: { 'x-forwarded-proto': 'https' } })).headers.get('set-cookie')!;
      expect(proxied).to.match(/; HttpOnly; SameSite=Strict; Max-Age=\d+; Secure$/);
    });
  });

  describe('writes', () => {
    let session: Session;
    before(async () => { session = await fx.signIn(); });

    const writes: Array<[string, string, unknown]> = [
      ['PUT', '/console/api/rules/block-no-credit', { enabled: false }],
      ['PUT', '/console/api/emails/out-of-credit', { active: false }],
      ['POST', '/console/api/emails/out-of-credit/test', { to: 'ops@example.com' }],
    ];
    for (const [method, path, body] of writes) {
      it(`${method} ${path} is refused without the CSRF token, with another session's, as a form post, and from another origin`, async () => {
        const other = await fx.signIn();
        const attempts = [
          fx.call(method, path, { body, headers: { cookie: session.cookie } }),
          fx.call(method, path, { body, session: { cookie: session.cookie, csrf: other.csrf } }),
          fx.call(method, path, { session, headers: { 'content-type': 'application/x-www-form-urlencoded' } }),
          fx.call(method, path, { body, session, headers: { origin: 'http://evil.example' } }),
        ];
        for (const res of await Promise.all(attempts)) expect(res.status).to.equal(403);
        expect(fx.engine.rules()[0].enabled, 'the rule is still on').to.equal(true);
        expect(fx.engine.isTemplateActive('out-of-credit'), 'the template is still on').to.equal(true);
      });
    }

    it('signing out needs the CSRF token: a forged sign-out leaves the session working', async () => {
      await fx.call('DELETE', '/console/api/session', { body: {}, headers: { cookie: session.cookie } });
      expect((await fx.call('GET', '/console/api/overview', { session })).status).to.equal(200);
    });
  });

  describe('what answers', () => {
    it('every answer carries the strict CSP, and the app shell has no inline script or style', async () => {
      for (const path of ['/console/', '/console/api/overview', '/nothing-here', '/console/api/session']) {
        const res = await fx.call('GET', path);
        expect(res.headers.get('content-security-policy'), path).to.include(STRICT_CSP).and.include("frame-ancestors 'none'");
        expect(res.headers.get('x-content-type-options'), path).to.equal('nosniff');
      }
      const shell = await (await fx.call('GET', '/console/')).text();
      expect(shell).to.include('<div id="app">');
      expect(shell).to.not.match(/<script(?![^>]*\bsrc=)[^>]*>/i, 'an inline script');
      expect(shell).to.not.match(/<style|\sstyle=|\son[a-z]+=/i, 'inline style or handler');
    });

    it('before sign-in, the API answers 401 and nothing else, even to a path with malformed percent-encoding', async () => {
      for (const path of ['/console/api/overview', '/console/api/customers?q=a', '/console/api/customers/cus_000001', '/console/api/settlements',
        '/console/api/emails/out-of-credit/preview.html', '/console/api/emails/log', '/console/api/customers/%E0%A4%A', '/console/api/no-such-thing']) {
        const res = await fx.call('GET', path);
        expect(res.status, path).to.equal(401);
        expect(await res.json(), path).to.deep.equal({ error: 'unauthorized', message: 'sign in' });
      }
      const malformed = await fx.call('GET', '/console/api/customers/%E0%A4%A', { session: await fx.signIn() });
      expect(malformed.status, 'signed in').to.equal(400);
    });

    it('the console port serves no admin, metrics or health: 404', async () => {
      for (const path of ['/admin/cohorts', '/metrics', '/health', '/v1/decisions/x']) expect((await fx.call('GET', path)).status, path).to.equal(404);
    });

    it('a path that climbs out of dist/console gets the app shell or 404, never a file from outside', async () => {
      for (const raw of ['/console/../package.json', '/console/assets/../../../package.json', '/console/%2e%2e/%2e%2e/%2e%2e/package.json',
        '/console/..%2f..%2f..%2fpackage.json', '/console/assets/..%5c..%5c..%5cpackage.json', '/console/%2e%2e%2f%2e%2e%2f%2e%2e%2fpackage.json',
        '/console//etc/passwd', '/console/assets/%00../../package.json']) {
        const res = await rawGet(fx.origin, raw);
        expect(res.body, raw).to.not.include('"devDependencies"').and.not.include('root:');
        expect([200, 404], raw).to.include(res.status);
        if (res.status === 200) expect(res.body, raw).to.include('<div id="app">');
      }
    });
  });

  describe('email HTML preview', () => {
    it('is served sandboxed (no script, nothing loads) and shows the customer\'s data escaped', async () => {
      const session = await fx.signIn();
      const res = await fx.call('GET', '/console/api/emails/out-of-credit/preview.html?customer=cus_000001', { session });
      expect(res.status).to.equal(200);
      const csp = res.headers.get('content-security-policy')!;
      expect(csp.split(';').map((d) => d.trim())).to.include.members(['sandbox', "default-src 'none'"]);
      expect(csp).to.not.include('script-src').and.not.include('allow-scripts').and.not.include('allow-same-origin');
      const html = await res.text();
      expect(html).to.include('&lt;img src&#x3D;x onerror&#x3D;alert(1)&gt;');
      expect(html).to.not.include('<img');
    });
  });
});
