// GET /v1/stream?node=…: one long-lived server-sent-events connection per plugin
// server. Events name consumers; a node drops what it holds for them at once:
//   event: changed  data: {"consumers": [...]}   Stripe news, a deleted customer, freed credit
//   event: changed  data: {"all": true}           a rule was switched
//   event: recall   data: {"consumers": [...]}   another node is starved: give back unused leases
// A comment line every heartbeat keeps proxies from closing an idle stream.
import http from 'node:http';

/** `behind`: its backlog reached the bound; it gets nothing more until it drains, then `{"all": true}`. */
interface Client { node: string; res: http.ServerResponse; behind: boolean }

/** Streams open at once, all nodes together: one per plugin server, so this is far more than a cluster has. */
export const MAX_STREAMS = 1000;
/**
 * Bytes written to one stream that its node has not read yet. Past it the node gets nothing more
 * until it has read what is queued, then one `changed {"all": true}` (it drops everything it cached
 * and gives its leases back), so it misses nothing and the service never buffers without bound for
 * a client that does not read.
 */
export const MAX_STREAM_BACKLOG = 256 * 1024;

export class ChangeStream {
  private readonly clients = new Set<Client>();
  private readonly heartbeat: NodeJS.Timeout;
  private closed = false;

  constructor(heartbeatMs = 15_000) {
    this.heartbeat = setInterval(() => { for (const c of this.clients) this.write(c, ': ping\n\n'); }, heartbeatMs).unref();
  }

  open(node: string, req: http.IncomingMessage, res: http.ServerResponse): void {
    if (this.closed) { res.writeHead(503, { 'content-type': 'application/json' }); res.end('{"error":"stopping"}'); return; }
    // A node reconnecting replaces its old stream (half-open after a network cut, or a second copy).
    for (const c of this.clients) if (c.node === node) this.cut(c);
    if (this.clients.size >= MAX_STREAMS) {
      res.writeHead(503, { 'content-type': 'application/json', 'retry-after': '5', connection: 'close' });
      res.end('{"error":"too_many_streams"}');
      return;
    }
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive' });
    res.flushHeaders();
    req.socket.setNoDelay(true);
    req.socket.setTimeout(0);
    const client: Client = { node, res, behind: false };
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

  /** Ends every stream now; nodes reconnect (a network blip, for tests). */
  disconnectAll(): void {
    for (const c of this.clients) c.res.destroy();
    this.clients.clear();
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
    for (const c of this.clients) this.write(c, frame);
  }

  private write(c: Client, frame: string): void {
    if (c.behind) return;
    if (c.res.writableLength + frame.length > MAX_STREAM_BACKLOG) {
      c.behind = true;
      c.res.once('drain', () => {
        c.behind = false;
        if (this.clients.has(c)) c.res.write(`event: changed\ndata: ${JSON.stringify({ all: true })}\n\n`);
      });
      return;
    }
    c.res.write(frame);
  }

  /** The most bytes queued for any one stream now (for tests: bounded by MAX_STREAM_BACKLOG). */
  maxBacklog(): number {
    let most = 0;
    for (const c of this.clients) most = Math.max(most, c.res.writableLength);
    return most;
  }

  private cut(c: Client): void {
    this.clients.delete(c);
    c.res.destroy();
  }
}
