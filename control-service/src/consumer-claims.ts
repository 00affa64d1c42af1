// Which Kong consumers a Stripe customer claims (issue 23: several consumers
// share one balance). The value of the `kong_consumer` metadata key (Stripe
// allows 500 characters) names one consumer or several, separated by commas:
// `app-web, app-batch,partner-x`. Spaces around a name are dropped, empty
// entries ignored, a repeated name counted once. Pure.

/** Stripe's limit on a metadata value. */
export const MAX_METADATA_VALUE = 500;

/** The consumer names a metadata value claims, in the order written, without repeats. */
export function parseConsumerClaim(value: string | undefined): string[] {
  if (!value) return [];
  const out: string[] = [];
  for (const part of value.split(',')) {
    const name = part.trim();
    if (name && !out.includes(name)) out.push(name);
  }
  return out;
}

/** The consumer values that name a customer: its id first, then what its metadata claims. */
export function consumersOfCustomer(id: string, claimValue: string | undefined): string[] {
  return [id, ...parseConsumerClaim(claimValue).filter((c) => c !== id)];
}
