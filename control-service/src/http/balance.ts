// GET /v1/balance: a customer's own credit, for exposing through Kong. The
// consumer comes from a header Kong's authentication plugins set on the
// upstream request (X-Consumer-Custom-ID by default) and that a client cannot
// forge on a key-auth route, never from the path or query, so a client can
// only ever see its own balance. Needs the control token (Kong adds it).

import type http from 'node:http';
import type { Engine } from '../engine';
import { formatMoney } from '../customer';
import { MICROS_PER_UNIT } from '../pricing';
import { send, tokenMatches } from './util';
import { mergeContext, type TopUpConfig } from '../merge-tags';

export interface BalanceDeps {
  engine: Engine;
  controlToken: string | undefined;
  /** Lower-case header name carrying the consumer value. */
  consumerHeader: string;
  /** The top_up config ({{top_up_url}}). */
  topUp?: TopUpConfig;
}

export function createBalanceHandler({ engine, controlToken, consumerHeader, topUp }: BalanceDeps) {
  return (req: http.IncomingMessage, res: http.ServerResponse): void => {
    if (controlToken && !tokenMatches(req.headers.authorization, controlToken)) return send(res, 401, { error: 'unauthorized' });
    // Kong's authentication plugins replace the header with one value: several mean something
    // passed a client's own through (Node would join them with ", "), so answer for nobody.
    const values = req.headersDistinct[consumerHeader];
    // Kong's anonymous consumer (an auth plugin's `anonymous`) is no one's account: whoever failed to authenticate.
    const anonymous = req.headers['x-anonymous-consumer'] !== undefined;
    if (values?.length !== 1 || values[0] === '' || anonymous) {
      return send(res, 400, { error: 'no_consumer', message: 'no authenticated consumer on this request' });
    }
    const raw = values[0];
    const id = engine.resolve(raw);
    const held = id === undefined ? undefined : engine.customer(id);
    if (!held) return send(res, 404, { error: 'no_billing_account', message: 'No billing account is linked to this API consumer.' });
    // Credit in the smallest currency unit, with the unsettled fraction (micros → 6 decimals at most).
    const teamMicros = Math.max(0, -Math.round(held.estimatedBalance * MICROS_PER_UNIT));
    // Issue 23: what this consumer may spend is the tighter of the team's credit and its cap left.
    const cap = engine.capOf(raw);
    const capMicros = cap?.left.leftMicros;
    const limit = capMicros !== undefined && capMicros < teamMicros ? 'consumer_cap' : 'no_credit';
    const credit = Math.min(teamMicros, capMicros ?? Infinity) / MICROS_PER_UNIT;
    const money = (micros: number) => ({ amount: micros / MICROS_PER_UNIT, formatted: formatMoney(Math.floor(micros / MICROS_PER_UNIT), held.customer.currency) });
    // Where to buy more credit ({{top_up_url}}: payg's signed page with top_up.checkout, else top_up.url), when configured.
    const topUpUrl = topUp ? mergeContext(held.customer, topUp).top_up_url : '';
    send(res, 200, {
      ...(topUpUrl ? { top_up_url: topUpUrl } : {}),
      currency: (held.customer.currency ?? 'usd').toUpperCase(),
      credit: { amount: credit, formatted: formatMoney(Math.floor(credit), held.customer.currency) },
      limit,
      team_credit: money(teamMicros),
      ...(cap && cap.left.leftMicros !== undefined ? {
        consumer_cap: {
          period: cap.left.period, left: money(cap.left.leftMicros), resets_at: new Date(cap.left.resetsAt!).toISOString(),
          daily: cap.limits.daily === undefined ? null : money(cap.limits.daily * MICROS_PER_UNIT),
          monthly: cap.limits.monthly === undefined ? null : money(cap.limits.monthly * MICROS_PER_UNIT),
        },
      } : {}),
      as_of: new Date().toISOString(),
    }, { 'cache-control': 'no-store' });
  };
}
