// One long-lived connection to the control service (GET /v1/stream, server-sent
// events) that tells this node which consumers changed. Reconnects by itself with
// backoff; nothing on the request path waits for it: while it is down, TTLs decide.
import http from 'node:http';
import https from 'node:https';

export interface StreamEvents {
  changed(consumers: string[] | 'all'): void;
  recall(consumers: string[]): void;
  /** Connected (again): news may have been missed while it was down. */
  connected(): void;
  warn(fields: Record<string, unknown>, msg: string): void;
}

export interface StreamClientOptions {
  baseUrl: URL;
  /** Further control-service replicas: a refused or failed stream moves on to the next. */
  fallbackUrls?: URL[];
  token: string | undefined;
  node: string;
  minBackoffMs?: number;
  maxBackoffMs?: number;
}

export class StreamClient {
  private req: http.ClientRequest | undefined;
  private timer: NodeJS.Timeout | undefined;
  private failures = 0;
  private target = 0;
  private stopped = false;
  connectedNow = false;

  constructor(private readonly opts: StreamClientOptions, private readonly on: StreamEvents) {}

  start(): void { this.connect(); }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.req?.destroy();
  }

  private connect(): void {
    if (this.stopped) return;
    const urls = [this.opts.baseUrl, ...(this.opts.fallbackUrls ?? [])];
    const base = urls[this.target % urls.length];
    const transport = base.protocol === 'https:' ? https : http;
    const headers: Record<string, string> = { accept: 'text/event-stream' };
    if (this.opts.token) headers.authorization = `Bearer ${this.opts.token}`;
    const path = `${base.pathname.replace(/\/+$/, '')}/v1/stream?node=${encodeURIComponent(this.opts.node)}`;
    const req = transport.request({ protocol: base.protocol, hostname: base.hostname, port: base.port || undefined, path, headers, agent: false });
    this.req = req;
    req.setNoDelay(true);
    req.on('response', (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        if (this.req === req) this.retry(`control service answered ${res.statusCode}`);
        return;
      }
      res.setEncoding('utf8');
      let buffer = '';
      res.on('data', (chunk: string) => {
        buffer += chunk;
        let end: number;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          this.frame(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
        if (buffer.length > 1_000_000) { req.destroy(); } // not an event stream
      });
      // A reset or cut connection ends a chunked stream with 'error'/'close' and no 'end'.
      // (Only this connection's own end counts: never one already replaced.)
      res.on('end', () => { if (this.req === req) this.retry('stream ended'); });
      res.on('error', (err) => { if (this.req === req) this.retry(err.message); });
      res.on('close', () => { if (this.req === req) this.retry('stream closed'); });
    });
    req.on('error', (err) => { if (this.req === req) this.retry(err.message); });
    req.end();
  }

  private frame(text: string): void {
    let event = 'message';
    let data = '';
    for (const line of text.split('\n')) {
      if (line.startsWith('event:')) event = line.slice(6).trim();
      else if (line.startsWith('data:')) data += line.slice(5).trim();
    }
    if (event === 'hello') {
      this.failures = 0;
      this.connectedNow = true;
      this.on.connected();
      return;
    }
    let doc: { consumers?: unknown; all?: unknown };
    try { doc = JSON.parse(data); } catch { return; }
    const consumers = Array.isArray(doc.consumers) ? doc.consumers.filter((c): c is string => typeof c === 'string') : [];
    if (event === 'changed') this.on.changed(doc.all === true ? 'all' : consumers);
    else if (event === 'recall') this.on.recall(consumers);
  }

  private retry(reason: string): void {
    if (this.req === undefined) return;
    this.req.removeAllListeners('error');
    this.req.on('error', () => undefined);
    this.req.destroy();
    this.req = undefined;
    this.connectedNow = false;
    if (this.stopped) return;
    this.failures++;
    const replicas = 1 + (this.opts.fallbackUrls?.length ?? 0);
    this.target = (this.target + 1) % replicas;
    // Each replica is tried once at once; the backoff grows only when a whole round failed.
    if (replicas > 1 && this.target !== 0) { this.timer = setTimeout(() => this.connect(), 0).unref(); return; }
    const min = this.opts.minBackoffMs ?? 100;
    const delay = Math.min(this.opts.maxBackoffMs ?? 5000, min * 2 ** Math.min(this.failures - 1, 10));
    if (this.failures === 1 || this.failures % 10 === 0) this.on.warn({ reason, retryInMs: delay, failures: this.failures }, 'payg: change stream down; TTLs apply until it is back');
    this.timer = setTimeout(() => this.connect(), delay).unref();
  }
}
