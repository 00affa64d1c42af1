// What a request measurably used, read from Kong's log serializer entry
// (kong.log.serialize()) in the log phase. Pure. Every value is a
// non-negative safe integer or absent, so the usage API never refuses it.
//   prompt_tokens, completion_tokens: Kong's AI plugins (ai-proxy and others,
//     with logging.log_statistics on) write `ai.<name>.usage.prompt_tokens`
//     and `.completion_tokens`; several AI plugins on one request are summed.
//   header_units: a number the upstream put in a response header (configured).
//   request_bytes, response_bytes: the entry's request.size and response.size.

export interface MeasuredUnits {
  prompt_tokens?: number;
  completion_tokens?: number;
  header_units?: number;
  request_bytes?: number;
  response_bytes?: number;
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function count(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : undefined;
}

/** "12" → 12. A header holding anything but a plain non-negative integer is not a measure. */
function headerCount(v: unknown): number | undefined {
  const text = Array.isArray(v) ? (v.length === 1 ? v[0] : undefined) : v;
  if (typeof text !== 'string' || !/^\s*\d{1,15}\s*$/.test(text)) return undefined;
  return Number(text);
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
    for (const plugin of Object.values(entry.ai)) {
      const usage = isRecord(plugin) && isRecord(plugin.usage) ? plugin.usage : undefined;
      if (!usage) continue;
      const p = count(usage.prompt_tokens);
      const c = count(usage.completion_tokens);
      if (p !== undefined) prompt = (prompt ?? 0) + p;
      if (c !== undefined) completion = (completion ?? 0) + c;
    }
    if (prompt !== undefined && Number.isSafeInteger(prompt)) units.prompt_tokens = prompt;
    if (completion !== undefined && Number.isSafeInteger(completion)) units.completion_tokens = completion;
  }
  return Object.keys(units).length ? units : undefined;
}
