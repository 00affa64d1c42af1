// What a request costs. Pure. Costs are held in micro-units of the smallest
// currency unit (1 cent = 1,000,000 micros) as integers, so fractional prices
// ("0.25 cents a request", "0.000015 cents a token") sum exactly over millions of events.
//
// A price is a fixed fee per request plus a price per unit of what the gateway
// measured: LLM tokens (prompt and completion apart, from Kong's AI plugins),
// units the upstream reports in a response header, request and response bytes.
// A route with unit prices has a variable cost, bounded by its `max_cost`: that
// is what a request reserves before it runs, and the most it is ever charged.

export const MICROS_PER_UNIT = 1_000_000;

/** The measured values a usage event may carry; an absent value counts as 0. */
export const UNIT_KINDS = ['prompt_tokens', 'completion_tokens', 'header_units', 'request_bytes', 'response_bytes'] as const;
export type UnitKind = (typeof UNIT_KINDS)[number];
export type Units = Partial<Record<UnitKind, number>>;

export interface RoutePrice {
  /** Fixed fee per request, in micros. */
  requestMicros: number;
  /** Price per unit of each measured value, in micros; only kinds priced above 0 are present. */
  perUnitMicros: ReadonlyMap<UnitKind, number>;
  /** The most one request costs, in micros: its reservation, and the cap on what it is charged. */
  maxCostMicros: number;
}

export interface Pricing {
  /**
   * The most one request costs (its reservation), by default and per Kong
   * route name (or id). For a fixed-price route this is its fee. The decision
   * API sizes `max_requests` by the dearest of these.
   */
  defaultCostMicros: number;
  routeCostMicros: ReadonlyMap<string, number>;
  /** Full prices, by default and per route. */
  defaultPrice: RoutePrice;
  routePrices: ReadonlyMap<string, RoutePrice>;
  /** Count responses the upstream answered with a 5xx (default: no). */
  countUpstream5xx: boolean;
}

/**
 * "0.25" or 0.25 → 250000 micros, exactly (the decimal text is parsed, not
 * multiplied as a float). Undefined for anything else: negative, more than six
 * decimals, not a number.
 */
export function parseCost(value: number | string): number | undefined {
  const text = typeof value === 'number' ? (Number.isFinite(value) ? numberText(value) : '') : value.trim();
  const m = /^(\d+)(?:\.(\d{1,6}))?$/.exec(text);
  if (!m) return undefined;
  const micros = Number(m[1]) * MICROS_PER_UNIT + Number((m[2] ?? '').padEnd(6, '0'));
  return Number.isSafeInteger(micros) ? micros : undefined;
}

/** 0.000015 prints as "0.000015", not "1.5e-5". */
function numberText(n: number): string {
  const s = String(n);
  return /e/i.test(s) ? n.toFixed(6).replace(/\.?0+$/, '') : s;
}

/** A fixed price per request: no unit prices, reserves its fee. */
export function fixedPrice(micros: number): RoutePrice {
  return { requestMicros: micros, perUnitMicros: new Map(), maxCostMicros: micros };
}

/** Whether what a request costs depends on what it measured. */
export function isVariable(price: RoutePrice): boolean {
  return price.perUnitMicros.size > 0;
}

export function priceOf(pricing: Pricing, route: string | null): RoutePrice {
  return (route !== null ? pricing.routePrices.get(route) : undefined) ?? pricing.defaultPrice;
}

/**
 * The cost of one request, in micros; 0 when it does not count. The fee plus
 * each measured value times its price, capped at the route's max_cost (the
 * request reserved no more). Computed in BigInt: a count of bytes times a
 * price may pass 2^53 before the cap applies.
 */
export function costOf(pricing: Pricing, route: string | null, status: number, units?: Units): number {
  if (!pricing.countUpstream5xx && status >= 500) return 0;
  const price = priceOf(pricing, route);
  if (!isVariable(price) || !units) return Math.min(price.requestMicros, price.maxCostMicros);
  let total = BigInt(price.requestMicros);
  for (const [kind, micros] of price.perUnitMicros) {
    const n = units[kind];
    if (n !== undefined && n > 0) total += BigInt(n) * BigInt(micros);
  }
  const cap = BigInt(price.maxCostMicros);
  return Number(total < cap ? total : cap);
}

/** Whole units (cents) in a micros amount, rounded down: what can be settled now. */
export function wholeUnits(micros: number): number {
  return Math.floor(micros / MICROS_PER_UNIT);
}
