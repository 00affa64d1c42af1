// Balance sync: the node-cron sweep over every customer, and webhooks that
// apply a change at once. Sweeps never overlap; a failed sweep keeps the last
// known state, which /health and metrics then show as stale with its age.

import Stripe from 'stripe';
import type { Engine } from '../engine';
import { toCustomer, type StripeGateway } from './gateway';
import type { Store, StoredCustomer } from '../store/store';

const CUSTOMER_EVENTS = new Set(['customer.created', 'customer.updated', 'customer.deleted']);

type Page = Awaited<ReturnType<StripeGateway['listPage']>>;

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
    const last = await this.store.getMeta('last_sweep_success_at');
    if (last) this.lastSuccessAt = Number(last);
  }

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
        await this.engine.apply(stamped, []);
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
    this.opts.onSweep?.(result);
    return result;
  }

  /**
   * Applies a verified webhook event. The customer is re-read from Stripe so
   * the newest state wins whatever order events arrive in; if Stripe cannot be
   * reached, the event's own object applies, ordered by the event's `created`.
   */
  async applyEvent(event: Stripe.Event): Promise<'applied' | 'ignored'> {
    if (!CUSTOMER_EVENTS.has(event.type)) {
      return 'ignored';
    }
    const object = event.data.object as Stripe.Customer;
    const eventVersion = event.created * 1000;
    if (event.type === 'customer.deleted') {
      await this.engine.apply([], [{ id: object.id, version: Math.max(eventVersion, Date.now()) }]);
      return 'applied';
    }
    let current: Awaited<ReturnType<StripeGateway['retrieve']>> | undefined;
    const readAt = Date.now();
    try {
      current = await this.gateway.retrieve(object.id);
    } catch (err) {
      // Stripe says no such customer: a signed event for it creates nothing (as if deleted).
      current = (err as { statusCode?: number }).statusCode === 404 ? 'deleted' : undefined;
    }
    if (current === 'deleted') {
      await this.engine.apply([], [{ id: object.id, version: readAt }]);
    } else if (current) {
      await this.engine.apply([{ ...current, version: readAt }], []);
    } else {
      await this.engine.apply([{ ...toCustomer(object), version: eventVersion }], []);
    }
    return 'applied';
  }
}
