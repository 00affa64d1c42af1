// GET /v1/stream?node=…: one long-lived server-sent-events connection per plugin
// server. Events name consumers; a node drops what it holds for them at once:
//   event: changed  data: {"consumers": [...]}   Stripe news, a deleted customer, freed credit
//   event: changed  data: {"all": true}           a rule was switched
//   event: recall   data: {"consumers": [...]}   another node is starved: give back unused leases
// A comment line every heartbeat keeps proxies from closing an idle stream.
import http from 'node:http';

interface Client { node: string; res: http.ServerResponse }

export class ChangeStream {
  private readonly clients = new Set<Client>();
  private readonly heartbeat: NodeJS.Timeout;
  private closed = false;

  constructor(heartbeatMs = 15_000) {
    this.heartbeat = setInterval(() => { for (const c of this.clients) c.res.write(': ping\n\n'); }, heartbeatMs).unref();
  }

  open(node: string, req: http.IncomingMessage, res: http.ServerResponse): void {
    if (this.closed) { res.writeHead(503, { 'content-type': 'application/json' }); res.end('{"error":"stopping"}'); return; }
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive' });
    res.flushHeaders();
    req.socket.setNoDelay(true);
    req.socket.setTimeout(0);
    const client = { node, res };
    this.clients.add(client);
    res.write(`event: hello\ndata: ${JSON.stringify({ node })}\n\n`);
    const gone = () => { this.clients.delete(client); };
    req.on('close', gone);
    res.on('error', gone);
  }

  changed(consumers: string[] | 'all'): void {
    if (consumers !== 'all' && consumers.length === 0) return;
    this.publish('changed', consumers === 'all' ? { all: true } : { consumers });
  }

  recall(consumers: string[]): void {
    this.publish('recall', { consumers });
  }

  /** Nodes connected now (for the admin API and tests). */
  nodes(): string[] {
    return [...new Set([...this.clients].map((c) => c.node))].sort();
  }

  /** Ends every stream and refuses new ones (the service is stopping). */
  close(): void {
    this.closed = true;
    clearInterval(this.heartbeat);
    for (const c of this.clients) c.res.end();
    this.clients.clear();
  }

  private publish(event: string, data: unknown): void {
    const frame = `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
    for (const c of this.clients) c.res.write(frame);
  }
}
