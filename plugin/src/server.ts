// payg-pluginserver: kong-pdk's plugin server, serving only `payg`, with the
// flags of kong-js-pluginserver so Kong's pluginserver_* settings can call it.
//
// It also fixes kong-pdk 0.6.0's leak: Server keeps each event in its `events`
// map until the plugin's "ret" is stepped out, but after kong.response.exit()
// Kong never steps that event again, so every blocked request stayed in memory.

import path from 'node:path';
import { parseArgs } from 'node:util';
import * as paygModule from './index';
import { log, pdkLogger, type PdkLogger } from './log';
import { shutdownAll } from './runtime';
import { setSpoolDir } from './usage-spool';
import { PROTOCOLS } from './schema';

/** Like Kong's typedefs.protocols_http: payg applies to HTTP and gRPC routes (they run the access phase), never to streams. */
export const PROTOCOLS_FIELD = {
  protocols: { type: 'set', required: true, default: [...PROTOCOLS], elements: { type: 'string', one_of: [...PROTOCOLS] } },
};

// kong-pdk's lib/mod.js runs require('ts-node').register() when loaded, which pulls
// the TypeScript compiler (tens of MB, seconds of start-up) into a server that
// only ever loads compiled JavaScript. Answer that require with a no-op instead.
const pdkDir = path.dirname(require.resolve('kong-pdk/package.json'));
const tsNodePath = require.resolve('ts-node', { paths: [pdkDir] });
require.cache[tsNodePath] = {
  id: tsNodePath, filename: tsNodePath, loaded: true, exports: { register: () => undefined },
} as unknown as NodeModule;

interface StepResult { Data: unknown; EventId: number }
interface PdkServer {
  events: Map<number, unknown>;
  plugins: Map<string, unknown>;
  step(data: unknown, isError: boolean): Promise<StepResult>;
  HandleEvent(event: unknown): Promise<StepResult>;
  GetPluginInfo(name: string): Promise<unknown>;
  close(): void;
}
type PdkServerClass = new (pluginDir: string | undefined, logger: PdkLogger, expireTtl?: number) => PdkServer;
export const KongPdkServer: PdkServerClass = require('kong-pdk/server');
export const KongPdkListener: new (server: PdkServer, socketPath: string) => { serve(): unknown } = require('kong-pdk/listener');
export const { Module }: { Module: new (name: string, path: undefined, literal: unknown) => unknown } = require('kong-pdk/lib/mod');
const { version: pdkVersion }: { version: string } = require('kong-pdk/package.json');

/** PDK methods after which Kong ends the request and sends no further Step for the event. */
const NON_RETURN_METHODS = new Set(['kong.response.exit', 'kong.response.error']);

function endsTheEvent(data: unknown): boolean {
  return typeof data === 'object' && data !== null && NON_RETURN_METHODS.has((data as { Method?: string }).Method ?? '');
}

export class PaygPluginServer extends KongPdkServer {
  /** kong-pdk logs through `logger`; `pdkLogger` keeps RPC arguments (tokens, API keys) out of it. */
  constructor(logger: PdkLogger) {
    super(undefined, logger);
    this.plugins.set(paygModule.Name, new Module(paygModule.Name, undefined, paygModule));
  }

  override async GetPluginInfo(name: string): Promise<unknown> {
    const info = await super.GetPluginInfo(name) as { Schema: { fields: unknown[] } };
    return { ...info, Schema: { ...info.Schema, fields: [...info.Schema.fields, PROTOCOLS_FIELD] } };
  }

  override async HandleEvent(event: unknown): Promise<StepResult> {
    return this.forgetIfEnded(await super.HandleEvent(event));
  }

  override async step(data: unknown, isError: boolean): Promise<StepResult> {
    return this.forgetIfEnded(await super.step(data, isError));
  }

  private forgetIfEnded(result: StepResult): StepResult {
    if (endsTheEvent(result.Data)) this.events.delete(result.EventId);
    return result;
  }
}

const USAGE = 'usage: payg-pluginserver [-p <kong prefix>] [--sock-name <name>] [--dump-all-plugins | --dump-plugin-info <name>] [-v] [--version] [--help]';
const HELP = `${USAGE}

Kong's external plugin server for the payg plugin (it serves only payg).
  -p, --kong-prefix <dir>     Kong's prefix; the socket is created there (default /usr/local/kong)
  --sock-name <name>          socket file name (default payg.sock)
  --dump-all-plugins          print the plugin info Kong reads at start-up, as JSON, and exit
  --dump-plugin-info <name>   print one plugin's info as MessagePack, and exit
  -v, --verbose               more logging (twice: debug); PAYG_LOG_LEVEL overrides
  --version                   print the version and exit
  --help                      print this help and exit
`;

/** How long a stopping plugin server tries to send queued usage before keeping the rest on disk. */
const STOP_DEADLINE_MS = 2000;

export function main(argv: string[]): void {
  let parsed: ReturnType<typeof parseCli>;
  try {
    parsed = parseCli(argv);
  } catch (err) {
    process.stderr.write(`payg-pluginserver: ${(err as Error).message.split('\n')[0]}; ${USAGE}\n`);
    process.exitCode = 2;
    return;
  }
  const { values } = parsed;
  if (values.help) {
    process.stdout.write(HELP);
    return;
  }
  serve(values);
}

function parseCli(argv: string[]) {
  return parseArgs({
    args: argv,
    options: {
      'kong-prefix': { type: 'string', short: 'p', default: '/usr/local/kong' },
      'sock-name': { type: 'string', default: 'payg.sock' },
      'dump-all-plugins': { type: 'boolean', default: false },
      'dump-plugin-info': { type: 'string' },
      // Accepted for drop-in compatibility with kong-js-pluginserver; payg serves only itself.
      'plugins-directory': { type: 'string', short: 'd' },
      verbose: { type: 'boolean', short: 'v', multiple: true },
      version: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
}

function serve(values: ReturnType<typeof parseCli>['values']): void {
  if (values.version) {
    process.stdout.write(`payg ${paygModule.Version} (kong-pdk ${pdkVersion})\n`);
    return;
  }
  if ((values.verbose?.length ?? 0) > 1 && !process.env.PAYG_LOG_LEVEL) log.level = 'debug';

  const server = new PaygPluginServer(pdkLogger(log));
  // Like kong-js-pluginserver: stop kong-pdk's idle-instance sweep (it would drop an
  // instance after 60 s idle and make Kong restart it on the next request).
  server.close();

  if (values['dump-all-plugins']) {
    void server.GetPluginInfo(paygModule.Name).then((info) => process.stdout.write(`${JSON.stringify([info])}\n`));
    return;
  }
  if (values['dump-plugin-info'] !== undefined) {
    const { encode }: { encode: (v: unknown) => Uint8Array } = require('@msgpack/msgpack');
    void server.GetPluginInfo(values['dump-plugin-info']).then((info) => process.stdout.write(encode(info)));
    return;
  }

  setSpoolDir(values['kong-prefix']);
  const socketPath = path.join(values['kong-prefix'], values['sock-name']);
  new KongPdkListener(server, socketPath).serve();
  log.info({ socket: socketPath, version: paygModule.Version }, 'payg plugin server listening');

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'payg plugin server stopping; giving leases back and sending queued usage');
    // Bounded: Kong waits for its plugin servers. What is not sent by then is kept on disk.
    void shutdownAll(STOP_DEADLINE_MS).finally(() => process.exit(0));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

