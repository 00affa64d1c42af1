// Runs the control service as its real process (bin/payg-control), captures
// everything it prints, and reads its URL from the "listening" log line.
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { ROOT } from '../../testkit/pluginserver-process';

export interface ControlProcess {
  proc: ChildProcess;
  url: string;
  output(): string;
  kill(signal: NodeJS.Signals): Promise<void>;
}

export async function startControlProcess(configFile: string, env: NodeJS.ProcessEnv, timeoutMs = 30_000): Promise<ControlProcess> {
  const proc = spawn(process.execPath, [path.join(ROOT, 'control-service/bin/payg-control'), '--config', configFile], {
    env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  proc.stdout!.on('data', (c: Buffer) => { output += c.toString(); });
  proc.stderr!.on('data', (c: Buffer) => { output += c.toString(); });
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const deadline = Date.now() + timeoutMs;
  let m: RegExpExecArray | null;
  while (!(m = /"url":"([^"]+)"/.exec(output))) {
    if (proc.exitCode !== null || Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`control service did not start: ${output}`);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  return {
    proc, url: m[1], output: () => output,
    async kill(signal) { if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal); await exited; },
  };
}
