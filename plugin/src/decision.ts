// What the control service answers for one consumer, checked once when it
// arrives so the request path only ever sees well-formed decisions.

export type Decision =
  /** `maxRequests`: how many requests (the fetching one included) this allow may serve before asking again. */
  | { allow: true; ttlMs: number; maxRequests?: number; credit?: number }
  | { allow: false; ttlMs: number; status: number; headers: Record<string, string>; body: string; rule: string | undefined };

/** RFC 9110 field names (tokens) and values without CR, LF or other control characters. */
const HEADER_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const HEADER_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Parses the JSON of `GET /v1/decisions/{consumer}`. Returns the decision, or
 * a reason naming what is wrong (a decision of the wrong shape is treated like
 * an unreachable service, never guessed at).
 */
export function parseDecision(json: unknown, defaultTtlMs: number): Decision | { invalid: string } {
  if (!isRecord(json)) return { invalid: 'decision is not a JSON object' };
  const ttl = json.ttl_ms ?? defaultTtlMs;
  if (typeof ttl !== 'number' || !Number.isFinite(ttl) || ttl < 0) return { invalid: 'ttl_ms is not a non-negative number' };
  if (json.allow === true) {
    const max = json.max_requests;
    // `credit` (smallest currency unit) only feeds the optional credit header: a bad one is dropped, not fatal.
    const credit = typeof json.credit === 'number' && json.credit >= 0 && json.credit * 1_000_000 <= Number.MAX_SAFE_INTEGER ? json.credit : undefined;
    const withCredit = credit === undefined ? {} : { credit };
    if (max === undefined || max === null) return { allow: true, ttlMs: ttl, ...withCredit };
    if (typeof max !== 'number' || !Number.isSafeInteger(max) || max < 0) return { invalid: 'max_requests is not a non-negative integer' };
    return { allow: true, ttlMs: ttl, maxRequests: max, ...withCredit };
  }
  if (json.allow !== false) return { invalid: 'allow is not a boolean' };

  const { status, headers = {}, body = '', rule } = json;
  if (typeof status !== 'number' || !Number.isInteger(status) || status < 400 || status > 599) {
    return { invalid: 'status is not an HTTP error status (400-599)' };
  }
  if (!isRecord(headers) || !Object.values(headers).every((v) => typeof v === 'string')) {
    return { invalid: 'headers is not an object of strings' };
  }
  // Never handed to Kong: a CR/LF or a bad name could split or corrupt the response.
  for (const [name, value] of Object.entries(headers as Record<string, string>)) {
    if (!HEADER_NAME.test(name)) return { invalid: 'headers holds an invalid header name' };
    if (!HEADER_VALUE.test(value)) return { invalid: `headers.${name} holds a character a header value may not (CR, LF or a control character)` };
  }
  if (typeof body !== 'string') return { invalid: 'body is not a string' };
  if (rule !== undefined && typeof rule !== 'string') return { invalid: 'rule is not a string' };
  return { allow: false, ttlMs: ttl, status, headers: headers as Record<string, string>, body, rule };
}
