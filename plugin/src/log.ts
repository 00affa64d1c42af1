// The plugin server's logger. Kong collects a plugin server's output into its
// error log; stdout must stay clean for `--dump-all-plugins`, so logs go to stderr.
import pino from 'pino';

export const log = pino(
  { name: 'payg', level: process.env.PAYG_LOG_LEVEL ?? 'info', base: { pid: process.pid } },
  pino.destination({ dest: 2, sync: true }),
);
export type Logger = typeof log;
