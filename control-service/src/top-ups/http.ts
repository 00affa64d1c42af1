// The public top-up routes, exposed through Kong with no auth plugin (the
// signed token is the authentication):
//   GET  /top-up/<token>               the page: name, credit, amounts
//   POST /top-up/<token>               creates the Checkout Session, 303 to it
//   GET  /top-up/<token>/done/<top-up> back from Checkout: the credit once it landed
//   GET  /top-up/<token>/cancel        back from Checkout, cancelled
// Every answer is HTML under a strict CSP; a refused token creates nothing.

import http from 'node:http';
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { Engine } from '../engine';
import type { Store } from '../store/store';
import { MICROS_PER_UNIT } from '../pricing';
import { ByteBudget, readBody } from '../http/util';
import { chooseAmount, topUpId, type CheckoutOptions } from './core';
import { amountMessage, cancelPage, contentSecurityPolicy, messagePage, stateOfSession, successPage, topUpPage, type DoneState, type PageCustomer } from './page';
import type { TopUpRow } from './store';
import { verifyToken } from './token';
import type { TopUps } from './service';
// ---- auto-recharge (issue 22): the opt-in ----
import type { RechargeOptions } from '../recharges/core';
import { chooseOptIn, createOptInSession } from '../recharges/opt-in';
import { formatMoney } from '../customer';
// ---- end auto-recharge ----

export const TOP_UP_PREFIX = '/top-up/';
const FORM_LIMIT = 4096;
/** How often a success page may read a session from Stripe itself (per top-up), when the webhook is late. */
const RECHECK_MS = 3000;
/** How long the success page waits for the book to hold a confirmed credit before showing it. */
const READ_BACK_WAIT_MS = 3000;
/**
 * New Checkout Sessions one customer's link may open per window (per replica): a leaked
 * link cannot spend the Stripe request budget the sweep and settlements share.
 */
export const SESSIONS_PER_WINDOW = 10;
export const SESSION_WINDOW_MS = 10 * 60_000;

export interface TopUpPageDeps {
  topUps: TopUps;
  checkout: CheckoutOptions;
  secret: string;
  engine: Engine;
  store: Store;
  log: Logger;
  budget: ByteBudget;
  bodyTimeoutMs: number;
  /** Auto-recharge (issue 22): offered on the page when set. */
  autoRecharge?: RechargeOptions;
}

export function createTopUpHandler(deps: TopUpPageDeps) {
  const { checkout, secret, engine, store, log } = deps;
  const csp = contentSecurityPolicy(checkout.checkoutOrigins);
  const lastCheck = new Map<string, { at: number; state: Promise<DoneState>; done: boolean }>();
  const opened = new Map<string, { since: number; count: number }>();
  /** Counts a new session for the customer; false when the window's allowance is spent. */
  const allowSession = (customerId: string, now: number): boolean => {
    if (opened.size > 10_000) for (const [id, w] of opened) if (now - w.since >= SESSION_WINDOW_MS) opened.delete(id);
    const w = opened.get(customerId);
    if (!w || now - w.since >= SESSION_WINDOW_MS) { opened.set(customerId, { since: now, count: 1 }); return true; }
    if (w.count >= SESSIONS_PER_WINDOW) return false;
    w.count++;
    return true;
  };

  const page = (res: http.ServerResponse, status: number, html: string, extra: Record<string, string> = {}) => {
    res.writeHead(status, {
      'content-type': 'text/html; charset=utf-8', 'content-length': Buffer.byteLength(html),
      'content-security-policy': csp, 'x-content-type-options': 'nosniff', 'referrer-policy': 'no-referrer',
      'x-frame-options': 'DENY', 'cache-control': 'no-store', ...extra,
    });
    res.end(html);
  };

  const viewOf = (customerId: string): { customer: PageCustomer; currency: string } | undefined => {
    const held = engine.customer(customerId);
    if (!held) return undefined;
    const currency = (held.customer.currency ?? checkout.defaultCurrency).toLowerCase();
    const creditMicros = -Math.round(held.estimatedBalance * MICROS_PER_UNIT);
    return { currency, customer: { name: held.customer.name, currency, creditMinor: Math.floor(Math.max(0, creditMicros) / MICROS_PER_UNIT) } };
  };

  /** The credit of a top-up, if written. */
  const creditOf = async (id: string) => {
    const move = (await store.moves({ topUpId: id })).find((m) => m.kind === 'credit');
    // Confirmed: the page shows the credit now, so wait (briefly) for the book to hold it.
    if (move?.status === 'confirmed') await Promise.race([deps.topUps.readBack(move.id), new Promise((r) => setTimeout(r, READ_BACK_WAIT_MS))]);
    return move;
  };
  /**
   * Where a top-up stands for its success page: our credit if written, else
   * its Checkout Session read from Stripe (at most every RECHECK_MS per
   * top-up; the webhook may be late or not configured): a paid session is
   * credited from here as the webhook would.
   */
  const doneState = async (row: TopUpRow): Promise<DoneState> => {
    const credited = (m: Awaited<ReturnType<typeof creditOf>>): DoneState | undefined => (m?.status === 'confirmed' ? { kind: 'credited', amount: -m.amount }
      : m?.status === 'failed' ? { kind: 'credit_failed' } : m ? { kind: 'crediting' } : undefined);
    const known = credited(await creditOf(row.id));
    if (known) return known;
    if (!row.sessionId) return { kind: 'open', continueUrl: null };
    // One read at a time per top-up (refreshes and reloads share it), and at most one per RECHECK_MS.
    // A read still out (Stripe slow, the gateway retrying) is shared whatever its age; RECHECK_MS counts from its end.
    const held = lastCheck.get(row.id);
    if (held && (!held.done || Date.now() - held.at < RECHECK_MS)) return held.state;
    const check = { at: Date.now(), state: readSession(row, row.sessionId, credited), done: false };
    void check.state.finally(() => { check.done = true; check.at = Date.now(); });
    const state = check.state;
    lastCheck.set(row.id, check);
    if (lastCheck.size > 10_000) for (const [id, c] of lastCheck) if (c.done && Date.now() - c.at >= RECHECK_MS) lastCheck.delete(id);
    if (lastCheck.size > 10_000) lastCheck.clear();
    return state;
  };
  /** The session and its PaymentIntent from Stripe; a paid one credited from here. Never rejects. */
  const readSession = async (row: TopUpRow, sessionId: string, credited: (m: Awaited<ReturnType<typeof creditOf>>) => DoneState | undefined): Promise<DoneState> => {
    try {
      const session = await deps.topUps.deps.gateway.call((s) => s.checkout.sessions.retrieve(sessionId, { expand: ['payment_intent'] }));
      const pi = session.payment_intent as { status?: string } | string | null;
      const state = stateOfSession({ status: session.status, paymentStatus: session.payment_status, paymentIntentStatus: pi && typeof pi !== 'string' ? pi.status ?? null : null, url: session.url });
      if (state.kind !== 'crediting') return state;
      await deps.topUps.creditSession(sessionId);
      return credited(await creditOf(row.id)) ?? state;
    } catch (err) {
      log.warn({ topUp: row.id, err: (err as Error).message }, 'reading a session from the success page failed');
      return { kind: 'checking' };
    }
  };

  return async (method: string, path: string, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> => {
    const parts = path.slice(TOP_UP_PREFIX.length).split('/');
    const token = parts[0] ?? '';
    const sub = parts.slice(1);
    const known = (sub.length === 0 && (method === 'GET' || method === 'POST')) || (method === 'GET' && ((sub.length === 2 && sub[0] === 'done') || (sub.length === 1 && sub[0] === 'cancel')));
    if (!known) return page(res, method === 'GET' || method === 'POST' ? 404 : 405, messagePage('Not found', 'There is no such page.'), method === 'GET' || method === 'POST' ? {} : { allow: 'GET, POST' });
    const check = verifyToken(secret, token, Date.now());
    if (check.kind === 'expired') return page(res, 410, messagePage('This link has expired', 'Top-up links are valid for a limited time. Use the link from your most recent email or API error, or ask us for a new one.'));
    if (check.kind !== 'valid') return page(res, check.kind === 'malformed' ? 400 : 403, messagePage('This link is not valid', 'This top-up link is not valid. Use the link from your most recent email or API error, exactly as it was sent.'));
    const customerId = check.customerId;
    const view = viewOf(customerId);
    if (!view) return page(res, 404, messagePage('No billing account', 'There is no billing account for this link. Contact us.'));
    const amounts = checkout.currencies.get(view.currency);
    const offer = deps.autoRecharge?.enabled ? deps.autoRecharge : undefined;
    const action = `${TOP_UP_PREFIX}${token}`;

    if (sub[0] === 'cancel') return page(res, 200, cancelPage({ backHref: action }));
    if (sub[0] === 'done') {
      const row = await store.topUp(sub[1]);
      if (!row || row.customerId !== customerId) return page(res, 404, messagePage('No such top-up', 'This top-up does not belong to this link.'));
      const wait = /^\d{1,4}$/.exec(new URL(req.url ?? '/', 'http://top-up').searchParams.get('wait') ?? '')?.[0];
      const state = await doneState(row);
      return page(res, 200, successPage({ customer: viewOf(customerId)!.customer, state, backHref: action, selfHref: `${action}/done/${encodeURIComponent(row.id)}`, tries: wait ? Number(wait) : 0 }));
    }
    if (!amounts) return page(res, 409, messagePage('Top-ups are not available', amountMessage('currency', view.currency, undefined)));

    if (method === 'GET') {
      return page(res, 200, topUpPage({ customer: view.customer, amounts, auto: offer, nonce: randomBytes(16).toString('base64url'), action }));
    }
    // POST: the form.
    const body = await readBody(req, { limit: FORM_LIMIT, budget: deps.budget, timeoutMs: deps.bodyTimeoutMs });
    if (!Buffer.isBuffer(body)) return page(res, body === 'too_large' ? 413 : body === 'busy' ? 503 : 408, messagePage('Not sent', 'The form could not be read. Go back and try again.'), { connection: 'close' });
    const type = String(req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
    if (type !== 'application/x-www-form-urlencoded') return page(res, 415, messagePage('Not sent', 'The form could not be read. Go back and try again.'));
    const form = new URLSearchParams(body.toString('utf8'));
    const nonce = form.get('nonce') ?? '';
    if (!/^[A-Za-z0-9_-]{16,64}$/.test(nonce) || form.getAll('nonce').length !== 1) return page(res, 400, messagePage('Not sent', 'The form is incomplete. Go back, reload the page and try again.'));
    const custom = form.get('custom') ?? undefined;
    const choice = chooseAmount({ preset: form.get('preset') ?? undefined, custom }, view.currency, amounts);
    if (choice.kind === 'refused') {
      return page(res, 422, topUpPage({ customer: view.customer, amounts, auto: offer, nonce: randomBytes(16).toString('base64url'), action, error: amountMessage(choice.reason, view.currency, amounts), custom: (custom ?? '').slice(0, 20) }));
    }
    // Auto-recharge (issue 22): the opt-in form pays its first top-up with the card saved for off-session use.
    const optIn = deps.autoRecharge ? chooseOptIn(form, choice.amount, view.currency, deps.autoRecharge, (n) => formatMoney(n, view.currency)) : { kind: 'none' as const };
    if (optIn.kind === 'refused') {
      return page(res, 422, topUpPage({ customer: view.customer, amounts, auto: offer, nonce: randomBytes(16).toString('base64url'), action, error: optIn.message }));
    }
    const id = topUpId(secret, customerId, optIn.kind === 'ok' ? `${nonce}:auto:${optIn.settings.threshold}:${optIn.settings.monthlyCap}` : nonce, choice.amount, view.currency);
    // The same form again (a double click, a reload) is not a new session and is not counted.
    const before = await store.topUp(id);
    if (!before && !allowSession(customerId, Date.now())) {
      log.warn({ customer: customerId }, 'top-up page: too many new Checkout Sessions for one customer; refused for now');
      return page(res, 429, messagePage('Too many attempts', 'Too many payment pages were opened for this account just now. Try again in a few minutes.'), { 'retry-after': String(Math.ceil(SESSION_WINDOW_MS / 1000)) });
    }
    const row = before ?? await store.recordTopUp({ id, customerId, amount: choice.amount, currency: view.currency, createdAt: Date.now() });
    let url = row.sessionUrl;
    if (!url) {
      try {
        url = optIn.kind === 'ok'
          ? (await createOptInSession(deps.topUps.deps.gateway, store, row, checkout, `${checkout.publicUrl}/top-up/${token}`, optIn.settings)).url
          : (await deps.topUps.createSession(row, token)).url;
      } catch (err) {
        log.error({ customer: customerId, topUp: id, err: (err as Error).message }, 'creating a Checkout Session failed');
        return page(res, 502, messagePage('Payment page unavailable', 'The payment page could not be opened just now. Nothing was charged. Go back and try again in a moment.'));
      }
    }
    if (!url || !/^https?:\/\//i.test(url)) return page(res, 502, messagePage('Payment page unavailable', 'The payment page could not be opened. Nothing was charged.'));
    res.writeHead(303, { location: url, 'cache-control': 'no-store', 'referrer-policy': 'no-referrer', 'content-length': 0 });
    res.end();
  };
}
