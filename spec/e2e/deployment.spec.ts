// The deployment files CI cannot start (no Docker engine here), checked
// against what they feed: docker-compose.yml's services, ports and env against
// kong.yml, the control service's config and the Dockerfiles; .env.example
// against the secrets both read; docs/plugin.md's config table against the schema
// payg-pluginserver dumps for Kong.
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import YAML from 'yaml';
import { checkExposure, loadConfig } from '../../control-service/src/config';
import { PAYG_PLUGINSERVER, ROOT } from '../../testkit/pluginserver-process';

const read = (file: string) => fs.readFileSync(path.join(ROOT, file), 'utf8');
type Service = { build?: { dockerfile: string }; image?: string; environment?: Record<string, string>; env_file?: string | string[]; volumes?: string[]; ports?: string[] };

/** "host:container[:ro]" volume strings → container path by host path. */
function mounts(service: Service): Map<string, string> {
  return new Map((service.volumes ?? []).map((v) => v.split('#')[0].trim().split(':')).map(([host, target]) => [host, target]));
}
/** The value after a flag in a command line. */
function flag(cmd: string, name: string): string | undefined {
  const parts = cmd.split(/\s+/);
  const i = parts.indexOf(name);
  return i >= 0 ? parts[i + 1] : undefined;
}

describe('deployment files', () => {
  const compose = YAML.parse(read('docker-compose.yml'), { merge: true }) as { services: Record<string, Service>; volumes?: Record<string, unknown> };
  const kongYml = YAML.parse(read('kong.yml'));
  const kong = compose.services.kong;
  const replicas = ['payg-control-1', 'payg-control-2'].map((name) => compose.services[name]);
  const control = replicas[0];
  const kongEnv = kong.environment ?? {};
  const controlEnv = control.environment ?? {};
  const payg = kongYml.services[0].plugins.find((p: { name: string }) => p.name === 'payg').config;

  it('has Kong, two control-service replicas, PostgreSQL, a mail catcher and the upstream', () => {
    expect(compose.services).to.have.keys('kong', 'payg-control-1', 'payg-control-2', 'postgres', 'mailpit', 'upstream');
  });

  it('both replicas run the same image, config and env on one PostgreSQL database, each on its own host port', () => {
    const [one, two] = replicas;
    expect(two.build).to.deep.equal(one.build);
    expect(two.environment).to.deep.equal(one.environment);
    expect(two.volumes).to.deep.equal(one.volumes);
    expect(two.env_file).to.deep.equal(one.env_file);
    const hostPorts = replicas.map((r) => (r.ports ?? []).map((p) => p.split(':').slice(0, -1).join(':')));
    expect(new Set(hostPorts.flat()).size, 'host ports do not collide').to.equal(hostPorts.flat().length);
    // The URL names the compose postgres service, its database, user and the password .env gives both.
    const pgService = compose.services.postgres;
    const pgEnv = pgService.environment ?? {};
    const url = new URL(controlEnv.PAYG_DATABASE_URL.replace(/\$\{POSTGRES_PASSWORD[^}]*\}/, 'secret'));
    expect(url.protocol).to.equal('postgres:');
    expect(compose.services).to.have.property(url.hostname);
    expect(url.hostname).to.equal('postgres');
    expect(url.port).to.equal('5432');
    expect(url.pathname.slice(1)).to.equal(pgEnv.POSTGRES_DB);
    expect(url.username).to.equal(pgEnv.POSTGRES_USER);
    expect(controlEnv.PAYG_DATABASE_URL).to.match(/:\$\{POSTGRES_PASSWORD[:?}]/);
    expect(pgEnv.POSTGRES_PASSWORD).to.match(/^\$\{POSTGRES_PASSWORD[:?}]/);
    expect(mounts(pgService).get('payg-postgres'), 'the database lives on a named volume').to.equal('/var/lib/postgresql/data');
    expect(compose.volumes).to.have.property('payg-postgres');
    for (const r of replicas) expect((r as { depends_on?: Record<string, { condition: string }> }).depends_on?.postgres?.condition).to.equal('service_healthy');
  });

  it('the replicas\' config is the example config but for the store, which is PostgreSQL', () => {
    const { store: replicaStore, ...replicaRest } = YAML.parse(read('control-service/payg.replicas.example.yml'));
    const { store: soleStore, ...soleRest } = YAML.parse(read('control-service/payg.example.yml'));
    expect(replicaRest).to.deep.equal(soleRest);
    expect(replicaStore).to.have.property('postgres');
    expect(soleStore).to.have.property('sqlite');
    const config = loadConfig(path.join(ROOT, 'control-service/payg.replicas.example.yml'), { PAYG_DATABASE_URL: 'postgres://payg:x@postgres:5432/payg' });
    expect(config.postgres).to.deep.include({ url: 'postgres://payg:x@postgres:5432/payg' });
  });

  it('Kong runs DB-less with kong.yml and registers payg\'s plugin server as Kong documents it', () => {
    expect(kongEnv.KONG_DATABASE).to.equal('off');
    expect(mounts(kong).get('./kong.yml')).to.equal(kongEnv.KONG_DECLARATIVE_CONFIG);
    expect(kongEnv.KONG_PLUGINS.split(',')).to.include.members(['bundled', 'payg']);
    expect(kongEnv.KONG_PLUGINSERVER_NAMES.split(',')).to.include('payg');
    const start = kongEnv.KONG_PLUGINSERVER_PAYG_START_CMD;
    expect(start.split(/\s+/)[0]).to.equal('/usr/local/bin/payg-pluginserver');
    expect(`${flag(start, '-p')}/${flag(start, '--sock-name')}`, 'the socket Kong connects to is the one the server creates').to.equal(kongEnv.KONG_PLUGINSERVER_PAYG_SOCKET);
    expect(kongEnv.KONG_PLUGINSERVER_PAYG_QUERY_CMD).to.equal('/usr/local/bin/payg-pluginserver --dump-all-plugins');
    expect(read(kong.build!.dockerfile)).to.include('ln -s /opt/kong-payg/plugin/bin/payg-pluginserver /usr/local/bin/payg-pluginserver');
    expect(kong.ports).to.include('8000:8000');
  });

  it('kong.yml reaches every control-service replica and the upstream by their compose names and ports', () => {
    const urls = [payg.control_service_url, ...(payg.control_service_urls ?? [])].map((u: string) => new URL(u));
    expect(urls.map((u) => u.hostname).sort()).to.deep.equal(['payg-control-1', 'payg-control-2']);
    for (const controlUrl of urls) {
      const replica = compose.services[controlUrl.hostname];
      expect(controlUrl.port).to.equal(replica.environment!.PORT);
      expect((replica.ports ?? []).some((p) => p.endsWith(`:${replica.environment!.PORT}`))).to.equal(true);
    }
    const upstream = new URL(kongYml.services[0].url);
    expect(compose.services).to.have.property(upstream.hostname);
    expect(upstream.port).to.equal('8080'); // go-httpbin's default port
  });

  it('the control token reaches Kong\'s env vault under the name kong.yml references', () => {
    const ref = /^\{vault:\/\/env\/([a-z0-9-]+)\}$/.exec(payg.control_service_token);
    expect(ref, 'a vault reference, not a literal secret').to.not.equal(null);
    const envName = ref![1].toUpperCase().replace(/-/g, '_'); // Kong's env vault: payg-control-token → PAYG_CONTROL_TOKEN
    expect(kongEnv).to.have.property(envName);
    expect(kongEnv[envName]).to.match(/^\$\{PAYG_CONTROL_TOKEN/);
  });

  it('the control service reads the mounted config, finds its templates, mails Mailpit; the image has a folder for SQLite', () => {
    const dockerfile = read(control.build!.dockerfile);
    const cmd = JSON.parse(/^CMD (.+)$/m.exec(dockerfile)![1]) as string[];
    const configTarget = cmd[cmd.indexOf('--config') + 1];
    expect(mounts(control).get('./control-service/payg.replicas.example.yml')).to.equal(configTarget);
    expect(mounts(control).get('./control-service/templates')).to.equal(path.posix.join(path.posix.dirname(configTarget), 'templates'));
    const config = loadConfig(path.join(ROOT, 'control-service/payg.replicas.example.yml'), { PAYG_DATABASE_URL: 'postgres://payg:x@postgres:5432/payg' });
    // The one-process path (docs/operations.md): payg.example.yml's SQLite file goes in a folder the image makes for it.
    const sole = loadConfig(path.join(ROOT, 'control-service/payg.example.yml'), {});
    expect(dockerfile).to.include(`mkdir -p ${path.posix.dirname(sole.sqlitePath)}`);
    for (const e of config.emails) expect(e.html ?? e.text).to.be.a('function'); // every template file resolved and compiled
    const smtp = new URL(controlEnv.SMTP_URL);
    expect(compose.services).to.have.property(smtp.hostname);
    expect(smtp.port).to.equal('1025'); // Mailpit's SMTP port
    // Route costs name kong.yml's routes.
    const routes = kongYml.services.flatMap((s: { routes: Array<{ name: string }> }) => s.routes.map((r) => r.name));
    for (const route of config.metering.pricing.routeCostMicros.keys()) expect(routes).to.include(route);
  });

  it('the example config listens off loopback, so it starts only with .env.example\'s PAYG_CONTROL_TOKEN set', () => {
    const envExample = Object.fromEntries(read('.env.example').split('\n').filter((l) => /^[A-Z_]+=/.test(l)).map((l) => l.split('=', 2) as [string, string]));
    expect(envExample.PAYG_CONTROL_TOKEN).to.be.a('string').that.is.not.empty;
    const example = path.join(ROOT, 'control-service/payg.example.yml');
    expect(checkExposure(loadConfig(example, { PAYG_CONTROL_TOKEN: envExample.PAYG_CONTROL_TOKEN }))).to.deep.equal({ ok: true });
    expect(checkExposure(loadConfig(example, {}))).to.include({ ok: false });
  });

  it('secrets come from an env file that is not committed; .env.example names every one', () => {
    for (const r of replicas) expect(r.env_file).to.equal('.env');
    expect(read('.gitignore').split('\n')).to.include('.env');
    const example = new Set(read('.env.example').split('\n').filter((l) => /^[A-Z_]+=/.test(l)).map((l) => l.split('=')[0]));
    const referenced = [...read('docker-compose.yml').matchAll(/\$\{([A-Z_]+)/g)].map((m) => m[1]);
    for (const name of [...referenced, 'STRIPE_SECRET_KEY', 'STRIPE_WEBHOOK_SECRET', 'PAYG_ADMIN_TOKEN', 'PAYG_CONTROL_TOKEN', 'POSTGRES_PASSWORD']) expect(example, name).to.include(name);
    expect(referenced).to.include('POSTGRES_PASSWORD');
    expect(controlEnv).to.not.have.any.keys('STRIPE_SECRET_KEY', 'STRIPE_WEBHOOK_SECRET', 'PAYG_ADMIN_TOKEN');
    // No literal database password in the compose file.
    expect(controlEnv.PAYG_DATABASE_URL).to.not.match(/:\/\/[^:]+:[^$][^@]*@/);
  });

  it('both images build from the lockfile, with the install-script policy (.npmrc) in force', () => {
    expect(read('.npmrc').split('\n')).to.include('strict-allow-scripts=true');
    for (const file of [kong.build!.dockerfile, control.build!.dockerfile]) {
      const text = read(file);
      expect(text, file).to.include('COPY package.json package-lock.json .npmrc ./');
      expect(text, file).to.match(/RUN npm ci\b/);
      expect(text.indexOf('COPY package.json package-lock.json .npmrc ./'), file).to.be.below(text.search(/RUN npm ci\b/));
    }
  });

  it('both images run Node 26 (LTS), a version package.json\'s engines accepts', () => {
    const engines = (JSON.parse(read('package.json')) as { engines: { node: string } }).engines.node;
    for (const file of [kong.build!.dockerfile, control.build!.dockerfile]) {
      const majors = [...read(file).matchAll(/^FROM node:(\d+)-/gm)].map((m) => Number(m[1]));
      expect(majors, `${file}: every Node stage`).to.not.be.empty;
      for (const major of majors) {
        expect(major, file).to.equal(26);
        expect(engines.split('||').map((r) => r.trim()), `engines "${engines}"`).to.include(`^${major}.0.0`);
      }
    }
    // The Kong image runs the plugin server on the Node binary of its build stage.
    expect(read(kong.build!.dockerfile)).to.include('COPY --from=build /usr/local/bin/node /usr/local/bin/node');
  });

  it('both images build the product alone: no test folder is copied, and tsconfig.build.json compiles without it', function () {
    this.timeout(60_000); // a whole tsc run, on a machine whose two cores may both be busy
    for (const file of [kong.build!.dockerfile, control.build!.dockerfile]) {
      const text = read(file);
      expect(text, file).to.not.match(/COPY (spec|testkit|bench|demo)\b/);
      expect(text, file).to.include('tsconfig.build.json');
    }
    // Compiled in a copy holding only what the images copy, so an import of spec/ or testkit/ fails here.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-image-'));
    try {
      for (const f of ['package.json', 'tsconfig.json', 'tsconfig.build.json']) fs.copyFileSync(path.join(ROOT, f), path.join(dir, f));
      for (const d of ['plugin', 'control-service']) fs.cpSync(path.join(ROOT, d), path.join(dir, d), { recursive: true });
      fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'));
      const tsc = spawnSync(process.execPath, [path.join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json', '--noEmit'], { cwd: dir, encoding: 'utf8' });
      expect(tsc.status, tsc.stdout + tsc.stderr).to.equal(0);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('docs/plugin.md\'s plugin config reference', () => {
  it('lists exactly the dumped schema\'s fields, with their defaults', () => {
    const run = spawnSync(process.execPath, [PAYG_PLUGINSERVER, '--dump-all-plugins'], { encoding: 'utf8' });
    const fields = JSON.parse(run.stdout)[0].Schema.fields[0].config.fields as Array<Record<string, { type: string; default?: unknown; fields?: unknown[] }>>;
    const schema = new Map<string, { type: string; default?: unknown }>();
    const walk = (list: typeof fields, prefix: string) => {
      for (const entry of list) {
        const [name, def] = Object.entries(entry)[0];
        if (def.type === 'record') walk(def.fields as typeof fields, `${prefix}${name}.`); else schema.set(`${prefix}${name}`, def);
      }
    };
    walk(fields, '');

    const doc = read('docs/plugin.md');
    const section = doc.slice(doc.indexOf('## Configuration'), doc.indexOf('\n## ', doc.indexOf('## Configuration') + 5));
    const rows = new Map<string, { type: string; default: string }>();
    for (const line of section.split('\n')) {
      const cells = line.split(/(?<!\\)\|/).map((c) => c.trim()); // "\|" inside a cell is not a separator
      const name = /^`([a-z_.]+)`$/.exec(cells[1] ?? '');
      if (name) rows.set(name[1], { type: cells[2], default: cells[3].replace(/`/g, '') });
    }
    expect([...rows.keys()].sort()).to.deep.equal([...schema.keys()].sort());
    for (const [name, def] of schema) {
      const row = rows.get(name)!;
      expect(row.default, `${name} default`).to.equal(def.default === undefined || def.default === null ? '' : String(def.default));
      const word = { string: /string|custom_id/, integer: /integer/, number: /number/, boolean: /boolean/ }[def.type as 'string'];
      if (word) expect(row.type, `${name} type`).to.match(word);
    }
  });
});
