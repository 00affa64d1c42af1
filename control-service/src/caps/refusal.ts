// The refusal a gateway node serves when a limit refuses (issue 23): which
// limit (`no_credit`: the team's credit; `consumer_cap`: this consumer's
// spending cap) is said in the decision (`reason`), in the default bodies
// (`error`, `reason`, `top_up_url`) and in the merge tags `{{limit.kind}}`,
// `{{limit.resets_at}}`, `{{limit.retry_after}}` of the operator's own
// bodies. A cap refusal carries Retry-After until the cap's period resets.
// Pure.

import { compileTemplate, mergeContext, type MergeContext, type RenderFn, type TopUpConfig } from '../merge-tags';
import type { RuleDef } from '../rules';
import type { Customer } from '../customer';
import { retryAfterSeconds, type LimitKind } from './caps';

/** The default bodies (templates) of a refusal by each limit, when no enabled rule words it (`rules[].limit`). */
export const DEFAULT_LIMIT_BODIES: Readonly<Record<LimitKind, string>> = {
  consumer_cap: '{"error":"consumer_cap_reached","reason":"consumer_cap","message":"This API consumer has reached its spending cap for the period.","resets_at":"{{limit.resets_at}}","top_up_url":"{{top_up_url}}"}',
  no_credit: '{"error":"payment_required","reason":"no_credit","message":"The API credit is used up.","top_up_url":"{{top_up_url}}"}',
};

const compiled = new Map<LimitKind, RenderFn>();
export function defaultBody(kind: LimitKind, ctx: MergeContext): string {
  let render = compiled.get(kind);
  if (!render) { render = compileTemplate(DEFAULT_LIMIT_BODIES[kind], 'json'); compiled.set(kind, render); }
  return render(ctx);
}

/** The first enabled rule that words refusals of this limit, if any. */
export function limitRule(rules: readonly RuleDef[], kind: LimitKind, isEnabled: (r: RuleDef) => boolean): RuleDef | undefined {
  return rules.find((r) => r.limit === kind && isEnabled(r));
}

export interface Refusal { kind: LimitKind; resetsAt?: number }

/**
 * The decision JSON of a refusal by a limit: the operator's limit rule if one
 * is enabled, else the default body, status 402. A cap refusal always sends
 * Retry-After (whole seconds until the reset, at least 1) unless the rule sets
 * its own.
 */
export function refusalJson(refusal: Refusal, customer: Customer, topUp: TopUpConfig, rules: readonly RuleDef[], isEnabled: (r: RuleDef) => boolean, now: number, ttlMs: number): string {
  const cap = refusal.kind === 'consumer_cap' && refusal.resetsAt !== undefined;
  const retryAfter = cap ? retryAfterSeconds(refusal.resetsAt!, now) : undefined;
  const limit: NonNullable<MergeContext['limit']> = cap
    ? { kind: 'consumer_cap', resets_at: new Date(refusal.resetsAt!).toISOString(), retry_after: retryAfter! }
    : { kind: refusal.kind, resets_at: '', retry_after: '' };
  const ctx = mergeContext({ ...customer, balance: Math.max(0, customer.balance) }, topUp, limit);
  const rule = limitRule(rules, refusal.kind, isEnabled);
  const headers: Record<string, string> = rule ? { ...rule.headers } : { 'Content-Type': 'application/json' };
  if (retryAfter !== undefined && !Object.keys(headers).some((h) => h.toLowerCase() === 'retry-after')) headers['Retry-After'] = String(retryAfter);
  // A cap refusal is cached by the node no longer than until the reset.
  const ttl = retryAfter !== undefined ? Math.min(ttlMs, retryAfter * 1000) : ttlMs;
  return JSON.stringify({
    allow: false, status: rule?.status ?? 402, headers, body: rule ? rule.render(ctx) : defaultBody(refusal.kind, ctx),
    rule: rule?.id ?? refusal.kind, reason: refusal.kind, ...(limit.resets_at ? { resets_at: limit.resets_at } : {}), ttl_ms: ttl,
  });
}
