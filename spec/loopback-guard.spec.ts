// The root hook in spec/support/loopback-guard.ts keeps every test on this
// machine. These prove it refuses, in the test process and in children, and
// lets loopback through.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { expect } from 'chai';
import { isLoopbackHost } from './support/loopback-guard';

// TEST-NET-1 (RFC 5737): the guard refuses it before any packet is sent.
const OUTSIDE = '192.0.2.1';

function takeViolations(): string {
  const file = process.env.PAYG_NET_GUARD_LOG!;
  const text = fs.readFileSync(file, 'utf8');
  fs.truncateSync(file, 0);
  return text;
}

describe('loopback guard', () => {
  it('classifies loopback and everything else', () => {
    for (const h of ['127.0.0.1', '127.8.9.10', '::1', '[::1]', 'localhost', undefined, '::ffff:127.0.0.1']) expect(isLoopbackHost(h), String(h)).to.equal(true);
    for (const h of ['10.255.255.1', '192.168.1.1', '8.8.8.8', '::ffff:10.0.0.1', 'fe80::1', 'api.stripe.com', '0.0.0.0']) expect(isLoopbackHost(h), h).to.equal(false);
  });

  it('refuses a connection outside loopback in the test process and records it', async () => {
    const err = await new Promise<Error>((resolve) => {
      const socket = net.connect({ host: OUTSIDE, port: 81 });
      socket.on('error', resolve);
      socket.on('connect', () => resolve(new Error('connected')));
    });
    expect(err.message).to.match(/loopback guard: refused connection to 192\.0\.2\.1:81/);
    expect(takeViolations()).to.include('192.0.2.1:81');
  });

  it('refuses it in a child Node process too (NODE_OPTIONS carries the guard)', () => {
    const script = `require('http').get('http://${OUTSIDE}:80/').on('error', (e) => { console.log(e.message); });`;
    const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', env: process.env, timeout: 5000 });
    expect(run.stdout).to.match(/loopback guard: refused/);
    expect(takeViolations()).to.include(`${OUTSIDE}:80`);
  });

  it('lets loopback through', async () => {
    const server = net.createServer((s) => s.end('hi'));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as net.AddressInfo).port;
    const got = await new Promise<string>((resolve, reject) => {
      const socket = net.connect({ host: '127.0.0.1', port }, () => undefined);
      let data = '';
      socket.on('data', (d) => { data += d; });
      socket.on('end', () => resolve(data));
      socket.on('error', reject);
    });
    await new Promise((r) => server.close(r));
    expect(got).to.equal('hi');
  });
});
