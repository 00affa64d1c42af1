// Plays the control service for plugin tests: answers decisions as each test
// scripts them and records every call, so a test can count network calls.

import http from 'node:http';
import { LoopbackServer } from './loopback-server';

export interface ScriptedAnswer { status?: number; body: string; delayMs?: number; headers?: Record<string, string> }

export class FakeControlService extends LoopbackServer {
  readonly decisionPaths: string[] = [];
  readonly usageBatches: Array<Array<Record<string, unknown>>> = [];
  readonly authorizations: Array<string | undefined> = [];
  /** Answer for a decision request; by default everyone is allowed. */
  decide: (consumer: string) => ScriptedAnswer = () => ({ body: JSON.stringify({ allow: true, ttl_ms: 5000 }) });
  /** Status for a usage batch. */
  usageStatus: () => number = () => 202;
  /** Body of a usage answer, e.g. one that refuses some events by index. */
  usageBody: (events: Array<Record<string, unknown>>) => string = () => '{}';


  protected handle(req: http.IncomingMessage, res: http.ServerResponse) {
    this.authorizations.push(req.headers.authorization);
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const url = req.url ?? '';
      if (req.method === 'GET' && url.startsWith('/v1/decisions/')) {
        this.decisionPaths.push(url);
        const consumer = decodeURIComponent(url.slice('/v1/decisions/'.length));
        const answer = this.decide(consumer);
        const send = () => {
          if (res.destroyed) return;
          res.writeHead(answer.status ?? 200, { 'content-type': 'application/json', ...answer.headers });
          res.end(answer.body);
        };
        if (answer.delayMs) setTimeout(send, answer.delayMs); else send();
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

export const allow = (ttlMs = 5000): ScriptedAnswer => ({ body: JSON.stringify({ allow: true, ttl_ms: ttlMs }) });
export const block = (body: string, opts: { status?: number; headers?: Record<string, string>; ttlMs?: number; rule?: string } = {}): ScriptedAnswer => ({
  body: JSON.stringify({
    allow: false, status: opts.status ?? 402, headers: opts.headers ?? { 'Content-Type': 'application/json' },
    body, rule: opts.rule ?? 'block-no-credit', ttl_ms: opts.ttlMs ?? 5000,
  }),
});
