// Console sign-in: the admin token is exchanged once for a random session id
// kept in an HttpOnly, SameSite=Strict cookie, so the token never lives in the
// browser. Sessions are held in memory (a restart signs everyone out). Every
// write must also carry the session's CSRF token in a header, which a
// cross-site form or image cannot set.

import { randomBytes, timingSafeEqual } from 'node:crypto';

export const SESSION_COOKIE = 'payg_console';
export const CSRF_HEADER = 'x-payg-csrf';

export interface Session { id: string; csrf: string; expiresAt: number }

function sameSecret(given: string, want: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(want);
  return a.length === b.length && timingSafeEqual(a, b);
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

  cookieFor(session: Session): string {
    return `${SESSION_COOKIE}=${session.id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age=${Math.floor(this.ttlMs / 1000)}`;
  }

  static clearedCookie(): string {
    return `${SESSION_COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0`;
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
