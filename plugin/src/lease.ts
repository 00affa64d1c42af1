// The answer of POST /v1/leases: a decision, and with an allow that spends
// credit, the lease it may be served on. Checked once when it arrives.
import { parseDecision, type Decision } from './decision';

/** What one request reserves with prices by measured units: by default and per route (name or id), in micros. */
export interface MaxCosts { default: number; routes: ReadonlyMap<string, number> }

/**
 * `micros`: the credit the lease holds, drawn by each request's reservation (absent from an
 * older service: then each request draws one of `requests`). `credit`: the customer's
 * estimated credit when it was granted, in the smallest currency unit (for the credit header).
 */
export interface LeaseGrant { id: string; requests: number; ttlMs: number; micros?: number; credit?: number; maxCosts?: MaxCosts }
export type LeaseAnswer = { decision: Decision; lease: LeaseGrant | undefined } | { invalid: string };

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isMicros = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

/** A credit the header can show exactly: its micros stay a safe integer (about 9 billion units). */
export const isCredit = (v: unknown): v is number => typeof v === 'number' && v >= 0 && v * 1_000_000 <= Number.MAX_SAFE_INTEGER;

export function parseLeaseAnswer(json: unknown, defaultTtlMs: number): LeaseAnswer {
  const decision = parseDecision(json, defaultTtlMs);
  if ('invalid' in decision) return decision;
  const lease = isRecord(json) ? json.lease : undefined;
  if (lease === undefined || lease === null || !decision.allow) return { decision, lease: undefined };
  if (!isRecord(lease)) return { invalid: 'lease is not an object' };
  const { id, requests, ttl_ms: ttl, micros, credit, max_costs: maxCosts } = lease;
  if (typeof id !== 'string' || id === '' || id.length > 128) return { invalid: 'lease.id is not a string' };
  // Safe integers only: 1e300 "requests" would make each request's share of the lease 0 micros.
  if (typeof requests !== 'number' || !Number.isSafeInteger(requests) || requests < 1) return { invalid: 'lease.requests is not a positive integer' };
  if (typeof ttl !== 'number' || !Number.isFinite(ttl) || ttl < 0) return { invalid: 'lease.ttl_ms is not a non-negative number' };
  const grant: LeaseGrant = { id, requests, ttlMs: ttl };
  if (micros !== undefined) {
    if (!isMicros(micros)) return { invalid: 'lease.micros is not a non-negative integer' };
    grant.micros = micros;
  }
  // Only feeds the credit header: a bad one is dropped, not fatal.
  if (isCredit(credit)) grant.credit = credit;
  if (maxCosts !== undefined) {
    if (!isRecord(maxCosts) || !isMicros(maxCosts.default) || !isRecord(maxCosts.routes)) return { invalid: 'lease.max_costs is not {default, routes}' };
    const routes = new Map<string, number>();
    for (const [route, m] of Object.entries(maxCosts.routes)) {
      if (!isMicros(m)) return { invalid: `lease.max_costs.routes.${route} is not a non-negative integer` };
      routes.set(route, m);
    }
    grant.maxCosts = { default: maxCosts.default, routes };
  }
  return { decision, lease: grant };
}
