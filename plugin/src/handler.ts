// The payg plugin: one method per Kong phase.
//   access: ask (or remember) whether this consumer may pass; end the request with the rule's answer if not.
//   log:    queue one usage event for the control service (not for a request payg itself refused).
// kong-pdk lets a request through when a phase throws, so every phase catches
// its own errors and applies the configured fail mode itself.

import { randomUUID } from 'node:crypto';
import { parseConfig, type ConsumerField, type PaygOptions } from './schema';
import { runtimeFor, type Runtime } from './runtime';
import type { RouteKey } from './lease-cache';
import type { Decision } from './decision';
import { log } from './log';
import { measure } from './measure';
import type { UsageEvent } from './usage-queue';

/** The part of kong-pdk's `kong` object payg uses. */
export interface KongPdk {
  client: { getConsumer(): Promise<unknown> };
  router: { getRoute(): Promise<unknown> };
  response: { exit(status: number, body?: string, headers?: Record<string, string>): Promise<void>; setHeader(name: string, value: string): Promise<unknown> };
  log: { serialize(): Promise<unknown> };
  ctx: { shared: { get(key: string): Promise<unknown>; set(key: string, value: string): Promise<unknown> } };
}

/** Set in kong.ctx.shared when payg ends a request, so its log phase does not charge for it. */
const REFUSED_KEY = 'payg_refused';

const UNAVAILABLE_BODY = JSON.stringify({
  message: 'Billing check unavailable, please retry shortly',
  error: 'payg_unavailable',
});
const UNAVAILABLE_HEADERS = { 'Content-Type': 'application/json' };

function consumerKey(consumer: unknown, field: ConsumerField): string | undefined {
  if (typeof consumer !== 'object' || consumer === null) return undefined;
  const value = (consumer as Record<string, unknown>)[field];
  if (typeof value === 'string' && value !== '') return value;
  if (typeof value === 'number') return String(value);
  return undefined;
}

/** What the usage API accepts; events are normalised to fit, so a real request is never refused. */
const MAX_CONSUMER_LENGTH = 512;
const MAX_ROUTE_LENGTH = 512;

/** A status Kong logged, as the usage API takes it: an integer 0-599; anything else (999, -1, none) is 0. */
function httpStatus(status: unknown): number {
  return typeof status === 'number' && Number.isInteger(status) && status >= 0 && status <= 599 ? status : 0;
}

/** The route as metering.routes keys it (name, else id); null for none. The same at access and log. */
function routeKey(route: unknown): string | null {
  if (typeof route !== 'object' || route === null) return null;
  const { name, id } = route as { name?: unknown; id?: unknown };
  if (typeof name === 'string' && name !== '') return name;
  return typeof id === 'string' && id !== '' ? id : null;
}

function routeName(route: unknown): string | null {
  if (typeof route !== 'string' || route === '') return null;
  return route.length > MAX_ROUTE_LENGTH ? route.slice(0, MAX_ROUTE_LENGTH) : route;
}

export class Plugin {
  private readonly opts: PaygOptions;
  private readonly runtime: Runtime;

  /** Kong's config is validated here, once; a bad one fails StartInstance with the field's name. */
  constructor(config: unknown) {
    this.opts = parseConfig(config);
    this.runtime = runtimeFor(this.opts);
    for (const warning of this.opts.warnings) log.warn({}, `payg config: ${warning}`);
  }

  async access(kong: KongPdk): Promise<void> {
    try {
      await this.decide(kong);
    } catch (err) {
      log.error({ err: String(err) }, 'payg: access phase failed');
      await this.unavailable(kong);
    }
  }

  private async decide(kong: KongPdk): Promise<void> {
    const consumer = consumerKey(await kong.client.getConsumer(), this.opts.consumerField);
    // No authenticated consumer (or one without the configured field): not ours to judge.
    if (consumer === undefined) return;

    // The route decides what a request reserves only with prices by measured units: one PDK call, only then.
    const route: RouteKey = this.runtime.decisions.routePriced ? routeKey(await kong.router.getRoute()) : undefined;
    const cached = this.runtime.decisions.fresh(consumer, route);
    if (cached) return this.apply(kong, cached, consumer);

    const resolution = await this.runtime.decisions.resolve(consumer, route);
    if (resolution.kind === 'UNAVAILABLE') {
      log.warn({ consumer, reason: resolution.reason, detail: resolution.detail, failOpen: this.opts.failOpen },
        'payg: no usable decision');
      return this.unavailable(kong);
    }
    return this.apply(kong, resolution.decision, consumer);
  }

  async log(kong: KongPdk): Promise<void> {
    if (!this.opts.reportUsage) return;
    try {
      const raw = await kong.log.serialize();
      const entry = JSON.parse(typeof raw === 'string' ? raw : JSON.stringify(raw)) as Record<string, unknown> & {
        consumer?: unknown; route?: { id?: string; name?: string } | null;
        response?: { status?: number }; started_at?: number;
      };
      const consumer = consumerKey(entry.consumer, this.opts.consumerField);
      if (consumer === undefined) return;
      // Stripe metadata values hold at most 500 characters: a longer consumer maps to no customer, so bills no one.
      if (consumer.length > MAX_CONSUMER_LENGTH) return;
      const status = httpStatus(entry.response?.status);
      // A request payg refused used nothing. Only error answers need the (one RPC) check.
      if (status >= 400 && await kong.ctx.shared.get(REFUSED_KEY) === 'true') return;
      const units = measure(entry, this.opts.usageUnitsHeader);
      const draw = this.runtime.decisions.takeDraw(consumer, routeKey(entry.route));
      const event: UsageEvent = {
        id: randomUUID(),
        consumer,
        at: new Date(entry.started_at ?? Date.now()).toISOString(),
        route: routeName(entry.route?.name ?? entry.route?.id),
        status,
        lease: draw?.lease,
        ...(draw?.reserved !== undefined ? { reserved: draw.reserved } : {}),
        ...(units ? { units } : {}),
      };
      // Its reservation counts against the credit header until the service has counted it.
      if (draw?.reserved !== undefined) this.runtime.target.leases.credit.track(event);
      this.runtime.usage.push(event);
    } catch (err) {
      log.error({ err: String(err) }, 'payg: could not record usage');
    }
  }

  private async apply(kong: KongPdk, decision: Decision, consumer: string): Promise<void> {
    if (decision.allow) {
      // One more PDK call, only when the operator asked for the header (see credit-book.ts for what it shows).
      const credit = this.opts.creditHeader ? this.runtime.decisions.creditOf(consumer) ?? decision.credit : undefined;
      if (this.opts.creditHeader && credit !== undefined) await kong.response.setHeader(this.opts.creditHeader, String(credit));
      return;
    }
    await this.markRefused(kong);
    await kong.response.exit(decision.status, decision.body, decision.headers);
  }

  private async unavailable(kong: KongPdk): Promise<void> {
    if (this.opts.failOpen) return;
    await this.markRefused(kong);
    await kong.response.exit(503, UNAVAILABLE_BODY, UNAVAILABLE_HEADERS);
  }

  /** Best effort: failing to mark only means the refused request is reported (and priced as its status says). */
  private async markRefused(kong: KongPdk): Promise<void> {
    if (!this.opts.reportUsage) return;
    try { await kong.ctx.shared.set(REFUSED_KEY, 'true'); } catch { /* the exit still happens */ }
  }
}
