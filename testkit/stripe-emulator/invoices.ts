// One-off invoices: Checkout with invoice_creation.enabled issues a paid
// invoice for the payment (invoice.created/finalized/paid/payment_succeeded).
import type { StripeEmulator } from './emulator';
import type { Route } from './routes';
import { listPage, missing, queryParams, rid, str } from './params';
import { expandObject } from './expand';

type Obj = Record<string, any>;

export function paidInvoice(emu: StripeEmulator, session: Obj, lineItems: Obj[], pi: Obj): Obj {
  const id = rid('in');
  const now = emu.tick();
  const customer = session.customer ? emu.customers.get(session.customer) : undefined;
  const data = session.invoice_creation?.invoice_data ?? {};
  const invoice: Obj = {
    id, object: 'invoice', account_country: 'US', account_name: 'Emulated Stripe account', account_tax_ids: null, amount_due: session.amount_total,
    amount_overpaid: 0, amount_paid: 0, amount_remaining: session.amount_total, amount_shipping: 0, application: null, attempt_count: 0, attempted: false,
    auto_advance: false, automatic_tax: { disabled_reason: null, enabled: session.automatic_tax.enabled, liability: session.automatic_tax.liability, provider: session.automatic_tax.enabled ? 'stripe' : null, status: session.automatic_tax.enabled ? 'complete' : null },
    automatically_finalizes_at: null, billing_reason: 'manual', collection_method: 'charge_automatically', created: now, currency: session.currency,
    custom_fields: null, customer: session.customer, customer_account: null, customer_address: null, customer_email: session.customer_details?.email ?? customer?.email ?? null,
    customer_name: session.customer_details?.name ?? customer?.name ?? null, customer_phone: null, customer_shipping: null, customer_tax_exempt: 'none', customer_tax_ids: [],
    default_payment_method: null, default_source: null, default_tax_rates: [], description: data.description ?? null, discounts: [], due_date: null,
    effective_at: now, ending_balance: 0, footer: data.footer ?? null, from_invoice: null, hosted_invoice_url: `${emu.url}/c/invoices/${id}`, invoice_pdf: `${emu.url}/c/invoices/${id}/pdf`,
    issuer: { type: 'self' }, last_finalization_error: null, latest_revision: null,
    lines: {
      object: 'list', has_more: false, url: `/v1/invoices/${id}/lines`,
      data: lineItems.map((li) => ({ id: rid('il'), object: 'line_item', amount: li.amount_total, currency: li.currency, description: li.description, discount_amounts: [], discountable: true, discounts: [], invoice: id, livemode: false, metadata: {}, parent: null, period: { end: now, start: now }, pretax_credit_amounts: [], pricing: { price_details: { price: li.price.id, product: li.price.product }, type: 'price_details', unit_amount_decimal: String(li.price.unit_amount) }, quantity: li.quantity, taxes: [] })),
    },
    livemode: false, metadata: data.metadata ?? {}, next_payment_attempt: null, number: `EMU-${String(emu.invoices.size + 1).padStart(4, '0')}`, on_behalf_of: null, parent: null,
    payment_settings: { default_mandate: null, payment_method_options: null, payment_method_types: null }, period_end: now, period_start: now,
    post_payment_credit_notes_amount: 0, pre_payment_credit_notes_amount: 0, receipt_number: null, rendering: null, shipping_cost: null, shipping_details: null,
    starting_balance: 0, statement_descriptor: null, status: 'draft', status_transitions: { finalized_at: null, marked_uncollectible_at: null, paid_at: null, voided_at: null },
    subtotal: session.amount_subtotal, subtotal_excluding_tax: session.amount_subtotal, test_clock: null, total: session.amount_total, total_discount_amounts: [],
    total_excluding_tax: session.amount_subtotal, total_pretax_credit_amounts: [], total_taxes: [], webhooks_delivered_at: now,
  };
  emu.invoices.set(id, invoice);
  invoicePayments.set(id, pi.id);
  emu.emit('invoice.created', invoice);
  invoice.status = 'open';
  invoice.status_transitions.finalized_at = now;
  emu.emit('invoice.finalized', invoice);
  invoice.status = 'paid';
  invoice.amount_paid = invoice.amount_due;
  invoice.amount_remaining = 0;
  invoice.attempted = true;
  invoice.status_transitions.paid_at = now;
  emu.emit('invoice.paid', invoice, { status: 'open', amount_paid: 0, amount_remaining: invoice.amount_due });
  emu.emit('invoice.payment_succeeded', invoice);
  return invoice;
}

/** Invoice id → the PaymentIntent that paid it (Stripe's invoice payments). */
const invoicePayments = new Map<string, string>();

export const invoiceRoutes: Route[] = [
  {
    method: 'GET', path: /^\/v1\/invoices\/([^/]+)$/, run(emu, m, _b, query) {
      const q = queryParams(query, {});
      const invoice = emu.invoices.get(m[1]);
      if (!invoice) throw missing('invoice', m[1], 'invoice');
      const pi = invoicePayments.get(invoice.id);
      return expandObject(emu, invoice, q.expand, {
        payments: () => ({ object: 'list', has_more: false, url: '/v1/invoice_payments', data: pi ? [{ id: `inpay_${invoice.id.slice(3)}`, object: 'invoice_payment', amount_paid: invoice.amount_paid, amount_requested: invoice.amount_due, created: invoice.created, currency: invoice.currency, invoice: invoice.id, is_default: true, livemode: false, payment: { payment_intent: pi, type: 'payment_intent' }, status: 'paid', status_transitions: { canceled_at: null, paid_at: invoice.status_transitions.paid_at } }] : [] }),
      });
    },
  },
  {
    method: 'GET', path: /^\/v1\/invoices$/, run(emu, _m, _b, query) {
      const q = queryParams(query, { customer: str(), status: str() });
      const all = [...emu.invoices.values()].filter((i) => (!q.customer || i.customer === q.customer) && (!q.status || i.status === q.status)).reverse();
      return listPage(all, query, '/v1/invoices', 'invoice');
    },
  },
];
