// Signed top-up links: /top-up/<token>, where the token names one customer and
// an expiry, signed with HMAC-SHA256 under PAYG_TOP_UP_SECRET. Nothing in it is
// guessable (the MAC is 256 bits) and it cannot be re-pointed at another
// customer (the id is inside what is signed). Pure: the time is passed in.

import { createHmac, timingSafeEqual } from 'node:crypto';

/** What a token is about to the page; every other outcome is a refusal. */
export type TokenCheck =
  | { kind: 'valid'; customerId: string; expiresAt: number }
  | { kind: 'malformed' }
  | { kind: 'bad_signature' }
  | { kind: 'expired'; expiresAt: number };

const VERSION = 'v1';
/** Longest token accepted (Stripe customer ids are well under 100 characters). */
export const MAX_TOKEN_LENGTH = 400;

const b64 = (s: string | Buffer) => Buffer.from(s).toString('base64url');

function mac(secret: string, customerId: string, expiresAtSeconds: number): Buffer {
  // Domain-separated: a MAC made for anything else under the same secret is no token.
  return createHmac('sha256', secret).update(`payg-top-up|${VERSION}|${customerId}|${expiresAtSeconds}`).digest();
}

/** A token for `customerId`, valid until `expiresAt` (ms; kept to the second). */
export function signToken(secret: string, customerId: string, expiresAt: number): string {
  const seconds = Math.ceil(expiresAt / 1000);
  return `${VERSION}.${b64(customerId)}.${seconds.toString(36)}.${b64(mac(secret, customerId, seconds))}`;
}

/** Checks a token at `now` (ms): the signature first, so an unsigned token says nothing about expiry. */
export function verifyToken(secret: string, token: string, now: number): TokenCheck {
  if (token.length > MAX_TOKEN_LENGTH) return { kind: 'malformed' };
  const parts = token.split('.');
  if (parts.length !== 4 || parts[0] !== VERSION) return { kind: 'malformed' };
  const [, idPart, expPart, macPart] = parts;
  if (!/^[A-Za-z0-9_-]+$/.test(idPart) || !/^[0-9a-z]{1,11}$/.test(expPart) || !/^[A-Za-z0-9_-]{43}$/.test(macPart)) return { kind: 'malformed' };
  const customerId = Buffer.from(idPart, 'base64url').toString('utf8');
  // base64url decoding is lenient: only the canonical spelling of the id is the id that was signed.
  if (!customerId || b64(customerId) !== idPart || !/^[\x21-\x7e]+$/.test(customerId)) return { kind: 'malformed' };
  const seconds = parseInt(expPart, 36);
  if (!Number.isSafeInteger(seconds) || seconds.toString(36) !== expPart) return { kind: 'malformed' };
  const given = Buffer.from(macPart, 'base64url');
  // The last character of 43 carries 2 unused bits: only the canonical spelling is the MAC, so a token has one spelling.
  if (b64(given) !== macPart) return { kind: 'malformed' };
  const want = mac(secret, customerId, seconds);
  if (given.length !== want.length || !timingSafeEqual(given, want)) return { kind: 'bad_signature' };
  const expiresAt = seconds * 1000;
  if (now >= expiresAt) return { kind: 'expired', expiresAt };
  return { kind: 'valid', customerId, expiresAt };
}
