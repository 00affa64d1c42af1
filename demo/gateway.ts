// A small local HTTP front that stands in for Kong in the demo (Kong itself
// cannot run here). Like Kong with key-auth and payg on one route, it maps the
// `apikey` header (or query parameter) to a consumer, runs payg's access phase
// through the real payg-pluginserver with the same Kong-side harness the tests
// use, proxies allowed requests to the upstream, then runs the log phase.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { KongHarness, accessPdk, logPdk, requestCtx, type Consumer } from '../testkit/kong-harness';

export interface GatewayOptions {
  kong: KongHarness;
  /** The payg plugin instance id for the route (KongHarness.startInstance). */
  pluginId: string;
  upstream: string;
  /** key-auth credentials: API key → consumer. */
  keys: Record<string, Consumer>;
  route: { id: string; name: string };
  /** Requests are served under this path, stripped before proxying (strip_path). */
  path: string;
  /**
   * Routes with no auth plugin and no payg (kong.yml's payg-top-up route): the path
   * prefix, kept (strip_path: false), proxied as is to `upstream`.
   */
  publicRoutes?: Array<{ path: string; upstream: string }>;
}

function json(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

export class DemoGateway {
  private readonly server: http.Server;
  url = '';

  constructor(private readonly opts: GatewayOptions) {
    this.server = http.createServer((req, res) => { this.handle(req, res).catch((err) => json(res, 500, { message: String(err) })); });
  }

  async start(port = 0): Promise<this> {
    await new Promise<void>((r) => this.server.listen(port, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((r) => this.server.close(r));
  }

  /** Method, body and the headers a page needs pass through; redirects go back to the client, as Kong does. */
  private async proxy(req: http.IncomingMessage, res: http.ServerResponse, target: string): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const headers: Record<string, string> = {};
    for (const h of ['content-type', 'accept', 'user-agent']) if (typeof req.headers[h] === 'string') headers[h] = req.headers[h] as string;
    const upstream = await fetch(target, { method: req.method, headers, body: chunks.length ? Buffer.concat(chunks) : undefined, redirect: 'manual' });
    const body = Buffer.from(await upstream.arrayBuffer());
    const out: Record<string, string> = { 'content-length': String(body.length) };
    upstream.headers.forEach((v, k) => { if (!['content-length', 'transfer-encoding', 'connection', 'keep-alive'].includes(k)) out[k] = v; });
    res.writeHead(upstream.status, out);
    res.end(body);
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://gateway');
    const open = this.opts.publicRoutes?.find((r) => url.pathname.startsWith(r.path));
    if (open) return this.proxy(req, res, `${open.upstream}${url.pathname}${url.search}`);
    if (!url.pathname.startsWith(this.opts.path)) return json(res, 404, { message: 'no Route matched with those values' });
    // key-auth: Kong's own answers for a missing or unknown key.
    const key = (req.headers.apikey as string | undefined) ?? url.searchParams.get('apikey') ?? undefined;
    if (!key) return json(res, 401, { message: 'No API key found in request' }, { 'www-authenticate': 'Key realm="kong"' });
    const consumer = this.opts.keys[key];
    if (!consumer) return json(res, 401, { message: 'Unauthorized' });

    const startedAt = Date.now();
    const ctx = requestCtx(); // kong.ctx.shared for this request, across its phases
    const access = await this.opts.kong.handleEvent(this.opts.pluginId, 'access', accessPdk(consumer, ctx));
    let status: number;
    if (access.exit) {
      status = access.exit.status;
      res.writeHead(status, access.exit.headers ?? {});
      res.end(access.exit.body ?? '');
    } else {
      const upstreamPath = url.pathname.slice(this.opts.path.length) || '/';
      const upstream = await fetch(`${this.opts.upstream}${upstreamPath}${url.search}`, { method: req.method, headers: { 'x-consumer-username': consumer.username ?? '', 'x-consumer-custom-id': consumer.custom_id ?? '' } });
      status = upstream.status;
      const body = Buffer.from(await upstream.arrayBuffer());
      res.writeHead(status, { 'content-type': upstream.headers.get('content-type') ?? 'application/octet-stream', 'content-length': body.length });
      res.end(body);
    }
    // The log phase runs after the response, as in Kong.
    await this.opts.kong.handleEvent(this.opts.pluginId, 'log', logPdk({ consumer, route: this.opts.route, status, startedAt }, ctx));
  }
}

/** A sample upstream API: answers every path with a little JSON. */
export async function startUpstream(): Promise<{ url: string; stop(): Promise<void> }> {
  const server = http.createServer((req, res) => json(res, 200, { hello: 'from the upstream API', path: req.url, consumer: req.headers['x-consumer-username'] ?? null }));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    async stop() { server.closeAllConnections(); await new Promise((r) => server.close(r)); },
  };
}
