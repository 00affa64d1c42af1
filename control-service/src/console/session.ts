// Console sign-in: the admin token is exchanged once for a random session id
// kept in an HttpOnly, SameSite=Strict cookie, so the token never lives in the
// browser. Sessions are held in memory (a restart signs everyone out). Every
// write must also carry the session's CSRF token in a header, which a
// cross-site form or image cannot set.

import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';

export const SESSION_COOKIE = 'payg_console';
export const CSRF_HEADER = 'x-payg-csrf';

export interface Session { id: string; csrf: string; expiresAt: number }

/** Compared as SHA-256 digests, so neither the content nor the length of the token leaks through timing. */
function sameSecret(given: string, want: string): boolean {
  return timingSafeEqual(createHash('sha256').update(given).digest(), createHash('sha256').update(want).digest());
}

/**
 * Sign-in attempts per client address: past `failures` wrong tokens within
 * `windowMs`, every attempt from that address (even with the right token) is
 * refused until the window ends, so the token cannot be guessed at speed.
 * At most `maxAddresses` addresses are tracked (the oldest is forgotten).
 */
export class SignInLimiter {
  private readonly failures = new Map<string, { count: number; since: number }>();

  constructor(private readonly opts: { failures: number; windowMs: number; maxAddresses?: number }, private readonly now: () => number = Date.now) {}

  /** Seconds to wait before trying again, or 0 when this address may try now. */
  retryAfter(address: string): number {
    const f = this.failures.get(address);
    if (!f) return 0;
    const left = f.since + this.opts.windowMs - this.now();
    if (left <= 0) { this.failures.delete(address); return 0; }
    return f.count >= this.opts.failures ? Math.ceil(left / 1000) : 0;
  }

  failed(address: string): void {
    const f = this.failures.get(address);
    if (f && f.since + this.opts.windowMs > this.now()) { f.count++; return; }
    this.failures.delete(address);
    if (this.failures.size >= (this.opts.maxAddresses ?? 10_000)) this.failures.delete(this.failures.keys().next().value as string);
    this.failures.set(address, { count: 1, since: this.now() });
  }

  succeeded(address: string): void { this.failures.delete(address); }
}

export class SessionStore {
  private readonly sessions = new Map<string, Session>();

  constructor(private readonly adminToken: string | undefined, private readonly ttlMs: number, private readonly now: () => number = Date.now) {}

  /** A new session when the token is the admin token; undefined otherwise (or when no admin token is set). */
  signIn(token: unknown): Session | undefined {
    if (!this.adminToken || typeof token !== 'string' || !sameSecret(token, this.adminToken)) return undefined;
    this.sweep();
    const session = { id: randomBytes(32).toString('base64url'), csrf: randomBytes(24).toString('base64url'), expiresAt: this.now() + this.ttlMs };
    this.sessions.set(session.id, session);
    return session;
  }

  /** The live session named by the request's cookie header. */
  fromCookie(cookieHeader: string | undefined): Session | undefined {
    const id = readCookie(cookieHeader, SESSION_COOKIE);
    const session = id ? this.sessions.get(id) : undefined;
    if (!session) return undefined;
    if (session.expiresAt <= this.now()) { this.sessions.delete(session.id); return undefined; }
    return session;
  }

  /** True when the header carries this session's CSRF token. */
  csrfMatches(session: Session, header: string | string[] | undefined): boolean {
    return typeof header === 'string' && sameSecret(header, session.csrf);
  }

  signOut(session: Session): void { this.sessions.delete(session.id); }

  /** `secure` when the console is reached over HTTPS (directly or through a proxy that says so): the cookie then never travels in clear. */
  cookieFor(session: Session, secure: boolean): string {
    return `${SESSION_COOKIE}=${session.id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age=${Math.floor(this.ttlMs / 1000)}${secure ? '; Secure' : ''}`;
  }

  static clearedCookie(secure: boolean): string {
    return `${SESSION_COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0${secure ? '; Secure' : ''}`;
  }

  private sweep(): void {
    const now = this.now();
    for (const [id, s] of this.sessions) if (s.expiresAt <= now) this.sessions.delete(id);
  }
}

export function readCookie(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}
