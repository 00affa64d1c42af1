// Mocha's spec reporter, plus mocha's own pass/fail counts written as JSON to
// $PAYG_TEST_RESULT when set, so CI reads the result instead of parsing prose.
import fs from 'node:fs';
import Mocha from 'mocha';

class ResultReporter extends Mocha.reporters.Spec {
  constructor(runner: Mocha.Runner, options?: Mocha.MochaOptions) {
    super(runner, options);
    runner.once('end', () => {
      const file = process.env.PAYG_TEST_RESULT;
      if (!file || !this.stats) return;
      fs.writeFileSync(file, JSON.stringify({ passed: this.stats.passes, failed: this.stats.failures, pending: this.stats.pending }));
    });
  }
}
export = ResultReporter;
