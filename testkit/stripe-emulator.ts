// A Stripe emulator the official SDK talks to through host/port/protocol:
// form-encoded bodies, bearer auth, Stripe's list pagination and error JSON,
// customer balance transactions (created and listed newest first; every balance
// change is one, as in Stripe), 429/5xx/outages on demand, answers held or
// lost after the request was carried out, idempotent replays of the original
// answer, a pinned clock for same-second events, and signed webhook delivery
// of customer.* events with previous_attributes.

import http from 'node:http';
import { LoopbackServer } from './loopback-server';
import { randomBytes } from 'node:crypto';
import Stripe from 'stripe';

export interface EmuCustomer {
  id: string; object: 'customer'; created: number; balance: number; currency: string | null;
  name: string | null; email: string | null; metadata: Record<string, string>; livemode: false;
}
export interface EmuEvent { id: string; object: 'event'; type: string; created: number; data: { object: unknown; previous_attributes?: Record<string, unknown> }; livemode: false; api_version: string }

const rid = (prefix: string) => `${prefix}_${randomBytes(10).toString('hex')}`;

/** Stripe's form encoding: a[b]=c → { a: { b: c } } (one level is all customers need). */
function parseForm(body: string): Record<string, any> {
  const out: Record<string, any> = {};
  for (const [key, value] of new URLSearchParams(body)) {
    const m = /^([^[]+)\[([^\]]*)\]$/.exec(key);
    if (m) (out[m[1]] ??= {})[m[2]] = value; else out[key] = value;
  }
  return out;
}

export class StripeEmulator extends LoopbackServer {
  readonly customers = new Map<string, EmuCustomer>();
  private readonly deleted = new Set<string>();
  readonly events: EmuEvent[] = [];
  readonly requests: Array<{ method: string; path: string; status: number }> = [];
  readonly balanceTransactions: Array<Record<string, unknown>> = [];
  readonly meterEvents: Array<Record<string, unknown>> = [];
  /** Idempotency-Key → the request it was first used with and the answer given. */
  private readonly idempotent = new Map<string, { request: string; status: number; body: string }>();
  secretKey = 'sk_test_emulator';
  webhook: { url: string; secret: string } | undefined;
  /** Deliver webhooks as events happen (else call deliver()). */
  autoDeliver = true;
  private failures: Array<{ status: number; retryAfter?: number }> = [];
  private down = false;
  private rateLimit: { perSecond: number; windowStart: number; count: number } | undefined;
  private clock = Math.floor(Date.now() / 1000);
  /** Every change to each customer's balance, oldest first, as Stripe lists them (newest first) at /balance_transactions. */
  private readonly balanceHistory = new Map<string, Array<Record<string, unknown>>>();
  private lost: { path: RegExp; count: number; method?: string } | undefined;
  private pinnedClock: number | undefined;
  /** Stripe's error JSON carries `code` (set false to check a client does not depend on it). */
  errorCodes = true;


  // ---- test controls ------------------------------------------------------
  /** The next `count` API requests fail with `status` (e.g. 429 or 500). */
  failNext(count: number, status: number, retryAfter?: number): void {
    for (let i = 0; i < count; i++) this.failures.push({ status, retryAfter });
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
  create(fields: Partial<EmuCustomer> = {}): EmuCustomer {
    const c: EmuCustomer = {
      id: fields.id ?? rid('cus'), object: 'customer', created: this.tick(), balance: 0, currency: 'usd',
      name: null, email: null, metadata: {}, livemode: false, ...fields,
    };
    this.customers.set(c.id, c);
    this.listOrder = undefined;
    // Stripe records a starting balance as an 'initial' balance transaction.
    if (c.balance !== 0) this.recordBalanceChange(c, c.balance, 'initial', null, {});
    this.emit('customer.created', c);
    return c;
  }
  /** Sets fields and emits customer.updated with previous_attributes. */
  update(id: string, fields: Partial<EmuCustomer>): EmuCustomer {
    const c = this.customers.get(id)!;
    const previous: Record<string, unknown> = {};
    for (const k of Object.keys(fields) as Array<keyof EmuCustomer>) previous[k] = c[k];
    const before = c.balance;
    Object.assign(c, fields);
    // Setting the balance directly is an 'adjustment' balance transaction in Stripe.
    if (c.balance !== before) this.recordBalanceChange(c, c.balance - before, 'adjustment', null, {});
    this.emit('customer.updated', c, previous);
    return c;
  }
  remove(id: string): void {
    const c = this.customers.get(id)!;
    this.customers.delete(id);
    this.listOrder = undefined;
    this.deleted.add(id);
    this.emit('customer.deleted', { ...c, deleted: true });
  }
  /** A customer balance transaction: positive amount debits credit (balance rises). */
  addBalanceTransaction(id: string, amount: number, currency = 'usd', description: string | null = null, metadata: Record<string, string> = {}): Record<string, unknown> {
    const c = this.customers.get(id)!;
    const previous = { balance: c.balance };
    c.balance += amount;
    c.currency ??= currency;
    const txn = this.recordBalanceChange(c, amount, 'adjustment', description, metadata ?? {});
    this.balanceTransactions.push(txn);
    this.emit('customer.updated', c, previous);
    return txn;
  }

  private recordBalanceChange(c: EmuCustomer, amount: number, type: string, description: string | null, metadata: Record<string, string>): Record<string, unknown> {
    const txn = { id: rid('cbtxn'), object: 'customer_balance_transaction', amount, currency: c.currency ?? 'usd', customer: c.id, ending_balance: c.balance, type, created: this.tick(), livemode: false, description, metadata };
    const list = this.balanceHistory.get(c.id) ?? [];
    list.push(txn);
    this.balanceHistory.set(c.id, list);
    return txn;
  }

  // Customers newest first, like Stripe's list, with each id's position; rebuilt after a create or delete.
  private listOrder: EmuCustomer[] | undefined;
  private listIndex: Map<string, number> | undefined;
  private newestFirst(): EmuCustomer[] {
    if (!this.listOrder) {
      this.listOrder = [...this.customers.values()].reverse();
      this.listIndex = new Map(this.listOrder.map((c, i) => [c.id, i]));
    }
    return this.listOrder;
  }

  private tick(): number {
    if (this.pinnedClock !== undefined) return this.pinnedClock;
    this.clock = Math.max(this.clock, Math.floor(Date.now() / 1000));
    return this.clock;
  }

  private emit(type: string, object: unknown, previous?: Record<string, unknown>): EmuEvent {
    const event: EmuEvent = {
      id: rid('evt'), object: 'event', type, created: this.tick(), livemode: false, api_version: '2024-06-20',
      data: { object: JSON.parse(JSON.stringify(object)), ...(previous ? { previous_attributes: previous } : {}) },
    };
    this.events.push(event);
    if (this.autoDeliver && this.webhook) void this.deliver(event).catch(() => undefined);
    return event;
  }

  /** Signs and POSTs an event to the webhook endpoint as Stripe does; returns the HTTP status. */
  async deliver(event: EmuEvent, opts: { timestamp?: number; secret?: string; payload?: string } = {}): Promise<number> {
    if (!this.webhook) throw new Error('no webhook endpoint');
    const payload = opts.payload ?? JSON.stringify(event);
    const header = Stripe.webhooks.generateTestHeaderString({ payload, secret: opts.secret ?? this.webhook.secret, timestamp: opts.timestamp });
    const res = await fetch(this.webhook.url, { method: 'POST', headers: { 'content-type': 'application/json', 'stripe-signature': header }, body: payload });
    await res.text();
    return res.status;
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
      const failure = this.failures.shift();
      if (failure) {
        const headers: Record<string, string> = failure.retryAfter !== undefined ? { 'retry-after': String(failure.retryAfter) } : {};
        if (failure.status === 429) return this.error(res, 429, 'invalid_request_error', 'Request rate limit exceeded.', { code: 'rate_limit' }, headers);
        return this.error(res, failure.status, 'api_error', 'An unknown error occurred.', {}, headers);
      }
      const rawBody = Buffer.concat(chunks).toString();
      const body = parseForm(rawBody);
      // Idempotency as Stripe does it: the same key with the same request replays
      // the first answer; the same key with other parameters is a 400.
      if (this.held?.test(url.pathname) && (!this.heldMethod || this.heldMethod === req.method)) res.end = (() => res) as unknown as typeof res.end; // done, never answered
      if (this.lost && this.lost.count > 0 && this.lost.path.test(url.pathname) && (!this.lost.method || this.lost.method === req.method)) {
        this.lost.count--;
        res.end = (() => { req.socket.destroy(); return res; }) as unknown as typeof res.end; // done, answer lost on the way
      }
      const idemKey = req.method === 'POST' ? req.headers['idempotency-key'] as string | undefined : undefined;
      if (idemKey) {
        const signature = `${req.method} ${url.pathname} ${[...new URLSearchParams(rawBody)].sort().map(([k, v]) => `${k}=${v}`).join('&')}`;
        const seen = this.idempotent.get(idemKey);
        if (seen && seen.request !== signature) {
          return this.error(res, 400, 'idempotency_error', `Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '${idemKey}' if you meant to execute a different request.`);
        }
        if (seen) {
          res.writeHead(seen.status, { 'content-type': 'application/json', 'request-id': rid('req'), 'idempotent-replayed': 'true', 'idempotency-key': idemKey });
          return res.end(seen.body);
        }
        const end = res.end.bind(res);
        res.end = ((chunk: unknown, ...rest: unknown[]) => {
          if (res.statusCode < 500 && res.statusCode !== 429) this.idempotent.set(idemKey, { request: signature, status: res.statusCode, body: String(chunk) });
          return (end as (...a: unknown[]) => http.ServerResponse)(chunk, ...rest);
        }) as typeof res.end;
      }
      const send = (obj: unknown) => { res.writeHead(200, { 'content-type': 'application/json', 'request-id': rid('req') }); res.end(JSON.stringify(obj)); };
      const parts = url.pathname.split('/').filter(Boolean); // v1, customers, id, balance_transactions

      if (req.method === 'POST' && url.pathname === '/v1/billing/meter_events') {
        if (!body.event_name) return this.error(res, 400, 'invalid_request_error', 'Missing required param: event_name.', { param: 'event_name' });
        const payload = body.payload ?? {};
        if (!payload.stripe_customer_id || !this.customers.has(payload.stripe_customer_id)) {
          return this.error(res, 400, 'invalid_request_error', `No such customer: '${payload.stripe_customer_id}'`, { param: 'payload[stripe_customer_id]' });
        }
        if (!/^\d+(\.\d+)?$/.test(payload.value ?? '')) return this.error(res, 400, 'invalid_request_error', 'Invalid payload[value]: must be a number.', { param: 'payload[value]' });
        const identifier = body.identifier ?? rid('mev');
        if (this.meterEvents.some((e) => e.identifier === identifier)) {
          return this.error(res, 400, 'invalid_request_error', `An event already exists with identifier ${identifier}.`, { code: 'meter_event_identifier_already_exists', param: 'identifier' });
        }
        const event = { object: 'billing.meter_event', created: this.tick(), event_name: body.event_name, identifier, livemode: false, payload, timestamp: Number(body.timestamp ?? this.tick()) };
        this.meterEvents.push(event);
        return send(event);
      }
      if (parts[0] !== 'v1' || parts[1] !== 'customers') return this.error(res, 404, 'invalid_request_error', `Unrecognized request URL (${req.method}: ${url.pathname}).`);
      const id = parts[2];
      if (req.method === 'GET' && !id) {
        const limitText = url.searchParams.get('limit');
        const limit = limitText === null ? 10 : Number(limitText);
        if (!Number.isInteger(limit) || limit < 1 || limit > 100) {
          return this.error(res, 400, 'invalid_request_error', 'Invalid integer: limit must be between 1 and 100', { param: 'limit' });
        }
        const all = this.newestFirst();
        const after = url.searchParams.get('starting_after');
        let start = 0;
        if (after) {
          const idx = this.listIndex!.get(after) ?? -1;
          if (idx < 0) return this.error(res, 400, 'invalid_request_error', `No such customer: '${after}'`, { param: 'starting_after', code: 'resource_missing' });
          start = idx + 1;
        }
        const data = all.slice(start, start + limit);
        return send({ object: 'list', url: '/v1/customers', has_more: start + limit < all.length, data });
      }
      if (req.method === 'POST' && !id) {
        const fields: Partial<EmuCustomer> = { name: body.name ?? null, email: body.email ?? null, metadata: body.metadata ?? {} };
        if (body.balance !== undefined) fields.balance = Number(body.balance);
        if (body.currency !== undefined) fields.currency = body.currency;
        return send(this.create(fields));
      }
      const customer = id ? this.customers.get(id) : undefined;
      if (!customer) {
        if (id && this.deleted.has(id) && req.method === 'GET' && parts.length === 3) return send({ id, object: 'customer', deleted: true });
        return this.error(res, 404, 'invalid_request_error', `No such customer: '${id}'`, { param: 'id', code: 'resource_missing' });
      }
      if (req.method === 'GET' && parts.length === 3) return send(customer);
      if (req.method === 'DELETE' && parts.length === 3) { this.remove(id); return send({ id, object: 'customer', deleted: true }); }
      if (req.method === 'POST' && parts.length === 3) {
        const fields: Partial<EmuCustomer> = {};
        for (const k of ['name', 'email', 'currency'] as const) if (body[k] !== undefined) fields[k] = body[k];
        if (body.balance !== undefined) fields.balance = Number(body.balance);
        if (body.metadata) fields.metadata = { ...customer.metadata, ...body.metadata };
        return send(this.update(id, fields));
      }
      if (req.method === 'GET' && parts[3] === 'balance_transactions' && parts.length === 4) {
        const limitText = url.searchParams.get('limit');
        const limit = limitText === null ? 10 : Number(limitText);
        if (!Number.isInteger(limit) || limit < 1 || limit > 100) {
          return this.error(res, 400, 'invalid_request_error', 'Invalid integer: limit must be between 1 and 100', { param: 'limit' });
        }
        const all = [...(this.balanceHistory.get(id) ?? [])].reverse(); // newest first
        const after = url.searchParams.get('starting_after');
        let start = 0;
        if (after) {
          const idx = all.findIndex((t) => t.id === after);
          if (idx < 0) return this.error(res, 400, 'invalid_request_error', `No such customer balance transaction: '${after}'`, { param: 'starting_after', code: 'resource_missing' });
          start = idx + 1;
        }
        return send({ object: 'list', url: `/v1/customers/${id}/balance_transactions`, has_more: start + limit < all.length, data: all.slice(start, start + limit) });
      }
      if (req.method === 'POST' && parts[3] === 'balance_transactions') {
        const amount = Number(body.amount);
        if (!Number.isInteger(amount)) return this.error(res, 400, 'invalid_request_error', 'Missing required param: amount.', { param: 'amount' });
        if (!body.currency) return this.error(res, 400, 'invalid_request_error', 'Missing required param: currency.', { param: 'currency' });
        return send(this.addBalanceTransaction(id, amount, body.currency, body.description, body.metadata));
      }
      return this.error(res, 404, 'invalid_request_error', `Unrecognized request URL (${req.method}: ${url.pathname}).`);
    });
  }
}
