// Customer balance transactions (the only thing that moves a customer's
// Stripe balance here: Checkout payments do not), Stripe balance transactions
// (txn_…, what a charge or refund adds to the account's balance), and billing
// meter events.
import type { Route } from './routes';
import { invalid, missing, rid } from './params';
import { customerOr404, addBalanceTransaction } from './customers';
import type { StripeEmulator } from './emulator';

/** @internal the account-side balance transaction of a charge (+) or refund (−). */
export function accountTransaction(emu: StripeEmulator, amount: number, currency: string, type: 'charge' | 'refund' | 'adjustment', source: string): string {
  const fee = type === 'charge' ? Math.round(amount * 0.029) + 30 : 0;
  const txn = {
    id: rid('txn'), object: 'balance_transaction', amount, available_on: emu.tick() + 2 * 86400, balance_type: 'payments', created: emu.tick(),
    currency, description: null, exchange_rate: null, fee, fee_details: fee ? [{ amount: fee, application: null, currency, description: 'Stripe processing fees', type: 'stripe_fee' }] : [],
    net: amount - fee, reporting_category: type, source, status: 'pending', type,
  };
  emu.stripeBalanceTransactions.set(txn.id, txn);
  return txn.id;
}

export const balanceTransactionRoutes: Route[] = [
  {
    method: 'GET', path: /^\/v1\/customers\/([^/]+)\/balance_transactions$/, run(emu, m, _b, query) {
      customerOr404(emu, m[1]);
      const limitText = query.get('limit');
      const limit = limitText === null ? 10 : Number(limitText);
      if (!Number.isInteger(limit) || limit < 1 || limit > 100) throw invalid('Invalid integer: limit must be between 1 and 100', 'limit');
      const all = [...(emu.balanceHistory.get(m[1]) ?? [])].reverse(); // newest first
      const after = query.get('starting_after');
      let start = 0;
      if (after) {
        const idx = all.findIndex((t) => t.id === after);
        if (idx < 0) throw invalid(`No such customer balance transaction: '${after}'`, 'starting_after', 'resource_missing');
        start = idx + 1;
      }
      return { object: 'list', url: `/v1/customers/${m[1]}/balance_transactions`, has_more: start + limit < all.length, data: all.slice(start, start + limit) };
    },
  },
  {
    method: 'POST', path: /^\/v1\/customers\/([^/]+)\/balance_transactions$/, run(emu, m, body) {
      customerOr404(emu, m[1]);
      const amount = Number(body.amount);
      if (body.amount === undefined) throw invalid('Missing required param: amount.', 'amount', 'parameter_missing');
      if (!/^-?\d+$/.test(String(body.amount)) || !Number.isInteger(amount)) throw invalid(`Invalid integer: ${body.amount}`, 'amount', 'parameter_invalid_integer');
      if (!body.currency) throw invalid('Missing required param: currency.', 'currency', 'parameter_missing');
      return addBalanceTransaction(emu, m[1], amount, body.currency, body.description, body.metadata);
    },
  },
  {
    method: 'GET', path: /^\/v1\/balance_transactions\/([^/]+)$/, run(emu, m) {
      const txn = emu.stripeBalanceTransactions.get(m[1]);
      if (!txn) throw missing('balance transaction', m[1], 'id');
      return txn;
    },
  },
  {
    method: 'POST', path: /^\/v1\/billing\/meter_events$/, run(emu, _m, body) {
      if (!body.event_name) throw invalid('Missing required param: event_name.', 'event_name');
      const payload = body.payload ?? {};
      if (!payload.stripe_customer_id || !emu.customers.has(payload.stripe_customer_id)) {
        throw invalid(`No such customer: '${payload.stripe_customer_id}'`, 'payload[stripe_customer_id]');
      }
      if (!/^\d+(\.\d+)?$/.test(payload.value ?? '')) throw invalid('Invalid payload[value]: must be a number.', 'payload[value]');
      const identifier = body.identifier ?? rid('mev');
      if (emu.meterEvents.some((e) => e.identifier === identifier)) {
        throw invalid(`An event already exists with identifier ${identifier}.`, 'identifier', 'meter_event_identifier_already_exists');
      }
      const event = { object: 'billing.meter_event', created: emu.tick(), event_name: body.event_name, identifier, livemode: false, payload, timestamp: Number(body.timestamp ?? emu.tick()) };
      emu.meterEvents.push(event);
      return event;
    },
  },
];
