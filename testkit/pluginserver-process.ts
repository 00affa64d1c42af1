// Starts a plugin server process on a Unix socket in a temp dir and reads its
// JSON logs, as Kong's process manager would run pluginserver_payg_start_cmd.

import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export const ROOT = path.resolve(__dirname, '../../');
export const PAYG_PLUGINSERVER = path.join(ROOT, 'plugin/bin/payg-pluginserver');

export interface PluginServerProcess {
  proc: ChildProcess;
  socketPath: string;
  logs: Array<Record<string, unknown>>;
  rssKb(): number;
  stop(): Promise<void>;
}

/** `prefix`: Kong's prefix directory to use (kept after stop, as Kong keeps its prefix across restarts). */
export async function startPluginServer(opts: { command?: string[]; env?: NodeJS.ProcessEnv; cpu?: number; prefix?: string } = {}): Promise<PluginServerProcess> {
  const dir = opts.prefix ?? fs.mkdtempSync(path.join(os.tmpdir(), 'payg-ps-'));
  const sockName = 'payg.sock';
  const socketPath = path.join(dir, sockName);
  let command = [...(opts.command ?? [process.execPath, PAYG_PLUGINSERVER]), '-p', dir, '--sock-name', sockName];
  if (opts.cpu !== undefined) command = ['taskset', '-c', String(opts.cpu), ...command];
  const proc = spawn(command[0], command.slice(1), { env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const logs: Array<Record<string, unknown>> = [];
  let pending = '';
  proc.stderr!.on('data', (chunk: Buffer) => {
    pending += chunk.toString();
    const lines = pending.split('\n');
    pending = lines.pop() ?? '';
    for (const line of lines) {
      try { logs.push(JSON.parse(line)); } catch { logs.push({ msg: line }); }
    }
  });
  proc.stdout!.resume();
  const deadline = Date.now() + 20_000; // generous: a loaded machine (two shared cores) starts Node slowly
  // The socket file appears at bind(), a moment before listen(): on a busy machine a client
  // can meet ECONNREFUSED in between. Ready means a connection is accepted.
  while (!fs.existsSync(socketPath) || !(await accepts(socketPath))) {
    if (proc.exitCode !== null) throw new Error(`plugin server exited with ${proc.exitCode}: ${JSON.stringify(logs)}`);
    if (Date.now() > deadline) {
      proc.kill('SIGKILL'); // nothing else holds it: do not leave it running
      throw new Error('plugin server did not open its socket');
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    proc, socketPath, logs,
    rssKb() {
      const status = fs.readFileSync(`/proc/${proc.pid}/status`, 'utf8');
      return Number(/VmRSS:\s+(\d+)/.exec(status)![1]);
    },
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        const exited = new Promise((r) => proc.once('exit', r));
        proc.kill('SIGTERM');
        await exited;
      }
      if (opts.prefix === undefined) fs.rmSync(dir, { recursive: true, force: true });
      else fs.rmSync(socketPath, { force: true });
    },
  };
}

/** True when a connection to the Unix socket is accepted (then closed at once). */
function accepts(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.connect(socketPath);
    probe.once('connect', () => { probe.destroy(); resolve(true); });
    probe.once('error', () => resolve(false));
  });
}
