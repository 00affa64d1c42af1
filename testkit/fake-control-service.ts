// Plays the control service for plugin tests: answers decisions as each test
// scripts them and records every call, so a test can count network calls.

import http from 'node:http';
import type net from 'node:net';
import { LoopbackServer } from './loopback-server';

export interface ScriptedAnswer { status?: number; body: string; delayMs?: number; headers?: Record<string, string> }

export class FakeControlService extends LoopbackServer {
  /** One per decision asked (POST /v1/leases), named by the consumer's path `/v1/decisions/{consumer}`. */
  readonly decisionPaths: string[] = [];
  /** Bodies of POST /v1/leases and POST /v1/leases/release, in order. */
  readonly leaseRequests: Array<Record<string, any>> = [];
  readonly releases: Array<Record<string, any>> = [];
  private readonly streams = new Set<http.ServerResponse>();
  private readonly streamNodes = new Map<http.ServerResponse, string>();
  /** Every GET /v1/stream, in order: the node id each named. */
  readonly streamConnects: string[] = [];

  /** Pushes a server-sent event to every connected plugin server. */
  push(event: string, data: unknown): void {
    for (const res of this.streams) res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
  }

  streamCount(): number { return this.streams.size; }
  readonly usageBatches: Array<Array<Record<string, unknown>>> = [];
  readonly authorizations: Array<string | undefined> = [];
  /** Answer for a decision request; by default everyone is allowed. */
  decide: (consumer: string) => ScriptedAnswer = () => ({ body: JSON.stringify({ allow: true, ttl_ms: 5000 }) });
  /** Status for a usage batch. */
  usageStatus: () => number = () => 202;
  /** Body of a usage answer, e.g. one that refuses some events by index. */
  usageBody: (events: Array<Record<string, unknown>>) => string = () => '{}';
  /** Status for a lease release; only those answered 200 are recorded in `releases`. */
  releaseStatus: () => number = () => 200;
  /** Every POST /v1/leases/release body, taken or not. */
  readonly releaseAttempts: Array<Record<string, any>> = [];
  /** Calls that arrived on a connection of a "previous run" and were cut without an answer. */
  staleCalls = 0;
  private readonly sockets = new Set<net.Socket>();
  private readonly forgotten = new Map<net.Socket, 'reset' | 'close'>();
  private port = 0;

  constructor() {
    super();
    this.server.on('connection', (socket: net.Socket) => {
      this.sockets.add(socket);
      socket.on('close', () => { this.sockets.delete(socket); this.forgotten.delete(socket); });
    });
  }

  override async start(): Promise<this> {
    if (this.port === 0) {
      await super.start();
      this.port = Number(new URL(this.url).port);
    } else {
      await new Promise<void>((resolve, reject) => {
        this.server.once('error', reject);
        this.server.listen(this.port, '127.0.0.1', () => { this.server.off('error', reject); resolve(); });
      });
    }
    return this;
  }

  /**
   * As if the service restarted behind connections its clients still hold open: a call on any
   * connection open now is cut without an answer, by a reset (a host that no longer knows the
   * connection answers RST) or by a close (a server that closed an idle socket as the call came).
   */
  forgetConnections(how: 'reset' | 'close' = 'reset'): void {
    for (const socket of this.sockets) this.forgotten.set(socket, how);
  }


  protected handle(req: http.IncomingMessage, res: http.ServerResponse) {
    const forgotten = this.forgotten.get(req.socket);
    if (forgotten) {
      this.staleCalls++;
      if (forgotten === 'reset') req.socket.resetAndDestroy(); else req.socket.destroy();
      return;
    }
    this.authorizations.push(req.headers.authorization);
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const url = req.url ?? '';
      if (req.method === 'POST' && url === '/v1/leases') {
        const body = JSON.parse(Buffer.concat(chunks).toString()) as Record<string, any>;
        this.leaseRequests.push(body);
        const consumer = String(body.consumer);
        this.decisionPaths.push(`/v1/decisions/${encodeURIComponent(consumer)}`);
        const answer = this.decide(consumer);
        const send = () => {
          if (res.destroyed) return;
          res.writeHead(answer.status ?? 200, { 'content-type': 'application/json', ...answer.headers });
          res.end(answer.body);
        };
        if (answer.delayMs) setTimeout(send, answer.delayMs); else send();
        return;
      }
      if (req.method === 'POST' && url === '/v1/leases/release') {
        const body = JSON.parse(Buffer.concat(chunks).toString()) as Record<string, any>;
        this.releaseAttempts.push(body);
        const status = this.releaseStatus();
        if (status === 200) this.releases.push(body);
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(status === 200 ? `{"released":${Array.isArray(body.leases) ? body.leases.length : 0}}` : '{"error":"unavailable"}');
        return;
      }
      if (req.method === 'GET' && url.startsWith('/v1/stream')) {
        // As the real service does: a node's new stream replaces its old one.
        const node = new URL(url, 'http://x').searchParams.get('node') ?? '';
        this.streamConnects.push(node);
        for (const [old, n] of this.streamNodes) if (n === node) { this.streams.delete(old); this.streamNodes.delete(old); old.destroy(); }
        this.streamNodes.set(res, node);
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write('event: hello\ndata: {}\n\n');
        this.streams.add(res);
        res.on('close', () => { this.streams.delete(res); this.streamNodes.delete(res); }); // the response closes with the connection; the request closes once read
        return;
      }
      if (req.method === 'POST' && url === '/v1/usage') {
        const status = this.usageStatus();
        const events = JSON.parse(Buffer.concat(chunks).toString()).events;
        if (status < 300) this.usageBatches.push(events);
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(status < 300 ? this.usageBody(events) : '{}');
        return;
      }
      res.writeHead(404);
      res.end();
    });
  }
}

/** An allow carrying a lease of `requests` requests. */
export const leased = (requests: number, opts: { id?: string; ttlMs?: number; leaseTtlMs?: number; micros?: number; credit?: number } = {}): ScriptedAnswer => ({
  body: JSON.stringify({ allow: true, ttl_ms: opts.ttlMs ?? 5000, lease: {
    id: opts.id ?? `lease-${requests}`, requests, ttl_ms: opts.leaseTtlMs ?? 10_000,
    ...(opts.micros !== undefined ? { micros: opts.micros } : {}), ...(opts.credit !== undefined ? { credit: opts.credit } : {}),
  } }),
});

export const allow = (ttlMs = 5000): ScriptedAnswer => ({ body: JSON.stringify({ allow: true, ttl_ms: ttlMs }) });
export const block = (body: string, opts: { status?: number; headers?: Record<string, string>; ttlMs?: number; rule?: string } = {}): ScriptedAnswer => ({
  body: JSON.stringify({
    allow: false, status: opts.status ?? 402, headers: opts.headers ?? { 'Content-Type': 'application/json' },
    body, rule: opts.rule ?? 'block-no-credit', ttl_ms: opts.ttlMs ?? 5000,
  }),
});
