// Talks to /console/api with the session cookie; writes carry the CSRF token
// the service handed out at sign-in.

let csrf: string | undefined;

export class ApiError extends Error {
  constructor(readonly status: number, message: string) { super(message); }
}

async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { accept: 'application/json' };
  if (method !== 'GET') { headers['content-type'] = 'application/json'; if (csrf) headers['x-payg-csrf'] = csrf; }
  const res = await fetch(`/console/api/${path}`, { method, headers, credentials: 'same-origin', body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await res.json().catch(() => ({}));
  if (res.status === 401 && path !== 'session') { csrf = undefined; window.dispatchEvent(new Event('payg:signed-out')); }
  if (!res.ok) throw new ApiError(res.status, (data as { message?: string }).message ?? `HTTP ${res.status}`);
  return data as T;
}

export const api = {
  get: <T>(path: string) => call<T>('GET', path),
  put: <T>(path: string, body: unknown) => call<T>('PUT', path, body),
  post: <T>(path: string, body: unknown) => call<T>('POST', path, body),
  async resume(): Promise<boolean> {
    try { csrf = (await call<{ csrf: string }>('GET', 'session')).csrf; return true; } catch { return false; }
  },
  async signIn(token: string): Promise<void> {
    csrf = (await call<{ csrf: string }>('POST', 'session', { token })).csrf;
  },
  async signOut(): Promise<void> {
    await call('DELETE', 'session').catch(() => undefined);
    csrf = undefined;
  },
};

export function money(minor: number | null | undefined, currency: string | null = 'usd'): string {
  if (minor === null || minor === undefined) return '—';
  const code = (currency ?? 'usd').toUpperCase();
  let fmt: Intl.NumberFormat;
  try { fmt = new Intl.NumberFormat('en-US', { style: 'currency', currency: code }); } catch { fmt = new Intl.NumberFormat('en-US', { style: 'currency', currency: 'USD' }); }
  const digits = fmt.resolvedOptions().maximumFractionDigits ?? 2;
  return fmt.format(minor / 10 ** digits + 0); // + 0: never "-$0.00"
}

/**
 * Stripe balances are negative for credit and positive for what the customer
 * owes: operators read the credit left ("$5.00"), or "owes $2.50".
 */
export const credit = (balance: number, currency: string | null) => (balance > 0 ? `owes ${money(balance, currency)}` : money(-balance, currency));

/** A chart's credit axis (credit positive, debt negative). */
export const creditAxis = (v: number, currency: string | null) => (v < 0 ? `owes ${money(-v, currency)}` : money(v, currency));

export function ago(iso: string | null | undefined): string {
  if (!iso) return '—';
  const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}

export const when = (iso: string | null | undefined) => (iso ? new Date(iso).toLocaleString('en-GB', { dateStyle: 'medium', timeStyle: 'medium' }) : '—');
