// Merge tags for rule bodies (and emails): the values, their escaping for the
// body's content type, and a check that a template uses only known tags.

import Handlebars from 'handlebars';
import { formatMoney, type Customer } from './customer';

export interface MergeContext {
  customer: { id: string; name: string; first_name: string; email: string };
  balance: { cents: number; formatted: string };
  credit: { cents: number; formatted: string };
  currency: string;
  top_up_url: string;
  /**
   * Rule bodies only: which limit refused (issue 23). `kind` is `no_credit` (the
   * team's credit) or `consumer_cap` (this consumer's spending cap; then
   * `resets_at` is when its period ends, ISO 8601 UTC, and `retry_after` the
   * seconds until then); empty for no_credit.
   */
  limit?: { kind: 'no_credit' | 'consumer_cap'; resets_at: string; retry_after: number | '' };
}

const BASE_TAGS: readonly string[] = [
  'customer.id', 'customer.name', 'customer.first_name', 'customer.email',
  'balance.cents', 'balance.formatted', 'credit.cents', 'credit.formatted', 'currency', 'top_up_url',
];
/** Rule bodies also know which limit refused. */
export const MERGE_TAGS: readonly string[] = [...BASE_TAGS, 'limit.kind', 'limit.resets_at', 'limit.retry_after'];
/** Emails also know the threshold a low-balance warning is about. */
export const EMAIL_MERGE_TAGS: readonly string[] = [...BASE_TAGS, 'threshold.cents', 'threshold.formatted'];

/** The limit tags of a refusal for want of team credit. */
export const NO_CREDIT_LIMIT: NonNullable<MergeContext['limit']> = { kind: 'no_credit', resets_at: '', retry_after: '' };

export interface EmailMergeContext extends MergeContext { threshold?: { cents: number; formatted: string } }

/** `link`: with top_up.checkout, a signed link to payg's top-up page for a customer (see top-ups/token.ts). */
export interface TopUpConfig { url?: string; metadata_key?: string; link?: (customerId: string) => string }

export function mergeContext(customer: Customer, topUp: TopUpConfig, limit: MergeContext['limit'] = NO_CREDIT_LIMIT): MergeContext {
  const name = customer.name ?? '';
  const credit = Math.max(0, -customer.balance);
  const fromMetadata = topUp.metadata_key ? customer.metadata[topUp.metadata_key] : undefined;
  const topUpTemplate = fromMetadata ?? (topUp.link ? topUp.link(customer.id) : topUp.url ?? '');
  return {
    customer: { id: customer.id, name, first_name: name.trim().split(/\s+/)[0] ?? '', email: customer.email ?? '' },
    balance: { cents: customer.balance, formatted: formatMoney(customer.balance, customer.currency) },
    credit: { cents: credit, formatted: formatMoney(credit, customer.currency) },
    currency: (customer.currency ?? 'usd').toUpperCase(),
    top_up_url: topUpTemplate.replace('{customer_id}', encodeURIComponent(customer.id)),
    limit,
  };
}

export type BodyEscaping = 'json' | 'html' | 'none';

export function escapingFor(contentType: string | undefined): BodyEscaping {
  const type = (contentType ?? '').toLowerCase();
  if (type.includes('json')) return 'json';
  if (type.includes('html') || type.includes('xml')) return 'html';
  return 'none';
}

/** Escapes a string for the inside of a JSON string literal, also safe inside an HTML <script>. */
export function jsonStringContent(value: string): string {
  return JSON.stringify(value).slice(1, -1)
    .replace(/</g, '\\u003c').replace(/>/g, '\\u003e').replace(/&/g, '\\u0026')
    .replace(/\u2028/g, '\\u2028').replace(/\u2029/g, '\\u2029');
}

function escapeTree(value: unknown, escape: (s: string) => string): unknown {
  if (typeof value === 'string') return escape(value);
  if (typeof value === 'object' && value !== null) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, escapeTree(v, escape)]));
  }
  return value;
}

export type RenderFn = (ctx: MergeContext | EmailMergeContext) => string;

/** The merge-tag paths a template uses that do not exist. */
export function unknownTags(source: string, known: readonly string[] = MERGE_TAGS): string[] {
  const found = new Set<string>();
  const visit = (node: any): void => {
    if (!node || typeof node !== 'object') return;
    if (node.type === 'PathExpression' && !node.data) found.add(node.original);
    for (const value of Object.values(node)) {
      if (Array.isArray(value)) value.forEach(visit); else if (typeof value === 'object') visit(value);
    }
  };
  visit(Handlebars.parse(source));
  const helpers = new Set(['if', 'unless', 'each', 'with', 'else', 'this', 'lookup', 'log']);
  return [...found].filter((p) => !helpers.has(p) && !known.includes(p));
}

/**
 * Compiles a template once. Values are escaped for the body's content type
 * before Handlebars sees them, so a JSON body stays valid JSON whatever a
 * customer's name holds. Throws (with Handlebars' message) on a bad template.
 */
export function compileTemplate(source: string, escaping: BodyEscaping, known: readonly string[] = MERGE_TAGS): RenderFn {
  const unknown = unknownTags(source, known);
  if (unknown.length > 0) throw new Error(`unknown merge tag ${unknown.map((t) => `{{${t}}}`).join(', ')}; known: ${known.join(', ')}`);
  const template = Handlebars.compile(source, { noEscape: escaping !== 'html', strict: false });
  const escape = escaping === 'json' ? jsonStringContent : (s: string) => s;
  return (ctx) => template(escaping === 'json' ? escapeTree(ctx, escape) : ctx);
}

export const SAMPLE_CUSTOMER: Customer = {
  id: 'cus_sample', balance: 0, currency: 'usd', name: 'Zoë "Q" O\'Brien\\ </script> 🚀', email: 'zoe@example.com', metadata: {},
};
