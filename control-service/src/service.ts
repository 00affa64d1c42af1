// Wires the control service together and runs it.

import type http from 'node:http';
import { parseArgs } from 'node:util';
import type { AddressInfo } from 'node:net';
import cron from 'node-cron';
import pino, { type Logger } from 'pino';
import { checkExposure, ConfigError, loadConfig, type Config } from './config';
import { Engine } from './engine';
import { createHttpServer } from './http';
import { createMetrics } from './metrics';
import { SqliteStore } from './store/sqlite';
import type { Store } from './store/store';
import { StripeGateway } from './stripe/gateway';
import { BalanceSync } from './stripe/sync';
import nodemailer from 'nodemailer';
import { EmailSender } from './emails/sender';
import { Settler } from './stripe/settlement';
import { mountConsole } from './console';
import type { ConsoleServer } from './console/server';
import { LeaseDesk } from './lease-desk';
import { ChangeStream } from './http/stream';

export interface RunningService {
  url: string;
  engine: Engine;
  leases: LeaseDesk;
  stream: ChangeStream;
  sync: BalanceSync | undefined;
  emails: EmailSender | undefined;
  settler: Settler | undefined;
  store: Store;
  /** The operator console, when `console` is configured. */
  console: ConsoleServer | undefined;
  stop(): Promise<void>;
}

export async function startService(config: Config, opts: { log?: Logger; store?: Store; sweepOnStart?: boolean; publicBodyTimeoutMs?: number } = {}): Promise<RunningService> {
  // Secrets never reach logs: pino redacts the places they could appear.
  const log = opts.log ?? pino({ name: 'payg-control', level: process.env.PAYG_LOG_LEVEL ?? 'info', redact: ['req.headers.authorization', '*.secretKey', '*.token'] });
  const exposure = checkExposure(config);
  if (!exposure.ok) throw new ConfigError('listen.host', exposure.refuse.replace(/^config: listen\.host: /, ''));
  if ('warn' in exposure) log.warn(exposure.warn);
  const store = opts.store ?? new SqliteStore(config.sqlitePath);
  const engine = new Engine(config, store);
  await engine.init();
  const stream = new ChangeStream();
  engine.onChange = (consumers) => stream.changed(consumers);
  const leases = new LeaseDesk(config, engine, store, stream);
  await leases.init();

  let sync: BalanceSync | undefined;
  let settler: Settler | undefined;
  const metrics = createMetrics({
    customers: () => engine.size,
    cohortSizes: () => engine.cohortSizes(),
    consumerConflicts: () => engine.conflicts().length,
    lastSweepAgeSeconds: () => (sync?.lastSuccessAt === undefined ? -1 : (Date.now() - sync.lastSuccessAt) / 1000),
    emailsPending: () => store.countEmails('pending'),
  });

  let emails: EmailSender | undefined;
  let recurringTimer: NodeJS.Timeout | undefined;
  if (config.emails.length && config.secrets.smtpUrl) {
    const d = config.emailDelivery;
    const transport = nodemailer.createTransport({
      url: config.secrets.smtpUrl, pool: true, maxConnections: 1,
      connectionTimeout: d.timeoutMs, greetingTimeout: d.timeoutMs, socketTimeout: d.timeoutMs,
    } as Parameters<typeof nodemailer.createTransport>[0]);
    emails = new EmailSender({
      store, templates: config.emails, isActive: engine.isTemplateActive, staleReason: engine.emailStaleReason, transport, delivery: d, log,
      onResult: (result, template) => metrics.emails.inc({ template, result }),
    });
    engine.onEmailsEnqueued = () => emails!.wake();
    await emails.start();
  } else if (config.emails.length) {
    log.warn('SMTP_URL is not set: emails are decided and kept in the outbox, and delivered once SMTP_URL is set');
  }
  // Re-enrollment emails are decided like entry emails, whether or not SMTP is there to deliver them yet.
  if (config.emails.some((t) => t.reenrollAfterMs)) {
    const checkRecurring = () => { engine.enqueueRecurring().catch((err) => log.error({ err: (err as Error).message }, 'recurring email check failed')); };
    recurringTimer = setInterval(checkRecurring, config.emailDelivery.recurringCheckIntervalMs);
    checkRecurring();
  }
  let gateway: StripeGateway | undefined;
  if (config.secrets.stripeSecretKey) {
    gateway = new StripeGateway({
      secretKey: config.secrets.stripeSecretKey,
      apiBase: config.secrets.stripeApiBase,
      maxRequestsPerSecond: config.stripe.maxRequestsPerSecond,
      timeoutMs: config.stripe.timeoutMs,
      maxAttempts: config.stripe.retry.maxAttempts,
      baseDelayMs: config.stripe.retry.baseDelayMs,
      maxDelayMs: config.stripe.retry.maxDelayMs,
      onError: (status) => metrics.stripeErrors.inc({ status }),
    });
    sync = new BalanceSync(gateway, engine, store, {
      pageSize: config.stripe.pageSize,
      onSweep: (r) => {
        metrics.sweeps.inc({ result: r.ok ? 'ok' : 'failed' });
        metrics.sweepDuration.observe({ result: r.ok ? 'ok' : 'failed' }, r.durationMs / 1000);
        if (r.ok) log.info(r, 'sweep finished'); else log.error(r, 'sweep failed; keeping the last known state');
      },
    });
    await sync.init();
    if (config.metering.settle.enabled) {
      settler = new Settler(gateway, engine, store, {
        mode: config.metering.settle.mode, meterEventName: config.metering.settle.meterEventName, log,
        onResult: (r) => {
          metrics.settlements.inc({ result: 'confirmed' }, r.confirmed);
          metrics.settlements.inc({ result: 'failed' }, r.failed);
          metrics.settlements.inc({ result: 'retrying' }, r.retrying);
          metrics.settledAmount.inc(r.amount);
          if (r.confirmed || r.failed || r.retrying) log.info(r, 'settlement pass finished');
        },
      });
    }
  } else {
    log.warn('STRIPE_SECRET_KEY is not set: no balance sync; decisions come from the stored state only');
  }

  const server: http.Server = createHttpServer({
    config, engine, sync, emails, settler, store, metrics, log, webhooks: gateway?.stripe.webhooks, publicBodyTimeoutMs: opts.publicBodyTimeoutMs, leases, stream,
  });
  server.keepAliveTimeout = 65_000;
  await new Promise<void>((resolve) => server.listen(config.listen.port, config.listen.host, resolve));
  const addr = server.address() as AddressInfo;
  const url = `http://${addr.address.includes(':') ? `[${addr.address}]` : addr.address}:${addr.port}`;
  log.info({ url, customers: engine.size }, 'payg control service listening');
  if (leases.recoveryEndsAt) log.warn({ until: new Date(leases.recoveryEndsAt).toISOString() }, 'leases of the previous run may still be in use: granting none until then');
  const consoleServer = config.console ? await mountConsole({ config, engine, store, sync, emails, metrics, log }) : undefined;

  const task = sync ? cron.schedule(config.stripe.poll, () => {
    if (sync!.sweeping) { log.warn('previous sweep still running; this tick is skipped'); return; }
    void sync!.sweep();
  }) : undefined;
  if (sync && opts.sweepOnStart !== false) void sync.sweep();
  // Hourly: forget usage events and webhook ids kept only for dedupe (Stripe retries webhooks for 3 days).
  const prune = () => store.prune({ usageBefore: Date.now() - config.metering.keepEventsMs, webhooksBefore: Date.now() - 7 * 86_400_000 })
    .then((r) => { if (r.usageEvents || r.webhookEvents) log.info(r, 'pruned events kept for dedupe'); })
    .catch((err) => log.error({ err: (err as Error).message }, 'pruning failed'));
  const pruneTimer = setInterval(() => { void prune(); }, 3_600_000).unref();
  const settleTask = settler ? cron.schedule(config.metering.settle.schedule, () => { void settler!.settle(); }) : undefined;
  // Settlements left pending by a stop are sent again (same idempotency keys) at once.
  if (settler && opts.sweepOnStart !== false) void settler.settle();

  return {
    url, engine, sync, emails, settler, store, console: consoleServer, leases, stream,
    async stop() {
      await consoleServer?.stop();
      await task?.stop();
      await settleTask?.stop();
      clearInterval(pruneTimer);
      clearInterval(recurringTimer);
      await emails?.stop();
      leases.stop();
      stream.close();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
      await store.close();
    },
  };
}

const USAGE = 'usage: payg-control --config <file> [--help] [--version]';
const HELP = `${USAGE}

The kong-payg control service: Stripe balance sync, cohorts, rules, decisions, metering and emails.
  --config <file>   the YAML config (see control-service/payg.example.yml)
  --version         print the version and exit
  --help            print this help and exit
Secrets come from the environment: STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET, STRIPE_API_BASE,
SMTP_URL, PAYG_ADMIN_TOKEN, PAYG_CONTROL_TOKEN; PORT overrides the listen port; PAYG_LOG_LEVEL.
`;

export async function main(argv: string[]): Promise<void> {
  let values: { config?: string; help?: boolean; version?: boolean };
  try {
    ({ values } = parseArgs({
      args: argv, strict: true, allowPositionals: false,
      options: { config: { type: 'string', short: 'c' }, help: { type: 'boolean', short: 'h' }, version: { type: 'boolean' } },
    }));
  } catch (err) {
    process.stderr.write(`payg-control: ${(err as Error).message.split('\n')[0]}; ${USAGE}\n`);
    process.exit(2);
  }
  if (values.help) { process.stdout.write(HELP); return; }
  if (values.version) {
    const { version } = require('../../../package.json') as { version: string };
    process.stdout.write(`payg-control ${version}\n`);
    return;
  }
  const file = values.config;
  if (!file) {
    process.stderr.write(`${USAGE}\n`);
    process.exit(2);
  }
  let config: Config;
  try {
    config = loadConfig(file);
  } catch (err) {
    process.stderr.write(`payg-control: ${(err as Error).message}\n`);
    process.exit(1);
  }
  let service: RunningService;
  try {
    service = await startService(config);
  } catch (err) {
    // A start-up failure (port in use, a refused listen address…) is one clear line, not a stack trace.
    process.stderr.write(`payg-control: ${(err as Error).message}\n`);
    process.exit(1);
  }
  const stop = () => { void service.stop().finally(() => process.exit(0)); };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
