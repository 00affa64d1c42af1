// Events in Stripe's shape (id, object 'event', type, data.object as it was,
// previous_attributes, created, api_version, livemode, pending_webhooks,
// request {id, idempotency_key}), listed and retrieved at /v1/events, and
// delivered signed (Stripe-Signature, t=…,v1=…) to the configured endpoints —
// again, reordered or all at once on demand.
import Stripe from 'stripe';
import type { StripeEmulator } from './emulator';
import type { Route } from './routes';
import { arr, int, listPage, missing, obj, queryParams, rid, str } from './params';

export interface EmuEvent {
  id: string; object: 'event'; type: string; created: number;
  data: { object: unknown; previous_attributes?: Record<string, unknown> }; livemode: false; api_version: string;
  pending_webhooks?: number; request?: { id: string | null; idempotency_key: string | null };
}
export interface WebhookEndpoint { url: string; secret: string }
export interface RedeliverOptions { order?: 'as-is' | 'reverse' | 'shuffle'; seed?: number; times?: number; concurrent?: boolean }

export function makeEvent(emu: StripeEmulator, type: string, object: unknown, previous?: Record<string, unknown>): EmuEvent {
  return {
    id: rid('evt'), object: 'event', api_version: emu.apiVersion, created: emu.tick(),
    data: { object: JSON.parse(JSON.stringify(object)), ...(previous ? { previous_attributes: JSON.parse(JSON.stringify(previous)) } : {}) },
    livemode: false, pending_webhooks: emu.endpoints().length, request: { ...emu.currentRequest }, type,
  };
}

export async function deliverEvent(event: EmuEvent, endpoint: WebhookEndpoint, opts: { timestamp?: number; secret?: string; payload?: string } = {}): Promise<number> {
  const payload = opts.payload ?? JSON.stringify(event);
  const header = Stripe.webhooks.generateTestHeaderString({ payload, secret: opts.secret ?? endpoint.secret, timestamp: opts.timestamp });
  const res = await fetch(endpoint.url, { method: 'POST', headers: { 'content-type': 'application/json; charset=utf-8', 'stripe-signature': header, 'user-agent': 'Stripe/1.0 (+https://stripe.com/docs/webhooks)' }, body: payload });
  await res.text();
  return res.status;
}

export async function redeliver(emu: StripeEmulator, events: EmuEvent[], opts: RedeliverOptions = {}): Promise<number[]> {
  const copies: EmuEvent[] = [];
  for (const e of events) for (let i = 0; i < (opts.times ?? 1); i++) copies.push(e);
  if (opts.order === 'reverse') copies.reverse();
  if (opts.order === 'shuffle') {
    let s = opts.seed ?? 1;
    const next = () => { s = (s * 1103515245 + 12345) % 2147483648; return s / 2147483648; };
    for (let i = copies.length - 1; i > 0; i--) { const j = Math.floor(next() * (i + 1)); [copies[i], copies[j]] = [copies[j], copies[i]]; }
  }
  const jobs = copies.flatMap((e) => emu.endpoints().map((endpoint) => () => deliverEvent(e, endpoint)));
  if (opts.concurrent) return Promise.all(jobs.map((j) => j()));
  const out: number[] = [];
  for (const j of jobs) out.push(await j());
  return out;
}

export const eventRoutes: Route[] = [
  {
    method: 'GET', path: /^\/v1\/events\/([^/]+)$/, run(emu, m) {
      const event = emu.events.find((e) => e.id === m[1]);
      if (!event) throw missing('event', m[1], 'id');
      return event;
    },
  },
  {
    method: 'GET', path: /^\/v1\/events$/, run(emu, _m, _b, query) {
      const p = queryParams(query, { type: str(), types: arr(str()), created: obj({ gt: int(), gte: int(), lt: int(), lte: int() }), delivery_success: str() });
      const matches = (type: string) => {
        if (p.type !== undefined) return new RegExp(`^${String(p.type).replace(/[.]/g, '\\.').replace(/\*/g, '.*')}$`).test(type);
        if (p.types !== undefined) return (p.types as string[]).includes(type);
        return true;
      };
      const c = p.created ?? {};
      const all = [...emu.events].reverse().filter((e) => matches(e.type)
        && (c.gt === undefined || e.created > c.gt) && (c.gte === undefined || e.created >= c.gte)
        && (c.lt === undefined || e.created < c.lt) && (c.lte === undefined || e.created <= c.lte));
      return listPage(all, query, '/v1/events', 'event');
    },
  },
];
