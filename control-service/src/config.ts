// Loads and validates the control service's YAML config at start-up. Every
// error names the field and why; secrets come only from the environment.

import fs from 'node:fs';
import path from 'node:path';
import cron from 'node-cron';
import YAML from 'yaml';
import { z } from 'zod';
import type { CohortDef, Filter } from './cohorts';
import { compileTemplate, escapingFor, mergeContext, SAMPLE_CUSTOMER, type TopUpConfig } from './merge-tags';
import type { RuleDef } from './rules';
import type { CapsConfig } from './caps/limits';
import { DEFAULT_LIMIT_BODIES } from './caps/refusal';
import { parseCost, UNIT_KINDS, type Pricing, type RoutePrice, type UnitKind } from './pricing';
import { signToken } from './top-ups/token';
import type { CheckoutOptions } from './top-ups/core';
import { compileEmailPart, parseDuration, readTemplateFile, TemplateError, type EmailTemplate } from './emails/templates';

const comparison = z.object({
  gte: z.number().int().optional(), gt: z.number().int().optional(),
  lte: z.number().int().optional(), lt: z.number().int().optional(), eq: z.number().int().optional(),
}).strict().refine((c) => Object.keys(c).length > 0, 'needs at least one of gte, gt, lte, lt, eq');

const filter: z.ZodType<Filter> = z.lazy(() => z.object({
  balance: comparison.optional(),
  metadata: z.record(z.object({ equals: z.string().optional(), exists: z.boolean().optional() }).strict()).optional(),
  email: z.object({ present: z.boolean() }).strict().optional(),
  all: z.array(filter).min(1).optional(),
  any: z.array(filter).min(1).optional(),
}).strict().refine((f) => Object.keys(f).length > 0, 'an empty filter matches everyone; say what it filters'));

const cost = z.union([z.number(), z.string()]).refine((v) => parseCost(v) !== undefined, 'is not a cost: a non-negative amount of the smallest currency unit with at most 6 decimals, e.g. 1 or "0.25"');

/** A fixed cost, or a fee plus prices per measured unit with the most one request may cost (see pricing.ts). */
const price = z.union([cost, z.object({
  request: cost.optional(),
  ...Object.fromEntries(UNIT_KINDS.map((k) => [k, cost.optional()])) as Record<UnitKind, z.ZodOptional<typeof cost>>,
  max_cost: cost.optional(),
}).strict()]);
type RawPrice = z.infer<typeof price>;

const duration = z.string()
  .refine((t) => parseDuration(t) !== undefined, 'is not a duration like 90s, 15m, 1h or 2d')
  .refine((t) => (parseDuration(t) ?? 1) > 0, 'must be longer than zero');

const id = z.string().regex(/^[a-z0-9][a-z0-9_-]*$/, 'use lower-case letters, digits, - and _');

/** A cap in the customer's currency's smallest unit (cents for USD): a whole number, 0 refuses every metered request. */
const capAmount = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER / 1_000_000);

const rawConfig = z.object({
  listen: z.object({
    host: z.string().default('127.0.0.1'),
    port: z.number().int().min(0).max(65535).default(8080),
  }).strict().default({}),
  store: z.object({
    sqlite: z.string().optional(),
    // Several replicas share one PostgreSQL database; the URL (it holds a password) is best given as PAYG_DATABASE_URL.
    postgres: z.object({
      url: z.string().optional(),
      pool_size: z.number().int().min(2).max(100).default(10),
    }).strict().optional(),
  }).strict().refine((s) => !(s.sqlite && s.postgres), 'set either sqlite or postgres, not both').default({}),
  auth: z.object({ allow_unauthenticated: z.boolean().default(false) }).strict().default({}),
  balance_api: z.object({
    consumer_header: z.string().regex(/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/, 'is not an HTTP header name')
      // Authorization carries the control token on this route: it never names a consumer.
      .refine((h) => h.toLowerCase() !== 'authorization', 'cannot be Authorization: it carries the control token').default('X-Consumer-Custom-ID'),
  }).strict().default({}),
  stripe: z.object({
    poll: z.string().default('*/1 * * * *').refine((s) => cron.validate(s), 'is not a valid cron expression'),
    consumer_metadata_key: z.string().min(1).default('kong_consumer'),
    max_requests_per_second: z.number().positive().max(100).default(20),
    page_size: z.number().int().min(1).max(100).default(100),
    timeout_ms: z.number().int().positive().default(20000),
    retry: z.object({
      max_attempts: z.number().int().min(1).max(20).default(6),
      base_delay_ms: z.number().int().min(1).default(250),
      max_delay_ms: z.number().int().min(1).default(10000),
    }).strict().default({}),
  }).strict().default({}),
  unknown_consumer: z.enum(['allow', 'block']).default('allow'),
  decision_ttl_ms: z.number().int().min(0).max(3_600_000).default(5000),
  // ---- top_up (issue 21): an operator's own flow (url), or payg's own page and Stripe Checkout (checkout) ----
  top_up: z.object({
    url: z.string().url().optional(),
    metadata_key: z.string().min(1).optional(),
    // A dispute of a top-up payment takes its credit back (as a refund does) unless this is false.
    debit_disputes: z.boolean().default(true),
    checkout: z.object({
      // The page is served at /top-up/ and its forms post there: the public URL is an origin, with no path of its own.
      public_url: z.string().url().refine((u) => /^https?:\/\//i.test(u), 'must be an http(s) URL')
        .refine((u) => { const p = new URL(u); return (p.pathname === '/' || p.pathname === '') && !p.search && !p.hash; }, 'must be an origin such as https://api.example.com, without a path: the page is served at /top-up/'),
      link_ttl: duration.default('30d'),
      currencies: z.record(z.string().regex(/^[a-z]{3}$/, 'use a lower-case ISO currency code such as usd'), z.object({
        presets: z.array(z.number().int().positive()).max(8).default([]),
        min: z.number().int().positive(),
        max: z.number().int().positive(),
      }).strict()).refine((c) => Object.keys(c).length > 0, 'name at least one currency, e.g. usd: { presets: [1000, 2500], min: 500, max: 50000 }'),
      default_currency: z.string().regex(/^[a-z]{3}$/, 'use a lower-case ISO currency code such as usd').optional(),
      product_name: z.string().min(1).max(120).default('API credit'),
      invoice_creation: z.boolean().default(false),
      automatic_tax: z.boolean().default(false),
      checkout_origins: z.array(z.string().url().refine((u) => /^https?:\/\//i.test(u), 'must be an http(s) URL')).default(['https://checkout.stripe.com']),
      resend_interval: duration.default('10s'),
    }).strict().optional(),
  }).strict().refine((t) => !(t.url && t.checkout), 'set either url (your own top-up flow) or checkout (payg\'s page and Stripe Checkout), not both').default({}),
  cohorts: z.array(z.object({ id, description: z.string().optional(), filter }).strict()).default([]),
  rules: z.array(z.object({
    id,
    cohort: id.optional(),
    // Issue 23: a rule that words the refusal of one limit instead of refusing a cohort.
    limit: z.enum(['no_credit', 'consumer_cap']).optional(),
    enabled: z.boolean().default(true),
    log_only: z.boolean().default(false),
    status: z.number().int().min(400).max(599).default(402),
    headers: z.record(z.string()).default({ 'Content-Type': 'application/json' }),
    body: z.string().optional(),
  }).strict()).default([]),
  // ---- issue 23 (team caps): per-consumer spending caps ----
  caps: z.object({
    daily: capAmount.optional(),
    monthly: capAmount.optional(),
    metadata_prefix: z.string().regex(/^[a-z][a-z0-9_]{0,15}$/, 'must be 1-16 characters: a lower-case letter, then lower-case letters, digits or _').default('payg_cap'),
  }).strict().default({}),
  // ---- end issue 23 ----
  metering: z.object({
    default_cost: price.default(0),
    routes: z.record(price).default({}),
    count_upstream_5xx: z.boolean().default(false),
    low_credit_requests: z.number().int().min(0).default(100),
    min_ttl_ms: z.number().int().min(0).default(0),
    // Gone: nodes identify themselves and serve only on leases, so there is nothing to count by hand.
    gateway_nodes: z.unknown().refine((v) => v === undefined, 'is no longer used: each plugin server identifies itself and serves only on credit leased to it, so overspend no longer depends on a node count; delete this key').optional(),
    max_batch_events: z.number().int().min(1).max(100_000).default(10_000),
    keep_events: duration.default('7d'),
    settle: z.object({
      mode: z.enum(['balance_transactions', 'meter_events']).default('balance_transactions'),
      schedule: z.string().default('*/1 * * * *').refine((s) => cron.validate(s), 'is not a valid cron expression'),
      meter_event_name: z.string().min(1).default('payg_api_usage'),
      enabled: z.boolean().default(true),
    }).strict().default({}),
  }).strict().default({}),
  leases: z.object({
    ttl_ms: z.number().int().min(100).max(600_000).default(10_000),
    usage_grace_ms: z.number().int().min(0).max(3_600_000).default(60_000),
    initial_requests: z.number().int().min(1).default(10),
    max_requests: z.number().int().min(1).default(10_000),
    expire_interval_ms: z.number().int().min(10).max(60_000).default(1000),
    // Long enough for a recalled node to send its queued usage and have it settled (a push, one usage
    // POST and its commit: a few ms idle, ~50–100 ms on a busy host), short enough that the lease call
    // still answers within the plugin's default timeout_ms (250): 100 ms are left for the call itself.
    recall_wait_ms: z.number().int().min(0).max(10_000).default(150),
  }).strict().default({}),
  email_delivery: z.object({
    messages_per_second: z.number().positive().max(1000).default(10),
    max_attempts: z.number().int().min(1).max(100).default(8),
    retry_base_delay_ms: z.number().int().min(1).default(1000),
    retry_max_delay_ms: z.number().int().min(1).default(300_000),
    poll_interval_ms: z.number().int().min(10).max(60_000).default(1000),
    recurring_check_interval: duration.default('1m'),
    timeout_ms: z.number().int().min(100).default(15_000),
  }).strict().default({}),
  emails: z.array(z.object({
    id,
    cohort: id.optional(),
    on: z.enum(['enter', 'leave']).optional(),
    low_balance: z.object({ below: z.array(z.number().int().positive()).min(1) }).strict().optional(),
    active: z.boolean().default(true),
    from: z.object({ address: z.string().email(), name: z.string().optional() }).strict(),
    subject: z.string().min(1),
    html: z.string().min(1).optional(),
    text: z.string().min(1).optional(),
    recurring: z.object({ reenroll_after: duration }).strict().optional(),
  }).strict()).default([]),
  // The operator console (off unless configured): its own listener, so it can stay on a private interface.
  console: z.object({
    listen: z.object({ host: z.string().default('127.0.0.1'), port: z.number().int().min(0).max(65535) }).strict(),
    session_ttl: duration.default('12h'),
    // Links on the console's pages: only http(s), never javascript: or data:.
    stripe_dashboard_url: z.string().url().refine((u) => /^https?:\/\//i.test(u), 'must be an http(s) URL').default('https://dashboard.stripe.com'),
  }).strict().optional(),
}).strict();

export interface Secrets {
  stripeSecretKey: string | undefined;
  stripeWebhookSecret: string | undefined;
  stripeApiBase: URL;
  adminToken: string | undefined;
  controlToken: string | undefined;
  smtpUrl: string | undefined;
  /** Signs top-up links (PAYG_TOP_UP_SECRET); required with top_up.checkout. */
  topUpSecret: string | undefined;
}

/** The top_up config as the service uses it: merge tags read `url`/`metadata_key`/`link`. */
export interface TopUpSettings extends TopUpConfig {
  debitDisputes: boolean;
  checkout: CheckoutOptions | undefined;
}

export interface Config {
  listen: { host: string; port: number };
  /** Serve the plugin-facing APIs without PAYG_CONTROL_TOKEN on a non-loopback address (an explicit choice). */
  auth: { allowUnauthenticated: boolean };
  /** GET /v1/balance reads the consumer from this (lower-case) header, which Kong sets upstream. */
  balanceApi: { consumerHeader: string };
  /** The SQLite file (the embedded default; unused when `postgres` is set). */
  sqlitePath: string;
  /** Set when the store is PostgreSQL: several replicas may share it. */
  postgres: { url: string; poolSize: number } | undefined;
  stripe: { poll: string; consumerMetadataKey: string; maxRequestsPerSecond: number; pageSize: number; timeoutMs: number; retry: { maxAttempts: number; baseDelayMs: number; maxDelayMs: number } };
  unknownConsumer: 'allow' | 'block';
  decisionTtlMs: number;
  topUp: TopUpSettings;
  cohorts: CohortDef[];
  rules: RuleDef[];
  /** Issue 23: default caps per consumer (smallest currency unit; absent: none) and the metadata prefix of per-customer overrides (caps/limits.ts). */
  caps: CapsConfig;
  metering: {
    pricing: Pricing;
    lowCreditRequests: number;
    minTtlMs: number;
    maxBatchEvents: number;
    keepEventsMs: number;
    settle: { mode: 'balance_transactions' | 'meter_events'; schedule: string; meterEventName: string; enabled: boolean };
  };
  leases: { ttlMs: number; usageGraceMs: number; initialRequests: number; maxRequests: number; expireIntervalMs: number; recallWaitMs: number };
  emailDelivery: {
    messagesPerSecond: number; maxAttempts: number; retryBaseDelayMs: number; retryMaxDelayMs: number;
    pollIntervalMs: number; recurringCheckIntervalMs: number; timeoutMs: number;
  };
  emails: EmailTemplate[];
  /** The operator console; undefined when not configured (off). */
  console: { listen: { host: string; port: number }; sessionTtlMs: number; stripeDashboardUrl: string } | undefined;
  secrets: Secrets;
}

/** RFC 9110 field names (tokens) and values: what Node and Kong accept, no CR/LF. */
export const HEADER_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
export const HEADER_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;

const LOOPBACK_HOSTS = new Set(['localhost', '::1', '[::1]']);
export function isLoopbackHost(host: string): boolean {
  return LOOPBACK_HOSTS.has(host.toLowerCase()) || /^127(\.\d{1,3}){3}$/.test(host) || /^::ffff:127(\.\d{1,3}){3}$/i.test(host);
}

/**
 * Safe by default: the plugin-facing APIs spend and reveal customers' credit,
 * so without PAYG_CONTROL_TOKEN they are served on loopback only, unless the
 * config says `auth: { allow_unauthenticated: true }` (then warned at every start).
 */
export function checkExposure(config: Pick<Config, 'listen' | 'auth' | 'secrets'>): { ok: true } | { ok: false; refuse: string } | { ok: true; warn: string } {
  if (config.secrets.controlToken || isLoopbackHost(config.listen.host)) return { ok: true };
  const what = `listening on ${config.listen.host} without PAYG_CONTROL_TOKEN: anyone who can reach it can read decisions and spend any customer's credit through POST /v1/usage`;
  if (config.auth.allowUnauthenticated) return { ok: true, warn: `${what} (auth.allow_unauthenticated is true)` };
  return { ok: false, refuse: `config: listen.host: ${what}. Set PAYG_CONTROL_TOKEN (the plugin's control_service_token), listen on 127.0.0.1, or set auth: { allow_unauthenticated: true }` };
}

export class ConfigError extends Error {
  constructor(readonly field: string, reason: string) {
    super(`config: ${field}: ${reason}`);
    this.name = 'ConfigError';
  }
}

/** A validation issue's path as a field name: ['emails', 0, 'html'] → "emails[0].html". */
export function fieldPath(p: Array<string | number>, root = '(root)'): string {
  return p.reduce<string>((acc, part) => (typeof part === 'number' ? `${acc}[${part}]` : acc ? `${acc}.${part}` : part), '') || root;
}

export function secretsFromEnv(env: NodeJS.ProcessEnv): Secrets {
  const base = env.STRIPE_API_BASE ?? 'https://api.stripe.com';
  let stripeApiBase: URL;
  try { stripeApiBase = new URL(base); } catch { throw new ConfigError('STRIPE_API_BASE', 'is not a URL'); }
  const nonEmpty = (v: string | undefined) => (v ? v : undefined);
  return {
    stripeSecretKey: nonEmpty(env.STRIPE_SECRET_KEY),
    stripeWebhookSecret: nonEmpty(env.STRIPE_WEBHOOK_SECRET),
    stripeApiBase,
    // Tokens mounted from files often end in a newline; the plugin trims its token the same way.
    adminToken: nonEmpty(env.PAYG_ADMIN_TOKEN?.trim()),
    controlToken: nonEmpty(env.PAYG_CONTROL_TOKEN?.trim()),
    smtpUrl: nonEmpty(env.SMTP_URL),
    topUpSecret: nonEmpty(env.PAYG_TOP_UP_SECRET?.trim()),
  };
}

/** Validates a parsed config document; `baseDir` resolves relative paths. */
export function parseConfig(doc: unknown, env: NodeJS.ProcessEnv, baseDir: string): Config {
  const parsed = rawConfig.safeParse(doc ?? {});
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = fieldPath(issue.path);
    if (issue.code === 'unrecognized_keys') throw new ConfigError(fieldPath([...issue.path, issue.keys[0]]), 'unknown key');
    throw new ConfigError(where, issue.message);
  }
  const raw = parsed.data;

  if (raw.leases.max_requests < raw.leases.initial_requests) {
    throw new ConfigError('leases.max_requests', `must be at least leases.initial_requests (${raw.leases.initial_requests})`);
  }
  const cohortIds = new Set<string>();
  raw.cohorts.forEach((c, i) => {
    if (cohortIds.has(c.id)) throw new ConfigError(`cohorts[${i}].id`, `duplicate cohort id ${c.id}`);
    cohortIds.add(c.id);
  });
  const ruleIds = new Set<string>();
  const rules: RuleDef[] = raw.rules.map((r, i) => {
    if (ruleIds.has(r.id)) throw new ConfigError(`rules[${i}].id`, `duplicate rule id ${r.id}`);
    ruleIds.add(r.id);
    if ((r.cohort === undefined) === (r.limit === undefined)) throw new ConfigError(`rules[${i}]`, 'needs exactly one of cohort (refuse a cohort) or limit (word the refusal of no_credit or consumer_cap)');
    if (r.cohort !== undefined && !cohortIds.has(r.cohort)) throw new ConfigError(`rules[${i}].cohort`, `no cohort with id ${r.cohort}`);
    if (r.limit !== undefined && r.log_only) throw new ConfigError(`rules[${i}].log_only`, 'applies to cohort rules only: a limit rule words a refusal that happens anyway');
    if (r.cohort !== undefined && r.body === undefined) throw new ConfigError(`rules[${i}].body`, 'is required for a cohort rule');
    for (const [name, value] of Object.entries(r.headers)) {
      const field = `rules[${i}].headers.${JSON.stringify(name)}`;
      if (!HEADER_NAME.test(name)) throw new ConfigError(field, 'is not a valid HTTP header name (letters, digits and !#$%&\'*+-.^_`|~ only)');
      if (!HEADER_VALUE.test(value)) throw new ConfigError(field, 'has a character an HTTP header value may not hold (CR, LF or another control character)');
    }
    const contentType = Object.entries(r.headers).find(([k]) => k.toLowerCase() === 'content-type')?.[1];
    const escaping = escapingFor(contentType);
    let render;
    try {
      // A limit rule without a body serves the default body of its limit (caps/refusal.ts).
      const body = r.body ?? DEFAULT_LIMIT_BODIES[r.limit!];
      render = compileTemplate(body, escaping);
      const sample = render(mergeContext(SAMPLE_CUSTOMER, raw.top_up, r.limit === 'consumer_cap' ? { kind: 'consumer_cap', resets_at: '2026-01-02T00:00:00.000Z', retry_after: 60 } : undefined));
      if (escaping === 'json') JSON.parse(sample);
    } catch (err) {
      throw new ConfigError(`rules[${i}].body`, `template does not compile or render valid ${escaping === 'json' ? 'JSON' : 'text'}: ${(err as Error).message}`);
    }
    return { id: r.id, cohort: r.cohort, limit: r.limit, enabled: r.enabled, logOnly: r.log_only, status: r.status, headers: r.headers, render };
  });

  const emailIds = new Set<string>();
  const emails: EmailTemplate[] = raw.emails.map((e, i) => {
    const at = `emails[${i}]`;
    if (emailIds.has(e.id)) throw new ConfigError(`${at}.id`, `duplicate email id ${e.id}`);
    emailIds.add(e.id);
    if ((e.cohort === undefined) === (e.low_balance === undefined)) throw new ConfigError(at, 'needs exactly one trigger: cohort (with on: enter | leave) or low_balance');
    if (e.cohort !== undefined && !cohortIds.has(e.cohort)) throw new ConfigError(`${at}.cohort`, `no cohort with id ${e.cohort}`);
    if (e.low_balance && e.on) throw new ConfigError(`${at}.on`, 'applies to cohort triggers only');
    if (e.recurring && (e.low_balance || e.on === 'leave')) throw new ConfigError(`${at}.recurring`, 'applies to cohort-entry emails only');
    if (!e.html && !e.text) throw new ConfigError(at, 'needs an html or a text template file (or both)');
    const part = (field: 'html' | 'text', escaping: 'html' | 'none') => {
      const file = e[field];
      if (!file) return undefined;
      const { source, file: resolved } = readTemplateFile(file, baseDir, `${at}.${field}`);
      return compileEmailPart(source, escaping, `${at}.${field} (${resolved})`, raw.top_up);
    };
    try {
      return {
        id: e.id,
        trigger: e.cohort !== undefined ? { kind: 'cohort' as const, cohort: e.cohort, on: e.on ?? 'enter' } : { kind: 'low_balance' as const, belowCents: [...new Set(e.low_balance!.below)].sort((a, b) => b - a) },
        active: e.active,
        from: e.from,
        subject: compileEmailPart(e.subject, 'none', `${at}.subject`, raw.top_up),
        html: part('html', 'html'),
        text: part('text', 'none'),
        reenrollAfterMs: e.recurring ? parseDuration(e.recurring.reenroll_after) : undefined,
      };
    } catch (err) {
      if (err instanceof TemplateError) throw new ConfigError(err.field, err.message);
      throw err;
    }
  });

  const defaultPrice = routePrice(raw.metering.default_cost, 'metering.default_cost');
  const routePrices = new Map(Object.entries(raw.metering.routes).map(([route, p]) => [route, routePrice(p, `metering.routes.${JSON.stringify(route)}`)]));
  const pricing: Pricing = {
    defaultCostMicros: defaultPrice.maxCostMicros,
    routeCostMicros: new Map([...routePrices].map(([route, p]) => [route, p.maxCostMicros])),
    defaultPrice, routePrices,
    countUpstream5xx: raw.metering.count_upstream_5xx,
  };

  const port = env.PORT !== undefined ? Number(env.PORT) : raw.listen.port;
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new ConfigError('PORT', 'is not a port number');
  return {
    listen: { host: raw.listen.host, port },
    auth: { allowUnauthenticated: raw.auth.allow_unauthenticated },
    balanceApi: { consumerHeader: raw.balance_api.consumer_header.toLowerCase() },
    sqlitePath: path.resolve(baseDir, raw.store.sqlite ?? 'payg.sqlite'),
    postgres: raw.store.postgres ? { url: postgresUrl(raw.store.postgres.url, env), poolSize: raw.store.postgres.pool_size } : undefined,
    stripe: {
      poll: raw.stripe.poll,
      consumerMetadataKey: raw.stripe.consumer_metadata_key,
      maxRequestsPerSecond: raw.stripe.max_requests_per_second,
      pageSize: raw.stripe.page_size,
      timeoutMs: raw.stripe.timeout_ms,
      retry: { maxAttempts: raw.stripe.retry.max_attempts, baseDelayMs: raw.stripe.retry.base_delay_ms, maxDelayMs: raw.stripe.retry.max_delay_ms },
    },
    unknownConsumer: raw.unknown_consumer,
    decisionTtlMs: raw.decision_ttl_ms,
    topUp: topUpSettings(raw.top_up, secretsFromEnv(env)),
    cohorts: raw.cohorts,
    rules,
    caps: { daily: raw.caps.daily, monthly: raw.caps.monthly, metadataPrefix: raw.caps.metadata_prefix },
    metering: {
      pricing,
      lowCreditRequests: raw.metering.low_credit_requests,
      minTtlMs: raw.metering.min_ttl_ms,
      maxBatchEvents: raw.metering.max_batch_events,
      keepEventsMs: parseDuration(raw.metering.keep_events)!,
      settle: {
        mode: raw.metering.settle.mode, schedule: raw.metering.settle.schedule,
        meterEventName: raw.metering.settle.meter_event_name, enabled: raw.metering.settle.enabled,
      },
    },
    leases: {
      ttlMs: raw.leases.ttl_ms, usageGraceMs: raw.leases.usage_grace_ms, initialRequests: raw.leases.initial_requests,
      maxRequests: raw.leases.max_requests, expireIntervalMs: raw.leases.expire_interval_ms, recallWaitMs: raw.leases.recall_wait_ms,
    },
    emailDelivery: {
      messagesPerSecond: raw.email_delivery.messages_per_second,
      maxAttempts: raw.email_delivery.max_attempts,
      retryBaseDelayMs: raw.email_delivery.retry_base_delay_ms,
      retryMaxDelayMs: raw.email_delivery.retry_max_delay_ms,
      pollIntervalMs: raw.email_delivery.poll_interval_ms,
      recurringCheckIntervalMs: parseDuration(raw.email_delivery.recurring_check_interval)!,
      timeoutMs: raw.email_delivery.timeout_ms,
    },
    emails,
    console: raw.console && {
      listen: raw.console.listen, sessionTtlMs: parseDuration(raw.console.session_ttl)!,
      stripeDashboardUrl: raw.console.stripe_dashboard_url.replace(/\/+$/, ''),
    },
    secrets: secretsFromEnv(env),
  };
}

// ---- top_up (issue 21) ----
/** Shortest PAYG_TOP_UP_SECRET accepted: links are signed with it. */
export const MIN_TOP_UP_SECRET_LENGTH = 32;

function topUpSettings(raw: z.infer<typeof rawConfig>['top_up'], secrets: Secrets): TopUpSettings {
  const base = { url: raw.url, metadata_key: raw.metadata_key, debitDisputes: raw.debit_disputes };
  const c = raw.checkout;
  if (!c) return { ...base, checkout: undefined };
  const secret = secrets.topUpSecret;
  if (!secret) throw new ConfigError('PAYG_TOP_UP_SECRET', 'is required with top_up.checkout: it signs the top-up links (at least 32 random characters, e.g. openssl rand -hex 32)');
  if (secret.length < MIN_TOP_UP_SECRET_LENGTH) throw new ConfigError('PAYG_TOP_UP_SECRET', `is too short: at least ${MIN_TOP_UP_SECRET_LENGTH} characters (e.g. openssl rand -hex 32)`);
  for (const [code, a] of Object.entries(c.currencies)) {
    const at = `top_up.checkout.currencies.${code}`;
    if (a.max < a.min) throw new ConfigError(`${at}.max`, `must be at least min (${a.min})`);
    a.presets.forEach((p, i) => { if (p < a.min || p > a.max) throw new ConfigError(`${at}.presets[${i}]`, `${p} is outside min..max (${a.min}..${a.max})`); });
  }
  const defaultCurrency = c.default_currency ?? Object.keys(c.currencies)[0];
  if (!c.currencies[defaultCurrency]) throw new ConfigError('top_up.checkout.default_currency', `${defaultCurrency} is not among top_up.checkout.currencies`);
  const publicUrl = c.public_url.replace(/\/+$/, '');
  const linkTtlMs = parseDuration(c.link_ttl)!;
  const checkout: CheckoutOptions = {
    publicUrl, linkTtlMs,
    currencies: new Map(Object.entries(c.currencies).map(([code, a]) => [code, { presets: [...new Set(a.presets)], min: a.min, max: a.max }])),
    defaultCurrency, productName: c.product_name, invoiceCreation: c.invoice_creation, automaticTax: c.automatic_tax,
    // A Stripe stand-in (STRIPE_API_BASE other than api.stripe.com) serves its Checkout page itself.
    checkoutOrigins: [...new Set([...c.checkout_origins.map((u) => new URL(u).origin),
      ...(secrets.stripeApiBase.hostname === 'api.stripe.com' ? [] : [secrets.stripeApiBase.origin])])],
    resendIntervalMs: parseDuration(c.resend_interval)!,
  };
  // {{top_up_url}}: a signed link to payg's page, valid for link_ttl from when it is written.
  return { ...base, checkout, link: (customerId: string) => `${publicUrl}/top-up/${signToken(secret, customerId, Date.now() + linkTtlMs)}` };
}

/** PAYG_DATABASE_URL wins over store.postgres.url; either must be a postgres:// URL. Never echoed: it holds a password. */
function postgresUrl(fromFile: string | undefined, env: NodeJS.ProcessEnv): string {
  const field = env.PAYG_DATABASE_URL ? 'PAYG_DATABASE_URL' : 'store.postgres.url';
  const url = env.PAYG_DATABASE_URL || fromFile;
  if (!url) throw new ConfigError('store.postgres.url', 'is required (or set PAYG_DATABASE_URL)');
  let parsed: URL;
  try { parsed = new URL(url); } catch { throw new ConfigError(field, 'is not a URL'); }
  if (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:') throw new ConfigError(field, 'must start with postgres:// or postgresql://');
  return url;
}

/**
 * A price as configured → micros. A price with unit prices must say its
 * max_cost (tokens, bytes and header units have no natural bound, and the
 * request reserves it before it runs); a fixed price reserves its fee, so
 * max_cost there would mean nothing and is refused.
 */
function routePrice(raw: RawPrice, field: string): RoutePrice {
  if (typeof raw !== 'object') {
    const micros = parseCost(raw)!;
    return { requestMicros: micros, perUnitMicros: new Map(), maxCostMicros: micros };
  }
  if (Object.keys(raw).length === 0) throw new ConfigError(field, 'an empty price; give request and/or unit prices (prompt_tokens, completion_tokens, header_units, request_bytes, response_bytes)');
  const requestMicros = raw.request === undefined ? 0 : parseCost(raw.request)!;
  const perUnitMicros = new Map<UnitKind, number>();
  for (const kind of UNIT_KINDS) {
    const v = raw[kind];
    const micros = v === undefined ? 0 : parseCost(v)!;
    if (micros > 0) perUnitMicros.set(kind, micros);
  }
  if (perUnitMicros.size === 0) {
    if (raw.max_cost !== undefined) throw new ConfigError(`${field}.max_cost`, 'applies to prices with unit prices only; a fixed price reserves its request fee');
    return { requestMicros, perUnitMicros, maxCostMicros: requestMicros };
  }
  if (raw.max_cost === undefined) throw new ConfigError(`${field}.max_cost`, 'is required with unit prices: the most one request may cost, reserved before it runs and never exceeded');
  const maxCostMicros = parseCost(raw.max_cost)!;
  if (maxCostMicros <= requestMicros) throw new ConfigError(`${field}.max_cost`, 'must be more than the request fee, or the unit prices can never be charged');
  return { requestMicros, perUnitMicros, maxCostMicros };
}

export function loadConfig(file: string, env: NodeJS.ProcessEnv = process.env): Config {
  let text: string;
  try { text = fs.readFileSync(file, 'utf8'); } catch (err) { throw new ConfigError(file, (err as Error).message); }
  let doc: unknown;
  try { doc = YAML.parse(text); } catch (err) { throw new ConfigError(file, `is not valid YAML: ${(err as Error).message}`); }
  return parseConfig(doc, env, path.dirname(path.resolve(file)));
}
