// Tests talk to this machine only. Loaded by mocha (.mocharc.json `require`) and,
// through NODE_OPTIONS, by every Node process a test starts: a connection to
// anything but loopback (127.0.0.0/8, ::1, localhost) or a Unix socket is refused
// with an error, and written down; the root hook then fails the test that tried.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

const LOG_ENV = 'PAYG_NET_GUARD_LOG';

export function isLoopbackHost(host: string | undefined): boolean {
  if (host === undefined || host === '' || host === 'localhost') return true; // Node's default host is localhost
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (net.isIPv4(h)) return h.startsWith('127.');
  if (net.isIPv6(h)) return h === '::1' || /^::ffff:127\./.test(h) || /^0*:0*:0*:0*:0*:0*:0*:0*1$/.test(h);
  return false; // any other name would be looked up and could leave the machine
}

/** Where connect() is asked to go: a Unix socket path, or a host. */
function target(args: unknown[]): { path?: string; host?: string; port?: unknown } {
  let first = args[0];
  if (Array.isArray(first)) first = first[0]; // net's internal normalized form: [options, cb]
  if (typeof first === 'object' && first !== null) {
    const o = first as { path?: unknown; host?: string; port?: unknown };
    // http passes `path: null` with a host: only a non-empty string is a Unix socket.
    return { path: typeof o.path === 'string' && o.path !== '' ? o.path : undefined, host: o.host, port: o.port };
  }
  if (typeof first === 'string' && !/^\d+$/.test(first)) return { path: first };
  return { port: first, host: typeof args[1] === 'string' ? args[1] : undefined };
}

function install(): void {
  const marker = Symbol.for('payg.loopbackGuard');
  const proto = net.Socket.prototype as unknown as Record<string | symbol, unknown> & { connect: (...a: unknown[]) => net.Socket };
  if (proto[marker]) return;
  proto[marker] = true;
  const original = proto.connect;
  proto.connect = function guardedConnect(this: net.Socket, ...args: unknown[]) {
    const t = target(args);
    if (t.path === undefined && !isLoopbackHost(t.host)) {
      const what = `${t.host}:${String(t.port)}`;
      const line = `pid ${process.pid} tried to connect to ${what} (tests may only reach loopback)\n`;
      const file = process.env[LOG_ENV];
      if (file) { try { fs.appendFileSync(file, line); } catch { /* the error below still fires */ } }
      process.nextTick(() => this.destroy(Object.assign(new Error(`loopback guard: refused connection to ${what}`), { code: 'ECONNREFUSED' })));
      return this;
    }
    return original.apply(this, args);
  };
}

install();

// In the mocha process: make children load this guard too, and fail tests that broke the rule.
if (!process.env[LOG_ENV]) {
  process.env[LOG_ENV] = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'payg-net-guard-')), 'violations.log');
  const self = __filename;
  process.env.NODE_OPTIONS = `${process.env.NODE_OPTIONS ?? ''} --require ${JSON.stringify(self)}`.trim();
}

function takeViolations(): string {
  const file = process.env[LOG_ENV]!;
  let text = '';
  try { text = fs.readFileSync(file, 'utf8'); fs.truncateSync(file, 0); } catch { /* none yet */ }
  return text.trim();
}

export const mochaHooks = {
  afterEach(): void {
    const violations = takeViolations();
    if (violations) throw new Error(`a test connected outside loopback:\n${violations}`);
  },
};
