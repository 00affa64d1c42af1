// The plugin's HTTP edge: GET a decision and POST usage over keep-alive
// connections, with a hard timeout. Outcomes are values, never exceptions.

import type { SendOutcome } from './usage-queue';
import http from 'node:http';
import https from 'node:https';
import { Decision, parseDecision } from './decision';
import { parseLeaseAnswer, type LeaseGrant } from './lease';

export type FailureReason = 'TIMEOUT' | 'CONNECTION' | 'HTTP_STATUS' | 'BAD_JSON' | 'BAD_SHAPE';
export type FetchOutcome =
  | { kind: 'DECISION'; decision: Decision }
  | { kind: 'UNAVAILABLE'; reason: FailureReason; detail: string };

/** A decision is a few hundred bytes; anything far larger is not one. */
const MAX_RESPONSE_BYTES = 256 * 1024;

interface RawResponse { status: number; body: string }
type RawOutcome = { ok: true; res: RawResponse } | { ok: false; reason: FailureReason; detail: string };

export type LeaseOutcome =
  | { kind: 'DECISION'; decision: Decision; lease: LeaseGrant | undefined }
  | { kind: 'UNAVAILABLE'; reason: FailureReason; detail: string };

/** A lease given back: requests drawn, and the credit they reserved (micros) when the lease was an amount. */
export interface LeaseReturn { id: string; drawn: number; drawn_micros?: number }

export interface ControlClientOptions {
  baseUrl: URL;
  /** More replicas of the control service: tried in order when the one in use fails. */
  fallbackUrls?: URL[];
  token: string | undefined;
  timeoutMs: number;
  defaultTtlMs: number;
}

/** The events of a taken batch the service refused (by index), or undefined when it took them all. */
function refusedEvents(body: string): SendOutcome {
  let refused: unknown;
  try { refused = (JSON.parse(body) as { refused?: unknown })?.refused; } catch { return undefined; }
  if (!Array.isArray(refused) || refused.length === 0) return undefined;
  const events = refused.filter((r): r is { index: number; error: string } =>
    typeof r === 'object' && r !== null && Number.isInteger((r as { index?: unknown }).index) && typeof (r as { error?: unknown }).error === 'string');
  return events.length ? { refusedEvents: events } : undefined;
}

/** A call that failed on a reused keep-alive socket before any byte of an answer. */
const STALE_SOCKET = Symbol('stale socket');

interface Target { url: URL; transport: typeof http | typeof https; agent: http.Agent; basePath: string }

export class ControlClient {
  private readonly targets: Target[];
  /** The replica in use; it stays until it fails (refused, 5xx, timeout), then the next one serves. */
  private current = 0;
  private readonly headers: Record<string, string>;

  constructor(private readonly opts: ControlClientOptions) {
    this.targets = [opts.baseUrl, ...(opts.fallbackUrls ?? [])].map((url) => {
      const transport = url.protocol === 'https:' ? https : http;
      return { url, transport, agent: new transport.Agent({ keepAlive: true, maxSockets: 128, scheduling: 'lifo' }), basePath: url.pathname.replace(/\/+$/, '') };
    });
    this.headers = { accept: 'application/json' };
    if (opts.token) this.headers.authorization = `Bearer ${opts.token}`;
  }

  async fetchDecision(consumer: string): Promise<FetchOutcome> {
    // encodeURIComponent escapes / ? % # and non-ASCII, so a consumer id can never change the path.
    const raw = await this.request('GET', `/v1/decisions/${encodeURIComponent(consumer)}`);
    if (!raw.ok) return { kind: 'UNAVAILABLE', reason: raw.reason, detail: raw.detail };
    if (raw.res.status !== 200) {
      return { kind: 'UNAVAILABLE', reason: 'HTTP_STATUS', detail: `control service answered ${raw.res.status}` };
    }
    let json: unknown;
    try {
      json = JSON.parse(raw.res.body);
    } catch {
      return { kind: 'UNAVAILABLE', reason: 'BAD_JSON', detail: 'decision is not valid JSON' };
    }
    const decision = parseDecision(json, this.opts.defaultTtlMs);
    if ('invalid' in decision) return { kind: 'UNAVAILABLE', reason: 'BAD_SHAPE', detail: decision.invalid };
    return { kind: 'DECISION', decision };
  }

  /** POSTs a usage batch; resolves to an error text when it must be retried. */
  /** 400, 413 and 422 say the batch itself is wrong: it is refused, not retried. */
  async postUsage(events: unknown[], timeoutMs: number): Promise<SendOutcome> {
    const raw = await this.request('POST', '/v1/usage', JSON.stringify({ events }), timeoutMs);
    if (!raw.ok) return { retry: `${raw.reason}: ${raw.detail}` };
    const status = raw.res.status;
    if (status >= 200 && status < 300) return refusedEvents(raw.res.body);
    const detail = `control service answered ${status}${raw.res.body ? `: ${raw.res.body.slice(0, 200)}` : ''}`;
    return status === 400 || status === 413 || status === 422 ? { refused: detail } : { retry: detail };
  }

  /** POST /v1/leases: the decision for a consumer, with the lease it may draw on when it allows. */
  async fetchLease(body: { node: string; consumer: string; want: number; reserve?: number; previous?: LeaseReturn }, timeoutMs = this.opts.timeoutMs): Promise<LeaseOutcome> {
    const raw = await this.request('POST', '/v1/leases', JSON.stringify(body), timeoutMs);
    if (!raw.ok) return { kind: 'UNAVAILABLE', reason: raw.reason, detail: raw.detail };
    if (raw.res.status !== 200) return { kind: 'UNAVAILABLE', reason: 'HTTP_STATUS', detail: `control service answered ${raw.res.status}` };
    let json: unknown;
    try { json = JSON.parse(raw.res.body); } catch { return { kind: 'UNAVAILABLE', reason: 'BAD_JSON', detail: 'decision is not valid JSON' }; }
    const answer = parseLeaseAnswer(json, this.opts.defaultTtlMs);
    if ('invalid' in answer) return { kind: 'UNAVAILABLE', reason: 'BAD_SHAPE', detail: answer.invalid };
    return { kind: 'DECISION', ...answer };
  }

  /**
   * POST /v1/leases/release: gives leases back. True when the service took them; false when it
   * did not (no answer, 5xx, 408, 429: send them again); 'REFUSED' when it says the call is wrong.
   */
  async releaseLeases(node: string, leases: LeaseReturn[], timeoutMs = this.opts.timeoutMs): Promise<boolean | 'REFUSED'> {
    const raw = await this.request('POST', '/v1/leases/release', JSON.stringify({ node, leases }), timeoutMs);
    if (!raw.ok) return false;
    const status = raw.res.status;
    if (status >= 200 && status < 300) return true;
    return status >= 500 || status === 408 || status === 429 ? false : 'REFUSED';
  }

  close(): void {
    for (const t of this.targets) t.agent.destroy();
  }

  /**
   * Sends to the replica in use. A refused connection or a 5xx moves on to the
   * next replica at once, in the same call; a timeout moves on for the next
   * call (this one's time is spent).
   */
  private async request(method: string, path: string, body?: string, timeoutMs = this.opts.timeoutMs): Promise<RawOutcome> {
    let outcome: RawOutcome | undefined;
    for (let tries = 0; tries < this.targets.length; tries++) {
      const index = this.current;
      outcome = await this.requestTo(this.targets[index], method, path, body, timeoutMs);
      const failed = outcome.ok ? outcome.res.status >= 500 : outcome.reason === 'CONNECTION' || outcome.reason === 'TIMEOUT';
      if (!failed || this.targets.length === 1) return outcome;
      if (this.current === index) this.current = (index + 1) % this.targets.length;
      if (!outcome.ok && outcome.reason === 'TIMEOUT') return outcome;
    }
    return outcome!;
  }

  /**
   * One call to one replica. A keep-alive socket the service closed or no longer knows (it
   * restarted, or timed the socket out as the call went out) fails before any byte of an
   * answer: the call is sent once more on a fresh connection, within the same time limit.
   * Every call here is safe to send twice: a decision is a read; usage events and lease
   * returns are counted once by the service however often they arrive; and a lease asked on a
   * connection that answered nothing was at worst granted and never seen: that lease holds its
   * credit until it is over, as it would if the call simply failed, and the service counts it
   * (so never any overspend), while the request is served instead of failing.
   */
  private async requestTo(target: Target, method: string, path: string, body: string | undefined, timeoutMs: number): Promise<RawOutcome> {
    const started = Date.now();
    const first = await this.attempt(target, method, path, body, timeoutMs, target.agent);
    if (first !== STALE_SOCKET) return first.outcome;
    // The other idle sockets of this replica likely predate the same restart: close them too.
    for (const list of Object.values(target.agent.freeSockets)) for (const socket of list ?? []) socket.destroy();
    const left = timeoutMs - (Date.now() - started);
    if (left <= 0) return { ok: false, reason: 'TIMEOUT', detail: `no answer within ${timeoutMs} ms` };
    const second = await this.attempt(target, method, path, body, left, false);
    return second === STALE_SOCKET ? { ok: false, reason: 'CONNECTION', detail: 'connection reset' } : second.outcome;
  }

  private attempt(target: Target, method: string, path: string, body: string | undefined, timeoutMs: number, agent: http.Agent | false): Promise<{ outcome: RawOutcome } | typeof STALE_SOCKET> {
    return new Promise((resolve) => {
      let settled = false;
      let answered = false;
      const finish = (outcome: RawOutcome | typeof STALE_SOCKET) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve(outcome === STALE_SOCKET ? outcome : { outcome });
      };
      const headers = body === undefined
        ? this.headers
        : { ...this.headers, 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) };
      const req = target.transport.request({
        protocol: target.url.protocol,
        hostname: target.url.hostname,
        port: target.url.port || undefined,
        method,
        path: `${target.basePath}${path}`,
        headers,
        agent,
      }, (res) => {
        answered = true;
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (chunk: Buffer) => {
          size += chunk.length;
          if (size > MAX_RESPONSE_BYTES) {
            req.destroy();
            finish({ ok: false, reason: 'BAD_SHAPE', detail: 'response too large' });
            return;
          }
          chunks.push(chunk);
        });
        res.on('end', () => finish({ ok: true, res: { status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') } }));
        res.on('error', (err) => finish({ ok: false, reason: 'CONNECTION', detail: err.message }));
      });
      const timer = setTimeout(() => {
        finish({ ok: false, reason: 'TIMEOUT', detail: `no answer within ${timeoutMs} ms` });
        req.destroy();
      }, timeoutMs);
      req.on('error', (err: NodeJS.ErrnoException) => {
        const stale = !answered && agent !== false && req.reusedSocket && (err.code === 'ECONNRESET' || err.code === 'EPIPE');
        finish(stale ? STALE_SOCKET : { ok: false, reason: 'CONNECTION', detail: err.message });
      });
      req.end(body);
    });
  }
}
