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
  one_of?: readonly string[];
  between?: [number, number];
  gt?: number;
  match?: string;
  referenceable?: boolean;
  encrypted?: boolean;
  fields?: KongSchemaField[];
}
export type KongSchemaField = Record<string, KongField>;

const usageQueueFields: KongSchemaField[] = [
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
  { initial_retry_delay: {
    type: 'number', required: true, default: 0.1, between: [0.001, 1000000],
    description: 'Seconds before the first retry of a failed batch; doubles on each retry.',
  } },
  { max_retry_delay: {
    type: 'number', required: true, default: 30, between: [0.001, 1000000],
    description: 'Most seconds between retries of a failed batch (caps the exponential backoff).',
  } },
];

export const Schema: KongSchemaField[] = [
  { control_service_url: {
    type: 'string', required: true, match: '^https?://',
    description: 'Base URL of the payg control service, e.g. http://payg-control:8080.',
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
    description: 'Upper bound in milliseconds on how long a decision is reused (the service may ask for less).',
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
  { usage_queue: {
    type: 'record', required: true, fields: usageQueueFields,
    description: 'Bounded in-memory queue for usage events (mirrors Kong\'s own plugin queue settings).',
  } },
];

export interface UsageQueueOptions {
  maxBatchSize: number;
  maxCoalescingDelayMs: number;
  maxEntries: number;
  initialRetryDelayMs: number;
  maxRetryDelayMs: number;
}

export interface PaygOptions {
  controlServiceUrl: URL;
  consumerField: ConsumerField;
  timeoutMs: number;
  cacheTtlMs: number;
  staleTtlMs: number;
  failOpen: boolean;
  reportUsage: boolean;
  controlServiceToken: string | undefined;
  usageQueue: UsageQueueOptions;
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

/**
 * Validates the config Kong passes to StartInstance. Kong has already checked
 * it against Schema; this is the second line, and it names the bad field.
 * Kong's own keys (`__seq__`, `__plugin_id`, `__key__`) are ignored.
 */
export function parseConfig(raw: unknown): PaygOptions {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new ConfigError('config', 'expected a record');
  const cfg = raw as Raw;
  const get = (name: string) => read(Schema, cfg, name, name);
  const queueRaw = (get('usage_queue') ?? {}) as Raw;
  const q = (name: string) => read(usageQueueFields, queueRaw, name, `usage_queue.${name}`) as number;

  const urlText = get('control_service_url') as string;
  let controlServiceUrl: URL;
  try {
    controlServiceUrl = new URL(urlText);
  } catch {
    throw new ConfigError('control_service_url', 'is not a valid URL');
  }
  const token = bearerToken(get('control_service_token') as string | undefined);
  return {
    controlServiceUrl,
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
    },
  };
}
