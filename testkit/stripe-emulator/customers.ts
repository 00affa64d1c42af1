// Customers: create/retrieve/update/delete/list, the balance Stripe keeps for
// each (every change a customer balance transaction), and the default payment
// method for invoices (invoice_settings.default_payment_method).
import type { StripeEmulator } from './emulator';
import type { Route } from './routes';
import { invalid, missing, parseForm, rid } from './params';
import { expandObject } from './expand';

export interface EmuCustomer {
  id: string; object: 'customer'; created: number; balance: number; currency: string | null;
  name: string | null; email: string | null; metadata: Record<string, string>; livemode: false;
  invoice_settings?: { custom_fields: null; default_payment_method: string | null; footer: null; rendering_options: null };
}

export function createCustomer(emu: StripeEmulator, fields: Partial<EmuCustomer> = {}): EmuCustomer {
  const c: EmuCustomer = {
    id: fields.id ?? rid('cus'), object: 'customer', created: emu.tick(), balance: 0, currency: 'usd',
    name: null, email: null, metadata: {}, livemode: false,
    invoice_settings: { custom_fields: null, default_payment_method: null, footer: null, rendering_options: null }, ...fields,
  };
  emu.customers.set(c.id, c);
  listCache.delete(emu);
  // Stripe records a starting balance as an 'initial' balance transaction.
  if (c.balance !== 0) recordBalanceChange(emu, c, c.balance, 'initial', null, {});
  emu.emit('customer.created', c);
  return c;
}

export function updateCustomer(emu: StripeEmulator, id: string, fields: Partial<EmuCustomer>): EmuCustomer {
  const c = emu.customers.get(id)!;
  const previous: Record<string, unknown> = {};
  for (const k of Object.keys(fields) as Array<keyof EmuCustomer>) previous[k] = c[k];
  const before = c.balance;
  Object.assign(c, fields);
  // Setting the balance directly is an 'adjustment' balance transaction in Stripe.
  if (c.balance !== before) recordBalanceChange(emu, c, c.balance - before, 'adjustment', null, {});
  emu.emit('customer.updated', c, previous);
  return c;
}

export function removeCustomer(emu: StripeEmulator, id: string): void {
  const c = emu.customers.get(id)!;
  emu.customers.delete(id);
  listCache.delete(emu);
  emu.deleted.add(id);
  emu.emit('customer.deleted', { ...c, deleted: true });
}

export function addBalanceTransaction(emu: StripeEmulator, id: string, amount: number, currency = 'usd', description: string | null = null, metadata: Record<string, string> = {}): Record<string, unknown> {
  const c = emu.customers.get(id)!;
  const previous = { balance: c.balance };
  c.balance += amount;
  c.currency ??= currency;
  const txn = recordBalanceChange(emu, c, amount, 'adjustment', description, metadata ?? {});
  emu.balanceTransactions.push(txn);
  emu.emit('customer.updated', c, previous);
  return txn;
}

function recordBalanceChange(emu: StripeEmulator, c: EmuCustomer, amount: number, type: string, description: string | null, metadata: Record<string, string>): Record<string, unknown> {
  const txn = { id: rid('cbtxn'), object: 'customer_balance_transaction', amount, currency: c.currency ?? 'usd', customer: c.id, ending_balance: c.balance, type, created: emu.tick(), livemode: false, description, metadata };
  const list = emu.balanceHistory.get(c.id) ?? [];
  list.push(txn);
  emu.balanceHistory.set(c.id, list);
  return txn;
}

// Customers newest first, like Stripe's list, with each id's position; rebuilt after a create or delete.
const listCache = new WeakMap<StripeEmulator, { order: EmuCustomer[]; index: Map<string, number> }>();
function newestFirst(emu: StripeEmulator) {
  let cached = listCache.get(emu);
  if (!cached) {
    const order = [...emu.customers.values()].reverse();
    cached = { order, index: new Map(order.map((c, i) => [c.id, i])) };
    listCache.set(emu, cached);
  }
  return cached;
}

/** The customer, or Stripe's 404 (param names the field that carried the id). */
export function customerOr404(emu: StripeEmulator, id: string, param = 'id'): EmuCustomer {
  const c = emu.customers.get(id);
  if (!c) throw missing('customer', id, param);
  return c;
}

/** Customer ids given as a parameter of another object: a 400 naming the param, as Stripe does. */
export function customerParam(emu: StripeEmulator, id: string, param = 'customer'): EmuCustomer {
  const c = emu.customers.get(id);
  if (!c) throw invalid(`No such customer: '${id}'`, param, 'resource_missing');
  return c;
}

export const customerRoutes: Route[] = [
  {
    method: 'GET', path: /^\/v1\/customers$/, run(emu, _m, _b, query) {
      const limitText = query.get('limit');
      const limit = limitText === null ? 10 : Number(limitText);
      if (!Number.isInteger(limit) || limit < 1 || limit > 100) throw invalid('Invalid integer: limit must be between 1 and 100', 'limit');
      const { order, index } = newestFirst(emu);
      const after = query.get('starting_after');
      let start = 0;
      if (after) {
        const idx = index.get(after) ?? -1;
        if (idx < 0) throw invalid(`No such customer: '${after}'`, 'starting_after', 'resource_missing');
        start = idx + 1;
      }
      return { object: 'list', url: '/v1/customers', has_more: start + limit < order.length, data: order.slice(start, start + limit) };
    },
  },
  {
    method: 'POST', path: /^\/v1\/customers$/, run(emu, _m, body) {
      const fields: Partial<EmuCustomer> = { name: body.name ?? null, email: body.email ?? null, metadata: body.metadata ?? {} };
      if (body.balance !== undefined) fields.balance = Number(body.balance);
      if (body.currency !== undefined) fields.currency = body.currency;
      return createCustomer(emu, fields);
    },
  },
  {
    method: 'GET', path: /^\/v1\/customers\/([^/]+)$/, run(emu, m, _b, query) {
      const id = m[1];
      if (!emu.customers.has(id) && emu.deleted.has(id)) return { id, object: 'customer', deleted: true };
      const expand = parseForm(query.toString()).expand;
      const customer = customerOr404(emu, id);
      return expand ? expandObject(emu, customer, Object.values(expand as Record<string, string>)) : customer;
    },
  },
  {
    method: 'DELETE', path: /^\/v1\/customers\/([^/]+)$/, run(emu, m) {
      customerOr404(emu, m[1]);
      removeCustomer(emu, m[1]);
      return { id: m[1], object: 'customer', deleted: true };
    },
  },
  {
    method: 'POST', path: /^\/v1\/customers\/([^/]+)$/, run(emu, m, body) {
      const customer = customerOr404(emu, m[1]);
      const fields: Partial<EmuCustomer> = {};
      for (const k of ['name', 'email', 'currency'] as const) if (body[k] !== undefined) fields[k] = body[k];
      if (body.balance !== undefined) fields.balance = Number(body.balance);
      if (body.metadata) {
        // metadata[key]='' removes the key, as in Stripe.
        const next: Record<string, string> = { ...customer.metadata };
        for (const [k, v] of Object.entries(body.metadata as Record<string, string>)) { if (v === '') delete next[k]; else next[k] = v; }
        fields.metadata = next;
      }
      if (body.invoice_settings !== undefined) {
        const settings = body.invoice_settings as Record<string, string>;
        for (const k of Object.keys(settings)) {
          if (k !== 'default_payment_method') throw invalid(`Received unknown parameter: invoice_settings[${k}]`, `invoice_settings[${k}]`, 'parameter_unknown');
        }
        const pm = settings.default_payment_method;
        if (pm !== undefined && pm !== '') {
          const method = emu.paymentMethods.get(pm);
          if (!method) throw invalid(`No such PaymentMethod: '${pm}'`, 'invoice_settings[default_payment_method]', 'resource_missing');
          if (method.customer !== customer.id) {
            throw invalid(`The customer does not have a payment method with the ID ${pm}. The payment method must be attached to the customer.`, 'invoice_settings[default_payment_method]');
          }
        }
        fields.invoice_settings = { ...(customer.invoice_settings ?? { custom_fields: null, default_payment_method: null, footer: null, rendering_options: null }), default_payment_method: pm === undefined ? customer.invoice_settings?.default_payment_method ?? null : (pm || null) };
      }
      return updateCustomer(emu, m[1], fields);
    },
  },
];
