// Kong's side of the external plugin protocol, as kong/runloop/plugin_servers
// speaks it: MessagePack-RPC over a Unix socket, one request at a time per
// connection, StartInstance with a JSON *string* config carrying Kong's own
// keys, HandleEvent, then Step/StepConsumer/StepError answers to each PDK call
// until the plugin returns "ret" — and nothing more after kong.response.exit().

import net from 'node:net';
import { encode, decode } from '@msgpack/msgpack';

export interface ExitCall { status: number; body: string | undefined; headers: Record<string, string> | undefined }
export interface EventResult {
  /** Set when the plugin ended the request with kong.response.exit(). */
  exit: ExitCall | undefined;
  /** PDK methods the plugin called, in order. */
  pdkCalls: string[];
}

/** What the PDK answers: a value, or `{ pdkError }` for a call that fails in Kong. */
export type PdkAnswer = unknown | { pdkError: string };
export type PdkHandlers = Record<string, (...args: unknown[]) => PdkAnswer>;

// Kong's get_step_method: typed Step variants for entity-returning PDK calls.
const STEP_METHOD_BY_PDK: Record<string, string> = {
  'kong.client.get_credential': 'plugin.StepCredential',
  'kong.client.load_consumer': 'plugin.StepConsumer',
  'kong.client.get_consumer': 'plugin.StepConsumer',
  'kong.client.authenticate': 'plugin.StepCredential',
  'kong.node.get_memory_stats': 'plugin.StepMemoryStats',
  'kong.router.get_route': 'plugin.StepRoute',
  'kong.router.get_service': 'plugin.StepService',
  'kong.request.get_query': 'plugin.StepMultiMap',
  'kong.request.get_headers': 'plugin.StepMultiMap',
  'kong.response.get_headers': 'plugin.StepMultiMap',
  'kong.service.response.get_headers': 'plugin.StepMultiMap',
};
const NON_RETURN = new Set(['kong.response.exit', 'kong.response.error']);

class RpcConnection {
  private buffer: Buffer = Buffer.alloc(0);
  private waiter: { resolve: (v: unknown[]) => void; reject: (e: Error) => void } | undefined;
  constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
      let message: unknown[];
      try {
        message = decode(this.buffer) as unknown[];
      } catch (err) {
        if (err instanceof RangeError) return; // partial message: wait for more bytes
        this.fail(err as Error);
        return;
      }
      this.buffer = Buffer.alloc(0);
      const waiter = this.waiter;
      this.waiter = undefined;
      waiter?.resolve(message);
    });
    socket.on('error', (err) => this.fail(err));
    socket.on('close', () => this.fail(new Error('plugin server closed the connection')));
  }
  private fail(err: Error) {
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.reject(err);
  }
  send(msgid: number, method: string, arg: unknown): Promise<unknown[]> {
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
      this.socket.write(encode([0, msgid, method, [arg]]));
    });
  }
}

export class RpcError extends Error {}

export class KongHarness {
  private readonly idle: RpcConnection[] = [];
  private msgId = 0;
  private seq = 0;
  private readonly instances = new Map<string, { id: number; config: Record<string, unknown> }>();
  /** Every Step sent after an exit would be a protocol violation; counted to prove there are none. */
  stepsAfterExit = 0;

  constructor(readonly socketPath: string) {}

  /** One RPC: `[0, msgid, method, [arg]]` → `[1, msgid, error, result]`, on a pooled connection. */
  async call(method: string, arg: unknown): Promise<any> {
    const conn = this.idle.pop() ?? await this.connect();
    const msgid = ++this.msgId;
    const [type, id, error, result] = await conn.send(msgid, method, arg);
    this.idle.push(conn);
    if (type !== 1 || id !== msgid) throw new Error(`bad RPC response ${JSON.stringify([type, id])}`);
    if (error !== null && error !== undefined) throw new RpcError(String(error));
    return result;
  }

  private connect(): Promise<RpcConnection> {
    return new Promise((resolve, reject) => {
      const socket = net.createConnection(this.socketPath, () => resolve(new RpcConnection(socket)));
      socket.once('error', reject);
    });
  }

  /**
   * Starts (or restarts) the instance for a plugin config, as Kong's
   * get_instance_id does: keyed by the plugin id, config sent as a JSON string.
   */
  async startInstance(name: string, config: Record<string, unknown>, pluginId = 'plugin-1'): Promise<string> {
    const schema = await this.configSchema(name);
    const conf = { ...withDefaults(schema, config), __seq__: ++this.seq, __plugin_id: pluginId, __key__: `plugins:${pluginId}::::` };
    const status = await this.call('plugin.StartInstance', { Name: name, Config: JSON.stringify(conf) });
    this.instances.set(pluginId, { id: status.Id, config });
    return pluginId;
  }

  private readonly schemas = new Map<string, SchemaField[]>();
  private async configSchema(name: string): Promise<SchemaField[]> {
    let fields = this.schemas.get(name);
    if (!fields) {
      const info = await this.call('plugin.GetPluginInfo', name);
      fields = info.Schema.fields[0].config.fields as SchemaField[];
      this.schemas.set(name, fields);
    }
    return fields;
  }

  /** Runs one phase for one request, answering PDK calls like Kong until "ret" or an exit. */
  async handleEvent(pluginId: string, phase: string, pdk: PdkHandlers, name = 'payg'): Promise<EventResult> {
    const instance = this.instances.get(pluginId);
    if (!instance) throw new Error(`no instance for ${pluginId}`);
    let step: { Data: any; EventId: number };
    try {
      step = await this.call('plugin.HandleEvent', { InstanceId: instance.id, EventName: phase });
    } catch (err) {
      // Kong resets the instance and retries when the server has lost it.
      if (err instanceof RpcError && /no plugin instance/i.test(err.message)) {
        await this.startInstance(name, instance.config, pluginId);
        return this.handleEvent(pluginId, phase, pdk, name);
      }
      throw err;
    }
    const result: EventResult = { exit: undefined, pdkCalls: [] };
    while (step.Data !== 'ret') {
      const { Method: method, Args: args = [] } = step.Data as { Method: string; Args: unknown[] };
      result.pdkCalls.push(method);
      if (NON_RETURN.has(method)) {
        const [status, body, headers] = args as [number, string | undefined, Record<string, string> | undefined];
        result.exit = { status, body, headers };
        return result; // Kong's ngx.exit: the event is never stepped again
      }
      const handler = pdk[method];
      const answer = handler ? handler(...args) : undefined;
      const isError = typeof answer === 'object' && answer !== null && 'pdkError' in answer;
      const stepMethod = isError ? 'plugin.StepError' : (STEP_METHOD_BY_PDK[method] ?? 'plugin.Step');
      step = await this.call(stepMethod, {
        EventId: step.EventId,
        Data: isError ? (answer as { pdkError: string }).pdkError : answer,
      });
    }
    return result;
  }

  close(): void {
    for (const conn of this.idle.splice(0)) conn.socket.destroy();
  }
}

type SchemaField = Record<string, { type: string; default?: unknown; fields?: SchemaField[] }>;

/**
 * What Kong stores for a plugin config: every field present, defaults filled,
 * nested records filled, absent optional fields as null (cjson.null).
 */
export function withDefaults(fields: SchemaField[], given: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...given };
  for (const entry of fields) {
    const [name, def] = Object.entries(entry)[0];
    if (def.type === 'record' && def.fields) {
      out[name] = withDefaults(def.fields, (given[name] as Record<string, unknown> | undefined) ?? {});
    } else if (out[name] === undefined) {
      out[name] = def.default ?? null;
    }
  }
  return out;
}

// ---- requests as Kong would present them ----------------------------------

export interface Consumer { id: string; username?: string; custom_id?: string }

/** kong.ctx.shared for one request: give the same one to its access and log phases. */
export function requestCtx(): PdkHandlers {
  const shared = new Map<string, unknown>();
  return {
    'kong.ctx.shared.set': (key: unknown, value: unknown) => { shared.set(String(key), value); return null; },
    'kong.ctx.shared.get': (key: unknown) => shared.get(String(key)) ?? null,
  };
}

/** The access phase of one request by `consumer` (undefined: no authenticated consumer). */
export function accessPdk(consumer: Consumer | undefined, ctx: PdkHandlers = requestCtx()): PdkHandlers {
  return { ...ctx, 'kong.client.get_consumer': () => consumer };
}

/** The log phase: kong.log.serialize() returns Kong's log entry as a JSON string. */
export function logPdk(entry: { consumer?: Consumer; route?: { id: string; name?: string }; status: number; startedAt?: number }, ctx: PdkHandlers = requestCtx()): PdkHandlers {
  return {
    ...ctx,
    'kong.log.serialize': () => JSON.stringify({
      consumer: entry.consumer,
      route: entry.route,
      response: { status: entry.status, size: 123 },
      request: { method: 'GET', uri: '/anything' },
      started_at: entry.startedAt ?? Date.now(),
    }),
  };
}
