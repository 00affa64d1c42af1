// One API endpoint: method, path pattern, and what it does (returns the object
// Stripe answers with, or throws a StripeApiError).
import type { StripeEmulator } from './emulator';

export interface Route {
  method: 'GET' | 'POST' | 'DELETE';
  path: RegExp;
  run(emu: StripeEmulator, m: RegExpExecArray, body: Record<string, any>, query: URLSearchParams): unknown;
  /** True when this request confirms a payment (held back by `paymentDelayMs`). */
  confirms?(body: Record<string, any>): boolean;
}
