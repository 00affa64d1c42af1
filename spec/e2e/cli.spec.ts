// Both bins answer --help and --version, and an unknown flag gets a one-line usage, never a stack trace.
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { expect } from 'chai';
import { ROOT } from '../../testkit/pluginserver-process';

const BINS = {
  'payg-control': path.join(ROOT, 'control-service/bin/payg-control'),
  'payg-pluginserver': path.join(ROOT, 'plugin/bin/payg-pluginserver'),
};
const { version } = require(path.join(ROOT, 'package.json')) as { version: string };

function run(bin: string, args: string[]) {
  return spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 10_000 });
}

describe('command lines', () => {
  for (const [name, bin] of Object.entries(BINS)) {
    it(`${name} --help prints its usage and exits 0`, () => {
      const r = run(bin, ['--help']);
      expect(r.status).to.equal(0);
      expect(r.stdout).to.match(new RegExp(`^usage: ${name} `));
      expect(r.stdout).to.include('--version');
    });

    it(`${name} --version prints the package version and exits 0`, () => {
      const r = run(bin, ['--version']);
      expect(r.status).to.equal(0);
      expect(r.stdout).to.include(version);
    });

    it(`${name} with an unknown flag: exit 2 and one line naming it, no stack trace`, () => {
      const r = run(bin, ['--no-such-flag']);
      expect(r.status).to.equal(2);
      const lines = r.stderr.trim().split('\n');
      expect(lines, r.stderr).to.have.length(1);
      expect(lines[0]).to.include('--no-such-flag').and.include(`usage: ${name}`);
      expect(r.stderr).to.not.match(/\n\s+at /);
    });
  }

  it('payg-control with a missing config file: one line naming the file, exit 1', () => {
    const r = run(BINS['payg-control'], ['--config', '/nonexistent/payg.yml']);
    expect(r.status).to.equal(1);
    expect(r.stderr.trim().split('\n')).to.have.length(1);
    expect(r.stderr).to.include('/nonexistent/payg.yml');
  });
});
