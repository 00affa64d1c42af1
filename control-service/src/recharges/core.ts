// Auto-recharge (issue 22), the decisions, pure: a customer's settings read
// from their Stripe metadata within the operator's bounds, whether a crossing
// of the threshold plans a recharge (never past the monthly cap, at least the
// minimum interval after the last one, not while paused or while one is
// open), what a Stripe answer to the charge means, and when failures pause.
// Time and history come in; the edges (store, Stripe, mail) carry it out.

/** The operator's `auto_recharge` config, validated once (config.ts). Amounts in the smallest currency unit. */
export interface RechargeOptions {
  /** Auto-recharge is offered at all (the page's opt-in, the trigger). */
  enabled: boolean;
  /** Defaults for a customer who opted in without naming their own. */
  threshold: number;
  amount: number;
  monthlyCap: number;
  /** Bounds a customer's own values must stay within. */
  minAmount: number;
  maxAmount: number;
  maxThreshold: number;
  maxMonthlyCap: number;
  minIntervalMs: number;
  maxConsecutiveFailures: number;
  /** How often the leader looks for recharges due (and charges still processing). */
  pollIntervalMs: number;
}

/** The Stripe customer metadata keys holding a customer's settings (Stripe stays the source of truth). */
export const META = {
  enabled: 'payg_auto_recharge',
  threshold: 'payg_auto_recharge_threshold',
  amount: 'payg_auto_recharge_amount',
  cap: 'payg_auto_recharge_monthly_cap',
} as const;

export interface RechargeSettings { threshold: number; amount: number; monthlyCap: number }

export type SettingsRead =
  | { kind: 'on'; settings: RechargeSettings }
  | { kind: 'off' }
  | { kind: 'invalid'; field: string; why: string };

function whole(v: string | undefined): number | undefined | 'bad' {
  if (v === undefined || v.trim() === '') return undefined;
  return /^\d{1,12}$/.test(v.trim()) ? Number(v.trim()) : 'bad';
}

/**
 * A customer's settings from their metadata: `payg_auto_recharge` = `on`
 * switches it on; threshold, amount and cap default to the config's and must
 * stay within its bounds, else nothing is charged (`invalid` names the key).
 */
export function settingsOf(metadata: Readonly<Record<string, string>>, o: RechargeOptions): SettingsRead {
  if (!o.enabled || metadata[META.enabled] !== 'on') return { kind: 'off' };
  const read = (key: string, fallback: number, min: number, max: number): number | { field: string; why: string } => {
    const v = whole(metadata[key]);
    if (v === 'bad') return { field: key, why: 'is not a whole number of the smallest currency unit' };
    const n = v ?? fallback;
    if (n < min || n > max) return { field: key, why: `${n} is outside ${min}..${max}` };
    return n;
  };
  const amount = read(META.amount, o.amount, o.minAmount, o.maxAmount);
  if (typeof amount !== 'number') return { kind: 'invalid', ...amount };
  const threshold = read(META.threshold, o.threshold, 0, o.maxThreshold);
  if (typeof threshold !== 'number') return { kind: 'invalid', ...threshold };
  const monthlyCap = read(META.cap, o.monthlyCap, amount, o.maxMonthlyCap);
  if (typeof monthlyCap !== 'number') return { kind: 'invalid', ...monthlyCap };
  return { kind: 'on', settings: { threshold, amount, monthlyCap } };
}

/** The metadata written when a customer opts in (or out) on the top-up page. */
export function metadataFor(settings: RechargeSettings | undefined): Record<string, string> {
  if (!settings) return { [META.enabled]: 'off' };
  return { [META.enabled]: 'on', [META.threshold]: String(settings.threshold), [META.amount]: String(settings.amount), [META.cap]: String(settings.monthlyCap) };
}

/**
 * Whether a change crossed the threshold downwards: credit (the estimate, in
 * the smallest unit) at or above it before, below it after. Once per
 * crossing: staying below plans nothing more.
 */
export function crossed(creditBefore: number | undefined, creditAfter: number, threshold: number): boolean {
  return creditAfter < threshold && (creditBefore === undefined ? false : creditBefore >= threshold);
}

/** A crossing seen by the engine: decided in the store's transaction that saves the change. */
export interface RechargeCrossing { customerId: string; currency: string; settings: RechargeSettings; at: number; minIntervalMs: number }

/**
 * The crossing a change of one customer makes, if any (the engine calls this
 * in its commit): auto-recharge offered and on for the customer (metadata
 * within bounds), a currency known (the customer's, else the top-up page's
 * default), and the estimated credit (−balance) crossing the threshold
 * downwards. Balances in Stripe's sign (negative = credit).
 */
export function rechargeCrossing(
  customer: { id: string; metadata: Readonly<Record<string, string>>; currency?: string | null },
  balanceBefore: number, balanceAfter: number, at: number, o: RechargeOptions, defaultCurrency: string | undefined,
): RechargeCrossing | undefined {
  if (!o.enabled) return undefined;
  const s = settingsOf(customer.metadata, o);
  const currency = (customer.currency ?? defaultCurrency)?.toLowerCase();
  if (s.kind !== 'on' || !currency || !crossed(-balanceBefore, -balanceAfter, s.settings.threshold)) return undefined;
  return { customerId: customer.id, currency, settings: s.settings, at, minIntervalMs: o.minIntervalMs };
}

/**
 * Why a refund or a dispute of a payg payment (Checkout top-up or recharge)
 * pauses auto-recharge before its debit is sent: the debit lowers the credit,
 * and a recharge it set off would charge the card again right after the money
 * went back to it (a refund the operator made on purpose, undone) or after the
 * cardholder disputed a charge. Only customers with auto-recharge on are
 * paused; a manual top-up or the operator switching it on re-arms.
 */
export function pauseReason(kind: 'refund' | 'dispute'): string {
  return kind === 'dispute'
    ? 'A payment of yours was disputed, so we do not charge your card again on our own.'
    : 'A payment of yours was refunded, so we do not charge your card again on our own.';
}

/** The `paused` email's reason after failures in a row. */
export function failuresReason(failures: number, last: string): string {
  return `${failures} attempts in a row failed, the last: ${last}`;
}

/** The calendar month (UTC) of an instant: `2026-12`. */
export function monthOf(at: number): string {
  return new Date(at).toISOString().slice(0, 7);
}

export type RechargeStatus = 'planned' | 'processing' | 'succeeded' | 'failed' | 'action_required';

/** Statuses that count against the cap: succeeded, or not finished (in flight). */
export const COUNTS_AGAINST_CAP: readonly RechargeStatus[] = ['planned', 'processing', 'succeeded'];

/**
 * What one recharge counts against its month's cap: its amount less what refunds took back, or all of it once
 * disputed (a dispute frees no cap). The store's crossing check counts the same in SQL (recharges/store.ts `spent`).
 */
export function countedAgainstCap(amount: number, debits: ReadonlyArray<{ kind: string; amount: number; status: string }>): number {
  const live = debits.filter((d) => d.status !== 'failed');
  if (live.some((d) => d.kind === 'dispute')) return amount;
  return amount - live.filter((d) => d.kind === 'refund').reduce((sum, d) => sum + d.amount, 0);
}
export const OPEN: readonly RechargeStatus[] = ['planned', 'processing'];

/** What the store knows of a customer's recharges when a crossing is decided (read in the same transaction). */
export interface RechargeHistory {
  /** Succeeded + in flight in the month of `dueAt` (computed per month by the caller through `spentIn`). */
  spentIn(month: string): number;
  /** A recharge planned or processing: the crossing is already being answered. */
  open: boolean;
  /** When the last recharge (any status) was planned to be charged, if any. */
  lastDueAt: number | undefined;
  paused: boolean;
}

export type PlanDecision =
  | { kind: 'plan'; amount: number; dueAt: number; month: string }
  | { kind: 'skip'; reason: 'open' | 'paused' | 'cap' };

/**
 * A crossing at `now`: plans one recharge of the customer's amount, due now
 * or, if the last one was less than the minimum interval ago, when the
 * interval has passed. Refused when one is open, when paused, or when it
 * would take succeeded + in flight in its month (UTC) past the cap.
 */
export function planRecharge(settings: RechargeSettings, history: RechargeHistory, now: number, minIntervalMs: number): PlanDecision {
  if (history.paused) return { kind: 'skip', reason: 'paused' };
  if (history.open) return { kind: 'skip', reason: 'open' };
  const dueAt = history.lastDueAt === undefined ? now : Math.max(now, history.lastDueAt + minIntervalMs);
  const month = monthOf(dueAt);
  if (history.spentIn(month) + settings.amount > settings.monthlyCap) return { kind: 'skip', reason: 'cap' };
  return { kind: 'plan', amount: settings.amount, dueAt, month };
}

/** What one attempt to charge a recharge came to (from Stripe's answer or error). */
export type ChargeOutcome =
  | { kind: 'succeeded'; paymentIntent: string }
  | { kind: 'processing'; paymentIntent: string }
  | { kind: 'action_required'; code: string; paymentIntent: string | null }
  | { kind: 'declined'; code: string; message: string; paymentIntent: string | null }
  | { kind: 'retry'; why: string };

/** A Stripe error (or its absence of an answer) as a charge outcome. */
export function outcomeOfError(err: { type?: string; code?: string; statusCode?: number; message?: string; raw?: { payment_intent?: { id?: string } }; payment_intent?: { id?: string } }): ChargeOutcome {
  const status = err.statusCode;
  const pi = err.payment_intent?.id ?? err.raw?.payment_intent?.id ?? null;
  if (status === undefined || status === 409 || status === 429 || status >= 500 || err.type === 'StripeConnectionError' || err.type === 'StripeAPIError' || err.type === 'StripeRateLimitError') {
    return { kind: 'retry', why: err.message ?? 'no answer' };
  }
  const code = err.code ?? (err.type === 'StripeCardError' ? 'card_declined' : 'charge_refused');
  if (code === 'authentication_required') return { kind: 'action_required', code, paymentIntent: pi };
  return { kind: 'declined', code, message: err.message ?? code, paymentIntent: pi };
}

/** A PaymentIntent's status as a charge outcome. */
export function outcomeOfIntent(pi: { id: string; status: string; last_payment_error?: { code?: string; message?: string } | null }): ChargeOutcome {
  switch (pi.status) {
    case 'succeeded': return { kind: 'succeeded', paymentIntent: pi.id };
    case 'processing': return { kind: 'processing', paymentIntent: pi.id };
    case 'requires_action': return { kind: 'action_required', code: 'authentication_required', paymentIntent: pi.id };
    default: return { kind: 'declined', code: pi.last_payment_error?.code ?? pi.status, message: pi.last_payment_error?.message ?? `payment ${pi.status}`, paymentIntent: pi.id };
  }
}

/** Failures in a row after this one; paused when they reach the limit. */
export function afterFailure(failuresBefore: number, max: number): { failures: number; pause: boolean } {
  const failures = failuresBefore + 1;
  return { failures, pause: failures >= max };
}

/** The recharge's id, idempotency key of its PaymentIntent, and credit ref. */
export const rechargeKey = (id: string) => `payg-recharge-${id}`;
export const TEMPLATES = { failed: 'auto-recharge-failed', actionRequired: 'auto-recharge-action-required', paused: 'auto-recharge-paused' } as const;
