// Access-phase latency through the same Kong-side harness the tests use:
//   (a) a plugin that only calls kong.client.getConsumer (the floor any plugin pays)
//   (b) payg drawing on a live lease     (c) payg with a cached block
// Each plugin server is pinned to one core (taskset) and the harness to the other,
// and the three are measured in interleaved rounds so drift hits all alike.
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { KongHarness, accessPdk } from '../testkit/kong-harness';
import { startPluginServer, type PluginServerProcess } from '../testkit/pluginserver-process';
import { FakeControlService, block, leased } from '../testkit/fake-control-service';

const ROUNDS = Number(process.env.ROUNDS ?? 10);
const PER_ROUND = Number(process.env.PER_ROUND ?? 3000);
const VARIANT = path.join(__dirname, '../testkit/variant-pluginserver.js');
const PINNED_CPU = Number(process.env.PINNED_CPU ?? 1);

interface Case { name: string; server: PluginServerProcess; kong: KongHarness; id: string; samples: number[] }

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

async function main() {
  try { require('node:os').setPriority(0); } catch { /* best effort */ }
  const svc = await new FakeControlService().start();
  svc.decide = (consumer) => (consumer === 'cus_blocked' ? block('{"error":"payment_required"}', { ttlMs: 3_600_000 }) : leased(1_000_000, { ttlMs: 3_600_000, leaseTtlMs: 3_600_000 }));
  const cfg = { control_service_url: svc.url, report_usage: false, cache_ttl_ms: 3_600_000 };
  const mk = async (name: string, command: string[] | undefined, consumer: string): Promise<Case & { consumer: string }> => {
    const server = await startPluginServer({ command, cpu: PINNED_CPU });
    const kong = new KongHarness(server.socketPath);
    const id = await kong.startInstance('payg', cfg);
    return { name, server, kong, id, samples: [], consumer };
  };
  const cases = [
    await mk('a) getConsumer only', [process.execPath, VARIANT, '--server', 'payg', '--plugin', 'getconsumer'], 'cus_allowed'),
    await mk('b) payg on a live lease', undefined, 'cus_allowed'),
    await mk('c) payg cached block', undefined, 'cus_blocked'),
  ];
  for (const c of cases) {
    const pdk = accessPdk({ id: 'c1', custom_id: c.consumer });
    for (let i = 0; i < 2000; i++) await c.kong.handleEvent(c.id, 'access', pdk); // warm-up, fills the cache
  }
  for (let round = 0; round < ROUNDS; round++) {
    for (const c of cases) {
      const pdk = accessPdk({ id: 'c1', custom_id: c.consumer });
      for (let i = 0; i < PER_ROUND; i++) {
        const t0 = performance.now();
        await c.kong.handleEvent(c.id, 'access', pdk);
        c.samples.push(performance.now() - t0);
      }
    }
  }
  const medians: Record<string, number> = {};
  console.log(`access event latency, ${ROUNDS * PER_ROUND} events each, plugin servers pinned to CPU ${PINNED_CPU}`);
  for (const c of cases) {
    const sorted = c.samples.sort((x, y) => x - y);
    medians[c.name[0]] = quantile(sorted, 0.5);
    console.log(`${c.name.padEnd(24)} median ${(quantile(sorted, 0.5) * 1000).toFixed(1)} µs   p99 ${(quantile(sorted, 0.99) * 1000).toFixed(1)} µs`);
  }
  console.log(`ratio b/a (median): ${(medians.b / medians.a).toFixed(3)}   (target ≤ 1.10)`);
  console.log(`decision calls made to the control service during the run: ${svc.decisionPaths.length} (cache warm-up only)`);
  for (const c of cases) { c.kong.close(); await c.server.stop(); }
  await svc.stop();
}

void main().catch((err) => { console.error(err); process.exit(1); });
