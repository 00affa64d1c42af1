// The payg plugin's configuration: the schema Kong validates (in Kong's schema
// language, dumped by `payg-pluginserver --dump-all-plugins`) and the parser
// that turns the config Kong hands to StartInstance into typed options, once
// per instance, so the request path never re-reads raw config.

export const CONSUMER_FIELDS = ['custom_id', 'username', 'id'] as const;
export type ConsumerField = (typeof CONSUMER_FIELDS)[number];

/** One field of Kong's schema language (the subset payg uses). */
export interface KongField {
  type: 'string' | 'number' | 'integer' | 'boolean' | 'array' | 'set' | 'map' | 'record';
  description: string;
  required?: boolean;
  default?: unknown;
  one_of?: readonly (string | number)[];
  between?: [number, number];
  gt?: number;
  match?: string;
  referenceable?: boolean;
  encrypted?: boolean;
  fields?: KongSchemaField[];
  /** An array's element type. */
  elements?: { type: KongField['type']; match?: string };
}
export type KongSchemaField = Record<string, KongField>;

/**
 * Kong's `queue` record (kong/tools/queue_schema.lua): the same names, types
 * and ranges. payg's defaults differ where billing needs it: batches of 200
 * sent within 0.2 s (spent credit goes unseen until then), and a batch is
 * retried for an hour, not a minute, before its usage is given up.
 */
const queueFields: KongSchemaField[] = [
  { max_batch_size: {
    type: 'integer', required: true, default: 200, between: [1, 10000],
    description: 'Most usage events sent to the control service in one POST /v1/usage.',
  } },
  { max_coalescing_delay: {
    type: 'number', required: true, default: 0.2, between: [0, 3600],
    description: 'Seconds a usage event may wait for others to fill a batch before the batch is sent. Usage reaches the control service this much later, so it bounds how long spent credit goes unseen.',
  } },
  { max_entries: {
    type: 'integer', required: true, default: 10000, between: [1, 1000000],
    description: 'Most usage events held in memory; when full, new events are dropped and counted.',
  } },
  { max_bytes: {
    type: 'integer', required: false,
    description: 'Most bytes of usage events (as JSON) held in memory; when full, new events are dropped and counted. Unset: no byte bound.',
  } },
  { max_retry_time: {
    type: 'number', required: true, default: 3600,
    description: 'Seconds a failing batch is retried before its usage is dropped (and logged); -1 retries for ever.',
  } },
  { initial_retry_delay: {
    type: 'number', required: true, default: 0.1, between: [0.001, 1000000],
    description: 'Seconds before the first retry of a failed batch; doubles on each retry.',
  } },
  { max_retry_delay: {
    type: 'number', required: true, default: 30, between: [0.001, 1000000],
    description: 'Most seconds between retries of a failed batch (caps the exponential backoff).',
  } },
  { concurrency_limit: {
    type: 'integer', required: true, default: 1, one_of: [-1, 1],
    description: 'Batches sent at once. payg always sends one at a time (usage must be counted in order); -1 is accepted for Kong compatibility and means 1.',
  } },
];

/** The pre-0.2 name of `queue`, kept for one release: no defaults, so payg can tell whether it was set. */
const LEGACY_QUEUE_FIELDS = ['max_batch_size', 'max_coalescing_delay', 'max_entries', 'initial_retry_delay', 'max_retry_delay'];
const usageQueueFields: KongSchemaField[] = queueFields
  .filter((f) => LEGACY_QUEUE_FIELDS.includes(Object.keys(f)[0]))
  .map((f) => {
    const [name, def] = Object.entries(f)[0];
    const { default: _omitted, ...rest } = def;
    return { [name]: { ...rest, required: false } };
  });

/** Kong's HTTP protocols (typedefs.protocols_http): payg judges requests in the access phase, which only HTTP and gRPC requests have. */
export const PROTOCOLS = ['grpc', 'grpcs', 'http', 'https'] as const;

export const Schema: KongSchemaField[] = [
  { control_service_url: {
    type: 'string', required: true, match: '^https?://',
    description: 'Base URL of the payg control service, e.g. http://payg-control:8080.',
  } },
  { control_service_urls: {
    type: 'array', required: false, elements: { type: 'string', match: '^https?://' },
    description: 'More replicas of the control service, tried in order when the one in use fails (refused, 5xx or timeout).',
  } },
  { consumer_field: {
    type: 'string', required: true, default: 'custom_id', one_of: CONSUMER_FIELDS,
    description: 'Which field of the authenticated consumer identifies the Stripe customer.',
  } },
  { timeout_ms: {
    type: 'integer', required: true, default: 250, between: [1, 60000],
    description: 'Milliseconds allowed for one call to the control service.',
  } },
  { cache_ttl_ms: {
    type: 'integer', required: true, default: 5000, between: [0, 3600000],
    description: 'Upper bound in milliseconds on how long a block or an allow without a lease is reused (the service may ask for less). A lease is drawn on until its own ttl_ms, whatever this says.',
  } },
  { stale_ttl_ms: {
    type: 'integer', required: true, default: 60000, between: [0, 86400000],
    description: 'Milliseconds a cached decision may still serve while the control service is failing.',
  } },
  { fail_open: {
    type: 'boolean', required: true, default: true,
    description: 'With no usable decision: let the request through (true) or answer 503 (false).',
  } },
  { report_usage: {
    type: 'boolean', required: true, default: true,
    description: 'Send one usage event per request from the log phase to POST /v1/usage.',
  } },
  { control_service_token: {
    type: 'string', required: false, referenceable: true, encrypted: true,
    description: 'Bearer token sent on every call to the control service; may be a Kong vault reference.',
  } },
  { usage_units_header: {
    type: 'string', required: false,
    description: 'A response header in which the upstream reports the units a request used (e.g. X-Usage-Units); sent with usage as header_units, for routes priced per unit. A value that is not a plain non-negative integer is charged the route max_cost.',
  } },
  { credit_header: {
    type: 'string', required: false,
    description: 'A response header set on requests allowed on a lease with the remaining credit in the smallest currency unit, as this node knows it: never rising except after a top-up (docs/plugin-credit-header.md).',
  } },
  { queue: {
    type: 'record', required: true, fields: queueFields,
    description: 'Bounded in-memory queue for usage events: Kong\'s plugin queue record (names, types and ranges).',
  } },
  { usage_queue: {
    type: 'record', required: false, fields: usageQueueFields,
    description: 'Deprecated: the former name of queue. Fields set here still apply (over queue) with a warning; removed in the next release.',
  } },
];

export interface UsageQueueOptions {
  maxBatchSize: number;
  maxCoalescingDelayMs: number;
  maxEntries: number;
  initialRetryDelayMs: number;
  maxRetryDelayMs: number;
  /** Bound on the JSON bytes of queued events; undefined: none. */
  maxBytes?: number;
  /** How long one failing batch is retried before it is dropped; Infinity: for ever. */
  maxRetryTimeMs?: number;
}

export interface PaygOptions {
  controlServiceUrl: URL;
  /** Further replicas (control_service_urls), after controlServiceUrl. */
  controlServiceUrls: URL[];
  consumerField: ConsumerField;
  timeoutMs: number;
  cacheTtlMs: number;
  staleTtlMs: number;
  failOpen: boolean;
  reportUsage: boolean;
  controlServiceToken: string | undefined;
  usageQueue: UsageQueueOptions;
  /** Lower-case name of the response header carrying the upstream's units, if priced by it. */
  usageUnitsHeader: string | undefined;
  /** Response header for the remaining credit, if wanted. */
  creditHeader: string | undefined;
  /** Deprecations to log once at start. */
  warnings: string[];
}

export class ConfigError extends Error {
  constructor(readonly field: string, reason: string) {
    super(`payg config: ${field}: ${reason}`);
    this.name = 'ConfigError';
  }
}

type Raw = Record<string, unknown>;

function fieldDef(fields: KongSchemaField[], name: string): KongField {
  const entry = fields.find((f) => name in f);
  if (!entry) throw new Error(`no schema field ${name}`);
  return entry[name];
}

/** Reads one field with its schema default, checking type and range; null counts as absent (Kong sends JSON null). */
function read(fields: KongSchemaField[], raw: Raw, name: string, path: string): unknown {
  const def = fieldDef(fields, name);
  // Kong fills a required record's nested defaults; an absent record reads as empty.
  const value = raw[name] ?? def.default ?? (def.type === 'record' ? {} : undefined);
  if (value === undefined) {
    if (def.required) throw new ConfigError(path, 'is required');
    return undefined;
  }
  switch (def.type) {
    case 'string':
      if (typeof value !== 'string') throw new ConfigError(path, `expected a string, got ${typeof value}`);
      if (def.one_of && !def.one_of.includes(value)) {
        throw new ConfigError(path, `expected one of: ${def.one_of.join(', ')}`);
      }
      if (def.match && !new RegExp(def.match).test(value)) throw new ConfigError(path, `must match ${def.match}`);
      return value;
    case 'integer':
    case 'number':
      if (typeof value !== 'number' || !Number.isFinite(value)) throw new ConfigError(path, `expected a ${def.type}`);
      if (def.type === 'integer' && !Number.isInteger(value)) throw new ConfigError(path, 'expected an integer');
      if (def.one_of && !def.one_of.includes(value)) throw new ConfigError(path, `expected one of: ${def.one_of.join(', ')}`);
      if (def.between && (value < def.between[0] || value > def.between[1])) {
        throw new ConfigError(path, `value should be between ${def.between[0]} and ${def.between[1]}`);
      }
      return value;
    case 'boolean':
      if (typeof value !== 'boolean') throw new ConfigError(path, 'expected a boolean');
      return value;
    case 'record':
      if (typeof value !== 'object' || Array.isArray(value)) throw new ConfigError(path, 'expected a record');
      return value;
    case 'array':
      if (!Array.isArray(value)) throw new ConfigError(path, 'expected an array');
      value.forEach((v, i) => {
        if (typeof v !== 'string') throw new ConfigError(`${path}[${i}]`, 'expected a string');
        if (def.elements?.match && !new RegExp(def.elements.match).test(v)) throw new ConfigError(`${path}[${i}]`, `must match ${def.elements.match}`);
      });
      return value;
    default:
      throw new Error(`unsupported schema type ${def.type}`);
  }
}

/**
 * Secrets mounted from files often end in a newline: surrounding whitespace is
 * trimmed (the control service trims PAYG_CONTROL_TOKEN the same way). What is
 * left must fit in an Authorization header; the error never shows the token.
 */
function bearerToken(raw: string | undefined): string | undefined {
  const token = raw?.trim();
  if (!token) return undefined;
  if (!/^[\x21-\x7e]+$/.test(token)) {
    throw new ConfigError('control_service_token', 'may hold only visible ASCII characters (no spaces, line breaks or control characters inside it)');
  }
  return token;
}

/** Kong reads a schema's `match` as a Lua pattern, so header names are checked here instead (RFC 9110 tokens). */
function headerName(value: unknown, field: string): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || !/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(value)) throw new ConfigError(field, 'is not an HTTP header name');
  return value;
}

/** Headers that frame or route a response: a credit value set on one would corrupt it. */
const RESERVED_RESPONSE_HEADERS = new Set(['content-length', 'transfer-encoding', 'connection', 'keep-alive', 'upgrade', 'te', 'trailer',
  'content-type', 'content-encoding', 'content-range', 'location', 'set-cookie', 'www-authenticate', 'retry-after', 'date', 'server']);

function creditHeaderName(value: unknown): string | undefined {
  const name = headerName(value, 'credit_header');
  if (name !== undefined && RESERVED_RESPONSE_HEADERS.has(name.toLowerCase())) throw new ConfigError('credit_header', `cannot be ${name}: the response itself needs that header`);
  return name;
}

/**
 * Validates the config Kong passes to StartInstance. Kong has already checked
 * it against Schema; this is the second line, and it names the bad field.
 * Kong's own keys (`__seq__`, `__plugin_id`, `__key__`) are ignored.
 */
export function parseConfig(raw: unknown): PaygOptions {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new ConfigError('config', 'expected a record');
  const cfg = raw as Raw;
  const get = (name: string) => read(Schema, cfg, name, name);
  const queueRaw = (get('queue') ?? {}) as Raw;
  const legacyRaw = (get('usage_queue') ?? {}) as Raw;
  const warnings: string[] = [];
  // A field set under the deprecated usage_queue wins: Kong fills queue's defaults, so it was the operator's intent.
  const q = (name: string): number => {
    if (LEGACY_QUEUE_FIELDS.includes(name) && legacyRaw[name] !== undefined && legacyRaw[name] !== null) {
      const value = read(usageQueueFields, legacyRaw, name, `usage_queue.${name}`) as number;
      warnings.push(`usage_queue.${name} is deprecated; set queue.${name} instead (usage_queue is removed in the next release)`);
      return value;
    }
    return read(queueFields, queueRaw, name, `queue.${name}`) as number;
  };
  const maxBytes = read(queueFields, queueRaw, 'max_bytes', 'queue.max_bytes') as number | undefined;
  if (maxBytes !== undefined && maxBytes < 1) throw new ConfigError('queue.max_bytes', 'must be at least 1');
  const maxRetryTime = q('max_retry_time');
  // -1 is Kong's "for ever"; any other negative is a typo, not a wish to never drop usage.
  if (maxRetryTime < 0 && maxRetryTime !== -1) throw new ConfigError('queue.max_retry_time', 'must be -1 (retry for ever) or at least 0');
  q('concurrency_limit'); // validated; payg sends one batch at a time whatever it says

  const urlText = get('control_service_url') as string;
  let controlServiceUrl: URL;
  try {
    controlServiceUrl = new URL(urlText);
  } catch {
    throw new ConfigError('control_service_url', 'is not a valid URL');
  }
  const controlServiceUrls = ((get('control_service_urls') ?? []) as string[]).map((text, i) => {
    try { return new URL(text); } catch { throw new ConfigError(`control_service_urls[${i}]`, 'is not a valid URL'); }
  });
  const token = bearerToken(get('control_service_token') as string | undefined);
  return {
    controlServiceUrl,
    controlServiceUrls,
    consumerField: get('consumer_field') as ConsumerField,
    timeoutMs: get('timeout_ms') as number,
    cacheTtlMs: get('cache_ttl_ms') as number,
    staleTtlMs: get('stale_ttl_ms') as number,
    failOpen: get('fail_open') as boolean,
    reportUsage: get('report_usage') as boolean,
    controlServiceToken: token,
    usageQueue: {
      maxBatchSize: q('max_batch_size'),
      maxCoalescingDelayMs: q('max_coalescing_delay') * 1000,
      maxEntries: q('max_entries'),
      initialRetryDelayMs: q('initial_retry_delay') * 1000,
      maxRetryDelayMs: q('max_retry_delay') * 1000,
      maxBytes,
      maxRetryTimeMs: maxRetryTime < 0 ? Infinity : maxRetryTime * 1000,
    },
    usageUnitsHeader: headerName(get('usage_units_header'), 'usage_units_header')?.toLowerCase(),
    creditHeader: creditHeaderName(get('credit_header')),
    warnings,
  };
}
