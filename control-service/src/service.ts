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
import { PostgresLeadership, soleLeader, type Leadership } from './leader';
import { PostgresStore } from './store/postgres';
import { SqliteStore } from './store/sqlite';
import type { Store, UsageAdded } from './store/store';
import { StripeGateway } from './stripe/gateway';
import { BalanceSync } from './stripe/sync';
import nodemailer from 'nodemailer';
import { EmailSender } from './emails/sender';
import { Settler } from './stripe/settlement';
import { mountConsole } from './console';
import type { ConsoleServer } from './console/server';
import { LeaseDesk } from './lease-desk';
import { ChangeStream } from './http/stream';
import { TopUps } from './top-ups/service';
import type { LeaseNotice } from './store/postgres';

/** How long a stopping replica lets lease calls in flight finish (a grant waits recall_wait_ms at most). */
const STOP_DRAIN_MS = 5_000;
import { Recharger } from './recharges/service';

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
  leadership: Leadership;
  /** Top-ups through Stripe Checkout, when top_up.checkout is configured. */
  topUps: TopUps | undefined;
  /** Auto-recharge (issue 22), when auto_recharge.enabled and top-ups are on. */
  recharger: Recharger | undefined;
  stop(): Promise<void>;
}

/**
 * Keeps this replica's book in step with the others: customer ids from NOTIFY
 * are gathered for a moment and reloaded together, usage another replica
 * committed alone is added from its NOTIFY (see Engine.followUsage); rule and template switches
 * are reloaded; after a lost connection, everything is reloaded. It listens
 * before the engine loads anything and holds what arrives until `start()`
 * (after engine.init()), then reloads it: no change can fall between the
 * initial load and the LISTEN.
 */
const FOLLOW_BATCH_MS = 10;

/** Lease news from the other replicas: recalls and freed credit (NOTIFY), and usage they settled. */
interface LeaseFollower { onNotice(notice: LeaseNotice): void; freed(customerIds: Iterable<string>): void }

function followChanges(store: PostgresStore, engine: Engine, log: Logger, leases: () => LeaseFollower | undefined): { ready: Promise<void>; start(): void; stop(): Promise<void> } {
  let pending = new Set<string>();
  let usage: UsageAdded[] = [];
  let switches = false;
  let started = false;
  let scheduled = false;
  const read = (ids: string[]) => store.readCustomers(ids);
  const flush = () => {
    scheduled = false;
    if (!started) return;
    const ids = [...pending];
    const added = usage;
    pending = new Set();
    usage = [];
    if (ids.length || added.length) engine.followUsage(added, ids, read).catch((err) => log.error({ err: (err as Error).message }, 'reloading changed customers failed'));
    if (switches) {
      switches = false;
      engine.reloadSwitches().catch((err) => log.error({ err: (err as Error).message }, 'reloading rule and template switches failed'));
    }
  };
  // Gathered for FOLLOW_BATCH_MS: under load, one read serves many commits (the book still follows within ~10 ms).
  const schedule = () => { if (!scheduled) { scheduled = true; setTimeout(flush, FOLLOW_BATCH_MS); } };
  const listener = store.listenForChanges({
    onIds: (ids) => { for (const id of ids) pending.add(id); schedule(); },
    // Usage alone: added in version order, no read (a gap or an unknown customer is read again).
    onUsage: (added) => {
      usage.push(...added); schedule();
      // Usage another replica counted settled its leases in the same commit: waiters for this credit try again.
      leases()?.freed(added.map((a) => a.customerId));
    },
    onLeases: (notice) => leases()?.onNotice(notice),
    onSwitches: () => { switches = true; schedule(); },
    onResync: () => {
      if (!started) return; // init loads everything after this anyway
      store.customerIds().then((ids) => engine.reload([...new Set([...ids, ...engine.knownIds()])], read))
        .catch((err) => log.error({ err: (err as Error).message }, 'resync after a lost listener failed'));
      engine.reloadSwitches().catch((err) => log.error({ err: (err as Error).message }, 'reloading rule and template switches failed'));
    },
    onError: (err) => log.warn({ err: err.message }, 'change listener connection lost; reconnecting'),
  });
  return { ready: listener.ready, stop: listener.stop, start() { started = true; schedule(); } };
}

export async function startService(config: Config, opts: { log?: Logger; store?: Store; sweepOnStart?: boolean; publicBodyTimeoutMs?: number; /** Tests: the clock of caps and leases (issue 23). */ now?: () => number } = {}): Promise<RunningService> {
  // Secrets never reach logs: pino redacts the places they could appear.
  const log = opts.log ?? pino({ name: 'payg-control', level: process.env.PAYG_LOG_LEVEL ?? 'info', redact: ['req.headers.authorization', '*.secretKey', '*.token'] });
  const exposure = checkExposure(config);
  if (!exposure.ok) throw new ConfigError('listen.host', exposure.refuse.replace(/^config: listen\.host: /, ''));
  if ('warn' in exposure) log.warn(exposure.warn);
  const store = opts.store ?? (config.postgres ? await PostgresStore.open(config.postgres.url, { poolSize: config.postgres.poolSize }) : new SqliteStore(config.sqlitePath));
  const engine = new Engine(config, store, opts.now);
  // Several replicas on PostgreSQL: each follows the others' changes (listening before it loads), and one leads the singleton work.
  let leases: LeaseDesk | undefined;
  const changes = store instanceof PostgresStore ? followChanges(store, engine, log, () => leases) : undefined;
  await changes?.ready;
  await engine.init();
  changes?.start();
  const leadership: Leadership = config.postgres
    ? new PostgresLeadership(config.postgres.url, { onError: (err) => log.warn({ err: err.message }, 'leader connection lost') })
    : soleLeader();
  const stream = new ChangeStream();
  engine.onChange = (consumers) => stream.changed(consumers);
  const desk = new LeaseDesk(config, engine, store, stream, opts.now);
  await desk.init();
  leases = desk;

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
  // Only the leader sends; a sender (and its SMTP pool) lives for one term of leadership.
  const newSender = (pool: boolean) => {
    const d = config.emailDelivery;
    const transport = nodemailer.createTransport({
      url: config.secrets.smtpUrl, pool, maxConnections: 1,
      connectionTimeout: d.timeoutMs, greetingTimeout: d.timeoutMs, socketTimeout: d.timeoutMs,
    } as Parameters<typeof nodemailer.createTransport>[0]);
    return new EmailSender({
      store, templates: config.emails, isActive: engine.isTemplateActive, staleReason: engine.emailStaleReason, transport, delivery: d, log,
      onResult: (result, template) => metrics.emails.inc({ template, result }),
    });
  };
  // A follower sends an operator's test email itself, on a connection of its own (never started: it sends no outbox row).
  let testSender: EmailSender | undefined;
  const sendsTests = (): EmailSender | undefined => {
    if (!config.emails.length || !config.secrets.smtpUrl) return undefined;
    return emails ?? (testSender ??= newSender(false));
  };
  const startSender = async () => {
    if (!config.emails.length || !config.secrets.smtpUrl || emails) return;
    const sender = newSender(true);
    emails = sender;
    await sender.start();
  };
  const stopSender = async () => {
    const sender = emails;
    emails = undefined;
    await sender?.stop();
  };
  engine.onEmailsEnqueued = () => emails?.wake();
  if (config.emails.length && !config.secrets.smtpUrl) {
    log.warn('SMTP_URL is not set: emails are decided and kept in the outbox, and delivered once SMTP_URL is set');
  }
  // Re-enrollment emails are decided like entry emails, whether or not SMTP is there to deliver them yet.
  if (config.emails.some((t) => t.reenrollAfterMs)) {
    const checkRecurring = () => { if (leadership.isLeader) engine.enqueueRecurring().catch((err) => log.error({ err: (err as Error).message }, 'recurring email check failed')); };
    recurringTimer = setInterval(checkRecurring, config.emailDelivery.recurringCheckIntervalMs);
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

  // Top-ups (issue 21): payg's page and Stripe Checkout, crediting through the money outbox.
  const checkout = config.topUp.checkout;
  if (checkout && !gateway) log.warn('top_up.checkout is configured but STRIPE_SECRET_KEY is not set: the top-up page is off');
  const topUps = checkout && gateway && sync && config.secrets.topUpSecret
    ? new TopUps({ settings: { ...config.topUp, checkout }, secret: config.secrets.topUpSecret, gateway, engine, store, sync, log })
    : undefined;
  if (topUps) sync!.onLedgerRead = (id, moves) => void topUps.confirmFound(id, moves).catch((err) => log.warn({ err: (err as Error).message }, 'confirming top-ups found in Stripe failed'));
  if (topUps && !config.secrets.stripeWebhookSecret) log.warn('top_up.checkout without STRIPE_WEBHOOK_SECRET: top-ups are credited only when the customer comes back to the success page, and refunds and disputes are not seen');

  // Auto-recharge (issue 22): crossings are planned by the engine in its commits; the leader charges them.
  if (config.autoRecharge.enabled && !topUps) log.warn('auto_recharge.enabled but top-ups are off (STRIPE_SECRET_KEY or PAYG_TOP_UP_SECRET missing): nothing is charged');
  const recharger = config.autoRecharge.enabled && topUps && gateway
    ? new Recharger({ options: config.autoRecharge, store, gateway, topUps, engine, emails: config.emails, topUp: config.topUp, log, isLeader: () => leadership.isLeader })
    : undefined;
  if (recharger) engine.onRechargeCrossings = () => recharger.wake();

  const server: http.Server = createHttpServer({ topUps,
    config, engine, sync, get emails() { return sendsTests(); }, settler, store, metrics, log, webhooks: gateway?.stripe.webhooks, publicBodyTimeoutMs: opts.publicBodyTimeoutMs, leases: desk, stream,
    followsStoredSweep: () => !leadership.isLeader,
  });
  server.keepAliveTimeout = 65_000;
  await new Promise<void>((resolve) => server.listen(config.listen.port, config.listen.host, resolve));
  const addr = server.address() as AddressInfo;
  const url = `http://${addr.address.includes(':') ? `[${addr.address}]` : addr.address}:${addr.port}`;
  log.info({ url, customers: engine.size }, 'payg control service listening');
  if (desk.recoveryEndsAt) log.warn({ until: new Date(desk.recoveryEndsAt).toISOString() }, 'upgraded from memory-only leases: those of the previous run may still be in use, granting none until then');
  const consoleServer = config.console ? await mountConsole({ config, engine, store, sync, gateway, get emails() { return sendsTests(); }, metrics, log, followsStoredSweep: () => !leadership.isLeader }) : undefined;

  const task = sync ? cron.schedule(config.stripe.poll, () => {
    if (!leadership.isLeader) return;
    if (sync!.sweeping) { log.warn('previous sweep still running; this tick is skipped'); return; }
    void sync!.sweep();
  }) : undefined;
  // Hourly: forget usage events and webhook ids kept only for dedupe (Stripe retries webhooks for 3 days).
  const prune = () => store.prune({ usageBefore: Date.now() - config.metering.keepEventsMs, webhooksBefore: Date.now() - 7 * 86_400_000 })
    .then((r) => { if (r.usageEvents || r.webhookEvents) log.info(r, 'pruned events kept for dedupe'); })
    .catch((err) => log.error({ err: (err as Error).message }, 'pruning failed'));
  const pruneTimer = setInterval(() => { if (leadership.isLeader) void prune(); }, 3_600_000).unref();
  const settleTask = settler ? cron.schedule(config.metering.settle.schedule, () => { if (leadership.isLeader) void settler!.settle(); }) : undefined;
  // Taking the lead (at start, or after the leader died): sweep, resend pending settlements
  // (same idempotency keys), requeue emails the last leader left in flight, and send.
  const lead = async () => {
    log.info('leading: sweep, settlement and email sending run here');
    await startSender().catch((err) => log.error({ err: (err as Error).message }, 'email sender did not start'));
    if (config.emails.some((t) => t.reenrollAfterMs)) engine.enqueueRecurring().catch((err) => log.error({ err: (err as Error).message }, 'recurring email check failed'));
    if (sync && opts.sweepOnStart !== false) void sync.sweep();
    if (settler && opts.sweepOnStart !== false) void settler.settle();
    // Credits and debits a crash or another replica left pending: found applied in Stripe, or sent again with the same key.
    if (topUps) void topUps.resendPending().catch((err) => log.error({ err: (err as Error).message }, 'resending pending top-ups failed'));
    // Recharges planned or still processing (a crash, the last leader died): charged again under the same keys.
    recharger?.start();
  };
  const topUpTimer = topUps ? setInterval(() => { if (leadership.isLeader) void topUps.resendPending().catch(() => undefined); }, topUps.checkout.resendIntervalMs) : undefined;
  leadership.onChange((leader) => {
    if (leader) void lead();
    else { log.warn('no longer leading: singleton work stops here'); void stopSender(); }
  });
  if (leadership instanceof PostgresLeadership) await leadership.start();
  else await lead();

  return {
    url, engine, sync, get emails() { return emails; }, settler, store, console: consoleServer, leadership, leases: desk, stream, topUps, recharger,
    async stop() {
      // Stop accepting: new lease calls are answered 503 (the node asks the next replica at once);
      // streams end, so their nodes move to another replica (and give back their leases there);
      // lease calls and other requests in flight finish; then the singleton work and the store stop.
      const drained = desk.drain(STOP_DRAIN_MS);
      stream.close();
      const closed = new Promise<void>((resolve) => {
        // Keep-alive connections are closed as soon as they are idle (their request answered).
        const idle = setInterval(() => server.closeIdleConnections(), 20);
        const t = setTimeout(() => { clearInterval(idle); resolve(); }, STOP_DRAIN_MS).unref();
        server.close(() => { clearTimeout(t); clearInterval(idle); resolve(); });
      });
      server.closeIdleConnections();
      await drained;
      await closed;
      recharger?.stop();
      await recharger?.drain();
      await consoleServer?.stop();
      await task?.stop();
      await settleTask?.stop();
      clearInterval(pruneTimer);
      clearInterval(topUpTimer);
      clearInterval(recurringTimer);
      await leadership.stop();
      await changes?.stop();
      await stopSender();
      testSender?.stop().catch(() => undefined);
      desk.stop();
      server.closeAllConnections();
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
SMTP_URL, PAYG_ADMIN_TOKEN, PAYG_CONTROL_TOKEN, PAYG_TOP_UP_SECRET; PORT overrides the listen port; PAYG_LOG_LEVEL.
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
