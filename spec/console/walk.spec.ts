// The operator console in headless Chromium against the demo's seeded stack
// (Stripe emulator, SMTP capture, real plugin server) after the demo story
// has played: sign-in, every page, a rule switched off changing decisions,
// an email previewed and test-sent, a wrong token refused.
// PAYG_SCREENSHOTS=docs writes the screenshots README.md and docs/control-service.md show to docs/ (at 1366×900).
// After the story Bob is given a $2.50 debit in Stripe, so that he owes.
import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Page } from 'playwright-core';
import { ADMIN_TOKEN, startStack, type Stack } from '../../demo/stack';
import { playStory } from '../../demo/story';
import { launchChromium, type HeadlessBrowser } from '../../testkit/chromium';
import { ROOT } from '../../testkit/pluginserver-process';
import { until } from '../support/until';

describe('operator console (headless Chromium)', function () {
  this.timeout(90_000);
  let stack: Stack;
  let chrome: HeadlessBrowser;
  let page: Page;
  let consoleUrl: string;
  /** What Chromium refused under the console's CSP (an inline script or style would land here). */
  const cspViolations: string[] = [];
  const shots = process.env.PAYG_SCREENSHOTS === 'docs' ? path.join(ROOT, 'docs') : fs.mkdtempSync(path.join(os.tmpdir(), 'payg-shots-'));
  const shot = (name: string) => page.screenshot({ path: path.join(shots, `console-${name}.png`), fullPage: true });
  /** Nothing in the element is cut off: it does not scroll sideways, and `inner` lies within it. */
  const fullyVisible = (outer: string, inner: string) => page.locator(outer).first().evaluate((el, sel) => {
    const box = el.getBoundingClientRect();
    const cut = [...el.querySelectorAll(sel)].filter((e) => { const r = e.getBoundingClientRect(); return r.left < box.left - 0.5 || r.right > box.right + 0.5 || r.right > (globalThis as unknown as { innerWidth: number }).innerWidth; });
    return { scrolls: el.scrollWidth > el.clientWidth, cut: cut.map((e) => e.textContent), found: el.querySelectorAll(sel).length };
  }, inner);
  const gatewayStatus = async (key: string) => (await fetch(`${stack.gateway.url}/api/anything`, { headers: { apikey: key } })).status;

  before(async () => {
    stack = await startStack({ logLevel: 'silent' });
    await playStory(stack, () => undefined);
    // Bob spent his credit to $0.00; a $2.50 debit (positive Stripe balance) makes him owe.
    stack.stripe.addBalanceTransaction('cus_demo_bob', 250, 'usd', 'Overage invoice');
    await stack.svc.sync!.sweep();
    await until(async () => stack.svc.engine.customer('cus_demo_bob')?.customer.balance === 250, 5000, 'Bob\'s debit seen');
    consoleUrl = stack.svc.console!.url;
    chrome = await launchChromium();
    page = await chrome.browser.newPage();
    await page.setViewportSize({ width: 1366, height: 900 });
    page.on('console', (m) => { if (/Content Security Policy/i.test(m.text())) cspViolations.push(m.text()); });
    // The page may talk to the console only: anything else is a failure.
    const origin = new URL(consoleUrl).origin;
    await page.route('**/*', (route) => (route.request().url().startsWith(origin) ? route.continue() : route.abort()));
  });
  after(async () => {
    await chrome?.close();
    await stack?.stop();
  });

  it('serves the app offline with a strict CSP and refuses a wrong token', async () => {
    const res = await page.goto(consoleUrl);
    const csp = res!.headers()['content-security-policy'];
    expect(csp).to.include("script-src 'self'").and.include("default-src 'none'").and.include("frame-ancestors 'none'");
    await page.getByLabel('Admin token').fill('not-the-token');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('alert').filter({ hasText: 'not the admin token' }).waitFor();
    expect(await chrome.browser.cookies()).to.have.length(0);
    expect((await page.request.get(`${consoleUrl}api/overview`)).status()).to.equal(401);
  });

  it('signs in with the admin token, for an HttpOnly SameSite=Strict session cookie', async () => {
    await page.getByLabel('Admin token').fill(ADMIN_TOKEN);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Overview' }).waitFor();
    const [cookie] = await chrome.browser.cookies();
    expect(cookie).to.include({ name: 'payg_console', httpOnly: true, sameSite: 'Strict', path: '/console' });
    expect(cookie.value).to.not.include(ADMIN_TOKEN);
    expect(await page.evaluate('document.cookie')).to.equal('');
  });

  it('overview: customers, cohorts now and over days, blocks by rule, emails, settlements, sweep', async () => {
    await page.getByTestId('stat-customers').filter({ hasText: '2' }).waitFor();
    await page.getByTestId('cohort-chart').waitFor();
    // Bob's 402 after the story is a block of block-no-credit.
    const blocks = page.getByTestId('blocks-chart');
    expect(await blocks.innerText()).to.include('block-no-credit').and.match(/\d+ in the last hour · peak \d+ a minute/);
    expect(await page.locator('.stat', { hasText: 'Last sweep' }).innerText()).to.match(/ago/);
    expect(await page.getByTestId('stat-owing').innerText()).to.match(/Customers who owe\s+1\s+owes \$2\.50/);
    // Alice's $20.00 top-up through Checkout in the story, today (UTC); no refund or dispute.
    expect(await page.getByTestId('stat-top-ups-today').innerText()).to.match(/Top-ups today\s+1\s+\$20\.00 · since 00:00 UTC/);
    expect(await page.getByTestId('stat-refunds-today').innerText()).to.match(/Refunds · disputes\s+0 · 0\s+today: none/);
    // The blocks of each minute are a readable bar: wide and tall enough to see, on a labelled time axis.
    const bar = (await blocks.locator('rect.bar').first().boundingBox())!;
    expect(bar.width, 'bar width (px)').to.be.at.least(5);
    expect(bar.height, 'bar height (px)').to.be.at.least(40);
    expect(await blocks.locator('text').allTextContents()).to.include.members(['0', 'now']);
    // The cohort chart: both cohorts moved alike (same line), yet each series has its own dash, width and
    // marker, and the legend gives each one's size now.
    const chart = page.getByTestId('cohort-chart');
    const looks = await chart.locator('g[data-series] > path').evaluateAll((ps) => ps.map((p) => `${p.getAttribute('stroke')} ${p.getAttribute('stroke-dasharray')} ${p.getAttribute('stroke-width')}`));
    expect(looks).to.have.length(2);
    expect(new Set(looks.map((l) => l.split(' ').slice(1).join(' '))).size, 'dash and width apart').to.equal(2);
    expect(await chart.getByTestId('legend-no-credit').innerText()).to.match(/no-credit\s+1$/);
    expect(await chart.getByTestId('legend-under-10-dollars').innerText()).to.match(/under-10-dollars\s+1$/);
    expect(await chart.locator('svg[role=img]').getAttribute('aria-label')).to.equal('no-credit: 1 now; under-10-dollars: 1 now');
    await shot('overview');
  });

  it('cohorts → members, searchable', async () => {
    await page.getByRole('link', { name: 'Cohorts' }).click();
    await page.getByTestId('cohorts-table').getByRole('link', { name: 'no-credit' }).click();
    await page.getByRole('heading', { name: 'Cohort no-credit' }).waitFor();
    const rows = page.getByTestId('customers-table').locator('tbody tr');
    await until(async () => (await rows.count()) === 1, 5000, 'no-credit should hold Bob only');
    expect(await rows.first().innerText()).to.include('cus_demo_bob');
    await page.getByRole('link', { name: 'All customers' }).click();
    await page.getByLabel('Search customers').fill('alice');
    await until(async () => (await rows.count()) === 1 && (await rows.first().innerText()).includes('cus_demo_alice'), 5000, 'search for alice');
    await page.getByLabel('Search customers').fill('');
    await until(async () => (await rows.count()) === 2, 5000, 'both customers listed');
    // A customer who owes reads what they owe, not "$0.00".
    expect(await rows.filter({ hasText: 'cus_demo_bob' }).innerText()).to.include('owes $2.50');
    expect(await rows.filter({ hasText: 'cus_demo_alice' }).innerText()).to.match(/\$\d+\.\d\d/).and.not.include('owes');
    await shot('customers');
  });

  it('customer page: balances, chart, transitions, decisions, usage by route, settlements, emails, Stripe link', async () => {
    await page.getByRole('link', { name: 'cus_demo_bob' }).first().click();
    await page.getByTestId('stat-access').filter({ hasText: 'blocked' }).waitFor();
    await page.getByTestId('balance-chart').waitFor();
    expect(await page.getByTestId('decisions-table').innerText()).to.include('block');
    expect(await page.locator('.card', { hasText: 'Usage by route' }).innerText()).to.include('example-route');
    expect(await page.getByTestId('settlements-table').innerText()).to.match(/confirmed[\s\S]*cbtxn_|cbtxn_[\s\S]*/);
    expect(await page.getByTestId('email-log').innerText()).to.include('out-of-credit').and.include('@');
    expect(await page.getByTestId('stat-stripe-balance').innerText()).to.include('owes $2.50');
    expect(await page.getByTestId('stat-estimated').innerText()).to.include('owes $2.50');
    // The settlements card shows the whole Stripe reference and the Created column at 1366 px.
    expect(await fullyVisible('.card:has([data-testid=settlements-table]) .table-wrap', 'code.ref, th')).to.deep.include({ scrolls: false, cut: [] });
    expect(await page.getByTestId('settlements-table').locator('th').allInnerTexts()).to.include('Created');
    expect(await page.getByTestId('settlements-table').innerText()).to.match(/cbtxn_\w+\s[\s\S]*\d{4}, \d\d:\d\d:\d\d/);
    expect(await page.getByRole('link', { name: /Open in Stripe/ }).getAttribute('href')).to.equal('https://dashboard.stripe.com/test/customers/cus_demo_bob');
    await shot('customer');
  });

  it('customer page: Alice\'s top-up through Checkout, its amount, status and payment in Stripe', async () => {
    await page.goto(`${consoleUrl}#/customers/cus_demo_alice`);
    const table = page.getByTestId('top-ups-table');
    await table.waitFor();
    const rows = table.locator('tbody tr');
    expect(await rows.count()).to.equal(1);
    expect(await rows.first().innerText()).to.match(/\$20\.00\s+credited\s+—\s+payment pi_\w+/);
    const [session] = [...stack.stripe.checkoutSessions.values()] as Array<Record<string, any>>;
    expect(await rows.first().getByRole('link').getAttribute('href')).to.equal(`https://dashboard.stripe.com/test/payments/${session.payment_intent}`);
    expect(await page.getByTestId('top-up-debits-table').count(), 'no refunds or disputes: the empty state').to.equal(0);
    expect(await page.locator('.card', { hasText: 'Top-ups' }).innerText()).to.include('No refunds or disputes');
    expect(await fullyVisible('.card:has([data-testid=top-ups-table]) .table-wrap', 'code.ref, th')).to.deep.include({ scrolls: false, cut: [] });
    await shot('customer-top-ups');
  });

  it('rules: dry run names who would be blocked; switching a rule off lets Bob through', async () => {
    expect(await gatewayStatus(stack.keys.bob)).to.equal(402);
    await page.getByRole('link', { name: 'Rules' }).click();
    await page.getByTestId('preview-block-no-credit').click();
    await page.getByTestId('preview-summary').filter({ hasText: 'would block 1 customers' }).waitFor();
    expect(await page.locator('.preview').innerText()).to.include('cus_demo_bob');
    await shot('rules');
    await page.getByTestId('toggle-block-no-credit').click();
    await page.getByTestId('rules-table').locator('tr', { hasText: 'block-no-credit' }).getByText('off').waitFor();
    // The plugin's cached 402 expires within decision_ttl_ms (1 s in the demo).
    await until(async () => (await gatewayStatus(stack.keys.bob)) === 200, 5000, 'Bob still refused with the rule off');
    await page.goto(`${consoleUrl}#/customers/cus_demo_bob`);
    await page.getByTestId('stat-access').filter({ hasText: 'allowed' }).waitFor();
    // Bob is still in under-10-dollars, whose log-only rule reports him: allowed, as a would-block.
    expect(await page.getByTestId('decisions-table').locator('tbody tr').first().innerText()).to.match(/\twould_block\twould: warn-under-10/);
    // Back on, Bob is refused again.
    await page.goto(`${consoleUrl}#/rules`);
    await page.getByTestId('toggle-block-no-credit').click();
    await page.getByTestId('rules-table').locator('tr', { hasText: 'block-no-credit' }).getByText('on', { exact: true }).waitFor();
    await until(async () => (await gatewayStatus(stack.keys.bob)) === 402, 5000, 'Bob let through with the rule back on');
  });

  it('emails: preview with a customer\'s real merge tags, test send arrives in the SMTP capture', async () => {
    await page.getByRole('link', { name: 'Emails' }).click();
    await page.getByTestId('select-out-of-credit').click();
    await page.getByTestId('preview-subject').filter({ hasText: 'sample data' }).waitFor();
    await page.getByTestId('preview-customer').fill('cus_demo_alice');
    await page.getByTestId('preview-subject').filter({ hasText: 'Alice, your API credit has run out' }).waitFor();
    expect(await page.getByTestId('preview-text').innerText()).to.match(/\/top-up\/v1\.\S+/); // the signed top-up link (top_up.checkout in the demo)
    const frame = page.frameLocator('[data-testid=preview-html]');
    await frame.locator('body').filter({ hasText: 'Alice' }).waitFor();
    // The frame holds the email without scrolling, and is not mostly empty.
    // Where the email's content ends (it has no doctype: in quirks mode its <html> fills the frame).
    const content = await frame.locator('body').evaluate((body) => { const r = body.ownerDocument.createRange(); r.selectNodeContents(body); return r.getBoundingClientRect().bottom; });
    const frameHeight = (await page.getByTestId('preview-html').boundingBox())!.height;
    expect(content, 'email height (px) within the frame').to.be.at.most(frameHeight);
    expect(content / frameHeight, 'share of the frame the email fills').to.be.at.least(0.5);
    const before = (await stack.smtp.inbox()).length;
    await page.getByTestId('test-to').fill('ops@example.com');
    await page.getByTestId('test-send').click();
    await page.getByTestId('email-note').filter({ hasText: 'Sent to ops@example.com' }).waitFor();
    const mail = (await stack.smtp.waitForCount(before + 1)).at(-1)!;
    expect(mail.subject).to.equal('Alice, your API credit has run out');
    expect(mail.to && !Array.isArray(mail.to) ? mail.to.text : '').to.equal('ops@example.com');
    expect(await page.getByTestId('email-note').innerText()).to.include(mail.messageId!.replace(/[<>]/g, ''));
    await shot('emails');
  });

  it('settlements: confirmed, with their Stripe references', async () => {
    await page.getByRole('link', { name: 'Settlements' }).click();
    const table = page.getByTestId('settlements-table');
    await table.waitFor();
    expect(await table.innerText()).to.include('confirmed').and.include('cbtxn_');
    // Customers by name, their ids still there and linked.
    const bobRow = table.locator('tbody tr', { hasText: 'Bob Example' }).first();
    expect(await bobRow.innerText()).to.include('cus_demo_bob');
    expect(await bobRow.getByRole('link', { name: 'Bob Example' }).getAttribute('href')).to.equal('#/customers/cus_demo_bob');
    expect(await fullyVisible('.card:has([data-testid=settlements-table]) .table-wrap', 'code.ref, th')).to.deep.include({ scrolls: false, cut: [] });
    expect(await page.getByTestId('settlements-failed').innerText()).to.match(/Failed\s+0/);
    await page.getByRole('button', { name: 'failed' }).click();
    await page.locator('.empty', { hasText: 'No settlements' }).waitFor();
    await page.getByRole('button', { name: 'retrying' }).click();
    await page.locator('.empty', { hasText: 'No settlements' }).waitFor();
    await page.getByRole('button', { name: 'all' }).click();
    await table.waitFor();
    await shot('settlements');
  });

  it('refuses writes without the session\'s CSRF token, and from another origin', async () => {
    const url = `${consoleUrl}api/rules/block-no-credit`;
    const noCsrf = await page.request.put(url, { data: { enabled: false }, headers: { 'content-type': 'application/json' } });
    expect(noCsrf.status()).to.equal(403);
    const csrf = (await (await page.request.get(`${consoleUrl}api/session`)).json()).csrf as string;
    const crossSite = await page.request.put(url, { data: { enabled: false }, headers: { 'content-type': 'application/json', 'x-payg-csrf': csrf, origin: 'http://evil.example' } });
    expect(crossSite.status()).to.equal(403);
    expect(stack.svc.engine.rules().find((r) => r.rule.id === 'block-no-credit')!.enabled, 'the rule is still on').to.equal(true);
  });

  it('no page made Chromium refuse anything under the CSP (no inline script or style)', () => {
    expect(cspViolations).to.deep.equal([]);
  });
});

describe('operator console packaging', () => {
  it('the control image builds the console assets into dist/console, which it copies', () => {
    const dockerfile = fs.readFileSync(path.join(ROOT, 'docker/control.Dockerfile'), 'utf8');
    expect(dockerfile).to.include('COPY console ./console').and.include('vite build --config console/vite.config.mjs');
    expect(dockerfile).to.include('COPY --from=build /src/dist ./dist');
    expect(fs.existsSync(path.join(ROOT, 'dist/console/index.html')), '`npm run build` built the console').to.equal(true);
  });
});
