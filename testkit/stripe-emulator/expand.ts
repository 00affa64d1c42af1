// `expand`: ids of related objects replaced by the objects (dotted paths).
import type { StripeEmulator } from './emulator';
import { invalid } from './params';

const STORES: Array<[string, (emu: StripeEmulator) => Map<string, any>]> = [
  ['cus_', (e) => e.customers], ['pi_', (e) => e.paymentIntents], ['pm_', (e) => e.paymentMethods], ['ch_', (e) => e.charges],
  ['re_', (e) => e.refunds], ['dp_', (e) => e.disputes], ['in_', (e) => e.invoices], ['seti_', (e) => e.setupIntents],
  ['cs_', (e) => e.checkoutSessions], ['txn_', (e) => e.stripeBalanceTransactions],
];

export function lookup(emu: StripeEmulator, id: string): any {
  for (const [prefix, store] of STORES) if (id.startsWith(prefix)) return store(emu).get(id);
  return undefined;
}

/** A copy of `object` with `paths` expanded; `extra` resolves fields that are not ids (e.g. line_items). */
export function expandObject(emu: StripeEmulator, object: Record<string, any>, paths: string[] | undefined, extra: Record<string, () => unknown> = {}): Record<string, any> {
  const copy = JSON.parse(JSON.stringify(object));
  for (const [i, path] of (paths ?? []).entries()) {
    const [head, ...rest] = path.split('.');
    if (extra[head]) { copy[head] = extra[head](); continue; }
    if (!(head in copy)) throw invalid(`This property cannot be expanded (${head}).`, `expand[${i}]`);
    if (typeof copy[head] === 'string') {
      const found = lookup(emu, copy[head]);
      if (found) copy[head] = rest.length ? expandObject(emu, found, [rest.join('.')]) : JSON.parse(JSON.stringify(found));
    } else if (copy[head] && typeof copy[head] === 'object' && rest.length) {
      copy[head] = expandObject(emu, copy[head], [rest.join('.')]);
    } else if (copy[head] !== null) {
      throw invalid(`This property cannot be expanded (${head}).`, `expand[${i}]`);
    }
  }
  return copy;
}
