// Charges (made by PaymentIntents), Refunds (partial or full, on a charge or a
// PaymentIntent: charge.refunded with the updated charge) and Disputes
// (opened by a test helper: charge.dispute.created).
import type { StripeEmulator } from './emulator';
import type { Route } from './routes';
import { en, int, invalid, listPage, meta, missing, params, queryParams, rid, str, obj } from './params';
import { accountTransaction } from './balance-transactions';
import { expandObject } from './expand';

type Obj = Record<string, any>;
const money = (amount: number, cur: string) => `${cur === 'jpy' ? '¥' : '$'}${cur === 'jpy' ? amount : (amount / 100).toFixed(2)}`;

export function createCharge(emu: StripeEmulator, pi: Obj, pm: Obj, status: 'succeeded' | 'pending' | 'failed', failure?: { code: string; message: string; declineCode?: string }): Obj {
  const id = rid('ch');
  const charge: Obj = {
    id, object: 'charge', amount: pi.amount, amount_captured: 0, amount_refunded: 0, application: null, application_fee: null, application_fee_amount: null,
    balance_transaction: null, billing_details: pm.billing_details, calculated_statement_descriptor: 'EMULATED STRIPE', captured: false, created: emu.tick(),
    currency: pi.currency, customer: pi.customer, description: pi.description, disputed: false, failure_balance_transaction: null, failure_code: null,
    failure_message: null, fraud_details: {}, livemode: false, metadata: { ...pi.metadata }, on_behalf_of: null, outcome: null, paid: false,
    payment_intent: pi.id, payment_method: pm.id,
    payment_method_details: pm.type === 'card'
      ? { card: { amount_authorized: pi.amount, brand: pm.card.brand, checks: pm.card.checks, country: 'US', exp_month: pm.card.exp_month, exp_year: pm.card.exp_year, fingerprint: pm.card.fingerprint, funding: pm.card.funding, last4: pm.card.last4, network: pm.card.brand, three_d_secure: null, wallet: null }, type: 'card' }
      : { us_bank_account: { account_holder_type: 'individual', account_type: 'checking', bank_name: 'STRIPE TEST BANK', fingerprint: pm.us_bank_account.fingerprint, last4: pm.us_bank_account.last4, routing_number: '110000000' }, type: 'us_bank_account' },
    receipt_email: pi.receipt_email, receipt_number: null, receipt_url: `${emu.url}/c/receipts/${id}`, refunded: false, review: null, shipping: null, source: null,
    source_transfer: null, statement_descriptor: null, statement_descriptor_suffix: pi.statement_descriptor_suffix, status: 'pending', transfer_data: null, transfer_group: null,
  };
  emu.charges.set(id, charge);
  if (status !== 'pending') finishCharge(emu, charge, status, failure);
  else charge.outcome = { network_status: 'approved_by_network', reason: null, risk_level: 'not_assessed', seller_message: 'Payment complete.', type: 'authorized' };
  return charge;
}

export function finishCharge(emu: StripeEmulator, charge: Obj, status: 'succeeded' | 'failed', failure?: { code: string; message: string; declineCode?: string }): void {
  charge.status = status;
  if (status === 'succeeded') {
    charge.paid = true;
    charge.captured = true;
    charge.amount_captured = charge.amount;
    charge.balance_transaction = accountTransaction(emu, charge.amount, charge.currency, 'charge', charge.id);
    charge.outcome = { advice_code: null, network_advice_code: null, network_decline_code: null, network_status: 'approved_by_network', reason: null, risk_level: 'normal', risk_score: 32, seller_message: 'Payment complete.', type: 'authorized' };
  } else {
    charge.failure_code = failure?.code ?? 'card_declined';
    charge.failure_message = failure?.message ?? 'Your card was declined.';
    charge.outcome = { advice_code: null, network_advice_code: null, network_decline_code: null, network_status: 'declined_by_network', reason: failure?.declineCode ?? 'generic_decline', risk_level: 'normal', risk_score: 32, seller_message: 'The bank did not return any further details with this decline.', type: 'issuer_declined' };
  }
}

function chargeOf(emu: StripeEmulator, chargeId: string | undefined, piId: string | undefined): Obj {
  if (chargeId) {
    const charge = emu.charges.get(chargeId);
    if (!charge) throw invalid(`No such charge: '${chargeId}'`, 'charge', 'resource_missing');
    if (piId && charge.payment_intent !== piId) throw invalid(`Charge ${chargeId} does not belong to PaymentIntent ${piId}.`, 'charge');
    return charge;
  }
  const pi = emu.paymentIntents.get(piId!);
  if (!pi) throw invalid(`No such payment_intent: '${piId}'`, 'payment_intent', 'resource_missing');
  const charge = pi.latest_charge ? emu.charges.get(pi.latest_charge) : undefined;
  if (!charge || charge.status !== 'succeeded') throw invalid(`This PaymentIntent (${piId}) does not have a successful charge to refund.`, 'payment_intent');
  return charge;
}

export function openDispute(emu: StripeEmulator, chargeOrPi: string, opts: { amount?: number; reason?: string }): Obj {
  const charge = chargeOrPi.startsWith('pi_') ? emu.charges.get(emu.paymentIntents.get(chargeOrPi)?.latest_charge) : emu.charges.get(chargeOrPi);
  if (!charge || charge.status !== 'succeeded') throw new Error(`no succeeded charge for ${chargeOrPi}`);
  if (charge.disputed) throw new Error(`charge ${charge.id} is already disputed`);
  const amount = opts.amount ?? charge.amount - charge.amount_refunded;
  const id = rid('dp');
  const withdrawal = accountTransaction(emu, -amount - 1500, charge.currency, 'adjustment', id);
  const dispute = {
    id, object: 'dispute', amount, balance_transactions: [emu.stripeBalanceTransactions.get(withdrawal)], charge: charge.id, created: emu.tick(), currency: charge.currency,
    enhanced_eligibility_types: [],
    evidence: { access_activity_log: null, billing_address: null, cancellation_policy: null, customer_communication: null, customer_email_address: null, customer_name: null, product_description: null, receipt: null, refund_policy: null, service_date: null, service_documentation: null, uncategorized_text: null },
    evidence_details: { due_by: emu.tick() + 7 * 86400, enhanced_eligibility: {}, has_evidence: false, past_due: false, submission_count: 0 },
    intended_submission_method: null, is_charge_refundable: false, livemode: false, metadata: {}, payment_intent: charge.payment_intent,
    payment_method_details: { card: { brand: charge.payment_method_details.card?.brand ?? 'visa', case_type: 'chargeback', network_reason_code: '10.4' }, type: 'card' },
    reason: opts.reason ?? 'fraudulent', status: 'needs_response',
  };
  emu.disputes.set(id, dispute);
  charge.disputed = true;
  emu.emit('charge.dispute.created', dispute);
  emu.emit('charge.dispute.funds_withdrawn', dispute);
  return dispute;
}

export function closeDispute(emu: StripeEmulator, id: string, status: 'won' | 'lost'): Obj {
  const dispute = emu.disputes.get(id);
  if (!dispute) throw new Error(`no dispute ${id}`);
  const previous = { status: dispute.status };
  dispute.status = status;
  if (status === 'won') {
    dispute.balance_transactions.push(emu.stripeBalanceTransactions.get(accountTransaction(emu, dispute.amount + 1500, dispute.currency, 'adjustment', id)));
    emu.emit('charge.dispute.funds_reinstated', dispute);
  }
  emu.emit('charge.dispute.closed', dispute, previous);
  return dispute;
}

export const chargeRoutes: Route[] = [
  {
    method: 'GET', path: /^\/v1\/charges\/([^/]+)$/, run(emu, m, _b, query) {
      const q = queryParams(query, {});
      const charge = emu.charges.get(m[1]);
      if (!charge) throw missing('charge', m[1], 'id');
      return expandObject(emu, charge, q.expand);
    },
  },
  {
    method: 'GET', path: /^\/v1\/charges$/, run(emu, _m, _b, query) {
      const q = queryParams(query, { customer: str(), payment_intent: str(), created: obj({ gt: int(), gte: int(), lt: int(), lte: int() }) });
      const all = [...emu.charges.values()].filter((c) => (!q.customer || c.customer === q.customer) && (!q.payment_intent || c.payment_intent === q.payment_intent)).reverse();
      return listPage(all, query, '/v1/charges', 'charge');
    },
  },
  {
    method: 'POST', path: /^\/v1\/refunds$/, run(emu, _m, body) {
      const p = params(body, { charge: str(), payment_intent: str(), amount: int(), reason: en('duplicate', 'fraudulent', 'requested_by_customer'), metadata: meta, instructions_email: str() });
      if (!p.charge && !p.payment_intent) throw invalid('One of the following params should be provided for this request: payment_intent or charge.', undefined, 'parameter_missing');
      const charge = chargeOf(emu, p.charge, p.payment_intent);
      if (charge.disputed) throw invalid(`Charge ${charge.id} has been charged back; cannot issue a refund.`, undefined, 'charge_disputed');
      if (charge.refunded) throw invalid(`Charge ${charge.id} has already been refunded.`, undefined, 'charge_already_refunded');
      const left = charge.amount - charge.amount_refunded;
      const amount = p.amount ?? left;
      if (amount <= 0) throw invalid('Invalid positive integer', 'amount', 'parameter_invalid_integer');
      if (amount > left) throw invalid(`Refund amount (${money(amount, charge.currency)}) is greater than unrefunded amount on charge (${money(left, charge.currency)})`, 'amount', 'amount_too_large');
      const id = rid('re');
      const refund = {
        id, object: 'refund', amount, balance_transaction: accountTransaction(emu, -amount, charge.currency, 'refund', id), charge: charge.id, created: emu.tick(),
        currency: charge.currency, destination_details: charge.payment_method_details.type === 'card' ? { card: { reference_status: 'pending', reference_type: 'acquirer_reference_number', type: 'refund' }, type: 'card' } : { type: charge.payment_method_details.type },
        metadata: p.metadata ?? {}, payment_intent: charge.payment_intent, reason: p.reason ?? null, receipt_number: null, source_transfer_reversal: null,
        status: 'succeeded', transfer_reversal: null,
      };
      emu.refunds.set(id, refund);
      const previous = { amount_refunded: charge.amount_refunded, ...(charge.amount_refunded + amount === charge.amount ? { refunded: false } : {}) };
      charge.amount_refunded += amount;
      charge.refunded = charge.amount_refunded === charge.amount;
      emu.emit('refund.created', refund);
      emu.emit('charge.refunded', charge, previous);
      return refund;
    },
  },
  {
    method: 'GET', path: /^\/v1\/refunds\/([^/]+)$/, run(emu, m) {
      const refund = emu.refunds.get(m[1]);
      if (!refund) throw missing('refund', m[1], 'id');
      return refund;
    },
  },
  {
    method: 'GET', path: /^\/v1\/refunds$/, run(emu, _m, _b, query) {
      const q = queryParams(query, { charge: str(), payment_intent: str() });
      const all = [...emu.refunds.values()].filter((r) => (!q.charge || r.charge === q.charge) && (!q.payment_intent || r.payment_intent === q.payment_intent)).reverse();
      return listPage(all, query, '/v1/refunds', 'refund');
    },
  },
  {
    method: 'GET', path: /^\/v1\/disputes\/([^/]+)$/, run(emu, m) {
      const dispute = emu.disputes.get(m[1]);
      if (!dispute) throw missing('dispute', m[1], 'dispute');
      return dispute;
    },
  },
  {
    method: 'GET', path: /^\/v1\/disputes$/, run(emu, _m, _b, query) {
      const q = queryParams(query, { charge: str(), payment_intent: str() });
      const all = [...emu.disputes.values()].filter((d) => (!q.charge || d.charge === q.charge) && (!q.payment_intent || d.payment_intent === q.payment_intent)).reverse();
      return listPage(all, query, '/v1/disputes', 'dispute');
    },
  },
];
