// A plugin server for comparisons, never shipped:
//   --server stock   kong-pdk's own Server class (with its exit() leak), for the leak regression test
//   --server payg    our PaygPluginServer
//   --plugin payg | getconsumer   the payg plugin, or one that only calls kong.client.getConsumer (bench baseline)
import path from 'node:path';
import { parseArgs } from 'node:util';
import { KongPdkServer, KongPdkListener, Module, PaygPluginServer } from '../plugin/src/server';
import * as payg from '../plugin/src/index';
import { log } from '../plugin/src/log';

const getConsumerOnly = {
  Name: 'payg',
  Version: '0.0.0',
  Priority: 920,
  Schema: payg.Schema,
  Plugin: class {
    async access(kong: { client: { getConsumer(): Promise<unknown> } }) { await kong.client.getConsumer(); }
  },
};

const { values } = parseArgs({
  options: {
    server: { type: 'string', default: 'payg' },
    plugin: { type: 'string', default: 'payg' },
    'kong-prefix': { type: 'string', short: 'p' },
    'sock-name': { type: 'string' },
  },
});
const mod = values.plugin === 'getconsumer' ? getConsumerOnly : payg;
const server = values.server === 'stock' ? new KongPdkServer(undefined, log) : new PaygPluginServer(log);
server.plugins.set('payg', new Module('payg', undefined, mod));
server.close();
new KongPdkListener(server, path.join(values['kong-prefix']!, values['sock-name']!)).serve();
