// Helpers of the top-up and recharge specs: a free loopback port (the page's
// public URL must be known before the service listens), the page's form fields,
// and the config document of a real process serving the page (the kill -9 specs).
import { freePort } from '../../../testkit/ports';
export { freePort };
import { NEVER, merge, type Doc } from '../../support/fixture';

/** The page's form fields: the nonce and the action. */
export function formOf(html: string): { nonce: string; action: string } {
  const nonce = /name="nonce" value="([^"]+)"/.exec(html)?.[1];
  const action = /<form method="post" action="([^"]+)"/.exec(html)?.[1];
  if (!nonce || !action) throw new Error(`no form in ${html}`);
  return { nonce, action: action.replace(/&amp;/g, '&') };
}

/**
 * The config file of a control-service process with the top-up page on `port` (its public URL on
 * loopback, one $25.00 preset) and the no-credit cohort blocked by a rule whose body carries
 * {{top_up_url}}, on `store`; deep-merged with `overrides`.
 */
export function topUpProcessConfig(port: number, store: unknown, overrides: Doc = {}): Doc {
  return merge({
    listen: { port }, store, stripe: { poll: NEVER },
    top_up: { checkout: { public_url: `http://127.0.0.1:${port}`, currencies: { usd: { presets: [2500], min: 500, max: 50_000 } }, resend_interval: '1s' } },
    cohorts: [{ id: 'no-credit', filter: { balance: { gte: 0 } } }],
    rules: [{ id: 'block', cohort: 'no-credit', body: '{"error":"payment_required","top_up_url":"{{top_up_url}}"}' }],
  }, overrides);
}
