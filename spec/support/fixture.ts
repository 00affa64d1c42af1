// One shared fixture for control-service specs (issue 24): a temp folder, the
// Stripe emulator and the services a test starts, all stopped and removed after
// each test (or after the suite) even when the test fails, so the leak watch
// finds nothing left open.
//
//   const fx = serviceFixture({ prefix: 'payg-pricing-' });          // beforeEach/afterEach
//   const fx = serviceFixture({ prefix: 'payg-x-', scope: 'suite' }); // before/after
//   await fx.start({ metering: { default_cost: 1 } });
//   const { status, body } = await fx.admin('/admin/customers/cus_1');
//   const p = await fx.launch(fx.writeConfig('payg.yml', doc));       // the real process, for kill -9
//   await p.kill('SIGKILL');                                          // (killed at tearDown anyway)
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino, { type Logger } from 'pino';
import { parseConfig, type Config } from '../../control-service/src/config';
import { startService, type RunningService } from '../../control-service/src/service';
import { StripeEmulator } from '../../testkit/stripe-emulator';
import { startControlProcess, type ControlProcess } from './control-process';

export const ADMIN = 'admin-token-for-tests';
export const CONTROL = 'control-token-for-tests';
/** A cron that fires once a year: the poll and settlement never run by themselves in a test. */
export const NEVER = '0 0 1 1 *';

export type Doc = Record<string, unknown>;
export type StartOptions = NonNullable<Parameters<typeof startService>[1]>;

export interface FixtureOptions {
  /** Temp folder name prefix. */
  prefix?: string;
  /** 'test' (default): a fresh folder, emulator and service per test; 'suite': one for the whole describe. */
  scope?: 'test' | 'suite';
  /** The emulator delivers webhooks by itself (default false: specs deliver or sweep explicitly). */
  autoDeliver?: boolean;
}

const isPlain = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Deep merge: plain objects merge key by key, anything else (arrays too) replaces; `undefined` removes the key. */
export function merge(base: Doc, overrides: Doc): Doc {
  const out: Doc = { ...base };
  for (const [k, v] of Object.entries(overrides)) {
    if (v === undefined) delete out[k];
    else if (isPlain(v) && isPlain(out[k])) out[k] = merge(out[k] as Doc, v);
    else out[k] = v;
  }
  return out;
}

export interface Answer<T = any> { status: number; body: T; headers: Headers }

export class ServiceFixture {
  dir!: string;
  stripe!: StripeEmulator;
  /** The service started last. */
  svc: RunningService | undefined;
  private readonly started: RunningService[] = [];
  private readonly cleanups: Array<() => unknown> = [];

  constructor(private readonly opts: FixtureOptions = {}) {}

  async setUp(): Promise<void> {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), this.opts.prefix ?? 'payg-spec-'));
    this.stripe = await new StripeEmulator().start();
    this.stripe.autoDeliver = this.opts.autoDeliver ?? false;
  }

  /** Stops every service started and the emulator, then removes the folder; each step runs even if one before it throws. */
  async tearDown(): Promise<void> {
    const errors: unknown[] = [];
    for (const fn of this.cleanups.splice(0).reverse()) {
      try { await fn(); } catch (err) { errors.push(err); }
    }
    for (const s of this.started.splice(0).reverse()) {
      try { await s.stop(); } catch (err) { errors.push(err); }
    }
    this.svc = undefined;
    try { await this.stripe?.stop(); } catch (err) { errors.push(err); }
    if (this.dir) fs.rmSync(this.dir, { recursive: true, force: true });
    if (errors.length) throw errors[0];
  }

  /** Runs `fn` at tearDown before the services, emulator and folder go (last deferred first): for what a test starts beside them. */
  defer(fn: () => unknown): void {
    this.cleanups.push(fn);
  }

  /** The shared base document, deep-merged with `overrides`. */
  baseConfig(overrides: Doc = {}): Doc {
    return merge({
      listen: { port: 0 },
      store: { sqlite: path.join(this.dir, 'payg.sqlite') },
      stripe: { poll: NEVER, max_requests_per_second: 100, retry: { max_attempts: 2, base_delay_ms: 10, max_delay_ms: 20 } },
      cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
      rules: [{ id: 'block', cohort: 'no-credit', body: '{"error":"payment_required"}' }],
      metering: { settle: { schedule: NEVER } },
    }, overrides);
  }

  /** The environment a service reads its secrets from; `extra` adds or (with undefined) removes names. */
  env(extra: Record<string, string | undefined> = {}): Record<string, string> {
    const all: Record<string, string | undefined> = { STRIPE_SECRET_KEY: this.stripe.secretKey, STRIPE_API_BASE: this.stripe.url, PAYG_ADMIN_TOKEN: ADMIN, PAYG_CONTROL_TOKEN: CONTROL, ...extra };
    return Object.fromEntries(Object.entries(all).filter((e): e is [string, string] => e[1] !== undefined));
  }

  /** `baseConfig(overrides)` parsed with `env()` against the temp folder. */
  config(overrides: Doc = {}, env: Record<string, string | undefined> = {}): Config {
    return parseConfig(this.baseConfig(overrides), this.env(env), this.dir);
  }

  /** Starts a service (silent log, no sweep on start unless `opts` say otherwise); stopped by tearDown. */
  async start(overrides: Doc = {}, opts: StartOptions & { env?: Record<string, string | undefined>; log?: Logger } = {}): Promise<RunningService> {
    const { env, ...startOpts } = opts;
    return this.startConfig(this.config(overrides, env), startOpts);
  }

  /** Starts a service from a config built elsewhere; stopped by tearDown. */
  async startConfig(config: Config, opts: StartOptions = {}): Promise<RunningService> {
    const svc = await startService(config, { log: pino({ level: 'silent' }), sweepOnStart: false, ...opts });
    this.started.push(svc);
    this.svc = svc;
    return svc;
  }

  /** Stops the last started service now (e.g. before starting another on the same store). */
  async stop(): Promise<void> {
    const svc = this.svc;
    if (!svc) return;
    this.started.splice(this.started.indexOf(svc), 1);
    this.svc = undefined;
    await svc.stop();
  }

  /** Writes `doc` as the config file `name` in the temp folder (as it is: no base merged in); answers its path. */
  writeConfig(name: string, doc: Doc): string {
    const file = path.join(this.dir, name);
    fs.writeFileSync(file, JSON.stringify(doc));
    return file;
  }

  /**
   * Starts the control service as its real process (bin/payg-control) on `configFile`, with
   * `env()` (+ `env`) as its environment; killed with SIGKILL at tearDown, before the emulator stops.
   */
  async launch(configFile: string, env: Record<string, string | undefined> = {}, timeoutMs?: number): Promise<ControlProcess> {
    const p = await startControlProcess(configFile, this.env(env), timeoutMs);
    this.defer(() => p.kill('SIGKILL'));
    return p;
  }

  /** A request with the admin token to a service at `base` (e.g. a launched process's url). */
  adminAt<T = any>(base: string, p: string, init: RequestInit = {}): Promise<Answer<T>> { return this.callAt(base, ADMIN, p, init); }

  get url(): string {
    if (!this.svc) throw new Error('fixture: no service started');
    return this.svc.url;
  }

  /** A request to the running service with the admin bearer token; the body parsed as JSON when it is JSON. */
  admin<T = any>(p: string, init: RequestInit = {}): Promise<Answer<T>> { return this.call(ADMIN, p, init); }
  /** A request to the running service with the control (plugin) bearer token. */
  control<T = any>(p: string, init: RequestInit = {}): Promise<Answer<T>> { return this.call(CONTROL, p, init); }

  private call<T>(token: string, p: string, init: RequestInit): Promise<Answer<T>> { return this.callAt(this.url, token, p, init); }

  private async callAt<T>(base: string, token: string, p: string, init: RequestInit): Promise<Answer<T>> {
    const headers = new Headers(init.headers);
    if (!headers.has('authorization')) headers.set('authorization', `Bearer ${token}`);
    if (typeof init.body === 'string' && !headers.has('content-type')) headers.set('content-type', 'application/json');
    const res = await fetch(`${base}${p}`, { ...init, headers });
    const text = await res.text();
    let body: unknown = text;
    try { body = text === '' ? undefined : JSON.parse(text); } catch { /* not JSON: the text */ }
    return { status: res.status, body: body as T, headers: res.headers };
  }
}

/** A fixture whose hooks are registered in the calling describe block. */
export function serviceFixture(opts: FixtureOptions = {}): ServiceFixture {
  const fx = new ServiceFixture(opts);
  if (opts.scope === 'suite') {
    before(() => fx.setUp());
    after(() => fx.tearDown());
  } else {
    beforeEach(() => fx.setUp());
    afterEach(() => fx.tearDown());
  }
  return fx;
}
