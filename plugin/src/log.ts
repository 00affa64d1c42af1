// The plugin server's logger. Kong collects a plugin server's output into its
// error log; stdout must stay clean for `--dump-all-plugins`, so logs go to stderr.
import pino from 'pino';

export const log = pino(
  { name: 'payg', level: process.env.PAYG_LOG_LEVEL ?? 'info', base: { pid: process.pid } },
  pino.destination({ dest: 2, sync: true }),
);
export type Logger = typeof log;

/** What kong-pdk's Server and Listener call on their logger. */
export interface PdkLogger {
  debug(...args: unknown[]): void;
  info(...args: unknown[]): void;
  warn(...args: unknown[]): void;
  error(...args: unknown[]): void;
}

/** kong-pdk's debug line for each RPC: `rpc: #<msgid> method: <Method> args: <JSON>`. */
const RPC_LINE = /^(rpc: #\S+ method: \S+) args: [\s\S]*$/;

/**
 * The logger handed to kong-pdk. At debug it logs every RPC's arguments:
 * StartInstance carries the control_service_token, and Step answers carry the
 * client's request (API key, Authorization header). Those lines keep the method
 * and drop the arguments, at every level.
 */
export function pdkLogger(base: Logger): PdkLogger {
  const redact = (args: unknown[]) => (typeof args[0] === 'string' && RPC_LINE.test(args[0])
    ? [args[0].replace(RPC_LINE, '$1 args: [redacted]'), ...args.slice(1)]
    : args);
  const at = (level: 'debug' | 'info' | 'warn' | 'error') => (...args: unknown[]) => {
    if (!base.isLevelEnabled(level)) return;
    (base[level] as (...a: unknown[]) => void).apply(base, redact(args));
  };
  return { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}
