// The control service's HTTP surface: the plugin-facing decision and usage
// APIs, Stripe webhooks, health and metrics, and the admin API (admin.ts).
// The decision path reads memory only.

import http from 'node:http';
import type Stripe from 'stripe';
import type { Logger } from 'pino';
import { z } from 'zod';
import type { Engine } from '../engine';
import type { BalanceSync } from '../stripe/sync';
import type { EmailSender } from '../emails/sender';
import type { Settler } from '../stripe/settlement';
import type { Metrics } from '../metrics';
import type { Store } from '../store/store';
import { fieldPath, type Config } from '../config';
import { createAdminHandler } from './admin';
import { createBalanceHandler } from './balance';
import { ByteBudget, MAX_BODY_BYTES, readBody, refuseBody, send, tokenMatches } from './util';
import type { UsageEventInput } from '../engine';
import { createLeaseHandler } from './leases';
import type { LeaseDesk } from '../lease-desk';
import type { ChangeStream } from './stream';
import { UNIT_KINDS, type UnitKind } from '../pricing';
import { createTopUpHandler, TOP_UP_PREFIX } from '../top-ups/http';
import { TOP_UP_EVENTS, type TopUps } from '../top-ups/service';

const DECISION_PREFIX = '/v1/decisions/';

export interface HttpDeps {
  config: Config;
  engine: Engine;
  sync: BalanceSync | undefined;
  emails: EmailSender | undefined;
  settler: Settler | undefined;
  store: Store;
  metrics: Metrics;
  log: Logger;
  webhooks: Stripe['webhooks'] | undefined;
  /** True on a replica that does not lead: it sweeps nothing itself, so /health reads the leader's last sweep from the store. */
  followsStoredSweep?(): boolean;
  /** How long a webhook or lease body may take (default PUBLIC_BODY_TIMEOUT_MS; tests shorten it). */
  publicBodyTimeoutMs?: number;
  leases: LeaseDesk;
  stream: ChangeStream;
  /** Top-ups (issue 21): the public page and its webhook events, when top_up.checkout is configured. */
  topUps?: TopUps;
}

const usageEvent = z.object({
  id: z.string().min(1).max(128),
  consumer: z.string().min(1).max(512),
  // ISO 8601 text (what the plugin sends) or epoch milliseconds.
  at: z.union([z.string().refine((t) => !Number.isNaN(Date.parse(t)), 'is not an ISO 8601 time'), z.number().int().nonnegative()]),
  route: z.string().max(512).nullable().default(null),
  status: z.number().int().min(0).max(599),
  // What the gateway measured; each a non-negative integer (see pricing.ts). Unknown kinds are refused.
  // The micros the request reserved from its lease at access (its route's max_cost); settles that much of the lease.
  reserved: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER).optional(),
  units: z.object(Object.fromEntries(UNIT_KINDS.map((k) => [k, z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER).optional()])) as Record<UnitKind, z.ZodOptional<z.ZodNumber>>).strict().optional(),
}).passthrough();

/** Usage dated later than this ahead of our clock is refused: it would sit ahead of every prune. */
export const MAX_FUTURE_USAGE_MS = 5 * 60_000;
/** Stripe's events are a few KB; this fits any of them. */
export const WEBHOOK_BODY_LIMIT = 64 * 1024;
/** Bytes all unauthenticated request bodies together may hold in memory. */
export const PUBLIC_BUFFER_BYTES = 8 * 1024 * 1024;
/** How long an unauthenticated request may take to send its body. */
export const PUBLIC_BODY_TIMEOUT_MS = 10_000;
/** Events validated or stored per turn of the event loop, so decisions keep answering during a big batch. */
const USAGE_CHUNK = 250;

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

export function createHttpServer(deps: HttpDeps): http.Server {
  const { config, engine, metrics, log } = deps;
  const controlToken = config.secrets.controlToken;

  const decisions = (consumerPath: string, req: http.IncomingMessage, res: http.ServerResponse) => {
    if (controlToken && !tokenMatches(req.headers.authorization, controlToken)) return send(res, 401, { error: 'unauthorized' });
    let consumer: string;
    try { consumer = decodeURIComponent(consumerPath); } catch { return send(res, 400, { error: 'bad_consumer', message: 'consumer is not valid URL encoding' }); }
    const answer = engine.decide(consumer);
    metrics.decisions.inc({ outcome: answer.outcome });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(answer.json) });
    res.end(answer.json);
  };

  // A batch may hold up to max_batch_events events of about 200 bytes each.
  const usageBodyLimit = Math.max(MAX_BODY_BYTES, config.metering.maxBatchEvents * 512);
  const maxEvents = config.metering.maxBatchEvents;
  const usage = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    if (controlToken && !tokenMatches(req.headers.authorization, controlToken)) return send(res, 401, { error: 'unauthorized' });
    const body = await readBody(req, usageBodyLimit);
    if (!Buffer.isBuffer(body)) return refuseBody(res, body, usageBodyLimit);
    let doc: unknown;
    try { doc = JSON.parse(body.toString()); } catch { return send(res, 400, { error: 'bad_request', message: 'body is not JSON' }); }
    const raw = (doc as { events?: unknown } | null)?.events;
    if (!Array.isArray(raw)) return send(res, 400, { error: 'bad_request', message: `events: ${raw === undefined ? 'Required' : 'Expected array'}` });
    // Counted before anything is validated, so an oversized batch costs nothing.
    if (raw.length > maxEvents) return send(res, 413, { error: 'too_large', message: `${raw.length} events; at most ${maxEvents} per batch` });

    // One bad event does not cost its batch: the valid ones are stored, the others refused by index.
    const valid: Array<UsageEventInput & { lease?: string; reserved?: number }> = [];
    const refused: Array<{ index: number; error: string }> = [];
    const latest = Date.now() + MAX_FUTURE_USAGE_MS;
    for (let i = 0; i < raw.length; i++) {
      if (i > 0 && i % USAGE_CHUNK === 0) await nextTurn();
      const parsed = usageEvent.safeParse(raw[i]);
      if (!parsed.success) {
        const issue = parsed.error.issues[0];
        refused.push({ index: i, error: `${fieldPath(issue.path, '(event)')}: ${issue.message}` });
        continue;
      }
      const e = parsed.data;
      const at = typeof e.at === 'number' ? e.at : Date.parse(e.at);
      if (at > latest) { refused.push({ index: i, error: `at: is more than ${MAX_FUTURE_USAGE_MS / 60_000} minutes in the future` }); continue; }
      valid.push({ id: e.id, consumer: e.consumer, at, route: e.route, status: e.status, lease: typeof e.lease === 'string' ? e.lease : undefined, reserved: e.reserved, units: e.units });
    }
    let accepted = 0;
    let duplicates = 0;
    const counted: typeof valid = [];
    for (let i = 0; i < valid.length; i += USAGE_CHUNK) {
      if (i > 0) await nextTurn();
      const chunk = valid.slice(i, i + USAGE_CHUNK);
      const r = await engine.ingestUsage(chunk);
      accepted += r.accepted;
      duplicates += r.duplicates;
      for (const e of chunk) if (r.acceptedIds.has(e.id)) counted.push(e);
    }
    // Their cost is unsettled usage now: the leases they were drawn from let go of them. A duplicate
    // was counted (and let go of) the first time: naming another lease now must free nothing.
    deps.leases.settle(counted);
    metrics.usageEvents.inc({ result: 'accepted' }, accepted);
    metrics.usageEvents.inc({ result: 'duplicate' }, duplicates);
    if (refused.length) {
      metrics.usageEvents.inc({ result: 'refused' }, refused.length);
      log.warn({ refused: refused.length, first: refused[0] }, 'usage events refused');
    }
    send(res, 200, { accepted, duplicates, refused });
  };

  const publicBytes = new ByteBudget(PUBLIC_BUFFER_BYTES);
  const webhook = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    const secret = config.secrets.stripeWebhookSecret;
    if (!secret || !deps.webhooks || !deps.sync) { metrics.webhooks.inc({ result: 'disabled' }); return send(res, 503, { error: 'webhooks_disabled' }); }
    const body = await readBody(req, { limit: WEBHOOK_BODY_LIMIT, budget: publicBytes, timeoutMs: deps.publicBodyTimeoutMs ?? PUBLIC_BODY_TIMEOUT_MS });
    if (!Buffer.isBuffer(body)) {
      metrics.webhooks.inc({ result: body });
      return refuseBody(res, body, WEBHOOK_BODY_LIMIT);
    }
    let event: Stripe.Event;
    try {
      event = deps.webhooks.constructEvent(body, String(req.headers['stripe-signature'] ?? ''), secret);
    } catch (err) {
      metrics.webhooks.inc({ result: 'bad_signature' });
      log.warn({ reason: (err as Error).message }, 'webhook rejected: signature check failed');
      return send(res, 400, { error: 'bad_signature' });
    }
    // Recorded as processed only in the transaction that applies it (see BalanceSync.applyEvent).
    if (await deps.store.webhookEventSeen(event.id)) {
      metrics.webhooks.inc({ result: 'duplicate' });
      return send(res, 200, { received: true, duplicate: true });
    }
    try {
      // Top-up events (checkout.session.*, charge.refunded, charge.dispute.created) go to top-ups; the rest to balance sync.
      const result = deps.topUps && TOP_UP_EVENTS.has(event.type) ? await deps.topUps.applyEvent(event) : await deps.sync.applyEvent(event);
      metrics.webhooks.inc({ result });
      // Joined an earlier delivery's flight that stored it, or found it stored: the same answer as the check above.
      send(res, 200, result === 'duplicate' ? { received: true, duplicate: true } : { received: true, result });
    } catch (err) {
      // Stripe could not be read (or the store failed): non-2xx, so Stripe retries.
      metrics.webhooks.inc({ result: 'error' });
      log.error({ err: (err as Error).message, event: event.id }, 'webhook could not be applied; Stripe will retry it');
      send(res, 503, { error: 'unavailable' });
    }
  };
  const admin = createAdminHandler(deps);
  const leases = createLeaseHandler(deps.leases, deps.stream, (allow) => metrics.decisions.inc({ outcome: allow ? 'allow' : 'block' }), deps.publicBodyTimeoutMs ?? PUBLIC_BODY_TIMEOUT_MS);
  const topUpPage = deps.topUps && createTopUpHandler({
    topUps: deps.topUps, checkout: deps.topUps.checkout, secret: deps.topUps.deps.secret, engine, store: deps.store, log,
    budget: publicBytes, bodyTimeoutMs: deps.publicBodyTimeoutMs ?? PUBLIC_BODY_TIMEOUT_MS,
  });
  const balance = createBalanceHandler({ engine, controlToken, consumerHeader: config.balanceApi.consumerHeader, topUp: config.topUp });

  const health = async (res: http.ServerResponse) => {
    let storeOk = true;
    try { await deps.store.ping(); } catch { storeOk = false; }
    if (storeOk && deps.followsStoredSweep?.()) await deps.sync?.readStored().catch(() => undefined);
    const last = deps.sync?.lastSuccessAt;
    const ageSeconds = last === undefined ? null : Math.round((Date.now() - last) / 1000);
    const lastResult = deps.sync?.lastResult;
    const stale = lastResult ? !lastResult.ok : last === undefined;
    send(res, storeOk ? 200 : 503, {
      status: storeOk ? (stale ? 'degraded' : 'ok') : 'down',
      store: storeOk ? 'ok' : 'unreachable',
      customers: engine.size,
      last_successful_sweep: last === undefined ? null : new Date(last).toISOString(),
      last_successful_sweep_age_seconds: ageSeconds,
      stale,
      last_sweep_error: lastResult?.ok === false ? lastResult.error : undefined,
      consumer_conflicts: engine.conflicts().length,
    });
  };

  const server = http.createServer((req, res) => {
    const url = req.url ?? '/';
    const method = req.method ?? 'GET';
    // Hot path first, without URL parsing.
    if (method === 'GET' && url.startsWith(DECISION_PREFIX)) {
      const rest = url.slice(DECISION_PREFIX.length);
      if (rest && !rest.includes('/') && !rest.includes('?')) return decisions(rest, req, res);
    }
    const path = url.split('?')[0];
    const run = async () => {
      if (path.startsWith('/v1/leases') || path === '/v1/stream') {
        if (controlToken && !tokenMatches(req.headers.authorization, controlToken)) return send(res, 401, { error: 'unauthorized' });
        if (await leases(method, path, url, req, res)) return;
      }
      if (method === 'POST' && path === '/v1/usage') return usage(req, res);
      if (method === 'POST' && path === '/webhooks/stripe') return webhook(req, res);
      if (method === 'GET' && path === '/v1/balance') return balance(req, res);
      if (topUpPage && path.startsWith(TOP_UP_PREFIX)) return topUpPage(method, path, req, res);
      if (method === 'GET' && path === '/health') return health(res);
      if (method === 'GET' && path === '/metrics') {
        const text = await metrics.registry.metrics();
        res.writeHead(200, { 'content-type': metrics.registry.contentType });
        return res.end(text);
      }
      if (path.startsWith('/admin/')) return admin(method, path.slice(7).split('/').filter(Boolean), req, res);
      send(res, 404, { error: 'not_found' });
    };
    run().catch((err) => {
      log.error({ err: (err as Error).message, path }, 'request failed');
      if (!res.headersSent) send(res, 500, { error: 'internal' });
    });
  });
  // A client gets seconds, not Node's minutes, to send its headers. Bodies are timed per route
  // (unauthenticated ones only), so keep-alive and long-lived authenticated connections stay up.
  server.headersTimeout = 10_000;
  return server;
}
