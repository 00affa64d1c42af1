// Without mocha's `exit: true` the run ends when nothing is left running. A
// server, child process or timer a test forgot would keep it alive forever:
// once every test has ended, this gives the run a few seconds to drain, then
// names what is still open and fails it.
const GRACE_MS = 5000;

export const mochaHooks = {
  afterAll(): void {
    setTimeout(() => {
      const open = process.getActiveResourcesInfo().filter((r) => r !== 'TTYWrap');
      process.stderr.write(`\nleak watch: the run did not end ${GRACE_MS} ms after the last test; still open: ${open.join(', ')}\n`);
      process.exit(1);
    }, GRACE_MS).unref();
  },
};
