// Small HTTP helpers shared by the control service's routes.
import http from 'node:http';
import { timingSafeEqual } from 'node:crypto';

export const MAX_BODY_BYTES = 1024 * 1024;

export function tokenMatches(header: string | undefined, token: string): boolean {
  if (!header?.startsWith('Bearer ')) return false;
  const given = Buffer.from(header.slice(7));
  const want = Buffer.from(token);
  return given.length === want.length && timingSafeEqual(given, want);
}

export function send(res: http.ServerResponse, status: number, body: unknown, extraHeaders: Record<string, string> = {}): void {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...extraHeaders });
  res.end(text);
}

/**
 * A shared allowance of bytes that requests nobody has authenticated may hold
 * in memory at once. Past it, they are refused at once rather than buffered.
 */
export class ByteBudget {
  private used = 0;
  constructor(readonly limit: number) {}
  get inUse(): number { return this.used; }
  take(n: number): boolean {
    if (this.used + n > this.limit) return false;
    this.used += n;
    return true;
  }
  give(n: number): void { this.used -= n; }
}

export type BodyRefusal = 'too_large' | 'busy' | 'timeout';
export interface ReadBodyOptions {
  /** Bytes at most; a larger declared Content-Length is refused before any byte is read. */
  limit?: number;
  /** Shared with other unauthenticated requests; released when the body is done. */
  budget?: ByteBudget;
  /** The whole body must arrive within this many ms. */
  timeoutMs?: number;
}

/**
 * The request body, or why it was refused. Never buffers more than `limit`:
 * a refused request's remaining bytes are not read, and its connection is
 * closed once the answer is sent (see `refuseBody`).
 */
export function readBody(req: http.IncomingMessage, opts: ReadBodyOptions | number = {}): Promise<Buffer | BodyRefusal> {
  const { limit = MAX_BODY_BYTES, budget, timeoutMs } = typeof opts === 'number' ? { limit: opts } : opts;
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > limit) return Promise.resolve('too_large');
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const finish = (outcome: Buffer | BodyRefusal | Error) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      budget?.give(size);
      req.off('data', onData);
      if (outcome instanceof Error) reject(outcome);
      else {
        if (!Buffer.isBuffer(outcome)) req.pause();
        resolve(outcome);
      }
    };
    const onData = (c: Buffer) => {
      if (size + c.length > limit) return finish('too_large');
      if (budget && !budget.take(c.length)) return finish('busy');
      size += c.length;
      chunks.push(c);
    };
    const timer = timeoutMs === undefined ? undefined : setTimeout(() => finish('timeout'), timeoutMs);
    req.on('data', onData);
    req.on('end', () => finish(Buffer.concat(chunks)));
    req.on('error', (err) => finish(err));
  });
}

/** Answers a refused body and closes the connection: its unread bytes are never read. */
export function refuseBody(res: http.ServerResponse, refusal: BodyRefusal, limit: number): void {
  const close = { connection: 'close' };
  if (refusal === 'too_large') return send(res, 413, { error: 'too_large', message: `body over ${limit} bytes` }, close);
  if (refusal === 'busy') return send(res, 503, { error: 'busy', message: 'too many requests in progress; retry shortly' }, { ...close, 'retry-after': '1' });
  return send(res, 408, { error: 'timeout', message: 'the body did not arrive in time' }, close);
}

/** The body as a JSON object, or undefined (not JSON, not an object, too large). */
export async function jsonBody(req: http.IncomingMessage): Promise<Record<string, unknown> | undefined> {
  const body = await readBody(req);
  if (!Buffer.isBuffer(body)) return undefined;
  try {
    const v = JSON.parse(body.toString());
    return typeof v === 'object' && v !== null && !Array.isArray(v) ? v : undefined;
  } catch { return undefined; }
}
