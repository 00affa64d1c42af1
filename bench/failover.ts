// Failover under load: real control-service processes, real plugin servers (fail_open: false,
// timeout_ms 1000) driving requests for two customers: one with ample credit (any refusal of it
// is a refusal of a customer with credit) and one with 200 requests of credit (served beyond it is
// overspend). Four scenarios:
//   SQLite kill -9 · SQLite SIGTERM      one process, stopped and started again on its port
//   PostgreSQL leader kill -9            three replicas, the leader killed, started again later
//   PostgreSQL rolling restart           three replicas, each in turn SIGTERM then started again
// (ONLY=<text> runs only the scenarios whose name contains it.) With one process on SQLite there is no
// service to ask while it is down: requests whose node has no lease left are refused until it is back.
// Prints per scenario: time to first grant (SQLite: from "listening" after the restart to the first
// lease a fresh node is granted; PostgreSQL kill: from the kill to the first lease granted by a
// surviving replica; rolling: the longest, over the restarts, from "listening" to the first lease the
// restarted replica grants), refusals of the customer with credit, and overspend.
// Figures only; nothing is asserted. Usage: npm run bench:failover
import { FailoverRig } from '../spec/support/failover-rig';
import { freshDatabase, mochaHooks } from '../spec/support/postgres';

const TIMEOUT_MS = 1000;
const LIMITED = 200;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Figures { firstGrantMs: number | undefined; refusals: number; refusedAfterBack: number; requests: number; overspend: number; counted: boolean }
/** What a scenario measured: time to first grant, and since when every replica stopped was back (its "listening" line). */
interface Run { firstGrantMs: number | undefined; backAt: number }

async function scenario(name: string, databaseUrl: string | undefined, run: (rig: FailoverRig) => Promise<Run>): Promise<void> {
  // ONLY=<text>: run only the scenarios whose name contains it.
  if (process.env.ONLY && !name.toLowerCase().includes(process.env.ONLY.toLowerCase())) return;
  const rig = new FailoverRig({ databaseUrl, replicas: databaseUrl ? 3 : 1, nodes: 2, balances: [-10_000_000, -LIMITED], timeoutMs: TIMEOUT_MS });
  try {
    await rig.start();
    rig.startLoad(3);
    await sleep(1500);
    const { firstGrantMs, backAt } = await run(rig);
    await sleep(1500);
    await rig.stopLoad();
    const [rich, limited] = rig.customers;
    const refused = rig.answers.filter((a) => a.customer === rich.custom_id && a.status !== 200);
    const refusals = refused.length;
    // A request that started before the service was back may end after it: counted from timeout_ms on.
    const refusedAfterBack = refused.filter((a) => a.at > backAt + TIMEOUT_MS).length;
    const served = rig.served.get(limited.custom_id!)!;
    // Usage counted exactly once: what the store holds equals what was served, once the queues drained.
    let counted = false;
    for (let i = 0; i < 100 && !counted; i++) {
      counted = (await rig.usage(rich.custom_id!)) === rig.served.get(rich.custom_id!) && (await rig.usage(limited.custom_id!)) === served;
      if (!counted) await sleep(100);
    }
    const f: Figures = { firstGrantMs, refusals, refusedAfterBack, requests: rig.answers.length, overspend: Math.max(0, served - LIMITED), counted };
    console.log(`${name.padEnd(28)} time to first grant ${f.firstGrantMs === undefined ? 'none within 30 s' : `${f.firstGrantMs} ms`}; refusals of a customer with credit ${f.refusals} of ${f.requests} requests (${f.refusedAfterBack} once the service was back); overspend ${f.overspend}; usage counted once: ${f.counted ? 'yes' : 'NO'}`);
  } finally {
    await rig.stop();
  }
}

async function main(): Promise<void> {
  console.log(`failover under load: 2 plugin servers × 3 request loops, fail_open false, timeout_ms ${TIMEOUT_MS}; leases at their defaults`);
  for (const signal of ['SIGKILL', 'SIGTERM'] as const) {
    await scenario(`SQLite ${signal === 'SIGKILL' ? 'kill -9' : 'SIGTERM'}`, undefined, async (rig) => {
      await rig.stopReplica(0, signal);
      await sleep(500);
      const ready = await rig.startReplica(0);
      const at = await rig.firstGrant(0, rig.customers[0], 30_000);
      return { firstGrantMs: at === undefined ? undefined : at - ready, backAt: ready };
    });
  }
  await scenario('PostgreSQL leader kill -9', await freshDatabase(), async (rig) => {
    const deadline = Date.now() + 10_000;
    while (rig.leader() === undefined && Date.now() < deadline) await sleep(20);
    const leader = rig.leader() ?? 0;
    const killedAt = Date.now();
    await rig.stopReplica(leader, 'SIGKILL');
    // The others never stopped: every refusal counts.
    const survivor = [0, 1, 2].find((i) => i !== leader)!;
    const at = await rig.firstGrant(survivor, rig.customers[0], 30_000);
    await sleep(1000);
    await rig.startReplica(leader);
    return { firstGrantMs: at === undefined ? undefined : at - killedAt, backAt: 0 };
  });
  await scenario('PostgreSQL rolling restart', await freshDatabase(), async (rig) => {
    let longest: number | undefined = 0;
    for (const i of [0, 1, 2]) {
      await rig.stopReplica(i, 'SIGTERM');
      const ready = await rig.startReplica(i);
      const at = await rig.firstGrant(i, rig.customers[0], 30_000);
      longest = at === undefined || longest === undefined ? undefined : Math.max(longest, at - ready);
      await sleep(1000);
    }
    return { firstGrantMs: longest, backAt: 0 };
  });
  await mochaHooks.afterAll.call(undefined);
}

main().then(() => process.exit(0), (err) => { console.error(err); process.exit(1); });
