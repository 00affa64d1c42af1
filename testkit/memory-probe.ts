// Preloaded into a process under a memory test (`node --require <this file>`, or
// NODE_OPTIONS=--require=<this file> for a process a launcher starts): on SIGUSR2 it
// collects all garbage it can and writes `process.memoryUsage()` as one JSON line on
// stderr, `{"memoryProbe":<n>,"rss":...,"heapUsed":...,"external":...,"arrayBuffers":...,"spaces":{...}}`.
//
// What a leak is: memory still reachable after a full collection. RSS is not that
// measure: it also counts what V8 keeps for its young generation and for old-space
// growth it sized ahead, and pages malloc freed but did not return to the system,
// all of which differ between Node (V8) versions. Never loaded by shipped code.
import v8 from 'node:v8';
import vm from 'node:vm';

type Gc = (options?: { type?: 'major' | 'minor'; execution?: 'sync' | 'async' }) => void;

function collector(): Gc {
  const exposed = (globalThis as { gc?: Gc }).gc;
  if (exposed) return exposed;
  // NODE_OPTIONS cannot carry --expose-gc on every supported Node: set the flag now and
  // take the function a fresh context then gets.
  v8.setFlagsFromString('--expose-gc');
  return vm.runInNewContext('gc') as Gc;
}

const gc = collector();
let probes = 0;

process.on('SIGUSR2', () => {
  // Several passes: a first collection runs finalizers and weak callbacks (closed sockets'
  // handles, Buffers' backing stores) whose objects only the next one frees.
  for (let i = 0; i < 4; i++) gc();
  // Per V8 heap space: bytes reserved (space_size) and in use, to tell heap sizing from growth.
  const spaces = Object.fromEntries(v8.getHeapSpaceStatistics().map((s) => [s.space_name, [s.space_size, s.space_used_size]]));
  process.stderr.write(`${JSON.stringify({ memoryProbe: ++probes, ...process.memoryUsage(), spaces })}\n`);
});
