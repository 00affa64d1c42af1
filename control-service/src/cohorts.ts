// Cohorts are declarative filters over a customer. Evaluation is pure.

import type { Customer } from './customer';

export type Comparison = { gte?: number; gt?: number; lte?: number; lt?: number; eq?: number };
export type MetadataCondition = { equals?: string; exists?: boolean };
export interface Filter {
  balance?: Comparison;
  metadata?: Record<string, MetadataCondition>;
  email?: { present: boolean };
  all?: Filter[];
  any?: Filter[];
}
export interface CohortDef { id: string; filter: Filter }

function compare(value: number, c: Comparison): boolean {
  return (c.gte === undefined || value >= c.gte)
    && (c.gt === undefined || value > c.gt)
    && (c.lte === undefined || value <= c.lte)
    && (c.lt === undefined || value < c.lt)
    && (c.eq === undefined || value === c.eq);
}

/** True when the customer matches; the keys of one filter object must all hold. */
export function matches(filter: Filter, customer: Customer): boolean {
  if (filter.balance && !compare(customer.balance, filter.balance)) return false;
  if (filter.metadata) {
    for (const [key, cond] of Object.entries(filter.metadata)) {
      const value = customer.metadata[key];
      if (cond.exists !== undefined && (value !== undefined) !== cond.exists) return false;
      if (cond.equals !== undefined && value !== cond.equals) return false;
    }
  }
  if (filter.email && Boolean(customer.email) !== filter.email.present) return false;
  if (filter.all && !filter.all.every((f) => matches(f, customer))) return false;
  if (filter.any && !filter.any.some((f) => matches(f, customer))) return false;
  return true;
}

/** The ids of the cohorts a customer is in, in config order. */
export function cohortsOf(cohorts: readonly CohortDef[], customer: Customer): string[] {
  return cohorts.filter((c) => matches(c.filter, customer)).map((c) => c.id);
}

export interface Transition { cohort: string; kind: 'enter' | 'leave' }

/** What changed between two memberships. */
export function diffMemberships(before: readonly string[], after: readonly string[]): Transition[] {
  const out: Transition[] = [];
  for (const c of before) if (!after.includes(c)) out.push({ cohort: c, kind: 'leave' });
  for (const c of after) if (!before.includes(c)) out.push({ cohort: c, kind: 'enter' });
  return out;
}
