// Rules turn a customer's cohorts into the decision the plugin applies. Pure.
//
// Order: rules are checked in config file order. The first *enabled, blocking*
// rule whose cohort holds the customer decides; log-only rules that match
// before it are reported as "would block" but never block.

import type { RenderFn, MergeContext } from './merge-tags';

export interface RuleDef {
  id: string;
  /** A cohort rule refuses the customers of a cohort; a limit rule (issue 23) words the refusal of one limit. Exactly one is set. */
  cohort?: string;
  limit?: 'no_credit' | 'consumer_cap';
  enabled: boolean;
  logOnly: boolean;
  status: number;
  headers: Record<string, string>;
  render: RenderFn;
}

export type Verdict =
  | { outcome: 'ALLOW'; wouldBlock: string[] }
  | { outcome: 'BLOCK'; rule: RuleDef; wouldBlock: string[] };

export function verdict(rules: readonly RuleDef[], cohorts: readonly string[], isEnabled: (rule: RuleDef) => boolean): Verdict {
  const wouldBlock: string[] = [];
  for (const rule of rules) {
    if (!isEnabled(rule) || rule.cohort === undefined || !cohorts.includes(rule.cohort)) continue;
    if (rule.logOnly) { wouldBlock.push(rule.id); continue; }
    return { outcome: 'BLOCK', rule, wouldBlock };
  }
  return { outcome: 'ALLOW', wouldBlock };
}

/** The decision API's JSON for a verdict (the contract in docs/control-service.md, HTTP API). */
export function decisionJson(v: Verdict, ctx: MergeContext | undefined, ttlMs: number): string {
  if (v.outcome === 'ALLOW' || !ctx) return JSON.stringify({ allow: true, ttl_ms: ttlMs });
  return JSON.stringify({
    allow: false, status: v.rule.status, headers: v.rule.headers, body: v.rule.render(ctx), rule: v.rule.id, ttl_ms: ttlMs,
  });
}
