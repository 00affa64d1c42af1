// The plugin-facing lease API (control token):
//   POST /v1/leases          {node, consumer, want?, reserve?, previous?: {id, drawn, drawn_micros?}} → a decision, with a lease when it allows
//   POST /v1/leases/release  {node, leases: [{id, drawn, drawn_micros?}]}                       → {released}
//   GET  /v1/stream?node=…   server-sent events (stream.ts)
import http from 'node:http';
import { z } from 'zod';
import { fieldPath } from '../config';
import type { LeaseDesk } from '../lease-desk';
import type { ChangeStream } from './stream';
import { readBody, refuseBody, send, MAX_BODY_BYTES } from './util';

// No NUL: PostgreSQL refuses it in text, which would fail every grant gathered into the same transaction.
const text = (max: number) => z.string().min(1).max(max).regex(/^[^\u0000]*$/, 'must not contain NUL');
const node = text(256);
const micros = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
const leaseReturn = z.object({ id: text(128), drawn: z.number().int().min(0), drawn_micros: micros.optional() });
const leaseRequest = z.object({
  node,
  consumer: text(512),
  want: z.number().int().min(1).max(1_000_000).default(1),
  reserve: micros.min(1).optional(),
  previous: leaseReturn.optional(),
});
const releaseRequest = z.object({ node, leases: z.array(leaseReturn).max(100_000) });

/** A lease request is a few hundred bytes; far larger is not one. */
export const LEASE_BODY_LIMIT = 16 * 1024;
/** A release names every lease a node holds (at shutdown, each consumer it served). */
export const RELEASE_BODY_LIMIT = MAX_BODY_BYTES;

async function parse<T>(schema: z.ZodType<T, z.ZodTypeDef, unknown>, limit: number, timeoutMs: number, req: http.IncomingMessage, res: http.ServerResponse): Promise<T | undefined> {
  // Authenticated, but still bounded: a larger body gets 413 unread, a stalled one 408; both close the connection.
  const body = await readBody(req, { limit, timeoutMs });
  if (!Buffer.isBuffer(body)) { refuseBody(res, body, limit); return undefined; }
  let doc: unknown;
  try { doc = JSON.parse(body.toString()); } catch { send(res, 400, { error: 'bad_request', message: 'body is not JSON' }); return undefined; }
  const parsed = schema.safeParse(doc);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    send(res, 400, { error: 'bad_request', message: `${fieldPath(issue.path, 'body')}: ${issue.message}` });
    return undefined;
  }
  return parsed.data;
}

/** Handles the lease and stream routes; false when the path is not one of them. Auth is checked by the caller. */
export function createLeaseHandler(desk: LeaseDesk, stream: ChangeStream, onDecision: (allow: boolean) => void, bodyTimeoutMs: number) {
  return async (method: string, path: string, url: string, req: http.IncomingMessage, res: http.ServerResponse): Promise<boolean> => {
    if (method === 'POST' && path === '/v1/leases') {
      const r = await parse(leaseRequest, LEASE_BODY_LIMIT, bodyTimeoutMs, req, res);
      if (!r) return true;
      const answer = await desk.request(r);
      if (answer.status === 200) onDecision(answer.json.startsWith('{"allow":true'));
      res.writeHead(answer.status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(answer.json) });
      res.end(answer.json);
      return true;
    }
    if (method === 'POST' && path === '/v1/leases/release') {
      const r = await parse(releaseRequest, RELEASE_BODY_LIMIT, bodyTimeoutMs, req, res);
      if (!r) return true;
      send(res, 200, { released: await desk.release(r.node, r.leases) });
      return true;
    }
    if (method === 'GET' && path === '/v1/stream') {
      const nodeId = new URL(url, 'http://x').searchParams.get('node');
      if (!nodeId || nodeId.length > 256) { send(res, 400, { error: 'bad_request', message: 'node: required (the plugin server\'s node id)' }); return true; }
      stream.open(nodeId, req, res);
      return true;
    }
    return false;
  };
}
