// The operator console's own HTTP listener: the built front end from
// dist/console (no CDN: everything is served from here) and its JSON API under
// /console/api, behind a session cookie. Every answer carries a strict CSP.

import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import type { Logger } from 'pino';
import { jsonBody, send } from '../http/util';
import { createConsoleApi, type ConsoleDeps } from './api';
import { CSRF_HEADER, SessionStore } from './session';

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
}

export async function startConsole(deps: ConsoleDeps & { log: Logger } & ConsoleOptions): Promise<ConsoleServer> {
  const { config, log } = deps;
  const settings = config.console!;
  const sessions = new SessionStore(config.secrets.adminToken, settings.sessionTtlMs);
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

  const handleApi = async (req: http.IncomingMessage, res: http.ServerResponse, url: URL) => {
    const started = process.hrtime.bigint();
    securityHeaders(res);
    res.setHeader('cache-control', 'no-store');
    const parts = url.pathname.slice('/console/api/'.length).split('/').filter(Boolean).map((p) => decodeURIComponent(p));
    const method = req.method ?? 'GET';
    const write = method !== 'GET' && method !== 'HEAD';
    if (write && (!sameOrigin(req) || !String(req.headers['content-type'] ?? '').startsWith('application/json'))) {
      return send(res, 403, { error: 'forbidden', message: 'cross-site or non-JSON write refused' });
    }
    if (parts[0] === 'session' && parts.length === 1) {
      if (method === 'POST') {
        const session = sessions.signIn((await jsonBody(req))?.token);
        if (!session) {
          log.warn({ remote: req.socket.remoteAddress }, 'console sign-in refused');
          return send(res, 401, { error: 'unauthorized', message: 'That is not the admin token (PAYG_ADMIN_TOKEN).' });
        }
        res.setHeader('set-cookie', sessions.cookieFor(session));
        return send(res, 200, { csrf: session.csrf });
      }
      const session = sessions.fromCookie(req.headers.cookie);
      if (method === 'GET') return session ? send(res, 200, { csrf: session.csrf }) : send(res, 401, { error: 'unauthorized', message: 'sign in' });
      if (method === 'DELETE') {
        if (session && sessions.csrfMatches(session, req.headers[CSRF_HEADER])) sessions.signOut(session);
        res.setHeader('set-cookie', SessionStore.clearedCookie());
        return send(res, 200, { signed_out: true });
      }
    }
    const session = sessions.fromCookie(req.headers.cookie);
    if (!session) return send(res, 401, { error: 'unauthorized', message: 'sign in' });
    if (write && !sessions.csrfMatches(session, req.headers[CSRF_HEADER])) return send(res, 403, { error: 'forbidden', message: 'missing or wrong CSRF token' });
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
      deps.queries.close();
    },
  };
}
