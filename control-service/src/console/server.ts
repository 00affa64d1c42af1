// The operator console's own HTTP listener: the built front end from
// dist/console (no CDN: everything is served from here) and its JSON API under
// /console/api, behind a session cookie. Every answer carries a strict CSP.

import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import type { Logger } from 'pino';
import { jsonBody, readBody, refuseBody, send } from '../http/util';
import { createConsoleApi, type ConsoleDeps } from './api';
import { CSRF_HEADER, SessionStore, SignInLimiter } from './session';

/** dist/console, built by Vite (`npm run build`); this file is dist/control-service/src/console/server.js. */
export const CONSOLE_ASSETS = path.resolve(__dirname, '../../../console');

const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; "
  + "frame-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
// An email's HTML is shown in a sandboxed frame: no scripts, no fetches, nothing it links loads.
const PREVIEW_CSP = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'";

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml', '.png': 'image/png', '.ico': 'image/x-icon', '.woff2': 'font/woff2', '.json': 'application/json',
};

function securityHeaders(res: http.ServerResponse, csp = CSP): void {
  res.setHeader('content-security-policy', csp);
  res.setHeader('x-content-type-options', 'nosniff');
  res.setHeader('referrer-policy', 'no-referrer');
  res.setHeader('cross-origin-opener-policy', 'same-origin');
  res.setHeader('cross-origin-resource-policy', 'same-origin');
  if (csp === CSP) res.setHeader('x-frame-options', 'DENY');
}

export interface ConsoleServer { url: string; stop(): Promise<void> }

/** What specs and the demo may change; production uses the defaults. */
export interface ConsoleOptions {
  /** The built front end (default dist/console). */
  assetsDir?: string;
  /** Wrong tokens allowed per client address and window before sign-in is refused there (default 5 per minute). */
  signInLimit?: { failures: number; windowMs: number };
  now?: () => number;
}

/** A sign-in body is a token in JSON: small, and it must arrive quickly (nobody is authenticated yet). */
const SIGN_IN_BODY = { limit: 4096, timeoutMs: 10_000 };

export async function startConsole(deps: ConsoleDeps & { log: Logger } & ConsoleOptions): Promise<ConsoleServer> {
  const { config, log } = deps;
  const settings = config.console!;
  const sessions = new SessionStore(config.secrets.adminToken, settings.sessionTtlMs, deps.now);
  const limiter = new SignInLimiter(deps.signInLimit ?? { failures: 5, windowMs: 60_000 }, deps.now);
  const api = createConsoleApi(deps);
  const assets = deps.assetsDir ?? CONSOLE_ASSETS;
  if (!fs.existsSync(path.join(assets, 'index.html'))) log.warn({ assets }, 'console assets are missing: run `npm run build`');
  if (!config.secrets.adminToken) log.warn('PAYG_ADMIN_TOKEN is not set: nobody can sign in to the console');

  const serveFile = (rel: string, res: http.ServerResponse) => {
    // Anything that is not an asset is the app shell (the front end routes by #hash).
    const file = path.resolve(assets, rel);
    const inside = file.startsWith(assets + path.sep) && fs.existsSync(file) && fs.statSync(file).isFile();
    const target = inside ? file : path.join(assets, 'index.html');
    fs.readFile(target, (err, data) => {
      if (err) { securityHeaders(res); return send(res, 503, { error: 'console_not_built', message: 'run `npm run build` to build the console assets' }); }
      securityHeaders(res);
      res.writeHead(200, {
        'content-type': TYPES[path.extname(target)] ?? 'application/octet-stream', 'content-length': data.length,
        // Vite names assets by content hash: they can be kept for good; the shell must not be.
        'cache-control': inside && rel.startsWith('assets/') ? 'public, max-age=31536000, immutable' : 'no-store',
      });
      res.end(data);
    });
  };

  /** Writes must be same-origin: SameSite=Strict cookie, the session's CSRF header, and a matching Origin when sent. */
  const sameOrigin = (req: http.IncomingMessage) => {
    const origin = req.headers.origin;
    return origin === undefined || origin === `http://${req.headers.host}` || origin === `https://${req.headers.host}`;
  };

  /** HTTPS reached this console (TLS here, or a proxy in front says so). */
  const overHttps = (req: http.IncomingMessage) => (req.socket as { encrypted?: boolean }).encrypted === true
    || String(req.headers['x-forwarded-proto'] ?? '').split(',')[0].trim() === 'https';

  const signIn = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    const address = req.socket.remoteAddress ?? 'unknown';
    const wait = limiter.retryAfter(address);
    if (wait > 0) {
      log.warn({ remote: address }, 'console sign-in refused: too many wrong tokens');
      return send(res, 429, { error: 'too_many_attempts', message: `Too many wrong tokens from your address; try again in ${wait} s.` }, { 'retry-after': String(wait) });
    }
    const body = await readBody(req, SIGN_IN_BODY);
    if (!Buffer.isBuffer(body)) return refuseBody(res, body, SIGN_IN_BODY.limit);
    let token: unknown;
    try { token = (JSON.parse(body.toString()) as { token?: unknown } | null)?.token; } catch { token = undefined; }
    const session = sessions.signIn(token);
    if (!session) {
      limiter.failed(address);
      log.warn({ remote: address }, 'console sign-in refused');
      return send(res, 401, { error: 'unauthorized', message: 'That is not the admin token (PAYG_ADMIN_TOKEN).' });
    }
    limiter.succeeded(address);
    // A new id on every sign-in; the one the browser presented (if any) ends, so no id chosen before sign-in survives it.
    const before = sessions.fromCookie(req.headers.cookie);
    if (before) sessions.signOut(before);
    res.setHeader('set-cookie', sessions.cookieFor(session, overHttps(req)));
    return send(res, 200, { csrf: session.csrf });
  };

  const handleApi = async (req: http.IncomingMessage, res: http.ServerResponse, url: URL) => {
    const started = process.hrtime.bigint();
    securityHeaders(res);
    res.setHeader('cache-control', 'no-store');
    const method = req.method ?? 'GET';
    const write = method !== 'GET' && method !== 'HEAD';
    if (write && (!sameOrigin(req) || !String(req.headers['content-type'] ?? '').startsWith('application/json'))) {
      return send(res, 403, { error: 'forbidden', message: 'cross-site or non-JSON write refused' });
    }
    const rawParts = url.pathname.slice('/console/api/'.length).split('/').filter(Boolean);
    if (rawParts.length === 1 && rawParts[0] === 'session') {
      if (method === 'POST') return signIn(req, res);
      const session = sessions.fromCookie(req.headers.cookie);
      if (method === 'GET') return session ? send(res, 200, { csrf: session.csrf }) : send(res, 401, { error: 'unauthorized', message: 'sign in' });
      if (method === 'DELETE') {
        if (session && sessions.csrfMatches(session, req.headers[CSRF_HEADER])) sessions.signOut(session);
        res.setHeader('set-cookie', SessionStore.clearedCookie(overHttps(req)));
        return send(res, 200, { signed_out: true });
      }
    }
    // The session is checked before anything from the path is decoded.
    const session = sessions.fromCookie(req.headers.cookie);
    if (!session) return send(res, 401, { error: 'unauthorized', message: 'sign in' });
    if (write && !sessions.csrfMatches(session, req.headers[CSRF_HEADER])) return send(res, 403, { error: 'forbidden', message: 'missing or wrong CSRF token' });
    let parts: string[];
    try { parts = rawParts.map((p) => decodeURIComponent(p)); } catch { return send(res, 400, { error: 'bad_request', message: 'the path has malformed percent-encoding' }); }
    const result = await api(method, parts, url.searchParams, () => jsonBody(req));
    res.setHeader('server-timing', `app;dur=${(Number(process.hrtime.bigint() - started) / 1e6).toFixed(1)}`);
    if ('html' in result) {
      securityHeaders(res, PREVIEW_CSP);
      res.removeHeader('x-frame-options');
      res.writeHead(result.status, { 'content-type': 'text/html; charset=utf-8', 'content-length': Buffer.byteLength(result.html) });
      return res.end(result.html);
    }
    if (write) log.info({ console: `${method} ${url.pathname}`, status: result.status }, 'console change');
    send(res, result.status, result.body);
  };

  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://console');
    if (url.pathname === '/' || url.pathname === '/console') { res.writeHead(302, { location: '/console/' }); res.end(); return; }
    if (url.pathname.startsWith('/console/api/')) {
      handleApi(req, res, url).catch((err) => {
        log.error({ err: (err as Error).message }, 'console API failed');
        if (!res.headersSent) send(res, 500, { error: 'internal', message: 'the console API failed; see the service log' });
      });
      return;
    }
    if (url.pathname.startsWith('/console/') && (req.method === 'GET' || req.method === 'HEAD')) return serveFile(url.pathname.slice('/console/'.length), res);
    securityHeaders(res);
    send(res, 404, { error: 'not_found' });
  });
  server.keepAliveTimeout = 65_000;
  // Nobody is authenticated while headers arrive: a client that trickles them is cut off (as on the service's port).
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(settings.listen.port, settings.listen.host, () => resolve());
  });
  const addr = server.address() as AddressInfo;
  const url = `http://${addr.address.includes(':') ? `[${addr.address}]` : addr.address}:${addr.port}/console/`;
  log.info({ url }, 'payg console listening');
  return {
    url,
    async stop() {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
      await deps.queries.close();
    },
  };
}
