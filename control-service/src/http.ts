// The control service's HTTP surface: decision API (plugin), webhooks,
// admin API (bearer token), health and metrics. The decision path reads
// memory only.

import http from 'node:http';
import { timingSafeEqual } from 'node:crypto';
import type Stripe from 'stripe';
import type { Logger } from 'pino';
import type { Engine } from './engine';
import type { BalanceSync } from './stripe/sync';
import type { EmailSender } from './emails/sender';
import type { Settler } from './stripe/settlement';
import { z } from 'zod';
import { MICROS_PER_UNIT } from './pricing';
import { mergeContext, SAMPLE_CUSTOMER } from './merge-tags';
import { formatMoney } from './customer';
import type { Metrics } from './metrics';
import type { Store } from './store/store';
import type { Config } from './config';

const MAX_BODY_BYTES = 1024 * 1024;
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

function issuePath(path: Array<string | number>): string {
  return path.reduce<string>((acc, p) => (typeof p === 'number' ? `${acc}[${p}]` : acc ? `${acc}.${p}` : p), '');
}

function tokenMatches(header: string | undefined, token: string): boolean {
  if (!header?.startsWith('Bearer ')) return false;
  const given = Buffer.from(header.slice(7));
  const want = Buffer.from(token);
  return given.length === want.length && timingSafeEqual(given, want);
}

function send(res: http.ServerResponse, status: number, body: unknown): void {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function readBody(req: http.IncomingMessage, limit = MAX_BODY_BYTES): Promise<Buffer | 'too_large'> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > limit) { resolve('too_large'); req.resume(); return; }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

export function createHttpServer(deps: HttpDeps): http.Server {
  const { config, engine, metrics, log } = deps;
  const controlToken = config.secrets.controlToken;
  const adminToken = config.secrets.adminToken;

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
      return send(res, 400, { error: 'bad_request', message: `${issuePath(issue.path) || 'body'}: ${issue.message}` });
    }
    const { events } = parsed.data;
    if (events.length > config.metering.maxBatchEvents) {
      return send(res, 413, { error: 'too_large', message: `${events.length} events; at most ${config.metering.maxBatchEvents} per batch` });
    }
    const result = await engine.ingestUsage(events.map((e) => ({
      id: e.id, consumer: e.consumer, at: typeof e.at === 'number' ? e.at : Date.parse(e.at), route: e.route, status: e.status,
    })));
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

  const admin = async (method: string, parts: string[], req: http.IncomingMessage, res: http.ServerResponse) => {
    if (!adminToken || !tokenMatches(req.headers.authorization, adminToken)) return send(res, 401, { error: 'unauthorized' });
    const [resource, id, sub] = parts;
    if (method === 'GET' && resource === 'cohorts' && !id) {
      const sizes = engine.cohortSizes();
      return send(res, 200, { cohorts: config.cohorts.map((c) => ({ id: c.id, filter: c.filter, size: sizes.get(c.id) ?? 0 })) });
    }
    if (method === 'GET' && resource === 'cohorts' && id && sub === 'members') {
      if (!config.cohorts.some((c) => c.id === id)) return send(res, 404, { error: 'not_found' });
      return send(res, 200, { cohort: id, members: engine.cohortMembers(id) });
    }
    if (method === 'GET' && resource === 'customers' && id) {
      const state = engine.customer(id);
      if (!state) return send(res, 404, { error: 'not_found' });
      const { version, ...customer } = state.customer;
      return send(res, 200, {
        customer, cohorts: state.cohorts,
        estimated_balance: state.estimatedBalance, unsettled_usage: state.unsettledMicros / MICROS_PER_UNIT, decision: JSON.parse(state.decision.json), updated_at: new Date(version).toISOString(),
        history: (await deps.store.history(id)).map((t) => ({ cohort: t.cohort, kind: t.kind, at: new Date(t.at).toISOString(), balance: t.balance })),
      });
    }
    if (method === 'GET' && resource === 'rules' && !id) {
      return send(res, 200, { rules: engine.rules().map(({ rule, enabled }) => ({ id: rule.id, cohort: rule.cohort, enabled, log_only: rule.logOnly, status: rule.status })) });
    }
    if ((method === 'PUT' || method === 'PATCH') && resource === 'rules' && id) {
      const body = await readBody(req);
      let enabled: unknown;
      try { enabled = body === 'too_large' ? undefined : JSON.parse(body.toString()).enabled; } catch { enabled = undefined; }
      if (typeof enabled !== 'boolean') return send(res, 400, { error: 'bad_request', message: 'body must be {"enabled": true|false}' });
      if (!(await engine.setRuleEnabled(id, enabled))) return send(res, 404, { error: 'not_found' });
      log.info({ rule: id, enabled }, 'rule switched');
      return send(res, 200, { id, enabled });
    }
    if (method === 'POST' && resource === 'sweep') {
      if (!deps.sync) return send(res, 503, { error: 'stripe_not_configured' });
      return send(res, 200, await deps.sync.sweep());
    }
    if (resource === 'emails') return adminEmails(method, id, sub, req, res);
    if (method === 'POST' && resource === 'settle') {
      if (!deps.settler) return send(res, 503, { error: 'settlement_not_configured' });
      return send(res, 200, await deps.settler.settle());
    }
    if (method === 'GET' && resource === 'settlements') {
      const q = new URL(req.url ?? '/', 'http://x').searchParams;
      return send(res, 200, { settlements: (await deps.store.settlements(q.get('customer') ?? undefined)).map((r) => ({
        id: r.id, customer: r.customerId, amount: r.amount, currency: r.currency, mode: r.mode, status: r.status, attempts: r.attempts,
        events: [r.fromSeq, r.uptoSeq], idempotency_key: r.idempotencyKey, stripe_ref: r.stripeRef, last_error: r.lastError,
        created_at: new Date(r.createdAt).toISOString(), confirmed_at: r.confirmedAt ? new Date(r.confirmedAt).toISOString() : null,
      })) });
    }
    if (method === 'GET' && resource === 'conflicts') return send(res, 200, { conflicts: engine.conflicts() });
    return send(res, 404, { error: 'not_found' });
  };

  const jsonBody = async (req: http.IncomingMessage): Promise<Record<string, unknown> | undefined> => {
    const body = await readBody(req);
    if (body === 'too_large') return undefined;
    try {
      const v = JSON.parse(body.toString());
      return typeof v === 'object' && v !== null && !Array.isArray(v) ? v : undefined;
    } catch { return undefined; }
  };

  const adminEmails = async (method: string, id: string | undefined, sub: string | undefined, req: http.IncomingMessage, res: http.ServerResponse) => {
    if (method === 'GET' && !id) {
      return send(res, 200, { emails: config.emails.map((t) => ({
        id: t.id, active: engine.isTemplateActive(t.id),
        trigger: t.trigger.kind === 'cohort' ? { cohort: t.trigger.cohort, on: t.trigger.on } : { low_balance_below: t.trigger.belowCents },
        reenroll_after_ms: t.reenrollAfterMs ?? null,
      })) });
    }
    if (method === 'GET' && id === 'log') {
      const q = new URL(req.url ?? '/', 'http://x').searchParams;
      const status = q.get('status') ?? undefined;
      if (status && !['pending', 'sending', 'delivered', 'failed', 'cancelled'].includes(status)) return send(res, 400, { error: 'bad_request', message: 'status must be pending, sending, delivered, failed or cancelled' });
      const limit = Math.min(1000, Math.max(1, Number(q.get('limit') ?? 100) || 100));
      const rows = await deps.store.emailLog({ customerId: q.get('customer') ?? undefined, templateId: q.get('template') ?? undefined, status: status as never, limit });
      return send(res, 200, { emails: rows.map((r) => ({
        id: r.id, template: r.templateId, customer: r.customerId, to: r.to, status: r.status, attempts: r.attempts,
        created_at: new Date(r.createdAt).toISOString(), delivered_at: r.deliveredAt ? new Date(r.deliveredAt).toISOString() : null,
        next_attempt_at: r.status === 'pending' ? new Date(r.nextAttemptAt).toISOString() : null, last_error: r.lastError, message_id: r.messageId,
      })) });
    }
    if (!id || !config.emails.some((t) => t.id === id)) return send(res, 404, { error: 'not_found' });
    if ((method === 'PUT' || method === 'PATCH') && !sub) {
      const active = (await jsonBody(req))?.active;
      if (typeof active !== 'boolean') return send(res, 400, { error: 'bad_request', message: 'body must be {"active": true|false}' });
      await engine.setTemplateActive(id, active);
      log.info({ email: id, active }, 'email template switched');
      return send(res, 200, { id, active });
    }
    if (method === 'POST' && sub === 'test') {
      if (!deps.emails) return send(res, 503, { error: 'smtp_not_configured' });
      const body = await jsonBody(req);
      const to = body?.to;
      if (typeof to !== 'string' || !/^[^@\s]+@[^@\s]+$/.test(to)) return send(res, 400, { error: 'bad_request', message: 'body must be {"to": "<address>", "customer_id"?: "cus_…"}' });
      let customer = SAMPLE_CUSTOMER;
      if (body?.customer_id !== undefined) {
        const state = typeof body.customer_id === 'string' ? engine.customer(body.customer_id) : undefined;
        if (!state) return send(res, 404, { error: 'not_found', message: 'no such customer' });
        customer = { ...state.customer, balance: state.estimatedBalance }; // as the workflow sees it
      }
      const threshold = 1000;
      try {
        const sent = await deps.emails.sendTest(id, to, { ...mergeContext(customer, config.topUp), threshold: { cents: threshold, formatted: formatMoney(threshold, customer.currency) } });
        return send(res, 200, { sent: true, message_id: sent.messageId, smtp_response: sent.response });
      } catch (err) {
        return send(res, 502, { sent: false, error: 'smtp_error', message: (err as Error).message });
      }
    }
    return send(res, 404, { error: 'not_found' });
  };

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
