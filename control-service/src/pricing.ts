// What a request costs. Pure. Costs are held in micro-units of the smallest
// currency unit (1 cent = 1,000,000 micros) as integers, so fractional prices
// ("0.25 cents a request") sum exactly over millions of events.

export const MICROS_PER_UNIT = 1_000_000;

export interface Pricing {
  defaultCostMicros: number;
  /** Kong route name (or id) → cost, overriding the default. */
  routeCostMicros: ReadonlyMap<string, number>;
  /** Count responses the upstream answered with a 5xx (default: no). */
  countUpstream5xx: boolean;
}

/**
 * "0.25" or 0.25 → 250000 micros, exactly (the decimal text is parsed, not
 * multiplied as a float). Undefined for anything else: negative, more than six
 * decimals, not a number.
 */
export function parseCost(value: number | string): number | undefined {
  const text = typeof value === 'number' ? (Number.isFinite(value) ? String(value) : '') : value.trim();
  const m = /^(\d+)(?:\.(\d{1,6}))?$/.exec(text);
  if (!m) return undefined;
  const micros = Number(m[1]) * MICROS_PER_UNIT + Number((m[2] ?? '').padEnd(6, '0'));
  return Number.isSafeInteger(micros) ? micros : undefined;
}

/** The cost of one request, in micros; 0 when it does not count. */
export function costOf(pricing: Pricing, route: string | null, status: number): number {
  if (!pricing.countUpstream5xx && status >= 500) return 0;
  return (route !== null ? pricing.routeCostMicros.get(route) : undefined) ?? pricing.defaultCostMicros;
}

/** Whole units (cents) in a micros amount, rounded down: what can be settled now. */
export function wholeUnits(micros: number): number {
  return Math.floor(micros / MICROS_PER_UNIT);
}
