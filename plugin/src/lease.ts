// The answer of POST /v1/leases: a decision, and with an allow that spends
// credit, the lease it may be served on. Checked once when it arrives.
import { parseDecision, type Decision } from './decision';

export interface LeaseGrant { id: string; requests: number; ttlMs: number }
export type LeaseAnswer = { decision: Decision; lease: LeaseGrant | undefined } | { invalid: string };

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

export function parseLeaseAnswer(json: unknown, defaultTtlMs: number): LeaseAnswer {
  const decision = parseDecision(json, defaultTtlMs);
  if ('invalid' in decision) return decision;
  const lease = isRecord(json) ? json.lease : undefined;
  if (lease === undefined || lease === null || !decision.allow) return { decision, lease: undefined };
  if (!isRecord(lease)) return { invalid: 'lease is not an object' };
  const { id, requests, ttl_ms: ttl } = lease;
  if (typeof id !== 'string' || id === '' || id.length > 128) return { invalid: 'lease.id is not a string' };
  if (typeof requests !== 'number' || !Number.isInteger(requests) || requests < 1) return { invalid: 'lease.requests is not a positive integer' };
  if (typeof ttl !== 'number' || !Number.isFinite(ttl) || ttl < 0) return { invalid: 'lease.ttl_ms is not a non-negative number' };
  return { decision, lease: { id, requests, ttlMs: ttl } };
}
