// A customer's auto-recharge (issue 22) in the console: what their Stripe
// metadata says (enabled, threshold, amount, monthly cap, each a default or
// their own), what the service knows (this month's succeeded + in-flight
// recharges against the cap, failures in a row, the pause, the last
// recharge), and an operator's edit. The edit is checked with the same bounds
// as the trigger (recharges/core.ts settingsOf) before anything is written;
// it is written to the customer's Stripe metadata (Stripe stays the source of
// truth) and reaches the book the way any Stripe customer change does.

import type { RechargeOptions } from '../recharges/core';
import { COUNTS_AGAINST_CAP, countedAgainstCap, META, monthOf, OPEN, settingsOf } from '../recharges/core';
import type { RechargeRow, RechargeState } from '../recharges/store';

/** The fields of an edit, as the API names them (amounts in the smallest currency unit). */
export const FIELDS = { threshold: META.threshold, amount: META.amount, monthly_cap: META.cap } as const;
type Field = keyof typeof FIELDS;
const FIELD_OF_KEY = new Map<string, Field>(Object.entries(FIELDS).map(([f, k]) => [k, f as Field]));

export type EditDecision =
  | { kind: 'ok'; metadata: Record<string, string>; enabled: boolean }
  | { kind: 'refused'; field: string; message: string };

/**
 * An edit's body → the metadata to write, or a refusal naming the field.
 * `enabled` (true/false) is required; `threshold`, `amount`, `monthly_cap` are
 * whole numbers of the smallest currency unit, `null` for the config's default
 * (the key is removed from the metadata), absent to keep what is stored. The
 * result must pass settingsOf with the config's bounds: what the trigger
 * would refuse is never stored.
 */
export function decideEdit(body: Record<string, unknown> | undefined, current: Readonly<Record<string, string>>, o: RechargeOptions): EditDecision {
  if (!body) return { kind: 'refused', field: 'body', message: 'body: a JSON object {"enabled", "threshold", "amount", "monthly_cap"}' };
  const unknown = Object.keys(body).filter((k) => k !== 'enabled' && k !== 'as_of' && !Object.hasOwn(FIELDS, k));
  if (unknown.length) return { kind: 'refused', field: unknown[0], message: `${unknown[0]}: not a setting (enabled, threshold, amount, monthly_cap)` };
  if (typeof body.enabled !== 'boolean') return { kind: 'refused', field: 'enabled', message: 'enabled: true or false' };
  if (body.as_of !== undefined && !(Number.isSafeInteger(body.as_of) && (body.as_of as number) >= 0)) return { kind: 'refused', field: 'as_of', message: 'as_of: the view\'s as_of (milliseconds), as the page read it' };
  const metadata: Record<string, string> = { [META.enabled]: body.enabled ? 'on' : 'off' };
  for (const [field, key] of Object.entries(FIELDS) as Array<[Field, string]>) {
    if (!(field in body)) continue;
    const v = body[field];
    if (v === null) { metadata[key] = ''; continue; } // Stripe removes a key set to ''
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
      return { kind: 'refused', field, message: `${field}: a whole number of the smallest currency unit (cents), or null for the default` };
    }
    metadata[key] = String(v);
  }
  // Switching off alone writes only the switch (values already stored, even out of bounds, charge nothing while off).
  if (!body.enabled && Object.keys(metadata).length === 1) return { kind: 'ok', metadata, enabled: false };
  // What would be stored, read as the trigger reads it (enabled or not: a value out of bounds is never stored).
  const after: Record<string, string> = { ...current };
  for (const [k, v] of Object.entries(metadata)) { if (v === '') delete after[k]; else after[k] = v; }
  const read = settingsOf({ ...after, [META.enabled]: 'on' }, { ...o, enabled: true });
  if (read.kind === 'invalid') {
    const field = FIELD_OF_KEY.get(read.field) ?? read.field;
    return { kind: 'refused', field, message: `${field}: ${read.why} (${read.field}${field === 'monthly_cap' ? '; at least the amount' : ''})` };
  }
  return { kind: 'ok', metadata, enabled: body.enabled };
}

const iso = (t: number | null | undefined) => (t ? new Date(t).toISOString() : null);

/** What the console shows of a customer's auto-recharge. */
export function rechargeView(metadata: Readonly<Record<string, string>>, o: RechargeOptions, rows: RechargeRow[], state: RechargeState, now: number, paymentUrl: (pi: string) => string,
  debits: ReadonlyArray<{ topUpId: string; kind: string; amount: number; status: string }> = []) {
  const stored = (key: string) => (metadata[key] === undefined || metadata[key].trim() === '' ? null : metadata[key]);
  const read = settingsOf({ ...metadata, [META.enabled]: 'on' }, { ...o, enabled: true });
  const month = monthOf(now);
  const inMonth = rows.filter((r) => r.month === month);
  const sum = (xs: RechargeRow[]) => xs.reduce((a, r) => a + r.amount, 0);
  const succeeded = sum(inMonth.filter((r) => r.status === 'succeeded'));
  const inFlight = sum(inMonth.filter((r) => (OPEN as readonly string[]).includes(r.status)));
  // Net of refunds (in full once disputed), as the cap check counts it.
  const counted = inMonth.filter((r) => (COUNTS_AGAINST_CAP as readonly string[]).includes(r.status))
    .reduce((a, r) => a + countedAgainstCap(r.amount, debits.filter((d) => d.topUpId === r.id)), 0);
  const settings = read.kind === 'on' ? read.settings : undefined;
  const rowJson = (r: RechargeRow) => ({
    id: r.id, amount: r.amount, currency: r.currency, status: r.status, due_at: iso(r.dueAt), finished_at: iso(r.finishedAt),
    payment_intent: r.paymentIntent, failure_code: r.failureCode, last_error: r.lastError, attempts: r.attempts,
    stripe_url: r.paymentIntent ? paymentUrl(r.paymentIntent) : null,
  });
  return {
    /** auto_recharge.enabled in the config: nothing is charged (nor editable) without it. */
    offered: o.enabled,
    enabled: metadata[META.enabled] === 'on',
    threshold: settings?.threshold ?? null, amount: settings?.amount ?? null, monthly_cap: settings?.monthlyCap ?? null,
    /** The customer's own values in their metadata (null: the config's default applies). */
    own: { threshold: stored(META.threshold), amount: stored(META.amount), monthly_cap: stored(META.cap) },
    invalid: read.kind === 'invalid' ? { field: FIELD_OF_KEY.get(read.field) ?? read.field, key: read.field, why: read.why } : null,
    defaults: { threshold: o.threshold, amount: o.amount, monthly_cap: o.monthlyCap },
    bounds: { min_amount: o.minAmount, max_amount: o.maxAmount, max_threshold: o.maxThreshold, max_monthly_cap: o.maxMonthlyCap },
    /** When this view was read: an edit sends it back, so a pause the operator has not seen is not undone (409). */
    as_of: now,
    month, month_succeeded: succeeded, month_in_flight: inFlight, month_counted: counted,
    cap_left: settings ? Math.max(0, settings.monthlyCap - counted) : null,
    failures: state.failures, max_consecutive_failures: o.maxConsecutiveFailures, paused: state.pausedAt !== null, paused_at: iso(state.pausedAt),
    last: rows[0] ? rowJson(rows[0]) : null,
    recent: rows.slice(0, 10).map(rowJson),
  };
}
