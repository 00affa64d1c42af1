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
import { createLeaseHandler } from './leases';
import type { LeaseDesk } from '../lease-desk';
import type { ChangeStream } from './stream';
import { MAX_BODY_BYTES, readBody, send, tokenMatches } from './util';

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
  leases: LeaseDesk;
  stream: ChangeStream;
}

const usageBatch = z.object({
  events: z.array(z.object({
    id: z.string().min(1).max(128),
    consumer: z.string().min(1).max(512),
    // ISO 8601 text (what the plugin sends) or epoch milliseconds.
    at: z.union([z.string().refine((t) => !Number.isNaN(Date.parse(t)), 'is not an ISO 8601 time'), z.number().int().nonnegative()]),
    route: z.string().max(512).nullable().default(null),
    status: z.number().int().min(0).max(599),
  }).passthrough()),
}).passthrough();

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
  const usage = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    if (controlToken && !tokenMatches(req.headers.authorization, controlToken)) return send(res, 401, { error: 'unauthorized' });
    const body = await readBody(req, usageBodyLimit);
    if (body === 'too_large') return send(res, 413, { error: 'too_large', message: `body over ${usageBodyLimit} bytes; send smaller batches` });
    let doc: unknown;
    try { doc = JSON.parse(body.toString()); } catch { return send(res, 400, { error: 'bad_request', message: 'body is not JSON' }); }
    const parsed = usageBatch.safeParse(doc);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      return send(res, 400, { error: 'bad_request', message: `${fieldPath(issue.path, 'body')}: ${issue.message}` });
    }
    const { events } = parsed.data;
    if (events.length > config.metering.maxBatchEvents) {
      return send(res, 413, { error: 'too_large', message: `${events.length} events; at most ${config.metering.maxBatchEvents} per batch` });
    }
    const result = await engine.ingestUsage(events.map((e) => ({
      id: e.id, consumer: e.consumer, at: typeof e.at === 'number' ? e.at : Date.parse(e.at), route: e.route, status: e.status,
    })));
    // Their cost is unsettled usage now: the leases they were drawn from let go of them.
    deps.leases.settle(events);
    metrics.usageEvents.inc({ result: 'accepted' }, result.accepted);
    metrics.usageEvents.inc({ result: 'duplicate' }, result.duplicates);
    send(res, 200, result);
  };

  const webhook = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    const secret = config.secrets.stripeWebhookSecret;
    if (!secret || !deps.webhooks || !deps.sync) { metrics.webhooks.inc({ result: 'disabled' }); return send(res, 503, { error: 'webhooks_disabled' }); }
    const body = await readBody(req);
    if (body === 'too_large') return send(res, 413, { error: 'too_large' });
    let event: Stripe.Event;
    try {
      event = deps.webhooks.constructEvent(body, String(req.headers['stripe-signature'] ?? ''), secret);
    } catch (err) {
      metrics.webhooks.inc({ result: 'bad_signature' });
      log.warn({ reason: (err as Error).message }, 'webhook rejected: signature check failed');
      return send(res, 400, { error: 'bad_signature' });
    }
    if (!(await deps.store.claimWebhookEvent(event.id, Date.now()))) {
      metrics.webhooks.inc({ result: 'duplicate' });
      return send(res, 200, { received: true, duplicate: true });
    }
    try {
      const result = await deps.sync.applyEvent(event);
      metrics.webhooks.inc({ result });
      send(res, 200, { received: true, result });
    } catch (err) {
      await deps.store.forgetWebhookEvent(event.id); // let Stripe's retry apply it
      metrics.webhooks.inc({ result: 'error' });
      log.error({ err: (err as Error).message, event: event.id }, 'webhook could not be applied');
      send(res, 500, { error: 'internal' });
    }
  };
  const admin = createAdminHandler(deps);
  const leases = createLeaseHandler(deps.leases, deps.stream, (allow) => metrics.decisions.inc({ outcome: allow ? 'allow' : 'block' }));

  const health = async (res: http.ServerResponse) => {
    let storeOk = true;
    try { await deps.store.ping(); } catch { storeOk = false; }
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

  return http.createServer((req, res) => {
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
      if (method === 'GET' && path === '/health') return health(res);
      if (method === 'GET' && path === '/metrics') {
        const text = await metrics.registry.metrics();
        res.writeHead(200, { 'content-type': metrics.registry.contentType });
        return res.end(text);
      }
      if (path.startsWith('/admin/')) return admin(method, path.slice(7).split('/').filter(Boolean).map(decodeURIComponent), req, res);
      send(res, 404, { error: 'not_found' });
    };
    run().catch((err) => {
      log.error({ err: (err as Error).message, path }, 'request failed');
      if (!res.headersSent) send(res, 500, { error: 'internal' });
    });
  });
}
