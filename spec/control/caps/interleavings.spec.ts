// Team caps on seeded interleavings through the real service (issue 23): three
// gateway nodes speak the lease API as the plugin does (ask with `previous`,
// draw, report usage naming the lease, give leases back), in a random order,
// on a clock that crosses UTC midnight and month ends while leases are open;
// the team is topped up now and then. Whatever the order, what the nodes drew
// in each UTC day and month stays within each consumer's cap, and in all within
// the credit the team was given. SQLite (one service) and PostgreSQL (two
// replicas, the nodes split between them). The seed is printed; a failure names
// it with the step.
import { expect } from 'chai';
import type { RunningService } from '../../../control-service/src/service';
import { CONTROL, serviceFixture } from '../../support/fixture';
import { freshDatabase } from '../../support/postgres';
import { seededFor } from '../../support/seeded-random';

const CAPS: Record<string, { daily?: number; monthly?: number }> = { a: { daily: 5 }, b: { daily: 7, monthly: 11 }, c: {} };
const LEASE_TTL = 10_000;
const dayOf = (t: number) => new Date(t).toISOString().slice(0, 10);
const monthOf = (t: number) => new Date(t).toISOString().slice(0, 7);

interface Held { id: string; requests: number; drawn: number; expiresAt: number }
interface Pending { id: string; consumer: string; at: number; lease: string; heldUntil: number }

describe('caps on seeded interleavings through the service: nodes leasing, drawing, reporting, releasing across UTC boundaries', function () {
  this.timeout(240_000);
  const fx = serviceFixture({ prefix: 'payg-caps-mix-' });

  for (const store of ['SQLite', 'PostgreSQL, two replicas'] as const) {
    it(`${store}: drawn per consumer ≤ its cap in every UTC day and month, and in all ≤ the team's credit`, async () => {
      const { seed, random } = seededFor(`caps interleavings ${store}`);
      const int = (n: number) => Math.floor(random() * n);
      let clock = Date.UTC(2025, 0, 31, 23, 59, 0);
      const env = store === 'SQLite' ? {} : { PAYG_DATABASE_URL: await freshDatabase() };
      const doc = {
        ...(store === 'SQLite' ? {} : { store: { sqlite: undefined, postgres: {} } }),
        cohorts: [], rules: [{ id: 'no-credit', limit: 'no_credit' }],
        metering: { default_cost: 1, settle: { enabled: false } },
        leases: { ttl_ms: LEASE_TTL, usage_grace_ms: 60_000, initial_requests: 2, recall_wait_ms: 0 },
      };
      const replicas: RunningService[] = [await fx.start(doc, { env, now: () => clock })];
      if (store !== 'SQLite') replicas.push(await fx.start(doc, { env, now: () => clock }));
      const rounds = store === 'SQLite' ? 12 : 5;
      let seq = 0;
      for (let round = 0; round < rounds; round++) {
        const where = () => `seed ${seed} (PAYG_TEST_SEED=${seed}) round ${round}`;
        // Somewhere in the last minutes of a day (a month's last day a third of the time).
        const month = int(12);
        const lastDay = new Date(Date.UTC(2025, month + 1, 0)).getUTCDate();
        clock = Date.UTC(2025, month, random() < 0.33 ? lastDay : 1 + int(lastDay - 1), 23, 58 + int(2), int(60));
        // Each round's team has consumers of its own (a3, b3, c3): a name claimed twice would be a conflict.
        const metadata: Record<string, string> = { kong_consumer: `a${round},b${round},c${round}` };
        for (const [c, caps] of Object.entries(CAPS)) {
          if (caps.daily !== undefined) metadata[`payg_cap_daily.${c}${round}`] = String(caps.daily);
          if (caps.monthly !== undefined) metadata[`payg_cap_monthly.${c}${round}`] = String(caps.monthly);
        }
        let given = 5 + int(20);
        const team = fx.stripe.create({ balance: -given, metadata });
        for (const r of replicas) await r.sync!.sweep();
        const nodes = ['n0', 'n1', 'n2'].map((id, i) => ({ id, url: replicas[i % replicas.length].url, held: new Map<string, Held>(), pending: [] as Pending[] }));
        const drawn = { day: new Map<string, number>(), month: new Map<string, number>(), all: 0 };
        const call = async (url: string, path: string, body: unknown) => {
          const res = await fetch(`${url}${path}`, { method: 'POST', body: JSON.stringify(body), headers: { authorization: `Bearer ${CONTROL}`, 'content-type': 'application/json' } });
          expect(res.status, `${where()}: ${path}`).to.equal(200);
          return res.json() as Promise<any>;
        };
        const report = async (node: typeof nodes[number], events: Pending[]) => {
          if (!events.length) return;
          node.pending = node.pending.filter((p) => !events.includes(p));
          await call(node.url, '/v1/usage', { events: events.map((e) => ({ id: e.id, consumer: e.consumer, at: e.at, route: 'r', status: 200, lease: e.lease })) });
        };
        for (let step = 0; step < 120; step++) {
          const node = nodes[int(nodes.length)];
          const consumer = `${'abc'[int(3)]}${round}`;
          const r = random();
          if (r < 0.5) {
            // A request: drawn from the node's lease while it lasts, else a lease is asked for (giving the old one back).
            const l = node.held.get(consumer);
            if (l && l.drawn < l.requests && clock < l.expiresAt) {
              l.drawn++;
              node.pending.push({ id: `e${++seq}`, consumer, at: clock, lease: l.id, heldUntil: l.expiresAt + 60_000 });
              for (const [k, m] of [[`${consumer} ${dayOf(clock)}`, drawn.day], [`${consumer} ${monthOf(clock)}`, drawn.month]] as const) m.set(k, (m.get(k) ?? 0) + 1);
              drawn.all++;
              continue;
            }
            const answer = await call(node.url, '/v1/leases', { node: node.id, consumer, want: 1 + int(4), ...(l ? { previous: { id: l.id, drawn: l.drawn } } : {}) });
            node.held.delete(consumer);
            if (answer.allow && answer.lease) node.held.set(consumer, { id: answer.lease.id, requests: answer.lease.requests, drawn: 0, expiresAt: clock + answer.lease.ttl_ms });
            else expect(answer.allow, `${where()} step ${step}: ${JSON.stringify(answer)}`).to.equal(false);
          } else if (r < 0.7) {
            // The node reports some of its queued usage (not always in order).
            await report(node, node.pending.filter(() => random() < 0.7));
          } else if (r < 0.8) {
            // The node gives back what it holds for a consumer (a recall, a drop, a shutdown).
            const l = node.held.get(consumer);
            if (l) { node.held.delete(consumer); await call(node.url, '/v1/leases/release', { node: node.id, leases: [{ id: l.id, drawn: l.drawn }] }); }
          } else if (r < 0.97) {
            // Time passes, now and then across midnight. A node reports its usage within the grace (as the plugin does).
            const next = clock + (random() < 0.9 ? int(4000) : int(90_000));
            for (const n of nodes) await report(n, n.pending.filter((p) => p.heldUntil <= next + 1000));
            clock = next;
          } else {
            const more = 1 + int(6);
            given += more;
            fx.stripe.addBalanceTransaction(team.id, -more);
            for (const rep of replicas) await rep.sync!.sweep();
          }
          for (const [k, n] of drawn.day) {
            const cap = CAPS[k[0]].daily;
            if (cap !== undefined && n > cap) expect.fail(`${where()} step ${step}: ${k} drew ${n}, over its daily cap ${cap}`);
          }
          for (const [k, n] of drawn.month) {
            const cap = CAPS[k[0]].monthly;
            if (cap !== undefined && n > cap) expect.fail(`${where()} step ${step}: ${k} drew ${n}, over its monthly cap ${cap}`);
          }
          if (drawn.all > given) expect.fail(`${where()} step ${step}: the team drew ${drawn.all}, over the ${given} it was given`);
        }
        for (const n of nodes) {
          await report(n, n.pending);
          const leases = [...n.held.values()].map((l) => ({ id: l.id, drawn: l.drawn }));
          if (leases.length) await call(n.url, '/v1/leases/release', { node: n.id, leases });
        }
      }
    });
  }
});
