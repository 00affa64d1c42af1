// Without mocha's `exit: true` the run ends when nothing is left running. A
// server, child process or timer a test forgot would keep it alive forever:
// once every test has ended, this gives the run a few seconds to drain, then
// names what is still open and fails it.
const GRACE_MS = 5000;

/** Child processes still held, by their command line (Node's internal handle list names them). */
function openChildren(): string[] {
  const handles = (process as unknown as { _getActiveHandles?: () => unknown[] })._getActiveHandles?.() ?? [];
  return handles.flatMap((h) => {
    const child = h as { spawnargs?: string[]; pid?: number };
    return Array.isArray(child.spawnargs) ? [`pid ${child.pid}: ${child.spawnargs.join(' ')}`] : [];
  });
}

export const mochaHooks = {
  afterAll(): void {
    setTimeout(() => {
      const open = process.getActiveResourcesInfo().filter((r) => r !== 'TTYWrap');
      const children = openChildren();
      process.stderr.write(`\nleak watch: the run did not end ${GRACE_MS} ms after the last test; still open: ${open.join(', ')}\n`
        + children.map((c) => `  child process ${c}\n`).join(''));
      // Mocha sets the exit code to its failure count in an 'exit' listener; this one runs after it.
      process.on('exit', () => { process.exitCode = 1; });
      process.exit(1);
    }, GRACE_MS).unref();
  },
};
