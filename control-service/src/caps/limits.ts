// Which caps apply to a consumer: the config's defaults, overridden per
// customer in Stripe metadata. Pure.
//
//   <prefix>_daily / <prefix>_monthly                 every consumer of this customer
//   <prefix>_daily.<consumer> / <prefix>_monthly.<consumer>   one consumer (wins)
//
// `<prefix>` is `caps.metadata_prefix` (default `payg_cap`). A value is a whole
// number in the customer's currency's smallest unit (`2500` = $25.00), or
// `none` to lift that cap. Stripe keys hold at most 40 characters, so a
// consumer override fits consumer names of up to 40 − len("payg_cap_monthly.")
// = 23 characters with the default prefix. A value that is neither is not
// guessed at: the next level applies (customer-wide, then the config default)
// and the key is reported in `problems`.

import { CAP_PERIODS, type CapLimits } from './caps';

export interface CapsConfig {
  /** Defaults for every consumer, smallest currency unit; absent: no cap. */
  daily?: number;
  monthly?: number;
  metadataPrefix: string;
}

export interface ResolvedCaps { limits: CapLimits; problems: Array<{ key: string; value: string; error: string }> }

/** Up to 9 digits: 999,999,999 in the smallest unit, so cap × 1,000,000 micros stays an exact integer. */
const WHOLE = /^(0|[1-9][0-9]{0,8})$/;

function parseValue(value: string): { ok: true; cap: number | undefined } | { ok: false; error: string } {
  const v = value.trim();
  if (v.toLowerCase() === 'none') return { ok: true, cap: undefined };
  if (WHOLE.test(v)) return { ok: true, cap: Number(v) };
  return { ok: false, error: 'expected a whole number in the smallest currency unit (e.g. 2500), or none' };
}

/** The caps for one consumer of a customer with this metadata. */
export function capsFor(config: CapsConfig, metadata: Readonly<Record<string, string>>, consumer: string): ResolvedCaps {
  const limits: CapLimits = {};
  const problems: ResolvedCaps['problems'] = [];
  for (const period of CAP_PERIODS) {
    let cap = config[period];
    for (const key of [`${config.metadataPrefix}_${period}`, `${config.metadataPrefix}_${period}.${consumer}`]) {
      const value = metadata[key];
      if (value === undefined) continue;
      const parsed = parseValue(value);
      if (parsed.ok) cap = parsed.cap; else problems.push({ key, value, error: parsed.error });
    }
    if (cap !== undefined) limits[period] = cap;
  }
  return { limits, problems };
}

/**
 * Metadata keys of this customer that set caps (any consumer), with their problems: a value that is
 * neither a whole number nor `none`; a key that starts like one (the prefix in any case) but is not
 * one (`payg_cap_weekly`, `PAYG_CAP_DAILY`, `payg_cap_daily_app`), which nothing reads; and (when
 * `consumers` is given: the consumers the customer claims) a per-consumer key naming none of them,
 * whose cap applies to no one (a typo in the name).
 */
export function capKeysOf(config: CapsConfig, metadata: Readonly<Record<string, string>>, consumers?: readonly string[]): ResolvedCaps['problems'] {
  const out: ResolvedCaps['problems'] = [];
  for (const [key, value] of Object.entries(metadata)) {
    const period = CAP_PERIODS.find((p) => key === `${config.metadataPrefix}_${p}` || key.startsWith(`${config.metadataPrefix}_${p}.`));
    if (period === undefined) {
      // Meant as a cap key but not one (another case, another period, no dot before the consumer): read by no one.
      if (key.toLowerCase().startsWith(`${config.metadataPrefix}_`)) {
        out.push({ key, value, error: `is not a cap key: expected ${config.metadataPrefix}_daily or ${config.metadataPrefix}_monthly, optionally followed by .<consumer>` });
      }
      continue;
    }
    const parsed = parseValue(value);
    if (!parsed.ok) { out.push({ key, value, error: parsed.error }); continue; }
    const consumer = key.slice(`${config.metadataPrefix}_${period}.`.length);
    if (consumers && key !== `${config.metadataPrefix}_${period}` && !consumers.includes(consumer)) {
      out.push({ key, value, error: `names consumer ${JSON.stringify(consumer)}, which this customer does not list: the cap applies to no one` });
    }
  }
  return out;
}
