// Whether a customer's email field is exactly one deliverable address. Stripe
// stores free text there; nodemailer would read "a@x.com, b@y.com" (or a
// display name with a list in it) as several recipients and send to each.

/** One addr-spec: local@domain, no spaces, separators, quotes, brackets or control characters. */
const SINGLE_ADDRESS = /^[^\s@,;:<>()[\]"\\\x00-\x1f\x7f]+@[^\s@,;:<>()[\]"\\\x00-\x1f\x7f]+\.[^\s@,;:<>()[\]"\\\x00-\x1f\x7f.]+$/;

/** Why this text is not exactly one email address, or undefined when it is. */
export function notOneAddress(text: string): string | undefined {
  if (text.length > 254) return 'customer email is longer than 254 characters';
  if (!SINGLE_ADDRESS.test(text)) return 'customer email is not exactly one valid address';
  return undefined;
}
