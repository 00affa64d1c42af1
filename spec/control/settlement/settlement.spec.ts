// Settlement on the running service, as docs/control-service.md (Settlement)
// promises it: usage that maps to no Stripe customer bills no one, the schedule
// fires by itself, and in meter_events mode an identifier Stripe already holds
// confirms the settlement without charging twice.
import { expect } from 'chai';
import type { RunningService } from '../../../control-service/src/service';
import { NEVER, serviceFixture } from '../../support/fixture';
import { until } from '../../support/until';

describe('settlement', function () {
  this.timeout(20_000);
  const fx = serviceFixture({ prefix: 'payg-settle-' });

  async function start(metering: Record<string, unknown> = {}, stripe: Record<string, unknown> = {}): Promise<RunningService> {
    const svc = await fx.start({ stripe: { timeout_ms: 2000, ...stripe }, metering: { default_cost: 1, ...metering } });
    expect((await svc.sync!.sweep()).ok).to.equal(true);
    return svc;
  }
  const postUsage = async (events: unknown[]) => (await fx.control('/v1/usage', { method: 'POST', body: JSON.stringify({ events }) })).body;
  let seq = 0;
  const usage = (consumer: string) => ({ id: `u-${++seq}`, consumer, at: new Date().toISOString(), route: null, status: 200 });

  it('usage of a consumer that maps to no Stripe customer is stored but never billed', async () => {
    const c = fx.stripe.create({ balance: -1000, metadata: { kong_consumer: 'ada' } });
    const svc = await start();
    expect(await postUsage([usage('ada'), usage('cus_later'), usage('cus_later')])).to.include({ accepted: 3, duplicates: 0 });
    // The unmapped consumer turns up in Stripe afterwards: its earlier usage still bills no one.
    fx.stripe.create({ id: 'cus_later', balance: -1000 });
    expect((await svc.sync!.sweep()).ok).to.equal(true);
    expect(await svc.settler!.settle()).to.include({ confirmed: 1, amount: 1 });
    expect(fx.stripe.balanceTransactions.map((t) => [t.customer, t.amount])).to.deep.equal([[c.id, 1]]);
    expect((await fx.admin('/admin/customers/cus_later')).body).to.include({ unsettled_usage: 0, estimated_balance: -1000 });
  });

  it('the settlement schedule fires by itself (settle.schedule every second)', async () => {
    const c = fx.stripe.create({ balance: -1000 });
    await start({ settle: { schedule: '* * * * * *' } });
    await postUsage([usage(c.id), usage(c.id), usage(c.id)]);
    await until(() => fx.stripe.balanceTransactions.length === 1, 5000, 'no settlement within 5 s of a per-second schedule');
    expect(fx.stripe.balanceTransactions[0]).to.include({ customer: c.id, amount: 3 });
  });

  it('meter_events: an identifier Stripe already holds (sent past the key\'s life) confirms the settlement, charging once', async () => {
    const c = fx.stripe.create({ balance: -1000 });
    const svc = await start({ settle: { mode: 'meter_events', schedule: NEVER } }, { timeout_ms: 300 });
    await postUsage([usage(c.id), usage(c.id)]);
    fx.stripe.holdAnswers(/meter_events/); // Stripe records the event; we never hear it
    expect(await svc.settler!.settle()).to.include({ confirmed: 0, retrying: 1 });
    fx.stripe.holdAnswers(undefined);
    fx.stripe.forgetIdempotencyKeys();
    expect(await svc.settler!.settle()).to.include({ confirmed: 1, failed: 0 });
    expect(fx.stripe.meterEvents).to.have.length(1);
    const [row] = (await fx.admin(`/admin/settlements?customer=${c.id}`)).body.settlements;
    expect(row).to.include({ status: 'confirmed', amount: 2 });
  });
});
