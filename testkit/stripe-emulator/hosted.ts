// The hosted Checkout page, served on the emulator's loopback port at the
// session's `url`: a plain HTML form (no JavaScript) where a browser picks a
// test payment method and pays, then is sent to success_url
// ({CHECKOUT_SESSION_ID} filled in) — or follows "Back" to cancel_url.
import type http from 'node:http';
import type { StripeEmulator } from './emulator';
import { TEST_PAYMENT_METHODS } from './payment-methods';

const esc = (s: unknown) => String(s ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const LABELS: Record<string, string> = {
  pm_card_visa: 'Visa •••• 4242', pm_card_mastercard: 'Mastercard •••• 4444', pm_card_chargeDeclined: 'Visa •••• 0002 (declined)',
  pm_card_chargeDeclinedInsufficientFunds: 'Visa •••• 9995 (insufficient funds)', pm_card_authenticationRequired: 'Visa •••• 3184 (3-D Secure)',
  pm_usBankAccount: 'US bank account •••• 6789 (clears later)', pm_usBankAccount_insufficientFunds: 'US bank account •••• 1116 (bounces later)',
};

function page(res: http.ServerResponse, status: number, title: string, body: string): void {
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store',
    'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; base-uri 'none'; frame-ancestors 'none'",
    'x-content-type-options': 'nosniff',
  });
  res.end(`<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(title)}</title><style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem}label{display:block;margin:.4rem 0}
button{font-size:1.1rem;padding:.6rem 1.2rem;margin-top:1rem}.error{color:#b00020;font-weight:600}table{width:100%}td:last-child{text-align:right}</style></head>
<body><h1>${esc(title)}</h1>${body}</body></html>`);
}

const money = (amount: number, currency: string) => `${(amount / (currency === 'jpy' ? 1 : 100)).toFixed(currency === 'jpy' ? 0 : 2)} ${currency.toUpperCase()}`;

function form(emu: StripeEmulator, session: Record<string, any>, error?: string): string {
  const items = emu.checkoutLineItems.get(session.id) ?? [];
  const methods = Object.keys(LABELS).filter((id) => session.payment_method_types.includes(TEST_PAYMENT_METHODS[id].type) && (session.mode === 'payment' || TEST_PAYMENT_METHODS[id].type === 'card'));
  const rows = items.map((li) => `<tr><td>${esc(li.description)} × ${li.quantity}</td><td>${money(li.amount_total, li.currency)}</td></tr>`).join('');
  const email = session.customer_details?.email ?? session.customer_email ?? '';
  return `${session.mode === 'payment' ? `<table>${rows}<tr><th>Total</th><th>${money(session.amount_total, session.currency)}</th></tr></table>` : '<p>Save a payment method for later payments.</p>'}
${error ? `<p class="error" role="alert">${esc(error)}</p>` : ''}
<form method="post" action="/c/pay/${esc(session.id)}">
<label>Email <input type="email" name="email" value="${esc(email)}" required></label>
<label>Name <input type="text" name="name" value="${esc(session.customer_details?.name ?? '')}"></label>
<fieldset><legend>Payment method</legend>
${methods.map((id, i) => `<label><input type="radio" name="payment_method" value="${id}"${i === 0 ? ' checked' : ''}> ${esc(LABELS[id])}</label>`).join('\n')}
</fieldset>
<button type="submit">${session.mode === 'payment' ? `Pay ${money(session.amount_total, session.currency)}` : 'Save'}</button>
</form>
${session.cancel_url ? `<p><a href="${esc(session.cancel_url)}">← Back</a></p>` : ''}`;
}

export async function handleHostedPage(emu: StripeEmulator, req: http.IncomingMessage, res: http.ServerResponse, url: URL, rawBody: string): Promise<void> {
  const m = /^\/c\/pay\/([^/]+)$/.exec(url.pathname);
  const session = m ? emu.checkoutSessions.get(m[1]) : undefined;
  if (!session) return page(res, 404, 'Not found', '<p>Something went wrong: this page does not exist.</p>');
  if (session.status === 'expired') return page(res, 410, 'This session has expired', '<p>This Checkout Session is no longer available.</p>');
  if (session.status === 'complete') return page(res, 200, 'Already paid', `<p>You're all done here.</p>${session.success_url ? `<p><a href="${esc(done(session))}">Continue</a></p>` : ''}`);
  const title = session.mode === 'payment' ? 'Pay' : 'Set up a payment method';
  if (req.method === 'GET') return page(res, 200, title, form(emu, session));
  if (req.method !== 'POST') return page(res, 405, 'Method not allowed', '');
  const fields = new URLSearchParams(rawBody);
  const pm = fields.get('payment_method') ?? '';
  if (!LABELS[pm]) return page(res, 400, title, form(emu, session, 'Choose a payment method.'));
  if (emu.paymentDelayMs > 0) await new Promise((r) => setTimeout(r, emu.paymentDelayMs));
  if (session.status !== 'open') return page(res, 409, 'Already paid', '<p>This session was completed meanwhile.</p>');
  let outcome;
  try {
    outcome = emu.completeCheckoutSession(session.id, pm, { email: fields.get('email') || undefined, name: fields.get('name') || undefined });
  } catch (e) {
    return page(res, 400, title, form(emu, session, (e as Error).message));
  }
  if (outcome.kind === 'declined') return page(res, 402, title, form(emu, session, outcome.message));
  if (!session.success_url) return page(res, 200, 'Thanks', "<p>You're all done here.</p>");
  res.writeHead(303, { location: done(session), 'cache-control': 'no-store' });
  res.end();
}

const done = (session: Record<string, any>) => String(session.success_url).replace(/\{CHECKOUT_SESSION_ID\}/g, session.id);
