// Several control-service replicas on one PostgreSQL database (a real server,
// spec/support/postgres.ts): each follows the others' usage, one leads the
// singleton work, and kill -9 of the leader hands the lead to another.
import { expect } from 'chai';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startControlProcess, type ControlProcess } from '../../support/control-process';
import { freshDatabase } from '../../support/postgres';
import { until } from '../../support/until';
import { StripeEmulator } from '../../../testkit/stripe-emulator';
import { SmtpCapture } from '../../../testkit/smtp-capture';

const ADMIN = 'admin-token-for-tests';

describe('replicas on PostgreSQL', function () {
  this.timeout(40_000);
  let dir: string;
  let stripe: StripeEmulator;
  let replicas: ControlProcess[] = [];
  let configFile: string;
  let env: NodeJS.ProcessEnv;
  let smtp: SmtpCapture;

  const admin = (r: ControlProcess, p: string, method = 'GET') =>
    fetch(`${r.url}/admin/${p}`, { method, headers: { authorization: `Bearer ${ADMIN}` } });
  const decision = async (r: ControlProcess, consumer: string) => (await fetch(`${r.url}/v1/decisions/${consumer}`)).json() as Promise<Record<string, any>>;
  const leading = (r: ControlProcess) => r.output().includes('"msg":"leading');

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-replicas-'));
    stripe = await new StripeEmulator().start();
    smtp = await new SmtpCapture().start();
    fs.writeFileSync(path.join(dir, 'out.txt.hbs'), 'Hello {{customer.name}}, your credit has run out.');
  });
  beforeEach(async () => {
    configFile = path.join(dir, 'payg.yml');
    fs.writeFileSync(configFile, JSON.stringify({
      listen: { port: 0 }, store: { postgres: {} }, stripe: { poll: '0 0 1 1 *' },
      cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
      rules: [{ id: 'block', cohort: 'no-credit', body: '{"error":"payment_required"}' }],
      metering: { default_cost: 1, settle: { schedule: '0 0 1 1 *' } },
      // Leases outlast a kill and a takeover however loaded the machine is: the survivor must count them.
      leases: { ttl_ms: 30_000, usage_grace_ms: 30_000 },
      console: { listen: { host: '127.0.0.1', port: 0 } },
      emails: [{ id: 'out-of-credit', cohort: 'no-credit', active: false, from: { address: 'billing@example.com' }, subject: 'Out of credit', text: 'out.txt.hbs' }],
    }));
    env = { STRIPE_SECRET_KEY: stripe.secretKey, STRIPE_API_BASE: stripe.url, PAYG_ADMIN_TOKEN: ADMIN, PAYG_DATABASE_URL: await freshDatabase(), SMTP_URL: smtp.url };
    replicas = [await startControlProcess(configFile, env), await startControlProcess(configFile, env)];
  });
  afterEach(async () => {
    await Promise.all(replicas.map((r) => r.kill('SIGKILL')));
  });
  after(async () => {
    await stripe.stop();
    await smtp.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('usage taken by one replica moves the decision of the other', async () => {
    const [a, b] = replicas;
    const c = stripe.create({ name: 'Ada', balance: -100 });
    await (await admin(a, 'sweep', 'POST')).json();
    await until(async () => (await decision(b, c.id)).max_requests === 100, 3000, 'replica b never saw the customer');
    const events = Array.from({ length: 60 }, (_, i) => ({ id: `a-${i}`, consumer: c.id, at: Date.now(), route: null, status: 200 }));
    expect((await fetch(`${a.url}/v1/usage`, { method: 'POST', body: JSON.stringify({ events }) })).status).to.equal(200);
    await until(async () => (await decision(b, c.id)).max_requests === 40, 2000, 'replica b did not follow the usage taken by a');
    const more = Array.from({ length: 40 }, (_, i) => ({ id: `b-${i}`, consumer: c.id, at: Date.now(), route: null, status: 200 }));
    expect((await fetch(`${b.url}/v1/usage`, { method: 'POST', body: JSON.stringify({ events: more }) })).status).to.equal(200);
    // Both see the credit spent, whichever took the usage.
    for (const r of replicas) await until(async () => (await decision(r, c.id)).status === 402, 2000, 'the credit is spent but a replica still allows');
    const states = await Promise.all(replicas.map(async (r) => (await admin(r, `customers/${c.id}`)).json() as Promise<any>));
    expect(states.map((s) => s.unsettled_usage)).to.deep.equal([100, 100]);
  });

  it('usage sent to both replicas at once, the same events to each as a retrying plugin does, is counted once in every book', async () => {
    const [a, b] = replicas;
    const c = stripe.create({ name: 'Rhea', balance: -100_000 });
    await (await admin(a, 'sweep', 'POST')).json();
    await until(async () => (await decision(b, c.id)).allow === true, 3000, 'replica b never saw the customer');
    const post = (r: ControlProcess, events: unknown[]) => fetch(`${r.url}/v1/usage`, { method: 'POST', body: JSON.stringify({ events }) }).then((res) => res.status);
    const batch = (prefix: string) => Array.from({ length: 20 }, (_, i) => ({ id: `${prefix}-${i}`, consumer: c.id, at: Date.now(), route: null, status: 200 }));
    for (let round = 0; round < 30; round++) {
      const shared = batch(`both-${round}`);
      // The same events race at both replicas; each also takes usage of its own, so its commits interleave with the other's.
      const statuses = await Promise.all([post(a, shared), post(b, shared), post(a, batch(`a-${round}`)), post(b, batch(`b-${round}`))]);
      expect(statuses).to.deep.equal([200, 200, 200, 200]);
    }
    const unsettled = async () => Promise.all(replicas.map(async (r) => ((await (await admin(r, `customers/${c.id}`)).json()) as any).unsettled_usage));
    await until(async () => (await unsettled()).every((u) => u === 1800), 3000, 'a replica counts the usage wrong');
    await new Promise((r) => setTimeout(r, 200)); // late notifications change nothing
    expect(await unsettled()).to.deep.equal([1800, 1800]);
  });

  it('every replica grants and streams; two replicas granting at once never grant beyond the credit; after kill -9 of the leader the survivor grants at once, counting the dead one\'s leases', async () => {
    await until(() => replicas.filter(leading).length === 1, 5000, 'no replica leads');
    const leader = replicas.find(leading)!;
    const follower = replicas.find((r) => r !== leader)!;
    const c = stripe.create({ name: 'Lea', balance: -100 });
    await (await admin(leader, 'sweep', 'POST')).json();
    await until(async () => (await decision(follower, c.id)).max_requests === 100, 3000, 'the follower never saw the customer');
    const ask = async (r: ControlProcess, node: string, want = 1) => {
      const res = await fetch(`${r.url}/v1/leases`, { method: 'POST', body: JSON.stringify({ node, consumer: c.id, want }) });
      return { status: res.status, body: await res.json() as Record<string, any> };
    };
    // The stream too: every replica pushes to the nodes streaming from it.
    const stream = await fetch(`${follower.url}/v1/stream?node=watcher`);
    expect(stream.status).to.equal(200);
    // 40 nodes ask both replicas at once, 4 rounds: what is granted never passes the credit (100 requests).
    const granted: Array<{ at: ControlProcess; node: string; id: string; requests: number }> = [];
    let refusals = 0;
    for (let round = 0; round < 4; round++) {
      const answers = await Promise.all(Array.from({ length: 40 }, async (_, i) => {
        const at = i % 2 ? leader : follower;
        return { at, node: `n${i}`, ...(await ask(at, `n${i}`, 3)) };
      }));
      for (const a of answers) {
        expect(a.status, JSON.stringify(a.body)).to.equal(200);
        if (a.body.lease) granted.push({ at: a.at, node: a.node, id: a.body.lease.id, requests: a.body.lease.requests });
        else { expect(a.body.allow).to.equal(false); refusals++; }
      }
    }
    const total = granted.reduce((n, g) => n + g.requests, 0);
    expect(total, 'granted beyond the credit').to.be.at.most(100);
    expect(total, 'the credit was not handed out').to.equal(100);
    expect(refusals).to.be.greaterThan(0);
    expect(new Set(granted.map((g) => g.at)).size, 'both replicas granted').to.equal(2);
    // The leader dies with every lease still out: the survivor grants at once, nothing beyond what its leases hold.
    await leader.kill('SIGKILL');
    expect((await ask(follower, 'late')).body.allow, 'the dead replica\'s leases still hold the credit').to.equal(false);
    // A node gives back (at the survivor) a lease the dead replica granted: its credit is free again at once.
    const fromDead = granted.find((g) => g.at === leader)!;
    const released = await fetch(`${follower.url}/v1/leases/release`, { method: 'POST', body: JSON.stringify({ node: fromDead.node, leases: [{ id: fromDead.id, drawn: 0 }] }) });
    expect(await released.json()).to.deep.equal({ released: 1 });
    const again = await ask(follower, 'late');
    expect(again.body.lease?.requests, 'the given-back credit is granted again').to.be.at.least(1);
    expect(again.body.lease.requests).to.be.at.most(fromDead.requests);
    await stream.body?.cancel();
  });

  it('exactly one leads; kill -9 of the leader hands the lead to the other, and a settlement is charged once', async () => {
    await until(() => replicas.filter(leading).length === 1, 5000, 'no replica leads');
    await new Promise((r) => setTimeout(r, 1500)); // a second try by the follower still loses
    expect(replicas.filter(leading)).to.have.length(1);
    const leader = replicas.find(leading)!;
    const follower = replicas.find((r) => r !== leader)!;
    const c = stripe.create({ name: 'Bo', balance: -1000 });
    await (await admin(follower, 'sweep', 'POST')).json();
    const events = Array.from({ length: 42 }, (_, i) => ({ id: `s-${i}`, consumer: c.id, at: Date.now(), route: null, status: 200 }));
    expect((await fetch(`${follower.url}/v1/usage`, { method: 'POST', body: JSON.stringify({ events }) })).status).to.equal(200);
    await leader.kill('SIGKILL');
    const killedAt = Date.now();
    await until(() => leading(follower), 10_000, 'the follower did not take the lead within 10 s');
    const takeoverMs = Date.now() - killedAt;
    // Both replicas settle at once: one settlement, one charge.
    await Promise.all([admin(follower, 'settle', 'POST'), admin(follower, 'settle', 'POST')]);
    await until(async () => ((await (await admin(follower, `settlements?customer=${c.id}`)).json()) as any).settlements?.every((s: any) => s.status === 'confirmed'), 5000);
    expect(stripe.balanceTransactions.filter((t) => t.customer === c.id).map((t) => t.amount)).to.deep.equal([42]);
    expect(stripe.customers.get(c.id)!.balance).to.equal(-958);
    console.log(`      takeover after kill -9: ${takeoverMs} ms`);
  });

  it('a follower follows rule and template switches, sends a test email itself, and reports the leader\'s last sweep', async () => {
    await until(() => replicas.filter(leading).length === 1, 5000, 'no replica leads');
    const leader = replicas.find(leading)!;
    const follower = replicas.find((r) => r !== leader)!;
    const c = stripe.create({ name: 'Cy', balance: 0 });
    await (await admin(leader, 'sweep', 'POST')).json();
    await until(async () => (await decision(follower, c.id)).status === 402, 3000, 'the follower never blocked the customer without credit');
    // The follower's /health gives the leader's sweep, not the one it read at start.
    const leaderHealth = await (await fetch(`${leader.url}/health`)).json() as Record<string, any>;
    const followerHealth = await (await fetch(`${follower.url}/health`)).json() as Record<string, any>;
    expect(followerHealth.last_successful_sweep).to.equal(leaderHealth.last_successful_sweep).and.not.equal(null);
    // A rule switched off at the leader stops blocking at the follower, without a restart.
    expect((await fetch(`${leader.url}/admin/rules/block`, { method: 'PUT', headers: { authorization: `Bearer ${ADMIN}` }, body: JSON.stringify({ enabled: false }) })).status).to.equal(200);
    await until(async () => (await decision(follower, c.id)).allow === true, 2000, 'the follower still blocks after the rule was switched off');
    // A template switched on at the follower is on at the leader.
    expect((await fetch(`${follower.url}/admin/emails/out-of-credit`, { method: 'PUT', headers: { authorization: `Bearer ${ADMIN}` }, body: JSON.stringify({ active: true }) })).status).to.equal(200);
    await until(async () => ((await (await admin(leader, 'emails')).json()) as any).emails[0].active === true, 2000, 'the leader did not follow the template switch');
    // A test send at the follower goes out from the follower.
    const before = smtp.raw.length;
    const sent = await fetch(`${follower.url}/admin/emails/out-of-credit/test`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN}` }, body: JSON.stringify({ to: 'ops@example.com' }) });
    expect(sent.status).to.equal(200);
    const [mail] = (await smtp.waitForCount(before + 1)).slice(before);
    expect(mail.subject).to.equal('Out of credit');
    expect(mail.to && !Array.isArray(mail.to) ? mail.to.text : '').to.equal('ops@example.com');
  });

  it('the console on a follower reads what the leader wrote, and its rule switch reaches the leader\'s gateway nodes at once', async () => {
    await until(() => replicas.filter(leading).length === 1, 5000, 'no replica leads');
    const leader = replicas.find(leading)!;
    const follower = replicas.find((r) => r !== leader)!;
    const consoleOf = (r: ControlProcess) => new URL(/"url":"([^"]+\/console\/)"/.exec(r.output())![1]).origin;
    await until(() => /payg console listening/.test(follower.output()), 5000, `no console on the follower: ${follower.output()}`);
    const origin = consoleOf(follower);
    const signIn = await fetch(`${origin}/console/api/session`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: ADMIN }) });
    const cookie = signIn.headers.get('set-cookie')!.split(';')[0];
    const { csrf } = (await signIn.json()) as { csrf: string };
    const api = async (p: string, init: RequestInit = {}) => {
      const res = await fetch(`${origin}/console/api/${p}`, { ...init, headers: { cookie, 'x-payg-csrf': csrf, 'content-type': 'application/json' } });
      expect(res.status, p).to.equal(200);
      return res.json() as Promise<any>;
    };
    // The leader sweeps and takes usage; the follower's console shows both, read from the database.
    const c = stripe.create({ name: 'Di', balance: -1000 });
    await (await admin(leader, 'sweep', 'POST')).json();
    const events = Array.from({ length: 7 }, (_, i) => ({ id: `c-${i}`, consumer: c.id, at: Date.now(), route: '/v1/x', status: 200 }));
    expect((await fetch(`${leader.url}/v1/usage`, { method: 'POST', body: JSON.stringify({ events }) })).status).to.equal(200);
    await until(async () => (await api(`customers/${c.id}`).catch(() => undefined))?.unsettled_usage === 7, 3000, 'the follower\'s console never saw the customer\'s usage');
    const page = await api(`customers/${c.id}`);
    expect(page.usage_by_route).to.deep.equal([{ route: '/v1/x', requests: 7, cost: 7 }]);
    const overview = await api('overview');
    const leaderHealth = await (await fetch(`${leader.url}/health`)).json() as Record<string, any>;
    expect(overview.last_sweep.at, 'the follower\'s console reports the leader\'s sweep').to.equal(leaderHealth.last_successful_sweep).and.not.equal(null);
    expect(overview.settlements).to.deep.equal({ pending: 0, retrying: 0, failed: 0, confirmed: 0 });
    // A gateway node streams from the leader; the rule is switched off at the follower's console.
    const stop = new AbortController();
    const stream = await fetch(`${leader.url}/v1/stream?node=n1`, { signal: stop.signal });
    expect(stream.status).to.equal(200);
    let heard = '';
    const reading = (async () => {
      const decoder = new TextDecoder();
      for await (const chunk of stream.body as unknown as AsyncIterable<Uint8Array>) heard += decoder.decode(chunk);
    })().catch(() => undefined);
    await until(() => heard.includes('event: hello'), 2000, 'the stream never said hello');
    expect(await api('rules/block', { method: 'PUT', body: JSON.stringify({ enabled: false }) })).to.deep.equal({ id: 'block', enabled: false });
    await until(() => heard.includes('event: changed\ndata: {"all":true}'), 2000, 'the leader did not tell its gateway nodes that a rule was switched at the follower');
    expect(((await api('rules')).rules as any[]).find((r) => r.id === 'block').enabled).to.equal(false);
    stop.abort();
    await reading;
  });
});
