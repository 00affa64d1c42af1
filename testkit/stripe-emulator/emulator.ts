// A Stripe emulator the official SDK talks to through host/port/protocol:
// form-encoded bodies, bearer auth, Stripe's list pagination and error JSON,
// customer balance transactions (created and listed newest first; every balance
// change is one, as in Stripe), 429/5xx/outages on demand, answers held or
// lost after the request was carried out, idempotent replays of the original
// answer, a pinned clock for same-second events, and signed webhook delivery
// of events in Stripe's shape. Resources live in modules of their own
// (customers, checkout, payment intents, charges/refunds/disputes, invoices,
// events, the hosted Checkout page); this class is their state and the HTTP
// transport with its fault injection.

import http from 'node:http';
import { LoopbackServer } from '../loopback-server';
import Stripe from 'stripe';
import { StripeApiError, parseForm, rid } from './params';
import type { Route } from './routes';
import { customerRoutes, createCustomer, updateCustomer, removeCustomer, addBalanceTransaction, type EmuCustomer } from './customers';
import { balanceTransactionRoutes } from './balance-transactions';
import { paymentMethodRoutes, type PaymentMethodState } from './payment-methods';
import { paymentIntentRoutes, settlePaymentIntent, authenticatePaymentIntent } from './payment-intents';
import { chargeRoutes, openDispute, closeDispute } from './charges';
import { checkoutRoutes, checkoutAfterSettle, completeCheckoutSession, expireCheckoutSession, type CheckoutOutcome } from './checkout';
import { invoiceRoutes } from './invoices';
import { eventRoutes, makeEvent, deliverEvent, redeliver, type EmuEvent, type WebhookEndpoint, type RedeliverOptions } from './events';
import { handleHostedPage } from './hosted';

export type { EmuCustomer } from './customers';
export type { EmuEvent, WebhookEndpoint, RedeliverOptions } from './events';
export type { CheckoutOutcome } from './checkout';

type Obj = Record<string, any>;

export class StripeEmulator extends LoopbackServer {
  readonly customers = new Map<string, EmuCustomer>();
  /** @internal ids of deleted customers (retrieve answers `deleted: true`). */
  readonly deleted = new Set<string>();
  readonly events: EmuEvent[] = [];
  readonly requests: Array<{ method: string; path: string; status: number }> = [];
  readonly balanceTransactions: Array<Record<string, unknown>> = [];
  readonly meterEvents: Array<Record<string, unknown>> = [];
  // Payments: every object as Stripe shows it, by id, in creation order.
  readonly checkoutSessions = new Map<string, Obj>();
  /** @internal each session's line items as Stripe lists them (expand line_items / listLineItems). */
  readonly checkoutLineItems = new Map<string, Obj[]>();
  readonly paymentIntents = new Map<string, Obj>();
  readonly paymentMethods = new Map<string, Obj>();
  /** @internal how each payment method behaves (which test card it is). */
  readonly paymentMethodState = new Map<string, PaymentMethodState>();
  readonly setupIntents = new Map<string, Obj>();
  readonly charges = new Map<string, Obj>();
  readonly refunds = new Map<string, Obj>();
  readonly disputes = new Map<string, Obj>();
  readonly invoices = new Map<string, Obj>();
  /** Stripe balance transactions (txn_…) of charges and refunds — not customer balance transactions. */
  readonly stripeBalanceTransactions = new Map<string, Obj>();
  /** Idempotency-Key → the request it was first used with and the answer given. */
  private readonly idempotent = new Map<string, { request: string; status: number; body: string }>();
  secretKey = 'sk_test_emulator';
  webhook: { url: string; secret: string } | undefined;
  /** More endpoints besides `webhook`; every event goes to each. */
  readonly webhookEndpoints: WebhookEndpoint[] = [];
  /** Deliver webhooks as events happen (else call deliver()). */
  autoDeliver = true;
  /** API version events and objects carry (the SDK's). */
  readonly apiVersion = '2026-10-28.endive';
  /** Milliseconds a request that confirms a payment (PaymentIntent create with confirm, confirm, Checkout pay) waits before it is carried out. */
  paymentDelayMs = 0;
  private failures: Array<{ status: number; retryAfter?: number; path?: RegExp; method?: string }> = [];
  private down = false;
  private rateLimit: { perSecond: number; windowStart: number; count: number } | undefined;
  private clock = Math.floor(Date.now() / 1000);
  /** @internal every change to each customer's balance, oldest first. */
  readonly balanceHistory = new Map<string, Array<Record<string, unknown>>>();
  private lost: { path: RegExp; count: number; method?: string } | undefined;
  private pinnedClock: number | undefined;
  /** Stripe's error JSON carries `code` (set false to check a client does not depend on it). */
  errorCodes = true;
  /** @internal the API request being carried out (events name it in `request`). */
  currentRequest: { id: string | null; idempotency_key: string | null } = { id: null, idempotency_key: null };
  private readonly routes: Route[] = [
    ...checkoutRoutes, ...paymentIntentRoutes, ...paymentMethodRoutes, ...chargeRoutes, ...invoiceRoutes,
    ...eventRoutes, ...balanceTransactionRoutes, ...customerRoutes,
  ];

  // ---- test controls ------------------------------------------------------
  /** The next `count` API requests fail with `status` (e.g. 429 or 500), before anything is done. */
  failNext(count: number, status: number, retryAfter?: number): void {
    for (let i = 0; i < count; i++) this.failures.push({ status, retryAfter });
  }
  /** Like failNext, for the next `count` requests whose path matches only (others pass). */
  failNextMatching(path: RegExp, count: number, status: number, opts: { retryAfter?: number; method?: string } = {}): void {
    for (let i = 0; i < count; i++) this.failures.push({ status, retryAfter: opts.retryAfter, path, method: opts.method });
  }
  /** While down, every connection is dropped without an answer. */
  setDown(down: boolean): void {
    this.down = down;
    if (down) this.server.closeAllConnections();
  }
  /**
   * Requests whose path matches are carried out but never answered (until the
   * client gives up or dies): the moment between "Stripe did it" and "the
   * caller heard it". undefined answers normally again.
   */
  holdAnswers(path: RegExp | undefined, method?: string): void { this.held = path; this.heldMethod = method; }
  private held: RegExp | undefined;
  private heldMethod: string | undefined;
  /** Forgets every idempotency key, as Stripe does after 24 hours. */
  forgetIdempotencyKeys(): void { this.idempotent.clear(); }

  /**
   * The next `count` requests whose path matches are carried out, then their
   * connection is cut before the answer: Stripe did it, the caller never hears.
   */
  loseAnswers(path: RegExp, count = 1, method?: string): void { this.lost = { path, count, method }; }

  /** Pins `created` of new objects and events to one second (undefined: the clock runs again), e.g. two updates in one second. */
  pinClock(seconds: number | undefined): void { this.pinnedClock = seconds; }

  /**
   * Error messages carry the API key the request was made with, in full, as
   * error text from Stripe or a proxy in front of it can: for proving the key
   * never reaches logs or answers.
   */
  echoKeyInErrors = false;
  private keyGiven = '';

  /** Answer 429 past `perSecond` requests in any one-second window, as Stripe's limiter does. */
  limitRate(perSecond: number | undefined): void {
    this.rateLimit = perSecond === undefined ? undefined : { perSecond, windowStart: 0, count: 0 };
  }

  // ---- direct data access (the "dashboard") ---------------------------------
  create(fields: Partial<EmuCustomer> = {}): EmuCustomer { return createCustomer(this, fields); }
  /** Sets fields and emits customer.updated with previous_attributes. */
  update(id: string, fields: Partial<EmuCustomer>): EmuCustomer { return updateCustomer(this, id, fields); }
  remove(id: string): void { removeCustomer(this, id); }
  /** A customer balance transaction: positive amount debits credit (balance rises). */
  addBalanceTransaction(id: string, amount: number, currency = 'usd', description: string | null = null, metadata: Record<string, string> = {}): Record<string, unknown> {
    return addBalanceTransaction(this, id, amount, currency, description, metadata);
  }

  // ---- test helpers for payments (what a customer or a bank does) -----------
  /**
   * The customer pays an open Checkout Session with a test payment method
   * (`pm_card_visa`, `pm_card_chargeDeclined`, `pm_usBankAccount`, …), as the
   * hosted page's Pay button does. Returns what happened; the session stays
   * open after a decline, as on Stripe's page.
   */
  completeCheckoutSession(id: string, paymentMethod = 'pm_card_visa', details: { email?: string; name?: string } = {}): CheckoutOutcome {
    return this.asHelper(() => completeCheckoutSession(this, id, paymentMethod, details));
  }
  /** Expires an open session as 24 hours passing would (checkout.session.expired). */
  expireCheckoutSession(id: string): Obj { return this.asHelper(() => expireCheckoutSession(this, id)); }
  /** A processing (bank debit) PaymentIntent clears or bounces; Checkout's async_payment_* events follow. */
  settlePaymentIntent(id: string, outcome: 'succeeded' | 'failed' = 'succeeded'): Obj {
    return this.asHelper(() => { const pi = settlePaymentIntent(this, id, outcome); checkoutAfterSettle(this, pi); return pi; });
  }
  /** The customer passes (or fails) the 3-D Secure challenge of a PaymentIntent in requires_action. */
  authenticatePaymentIntent(id: string, passed = true): Obj { return this.asHelper(() => authenticatePaymentIntent(this, id, passed)); }
  /** The cardholder disputes a charge (id of a charge or its PaymentIntent): charge.dispute.created. */
  openDispute(chargeOrPaymentIntent: string, opts: { amount?: number; reason?: string } = {}): Obj { return this.asHelper(() => openDispute(this, chargeOrPaymentIntent, opts)); }
  /** The bank decides a dispute: charge.dispute.closed. */
  closeDispute(id: string, status: 'won' | 'lost'): Obj { return this.asHelper(() => closeDispute(this, id, status)); }

  // ---- events and webhooks ---------------------------------------------------
  /** @internal a new `created` second (pinned or not going backwards). */
  tick(): number {
    if (this.pinnedClock !== undefined) return this.pinnedClock;
    this.clock = Math.max(this.clock, Math.floor(Date.now() / 1000));
    return this.clock;
  }

  /** @internal records an event (and delivers it when autoDeliver). */
  emit(type: string, object: unknown, previous?: Record<string, unknown>): EmuEvent {
    const event = makeEvent(this, type, object, previous);
    this.events.push(event);
    if (this.autoDeliver) for (const endpoint of this.endpoints()) void deliverEvent(event, endpoint).catch(() => undefined);
    return event;
  }

  /** @internal `webhook` and `webhookEndpoints`. */
  endpoints(): WebhookEndpoint[] { return [...(this.webhook ? [this.webhook] : []), ...this.webhookEndpoints]; }

  /** Signs and POSTs an event to the webhook endpoint as Stripe does; returns the HTTP status. */
  async deliver(event: EmuEvent, opts: { timestamp?: number; secret?: string; payload?: string; endpoint?: WebhookEndpoint } = {}): Promise<number> {
    const endpoint = opts.endpoint ?? this.webhook;
    if (!endpoint) throw new Error('no webhook endpoint');
    return deliverEvent(event, endpoint, opts);
  }

  /**
   * Delivers events again — Stripe redelivers, reorders and sends at once — to
   * every endpoint: `times` copies each, in order 'as-is' | 'reverse' | 'shuffle'
   * (seeded), one after another or all `concurrent`ly. Returns the statuses.
   */
  redeliver(events: EmuEvent[], opts: RedeliverOptions = {}): Promise<number[]> { return redeliver(this, events, opts); }

  /** Events of these types, oldest first. */
  eventsOfType(...types: string[]): EmuEvent[] { return this.events.filter((e) => types.includes(e.type)); }

  private asHelper<T>(run: () => T): T {
    const saved = this.currentRequest;
    this.currentRequest = { id: null, idempotency_key: null };
    try { return run(); } finally { this.currentRequest = saved; }
  }

  // ---- the HTTP API ------------------------------------------------------------
  private error(res: http.ServerResponse, status: number, type: string, message: string, extra: Record<string, unknown> = {}, headers: Record<string, string> = {}) {
    res.writeHead(status, { 'content-type': 'application/json', 'request-id': rid('req'), ...headers });
    const { code, ...rest } = extra;
    const echoed = this.echoKeyInErrors ? `${message} (request made with API key ${this.keyGiven})` : message;
    res.end(JSON.stringify({ error: { type, message: echoed, ...(this.errorCodes && code !== undefined ? { code } : {}), ...rest } }));
  }

  protected handle(req: http.IncomingMessage, res: http.ServerResponse) {
    if (this.down) { req.socket.destroy(); return; }
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const url = new URL(req.url ?? '/', 'http://x');
      if (url.pathname.startsWith('/c/')) { void handleHostedPage(this, req, res, url, Buffer.concat(chunks).toString()); return; }
      const record = (status: number) => this.requests.push({ method: req.method ?? '', path: url.pathname, status });
      const origWriteHead = res.writeHead.bind(res);
      res.writeHead = ((status: number, ...rest: any[]) => { record(status); return origWriteHead(status, ...rest); }) as typeof res.writeHead;

      this.keyGiven = (req.headers.authorization ?? '').replace(/^Bearer /, ''); // read by error() in this same turn
      if (req.headers.authorization !== `Bearer ${this.secretKey}`) {
        // Stripe echoes the key it was given, masked to its last four characters.
        const given = (req.headers.authorization ?? '').replace(/^Bearer /, '');
        return this.error(res, 401, 'invalid_request_error', `Invalid API Key provided: ${given.slice(0, 8)}${'*'.repeat(Math.max(0, given.length - 12))}${given.slice(-4)}`);
      }
      if (this.rateLimit) {
        const now = Date.now();
        if (now - this.rateLimit.windowStart >= 1000) { this.rateLimit.windowStart = now; this.rateLimit.count = 0; }
        if (++this.rateLimit.count > this.rateLimit.perSecond) {
          return this.error(res, 429, 'invalid_request_error', 'Request rate limit exceeded.', { code: 'rate_limit' });
        }
      }
      const failureAt = this.failures.findIndex((f) => !f.path || (f.path.test(url.pathname) && (!f.method || f.method === req.method)));
      const failure = failureAt < 0 ? undefined : this.failures.splice(failureAt, 1)[0];
      if (failure) {
        const headers: Record<string, string> = failure.retryAfter !== undefined ? { 'retry-after': String(failure.retryAfter) } : {};
        if (failure.status === 429) return this.error(res, 429, 'invalid_request_error', 'Request rate limit exceeded.', { code: 'rate_limit' }, headers);
        return this.error(res, failure.status, 'api_error', 'An unknown error occurred.', {}, headers);
      }
      const rawBody = Buffer.concat(chunks).toString();
      const body = parseForm(rawBody);
      if (this.held?.test(url.pathname) && (!this.heldMethod || this.heldMethod === req.method)) res.end = (() => res) as unknown as typeof res.end; // done, never answered
      if (this.lost && this.lost.count > 0 && this.lost.path.test(url.pathname) && (!this.lost.method || this.lost.method === req.method)) {
        this.lost.count--;
        res.end = (() => { req.socket.destroy(); return res; }) as unknown as typeof res.end; // done, answer lost on the way
      }
      // Idempotency as Stripe does it: the same key with the same request replays
      // the first answer; the same key with other parameters is a 400; the same
      // key while its first request is still running is a 409.
      const idemKey = req.method === 'POST' ? req.headers['idempotency-key'] as string | undefined : undefined;
      if (idemKey) {
        const signature = `${req.method} ${url.pathname} ${[...new URLSearchParams(rawBody)].sort().map(([k, v]) => `${k}=${v}`).join('&')}`;
        const seen = this.idempotent.get(idemKey);
        if (seen && seen.request !== signature) {
          return this.error(res, 400, 'idempotency_error', `Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '${idemKey}' if you meant to execute a different request.`);
        }
        if (seen && seen.status === 0) {
          return this.error(res, 409, 'idempotency_error', `There is currently another in-progress request using this Idempotent Key (that probably means you submitted twice, and the other request is still going through): ${idemKey}. Please try again later.`, { code: 'idempotency_key_in_use' });
        }
        if (seen) {
          res.writeHead(seen.status, { 'content-type': 'application/json', 'request-id': rid('req'), 'idempotent-replayed': 'true', 'idempotency-key': idemKey });
          return res.end(seen.body);
        }
        this.idempotent.set(idemKey, { request: signature, status: 0, body: '' }); // in progress
        const end = res.end.bind(res);
        res.end = ((chunk: unknown, ...rest: unknown[]) => {
          if (res.statusCode < 500 && res.statusCode !== 429) this.idempotent.set(idemKey, { request: signature, status: res.statusCode, body: String(chunk) });
          else this.idempotent.delete(idemKey);
          return (end as (...a: unknown[]) => http.ServerResponse)(chunk, ...rest);
        }) as typeof res.end;
      }
      const requestId = rid('req');
      const send = (obj: unknown) => { res.writeHead(200, { 'content-type': 'application/json', 'request-id': requestId }); res.end(JSON.stringify(obj)); };
      const run = (route: Route, m: RegExpExecArray) => {
        this.currentRequest = { id: requestId, idempotency_key: idemKey ?? null };
        try {
          send(route.run(this, m, body, url.searchParams));
        } catch (e) {
          if (!(e instanceof StripeApiError)) {
            // A bug in the emulator: answer as Stripe's 500 would, and say so on stderr.
            console.error('stripe emulator:', e);
            return this.error(res, 500, 'api_error', 'An unknown error occurred.');
          }
          const { code, ...extra } = e.extra;
          this.error(res, e.status, e.type, e.message, { code, ...extra });
        } finally {
          this.currentRequest = { id: null, idempotency_key: null };
        }
      };
      for (const route of this.routes) {
        if (route.method !== req.method) continue;
        const m = route.path.exec(url.pathname);
        if (!m) continue;
        if (route.confirms?.(body) && this.paymentDelayMs > 0) { setTimeout(() => run(route, m), this.paymentDelayMs); return; }
        return run(route, m);
      }
      return this.error(res, 404, 'invalid_request_error', `Unrecognized request URL (${req.method}: ${url.pathname}).`);
    });
  }

  /** @internal Stripe's webhook signature header for a payload. */
  static signature(payload: string, secret: string, timestamp?: number): string {
    return Stripe.webhooks.generateTestHeaderString({ payload, secret, timestamp });
  }
}
