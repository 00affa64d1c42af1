// Balance sync: the node-cron sweep over every customer, and webhooks that
// apply a change at once. Sweeps never overlap; a failed sweep keeps the last
// known state, which /health and metrics then show as stale with its age.

import Stripe from 'stripe';
import type { Engine } from '../engine';
import type { StripeGateway } from './gateway';
import type { Store, StoredCustomer } from '../store/store';

const CUSTOMER_EVENTS = new Set(['customer.created', 'customer.updated', 'customer.deleted']);

type Page = Awaited<ReturnType<StripeGateway['listPage']>>;

/** What a webhook delivery did: applied now, not a customer event, or already applied by an earlier delivery. */
export type WebhookOutcome = 'applied' | 'ignored' | 'duplicate';

export interface SweepResult { ok: boolean; customers: number; pages: number; durationMs: number; applyMs?: number; error?: string }

export class BalanceSync {
  private running: Promise<SweepResult> | undefined;
  lastSuccessAt: number | undefined;
  lastResult: SweepResult | undefined;

  constructor(
    private readonly gateway: StripeGateway,
    private readonly engine: Engine,
    private readonly store: Store,
    private readonly opts: { pageSize: number; onSweep?: (r: SweepResult) => void },
  ) {}

  async init(): Promise<void> {
    await this.readStored();
  }

  /**
   * Takes the last sweep as stored (a follower's /health reports the leader's
   * sweeps this way): its success time, and whether the newest one failed.
   */
  async readStored(): Promise<void> {
    const last = await this.store.getMeta('last_sweep_success_at');
    if (last) this.lastSuccessAt = Math.max(this.lastSuccessAt ?? 0, Number(last));
    const stored = await this.store.getMeta('last_sweep_result');
    if (stored) {
      const r = JSON.parse(stored) as SweepResult & { at: number };
      if (r.at >= (this.lastResultAt ?? 0)) { this.lastResult = r; this.lastResultAt = r.at; }
    }
  }

  private lastResultAt: number | undefined;
  /** Told what a reconciling read found of top-up credits and debits (ref → balance transaction; see top-ups/service.ts). */
  onLedgerRead: ((customerId: string, moves: Map<string, string>) => void) | undefined;

  /** Starts a sweep, or joins the one already running. */
  sweep(): Promise<SweepResult> {
    this.running ??= this.runSweep().finally(() => { this.running = undefined; });
    return this.running;
  }

  get sweeping(): boolean { return this.running !== undefined; }

  private async runSweep(): Promise<SweepResult> {
    const started = Date.now();
    const present = new Set<string>();
    let pages = 0;
    let applyMs = 0;
    let result: SweepResult;
    try {
      // While one page is applied, the next is already being fetched: the
      // work overlaps the wait for Stripe and its rate-limit slot, and only ids
      // are held for the whole sweep.
      let next: Promise<Page> | undefined = this.gateway.listPage(this.opts.pageSize, undefined);
      while (next) {
        const page: Page = await next;
        pages++;
        next = page.hasMore ? this.gateway.listPage(this.opts.pageSize, page.lastId) : undefined;
        next?.catch(() => undefined); // awaited on the next turn; an apply failure must not leave it unhandled
        const applyStarted = Date.now();
        // The page's objects are ours: stamp them rather than copy 100 customers per page.
        const stamped = page.customers as StoredCustomer[];
        for (const c of stamped) c.version = page.fetchedAt;
        const { needsReconcile } = await this.engine.apply(stamped, []);
        // Only customers with a settlement in flight need the extra read.
        for (const c of needsReconcile) await this.reconcile(c);
        applyMs += Date.now() - applyStarted;
        for (const c of page.customers) present.add(c.id);
      }
      // Gone from Stripe since the sweep began: deleted. Known only from a newer webhook: kept (version check).
      const deletes = this.engine.knownIds().filter((id) => !present.has(id)).map((id) => ({ id, version: started }));
      if (deletes.length) await this.engine.apply([], deletes);
      this.lastSuccessAt = Date.now();
      await this.store.setMeta('last_sweep_success_at', String(this.lastSuccessAt));
      result = { ok: true, customers: present.size, pages, durationMs: Date.now() - started, applyMs };
    } catch (err) {
      result = { ok: false, customers: present.size, pages, durationMs: Date.now() - started, applyMs, error: (err as Error).message };
    }
    this.lastResult = result;
    this.lastResultAt = Date.now();
    // Other replicas read it for their /health; a store that is down now cannot take it, and that is all.
    await this.store.setMeta('last_sweep_result', JSON.stringify({ ...result, at: this.lastResultAt })).catch(() => undefined);
    this.opts.onSweep?.(result);
    return result;
  }

  /**
   * A plain read that could not be placed against a settlement in flight: the
   * customer's balance transactions give the balance and the settlements
   * applied in one answer, and both apply in one step.
   */
  private async reconcile(plain: StoredCustomer, webhookEventId?: string): Promise<void> {
    const since = this.engine.oldestPendingSettlementAt(plain.id) ?? plain.version;
    const read = await this.gateway.balanceLedger(plain.id, since);
    if (read.moves.size) this.onLedgerRead?.(plain.id, read.moves);
    if (read.deleted) {
      await this.engine.apply([], [{ id: plain.id, version: read.startedAt }], { webhookEventId });
      return;
    }
    await this.engine.applyReconciled({ ...plain, balance: read.balance ?? plain.balance, version: read.startedAt }, read.applied, { webhookEventId });
  }

  /** Reads one customer again and applies it as a webhook would (top-ups: after a credit or debit is confirmed). */
  async refresh(customerId: string): Promise<void> {
    const { customer, startedAt } = await this.gateway.retrieve(customerId);
    if (customer === 'deleted') { await this.engine.apply([], [{ id: customerId, version: startedAt }]); return; }
    const read: StoredCustomer = { ...customer, version: startedAt };
    const { needsReconcile } = await this.engine.apply([read], []);
    if (needsReconcile.length) await this.reconcile(read);
  }

  /** Webhook events being applied now, by event id: a delivery of one joins the flight already under way. */
  private readonly applying = new Map<string, Promise<WebhookOutcome>>();

  /**
   * Applies a verified webhook event. The customer is re-read from Stripe so
   * the newest state wins whatever order events arrive in (the event's own
   * object is never trusted: `created` has one-second resolution). When Stripe
   * cannot be read this throws, and the caller answers non-2xx so Stripe
   * retries. The event id is recorded in the transaction that applies it.
   *
   * Deliveries of one event id that arrive together share one re-read (Stripe's
   * rate limit is shared with the sweep): each of them gets the outcome of that
   * one flight, so every delivery is answered 2xx only once the change is
   * stored, and all of them fail when it fails. A flight is forgotten as soon
   * as it ends: a failed one is not remembered as done (the next delivery reads
   * again), and a delivery that comes after a successful one finds the event id
   * stored ('duplicate'), checked inside the flight so it cannot slip between
   * the end of one flight and the store's record of it.
   */
  applyEvent(event: Stripe.Event): Promise<WebhookOutcome> {
    const joined = this.applying.get(event.id);
    if (joined) return joined;
    const flight = this.applyOnce(event).finally(() => { this.applying.delete(event.id); });
    this.applying.set(event.id, flight);
    return flight;
  }

  private async applyOnce(event: Stripe.Event): Promise<WebhookOutcome> {
    if (!CUSTOMER_EVENTS.has(event.type)) {
      return 'ignored';
    }
    if (await this.store.webhookEventSeen(event.id)) return 'duplicate';
    const object = event.data.object as Stripe.Customer;
    const { customer, startedAt } = await this.gateway.retrieve(object.id);
    if (customer === 'deleted') {
      await this.engine.apply([], [{ id: object.id, version: startedAt }], { webhookEventId: event.id });
      return 'applied';
    }
    const read: StoredCustomer = { ...customer, version: startedAt };
    const { needsReconcile } = await this.engine.apply([read], [], { webhookEventId: event.id });
    if (needsReconcile.length) await this.reconcile(read, event.id);
    return 'applied';
  }
}
