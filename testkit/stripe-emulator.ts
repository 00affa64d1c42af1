// The Stripe emulator: its modules live in testkit/stripe-emulator/ (see
// docs/stripe-emulator.md); this file keeps the import path every spec, the
// demo and the benches use.
export { StripeEmulator } from './stripe-emulator/emulator';
export type { EmuCustomer, EmuEvent, WebhookEndpoint, RedeliverOptions, CheckoutOutcome } from './stripe-emulator/emulator';
export { TEST_PAYMENT_METHODS } from './stripe-emulator/payment-methods';
