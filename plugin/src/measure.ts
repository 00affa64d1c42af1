// What a request measurably used, read from Kong's log serializer entry
// (kong.log.serialize()) in the log phase. Pure. Every value is a
// non-negative safe integer or absent, so the usage API never refuses it.
//   prompt_tokens, completion_tokens: Kong's AI plugins (with logging.log_statistics on)
//     write `.usage.prompt_tokens` and `.usage.completion_tokens` under `ai`:
//       Kong 3.6:         ai.usage                        (one record for the request)
//       Kong 3.7:         ai.<plugin name>.usage          (ai.ai-proxy, ai.ai-request-transformer, ...)
//       Kong 3.8 – 3.9.x: ai.ai-proxy.usage               (ai-proxy and ai-proxy-advanced)
//       Kong 3.10+ (and later 3.9 builds): ai.proxy.usage
//     Every such record on the entry is read and summed (several AI plugins on one request
//     each made their own LLM call).
//   header_units: a number the upstream put in a response header (configured).
//   request_bytes, response_bytes: the entry's request.size and response.size.
//
// A value that is there but cannot be read as a count (not a plain non-negative integer, more
// than 2^53 − 1, a header sent twice) is reported as UNREADABLE, the largest count the usage API
// takes: on a route priced by that unit the service's price is then capped at the route's
// max_cost, i.e. the request is charged what it reserved. An absent value is not measured (0).

export interface MeasuredUnits {
  prompt_tokens?: number;
  completion_tokens?: number;
  header_units?: number;
  request_bytes?: number;
  response_bytes?: number;
}

/** What an unreadable or oversized value is reported as: any unit price times it passes any max_cost. */
export const UNREADABLE = Number.MAX_SAFE_INTEGER;

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** undefined: absent; a count; or UNREADABLE for anything else. */
function count(v: unknown): number | undefined {
  if (v === undefined || v === null) return undefined;
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : UNREADABLE;
}

/** "12" → 12. Absent: undefined; present but not one plain non-negative integer: UNREADABLE. */
function headerCount(v: unknown): number | undefined {
  if (v === undefined || v === null) return undefined;
  const text = Array.isArray(v) ? (v.length === 1 ? v[0] : undefined) : v;
  const m = typeof text === 'string' ? /^\s*(\d+)\s*$/.exec(text) : null;
  if (!m) return UNREADABLE;
  const n = Number(m[1]);
  return Number.isSafeInteger(n) ? n : UNREADABLE;
}

/** a + b, saturating at UNREADABLE. */
function add(a: number | undefined, b: number | undefined): number | undefined {
  if (b === undefined) return a;
  return Math.min(UNREADABLE, (a ?? 0) + b);
}

/** `unitsHeader` is lower-case (Kong's serializer lower-cases header names). */
export function measure(entry: Record<string, unknown>, unitsHeader: string | undefined): MeasuredUnits | undefined {
  const units: MeasuredUnits = {};
  const request = isRecord(entry.request) ? entry.request : {};
  const response = isRecord(entry.response) ? entry.response : {};
  const requestBytes = count(request.size);
  if (requestBytes !== undefined) units.request_bytes = requestBytes;
  const responseBytes = count(response.size);
  if (responseBytes !== undefined) units.response_bytes = responseBytes;
  if (unitsHeader !== undefined && isRecord(response.headers)) {
    const n = headerCount(response.headers[unitsHeader]);
    if (n !== undefined) units.header_units = n;
  }
  if (isRecord(entry.ai)) {
    let prompt: number | undefined;
    let completion: number | undefined;
    // ai.usage (Kong 3.6) and ai.<name>.usage (3.7 and later): each record once.
    const records = [entry.ai.usage, ...Object.entries(entry.ai).filter(([k]) => k !== 'usage').map(([, v]) => (isRecord(v) ? v.usage : undefined))];
    for (const usage of records) {
      if (!isRecord(usage)) continue;
      prompt = add(prompt, count(usage.prompt_tokens));
      completion = add(completion, count(usage.completion_tokens));
    }
    if (prompt !== undefined) units.prompt_tokens = prompt;
    if (completion !== undefined) units.completion_tokens = completion;
  }
  return Object.keys(units).length ? units : undefined;
}
