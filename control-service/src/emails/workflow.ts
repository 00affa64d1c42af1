// Who gets which email, when. Pure: a change to one customer (or the clock,
// for recurring emails) in, outbox records out. Each record's dedupe key names
// exactly the event it is for, so deciding twice enqueues once.

import type { Customer } from '../customer';
import { formatMoney } from '../customer';
import { mergeContext, type EmailMergeContext, type TopUpConfig } from '../merge-tags';
import type { OutboxRecord, TransitionRecord } from '../store/store';
import type { EmailTemplate } from './templates';

export interface CustomerChange {
  /** The customer as held before; undefined the first time it is seen. */
  before: Customer | undefined;
  /** The customer now; undefined when deleted. */
  after: Customer | undefined;
  transitions: readonly TransitionRecord[];
  at: number;
}

function record(template: EmailTemplate, customer: Customer, key: string, at: number, topUp: TopUpConfig, extra: Partial<EmailMergeContext> = {}): OutboxRecord {
  const context: EmailMergeContext = { ...mergeContext(customer, topUp), ...extra };
  return { dedupeKey: `${template.id}|${customer.id}|${key}`, templateId: template.id, customerId: customer.id, to: customer.email!, context: JSON.stringify(context), createdAt: at };
}

/**
 * Emails a change calls for: cohort entry and exit emails, and low-balance
 * warnings when credit falls below a threshold. A deleted customer or one
 * without an email address gets nothing. Several thresholds crossed at once
 * send one warning, for the lowest; a threshold re-arms once credit is back
 * at or above it.
 */
export function planEmails(templates: readonly EmailTemplate[], isActive: (id: string) => boolean, change: CustomerChange, topUp: TopUpConfig): OutboxRecord[] {
  const { before, after, at } = change;
  if (!after?.email) return [];
  const out: OutboxRecord[] = [];
  for (const t of templates) {
    if (!isActive(t.id)) continue;
    if (t.trigger.kind === 'cohort') {
      const { cohort, on } = t.trigger;
      for (const tr of change.transitions) {
        if (tr.cohort === cohort && tr.kind === on) out.push(record(t, after, `${cohort}|${on}@${tr.at}`, at, topUp));
      }
    } else if (t.trigger.kind === 'low_balance' && before) {
      const creditBefore = -before.balance;
      const creditAfter = -after.balance;
      const crossed = t.trigger.belowCents.filter((threshold) => creditBefore >= threshold && creditAfter < threshold);
      if (crossed.length) {
        const threshold = Math.min(...crossed);
        out.push(record(t, after, `below:${threshold}@${at}`, at, topUp, { threshold: { cents: threshold, formatted: formatMoney(threshold, after.currency) } }));
      }
    }
  }
  return out;
}

/**
 * Re-enrollment: a member who entered at `since` and is still in the cohort is
 * due the k-th repeat once k windows have passed. The key carries k, so a late
 * or repeated check sends each repeat once, and a long outage sends one, not many.
 * `now` decides what is due; `createdAt` (the wall clock) is when it was enqueued.
 */
export function planRecurring(template: EmailTemplate, members: ReadonlyArray<{ customer: Customer; since: number }>, now: number, topUp: TopUpConfig, createdAt = now): OutboxRecord[] {
  if (template.trigger.kind !== 'cohort' || template.trigger.on !== 'enter' || !template.reenrollAfterMs) return [];
  const window = template.reenrollAfterMs;
  const out: OutboxRecord[] = [];
  for (const { customer, since } of members) {
    const k = Math.floor((now - since) / window);
    if (k >= 1 && customer.email) out.push({ ...record(template, customer, `${template.trigger.cohort}|enter@${since}|repeat:${k}`, createdAt, topUp), reminder: true });
  }
  return out;
}

/** The customer as it stands when an email is about to go. */
export interface CustomerNow {
  /** When it entered the template's cohort, if it is a member now. */
  since: number | undefined;
  /** Estimated credit in cents (−estimated balance). */
  credit: number;
}

/**
 * Why an email decided earlier is no longer true, or undefined when it still
 * is: an entry email or reminder for a customer who has left the cohort (or
 * left and entered again: the new entry has its own email), a "left" email for
 * one who is back in, a low-balance warning for one back at or above the
 * threshold. Read from the dedupe key, which names what the email is for.
 */
export function staleReason(template: EmailTemplate, dedupeKey: string, now: CustomerNow): string | undefined {
  if (template.trigger.kind === 'cohort') {
    const m = /\|(enter|leave)@(\d+)(\|repeat:\d+)?$/.exec(dedupeKey);
    if (!m) return undefined;
    const at = Number(m[2]);
    if (m[1] === 'enter') {
      if (now.since === undefined) return `customer left cohort ${template.trigger.cohort}`;
      if (now.since !== at) return `customer left cohort ${template.trigger.cohort} and entered again`;
      return undefined;
    }
    return now.since !== undefined && now.since > at ? `customer is back in cohort ${template.trigger.cohort}` : undefined;
  }
  if (template.trigger.kind === 'auto_recharge') return undefined;
  const m = /\|below:(\d+)@\d+$/.exec(dedupeKey);
  if (m && now.credit >= Number(m[1])) return `credit is back at or above ${m[1]}`;
  return undefined;
}
