// The slice of a Stripe customer payg keeps, and money formatting.

export interface Customer {
  id: string;
  /** Stripe's balance in the smallest currency unit; negative means credit. */
  balance: number;
  currency: string | null;
  name: string | null;
  email: string | null;
  metadata: Record<string, string>;
}

/** Formats an amount in the smallest currency unit, e.g. (1050, 'usd') → "$10.50", (500, 'jpy') → "¥500". */
export function formatMoney(minorUnits: number, currency: string | null): string {
  const code = (currency ?? 'usd').toUpperCase();
  let fmt: Intl.NumberFormat;
  try {
    fmt = new Intl.NumberFormat('en-US', { style: 'currency', currency: code });
  } catch {
    fmt = new Intl.NumberFormat('en-US', { style: 'currency', currency: 'USD' });
  }
  const digits = fmt.resolvedOptions().maximumFractionDigits ?? 2;
  return fmt.format(minorUnits / 10 ** digits);
}
