// The official stripe SDK pointed at an emulator, and the error a call fails with.
import Stripe from 'stripe';
import type { StripeEmulator } from '../../testkit/stripe-emulator';

export function sdkFor(emu: StripeEmulator): Stripe {
  return new Stripe(emu.secretKey, { host: '127.0.0.1', port: Number(new URL(emu.url).port), protocol: 'http', maxNetworkRetries: 0 });
}

/** The StripeInvalidRequestError / StripeCardError / … a call fails with. */
export async function stripeError(p: Promise<unknown>): Promise<any> {
  try { await p; } catch (e) { return e; }
  throw new Error('expected the call to fail');
}
