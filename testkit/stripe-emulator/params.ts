// Stripe's request parameters: the form encoding the SDK writes (a[b][0][c]=d),
// the error Stripe answers with, and a small schema checker that refuses what
// Stripe refuses with Stripe's messages, codes and param paths
// (parameter_unknown, parameter_missing, parameter_invalid_integer, ...).

import { randomBytes } from 'node:crypto';

export const rid = (prefix: string) => `${prefix}_${randomBytes(12).toString('hex')}`;

/** An answer other than 200: thrown by a resource handler, written by the HTTP layer. */
export class StripeApiError extends Error {
  constructor(readonly status: number, readonly type: string, message: string, readonly extra: Record<string, unknown> = {}) { super(message); }
}

export const invalid = (message: string, param?: string, code?: string, extra: Record<string, unknown> = {}) =>
  new StripeApiError(400, 'invalid_request_error', message, { ...(param !== undefined ? { param } : {}), ...(code ? { code } : {}), ...extra });

export const missing = (kind: string, id: string, param?: string) =>
  new StripeApiError(404, 'invalid_request_error', `No such ${kind}: '${id}'`, { code: 'resource_missing', ...(param ? { param } : {}) });

/**
 * Stripe's form encoding, nested: a[b]=c → {a: {b: c}}, a[0][b]=c → {a: {'0': {b: c}}}
 * (indexed arrays stay objects until a schema says "array").
 */
export function parseForm(body: string): Record<string, any> {
  const out: Record<string, any> = {};
  for (const [key, value] of new URLSearchParams(body)) {
    const head = /^[^[]+/.exec(key)?.[0] ?? key;
    const path = [head, ...[...key.slice(head.length).matchAll(/\[([^\]]*)\]/g)].map((m) => m[1])];
    let node = out;
    for (let i = 0; i < path.length - 1; i++) {
      const k = path[i] === '' ? String(Object.keys(node[path[i]] ?? {}).length) : path[i];
      if (typeof node[k] !== 'object' || node[k] === null) node[k] = {};
      node = node[k];
    }
    const last = path[path.length - 1] === '' ? String(Object.keys(node).length) : path[path.length - 1];
    node[last] = value;
  }
  return out;
}

// ---- schemas ------------------------------------------------------------------
export type Schema =
  | { t: 'string'; max?: number; url?: boolean }
  | { t: 'integer'; min?: number; max?: number }
  | { t: 'boolean' }
  | { t: 'enum'; values: readonly string[] }
  | { t: 'metadata' }
  | { t: 'object'; fields: Record<string, Schema>; required?: readonly string[] }
  | { t: 'array'; of: Schema }
  | { t: 'oneOf'; options: readonly Schema[] };

export const str = (o: { max?: number; url?: boolean } = {}): Schema => ({ t: 'string', ...o });
export const int = (o: { min?: number; max?: number } = {}): Schema => ({ t: 'integer', ...o });
export const bool: Schema = { t: 'boolean' };
export const en = (...values: string[]): Schema => ({ t: 'enum', values });
export const meta: Schema = { t: 'metadata' };
export const obj = (fields: Record<string, Schema>, required: readonly string[] = []): Schema => ({ t: 'object', fields, required });
export const arr = (of: Schema): Schema => ({ t: 'array', of });
export const expand: Schema = arr(str());

const oneOfList = (values: readonly string[]) =>
  values.length <= 2 ? values.join(' or ') : `${values.slice(0, -1).join(', ')}, or ${values[values.length - 1]}`;

/** Checks `value` against `schema`; returns it typed (numbers, booleans, arrays). `path` is Stripe's param name. */
export function check(value: unknown, schema: Schema, path: string): any {
  switch (schema.t) {
    case 'string': {
      if (typeof value !== 'string') throw invalid(`Invalid string: ${describe(value)}`, path);
      if (schema.max !== undefined && value.length > schema.max) {
        throw invalid(`Invalid string: ${value.slice(0, 20)}...; must be at most ${schema.max} characters`, path, 'string_length_exceeded');
      }
      if (schema.url && value !== '' && !isUrl(value)) throw invalid('Not a valid URL', path, 'url_invalid');
      return value;
    }
    case 'integer': {
      if (typeof value !== 'string' || !/^-?\d+$/.test(value)) throw invalid(`Invalid integer: ${describe(value)}`, path, 'parameter_invalid_integer');
      const n = Number(value);
      if (!Number.isSafeInteger(n)) throw invalid(`Invalid integer: ${value}`, path, 'parameter_invalid_integer');
      if (schema.min !== undefined && n < schema.min) throw invalid(`This value must be greater than or equal to ${schema.min}.`, path, 'parameter_invalid_integer');
      if (schema.max !== undefined && n > schema.max) throw invalid(`This value must be less than or equal to ${schema.max}.`, path, 'parameter_invalid_integer');
      return n;
    }
    case 'boolean': {
      if (value !== 'true' && value !== 'false') throw invalid(`Invalid boolean: ${describe(value)}`, path);
      return value === 'true';
    }
    case 'enum': {
      if (typeof value !== 'string' || !schema.values.includes(value)) {
        throw invalid(`Invalid ${path.replace(/^.*\[(\w+)\]$/, '$1')}: must be one of ${oneOfList(schema.values)}`, path);
      }
      return value;
    }
    case 'metadata': {
      if (value === '') return {}; // metadata='' clears every key
      if (typeof value !== 'object' || value === null) throw invalid('Invalid object', path);
      const out: Record<string, string> = {};
      const entries = Object.entries(value as Record<string, unknown>);
      if (entries.length > 50) throw invalid('Invalid metadata: metadata can have at most 50 keys.', path);
      for (const [k, v] of entries) {
        if (typeof v !== 'string') throw invalid('Invalid object', `${path}[${k}]`);
        if (k.length > 40) throw invalid(`Metadata keys can have up to 40 characters. The key ${k} is too long.`, `${path}[${k}]`);
        if (v.length > 500) throw invalid(`Metadata values can have up to 500 characters, but you passed in a value that is ${v.length} characters.`, `${path}[${k}]`);
        out[k] = v;
      }
      return out;
    }
    case 'object': {
      if (typeof value !== 'object' || value === null) throw invalid('Invalid object', path);
      const out: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
        const name = path ? `${path}[${k}]` : k;
        const field = schema.fields[k];
        if (!field) throw invalid(`Received unknown parameter: ${name}`, name, 'parameter_unknown');
        if (v === '' && field.t !== 'metadata' && field.t !== 'string') {
          if ((schema.required ?? []).includes(k)) throw invalid(`You passed an empty string for '${name}'. We assume empty values are an attempt to unset a parameter; however '${name}' cannot be unset. You should remove '${name}' from your request or supply a non-empty value.`, name, 'parameter_invalid_empty');
          continue;
        }
        out[k] = check(v, field, name);
      }
      for (const k of schema.required ?? []) {
        if (out[k] === undefined) throw invalid(`Missing required param: ${path ? `${path}[${k}]` : k}.`, path ? `${path}[${k}]` : k, 'parameter_missing');
      }
      return out;
    }
    case 'array': {
      if (typeof value !== 'object' || value === null) throw invalid('Invalid array', path);
      const keys = Object.keys(value as object);
      if (!keys.every((k, i) => k === String(i))) throw invalid('Invalid array', path);
      return keys.map((k) => check((value as Record<string, unknown>)[k], schema.of, `${path}[${k}]`));
    }
    case 'oneOf': {
      let first: unknown;
      for (const option of schema.options) {
        try { return check(value, option, path); } catch (e) { first ??= e; }
      }
      throw first;
    }
  }
}

/** Validates a request body against the fields an endpoint takes (`expand` always allowed). */
export function params(body: Record<string, unknown>, fields: Record<string, Schema>, required: readonly string[] = []): Record<string, any> {
  return check(body, obj({ expand, ...fields }, required), '');
}

function describe(value: unknown): string {
  return typeof value === 'string' ? value : typeof value === 'object' ? 'an object' : String(value);
}

function isUrl(value: string): boolean {
  try { const u = new URL(value); return u.protocol === 'http:' || u.protocol === 'https:'; } catch { return false; }
}

/** Stripe's list pagination over newest-first data. */
export function listPage<T extends { id?: unknown }>(all: T[], query: URLSearchParams, url: string, kind: string): { object: 'list'; url: string; has_more: boolean; data: T[] } {
  const limitText = query.get('limit');
  const limit = limitText === null ? 10 : Number(limitText);
  if (!Number.isInteger(limit) || limit < 1 || limit > 100) throw invalid('Invalid integer: limit must be between 1 and 100', 'limit');
  let start = 0;
  const after = query.get('starting_after');
  if (after) {
    const idx = all.findIndex((x) => x.id === after);
    if (idx < 0) throw invalid(`No such ${kind}: '${after}'`, 'starting_after', 'resource_missing');
    start = idx + 1;
  }
  const before = query.get('ending_before');
  if (before) {
    const idx = all.findIndex((x) => x.id === before);
    if (idx < 0) throw invalid(`No such ${kind}: '${before}'`, 'ending_before', 'resource_missing');
    const from = Math.max(0, idx - limit);
    return { object: 'list', url, has_more: from > 0, data: all.slice(from, idx) };
  }
  return { object: 'list', url, has_more: start + limit < all.length, data: all.slice(start, start + limit) };
}

/** Query-string parameters (GET) in Stripe's bracket form, checked like a body. */
export function queryParams(query: URLSearchParams, fields: Record<string, Schema>): Record<string, any> {
  const body = parseForm(query.toString());
  return params(body, { limit: str(), starting_after: str(), ending_before: str(), ...fields });
}
