// The public top-up pages, server-rendered: no script, one inline stylesheet
// allowed by its hash, nothing loaded from elsewhere. Readable on a phone.
// Pure: every value comes in, HTML goes out, every value escaped.

import { createHash } from 'node:crypto';
import { formatMoney } from '../customer';
import { decimalsOf, type CurrencyAmounts } from './core';

const STYLE = `body{font:16px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1a1f36}
main{max-width:28rem;margin:0 auto;padding:1.5rem 1rem}h1{font-size:1.4rem;margin:0 0 .25rem}
.card{background:#fff;border-radius:12px;padding:1.25rem;box-shadow:0 1px 3px rgba(0,0,0,.08);margin:1rem 0}
.credit{font-size:2rem;font-weight:600;margin:.25rem 0}.muted{color:#5b6478;font-size:.9rem}
.presets{display:grid;grid-template-columns:repeat(auto-fit,minmax(6rem,1fr));gap:.5rem}
button{font:inherit;font-weight:600;padding:.8rem;border:0;border-radius:8px;background:#635bff;color:#fff;cursor:pointer;width:100%}
button.alt{background:#e3e8ee;color:#1a1f36}label{display:block;margin:.5rem 0 .25rem}
input{font:inherit;width:100%;box-sizing:border-box;padding:.7rem;border:1px solid #c1c9d2;border-radius:8px;margin-bottom:.5rem}
.error{background:#fdecea;color:#8a1c1c;border-radius:8px;padding:.75rem}.ok{background:#e8f5e9;color:#1b5e20;border-radius:8px;padding:.75rem}
a{color:#635bff}`;

/** The Content-Security-Policy of every page: nothing runs, only our own stylesheet applies, forms go to us or Checkout. */
export function contentSecurityPolicy(formTargets: readonly string[]): string {
  const hash = createHash('sha256').update(STYLE).digest('base64');
  return [`default-src 'none'`, `style-src 'sha256-${hash}'`, `img-src 'none'`, `base-uri 'none'`, `frame-ancestors 'none'`,
    `form-action 'self' ${formTargets.join(' ')}`.trim()].join('; ');
}

export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]!));
}

function layout(title: string, body: string, opts: { refreshSeconds?: number; refreshUrl?: string } = {}): string {
  const refresh = opts.refreshSeconds ? `${opts.refreshSeconds}${opts.refreshUrl ? `; url=${opts.refreshUrl}` : ''}` : undefined;
  return `<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">${refresh ? `\n<meta http-equiv="refresh" content="${escapeHtml(refresh)}">` : ''}
<title>${escapeHtml(title)}</title><style>${STYLE}</style></head>
<body><main>${body}</main></body></html>`;
}

export interface PageCustomer { name: string | null; creditMinor: number; currency: string }

/** What the refusal reasons of chooseAmount (and others) say to the customer. */
export function amountMessage(reason: string, currency: string, amounts: CurrencyAmounts | undefined): string {
  const fmt = (n: number) => formatMoney(n, currency);
  switch (reason) {
    case 'missing': return 'Choose an amount.';
    case 'not_a_number': return 'The amount is not a number.';
    case 'not_whole': return decimalsOf(currency) === 0 ? `Enter a whole amount of ${currency.toUpperCase()}.` : `Enter the amount with at most ${decimalsOf(currency)} decimals.`;
    case 'below_min': return `The smallest top-up is ${fmt(amounts!.min)}.`;
    case 'above_max': return `The largest top-up is ${fmt(amounts!.max)}.`;
    case 'currency': return `Top-ups in ${currency.toUpperCase()} are not available; contact us.`;
    default: return 'The amount was refused.';
  }
}

/** The opt-in form's defaults (auto-recharge, issue 22), in the smallest unit. */
export interface AutoRechargeOffer { amount: number; threshold: number; monthlyCap: number; minAmount: number; maxAmount: number }

export function topUpPage(p: { customer: PageCustomer; amounts: CurrencyAmounts; nonce: string; action: string; error?: string; custom?: string; auto?: AutoRechargeOffer }): string {
  const { customer, amounts } = p;
  const fmt = (n: number) => formatMoney(n, customer.currency);
  const decimals = decimalsOf(customer.currency);
  const step = decimals === 0 ? '1' : `0.${'0'.repeat(decimals - 1)}1`;
  const major = (n: number) => (n / 10 ** decimals).toFixed(decimals);
  const presets = amounts.presets.map((a) => `<button type="submit" name="preset" value="${a}">${escapeHtml(fmt(a))}</button>`).join('\n');
  const hidden = `<input type="hidden" name="nonce" value="${escapeHtml(p.nonce)}">`;
  return layout('Add API credit', `<h1>Add API credit</h1>
<p class="muted">${customer.name ? `For ${escapeHtml(customer.name)}` : 'For your account'}</p>
<div class="card"><div class="muted">Credit now</div><div class="credit" id="credit">${escapeHtml(fmt(customer.creditMinor))}</div></div>
${p.error ? `<p class="error" role="alert">${escapeHtml(p.error)}</p>` : ''}
<div class="card">${presets ? `<form method="post" action="${escapeHtml(p.action)}">${hidden}<div class="presets">${presets}</div></form>` : ''}
<form method="post" action="${escapeHtml(p.action)}">${hidden}
<label for="custom">Another amount (${escapeHtml(customer.currency.toUpperCase())}, ${escapeHtml(fmt(amounts.min))} to ${escapeHtml(fmt(amounts.max))})</label>
<input id="custom" name="custom" type="number" inputmode="decimal" min="${major(amounts.min)}" max="${major(amounts.max)}" step="${step}" required value="${escapeHtml(p.custom ?? '')}">
<button type="submit" class="alt">Continue to payment</button></form></div>
${p.auto ? autoRechargeForm(p.auto, hidden, p.action, customer.currency, major, step) : ''}
<p class="muted">You pay on Stripe's secure checkout page. The credit is added once the payment is confirmed.</p>`);
}

/** "Top up X automatically when my credit falls below Y": the first top-up of X now, the card saved for the next ones. */
function autoRechargeForm(a: AutoRechargeOffer, hidden: string, action: string, currency: string, major: (n: number) => string, step: string): string {
  const min = Math.max(a.minAmount, 0);
  return `<div class="card"><form method="post" action="${escapeHtml(action)}">${hidden}<input type="hidden" name="auto" value="on">
<h2>Top up automatically</h2>
<label for="auto_amount">Top up (${escapeHtml(currency.toUpperCase())})</label>
<input id="auto_amount" name="custom" type="number" inputmode="decimal" min="${major(min)}" max="${major(a.maxAmount)}" step="${step}" required value="${major(a.amount)}">
<label for="auto_threshold">automatically when my credit falls below</label>
<input id="auto_threshold" name="auto_threshold" type="number" inputmode="decimal" min="0" step="${step}" required value="${major(a.threshold)}">
<label for="auto_cap">at most this much per month</label>
<input id="auto_cap" name="auto_cap" type="number" inputmode="decimal" min="0" step="${step}" required value="${major(a.monthlyCap)}">
<button type="submit">Pay now and save my card</button></form>
<p class="muted">You pay the first top-up now. Your card is saved and charged the same amount each time your credit falls below the limit you chose, never more than the monthly maximum. A failed payment is emailed to you; a top-up here turns automatic top-ups back on after they paused.</p></div>`;
}

export function messagePage(title: string, message: string): string {
  return layout(title, `<h1>${escapeHtml(title)}</h1><p class="error" role="alert">${escapeHtml(message)}</p>`);
}

/**
 * Where a top-up stands when the customer comes back from Checkout, as far as
 * payg and Stripe know: `credited` (the credit landed), `crediting` (paid, the
 * credit being added), `processing` (a bank debit not cleared yet), `checking`
 * (Stripe could not be asked just now), `credit_failed` (paid, but Stripe
 * refused the credit for good), or not completed: `open` (left before paying),
 * `expired`, `failed` (the payment failed).
 */
export type DoneState =
  | { kind: 'credited'; amount: number }
  | { kind: 'crediting' | 'processing' | 'checking' | 'credit_failed' }
  | { kind: 'open'; continueUrl: string | null }
  | { kind: 'expired' | 'failed' };

/** What a Checkout Session read from Stripe (its PaymentIntent expanded) says of a top-up not credited yet. */
export function stateOfSession(s: { status: string | null; paymentStatus: string; paymentIntentStatus: string | null; url: string | null }): DoneState {
  if (s.status === 'expired') return { kind: 'expired' };
  if (s.status === 'open') return { kind: 'open', continueUrl: s.url };
  if (s.status !== 'complete') return { kind: 'checking' };
  if (s.paymentStatus === 'paid' || s.paymentStatus === 'no_payment_required') return { kind: 'crediting' };
  // Complete and unpaid: a bank debit still clearing, or one that bounced (async_payment_failed).
  return s.paymentIntentStatus === 'processing' || s.paymentIntentStatus === null ? { kind: 'processing' } : { kind: 'failed' };
}

/** How often, and how many times, a page still waiting for the credit refreshes itself (then it stops and says so). */
export const DONE_REFRESH_SECONDS = 2;
export const DONE_REFRESH_MAX = 60;

export function successPage(p: { customer: PageCustomer; state: DoneState; backHref: string; selfHref: string; tries: number }): string {
  const fmt = (n: number) => formatMoney(n, p.customer.currency);
  const creditCard = `<div class="card"><div class="muted">Credit now</div><div class="credit" id="credit">${escapeHtml(fmt(p.customer.creditMinor))}</div></div>`;
  const again = `<p><a href="${escapeHtml(p.backHref)}">Try again</a></p>`;
  const s = p.state;
  // No script: a page waiting for the credit asks again by itself, a bounded number of times.
  const waiting = (title: string, message: string) => {
    const more = p.tries < DONE_REFRESH_MAX;
    const body = `<h1>${escapeHtml(title)}</h1><p class="ok" role="status">${escapeHtml(message)}${more ? ' This page updates by itself.' : ''}</p>
${more ? '' : `<p class="muted" id="stopped">This is taking longer than usual, so this page stopped updating. The credit is added as soon as the payment is confirmed: <a href="${escapeHtml(p.selfHref)}">check again</a> later.</p>`}
${creditCard}`;
    return layout(title, body, more ? { refreshSeconds: DONE_REFRESH_SECONDS, refreshUrl: `${p.selfHref}?wait=${p.tries + 1}` } : {});
  };
  switch (s.kind) {
    case 'credited':
      return layout('Credit added', `<h1>Credit added</h1><p class="ok" role="status">${escapeHtml(fmt(s.amount))} of API credit has been added.</p>
${creditCard}
<p><a href="${escapeHtml(p.backHref)}">Add more credit</a></p>`);
    case 'crediting': return waiting('Payment received', 'Thank you. Your payment is confirmed and your credit is being added.');
    case 'processing': return waiting('Payment processing', 'Your bank has not confirmed the payment yet (bank payments can take a few days). The credit is added once it clears; nothing more to do.');
    case 'checking': return waiting('Checking your payment', 'We could not check your payment just now and are trying again.');
    case 'credit_failed':
      return layout('Payment received', `<h1>Payment received</h1><p class="error" role="alert">Your payment was received, but adding the credit failed. We have been notified; contact us if it is not added soon.</p>
${creditCard}`);
    case 'open':
      return layout('Payment not completed', `<h1>Payment not completed</h1><p class="error" role="alert">You have not paid yet: nothing was charged and no credit was added.</p>
${s.continueUrl && /^https?:\/\//i.test(s.continueUrl) ? `<p><a href="${escapeHtml(s.continueUrl)}">Continue to payment</a></p>` : ''}${again}`);
    case 'expired':
      return layout('Payment not completed', `<h1>Payment not completed</h1><p class="error" role="alert">This payment page expired before it was paid: nothing was charged and no credit was added.</p>
${creditCard}${again}`);
    case 'failed':
      return layout('Payment not completed', `<h1>Payment not completed</h1><p class="error" role="alert">The payment failed: no credit was added. Your bank may tell you why.</p>
${creditCard}${again}`);
  }
}

export function cancelPage(p: { backHref: string }): string {
  return layout('Payment cancelled', `<h1>Payment cancelled</h1><p>Nothing was charged and no credit was added.</p>
<p><a href="${escapeHtml(p.backHref)}">Choose another amount</a></p>`);
}
