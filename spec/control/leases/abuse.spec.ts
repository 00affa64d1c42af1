// Issue 11 on the lease, stream and balance endpoints: authenticated callers
// still get bounded bodies, bounded streams and answers for no one else.
import { expect } from 'chai';
import net from 'node:net';
import type { RunningService } from '../../../control-service/src/service';
import { MAX_STREAMS, MAX_STREAM_BACKLOG } from '../../../control-service/src/http/stream';
import type { StripeEmulator } from '../../../testkit/stripe-emulator';
import { CONTROL, serviceFixture } from '../../support/fixture';
import { until } from '../../support/until';

describe('abuse: leases, the change stream and the balance API', function () {
  this.timeout(30_000);
  const fx = serviceFixture({ prefix: 'payg-lease-abuse-', scope: 'suite' });
  let stripe: StripeEmulator;
  let svc: RunningService;
  const sockets: net.Socket[] = [];

  before(async () => {
    stripe = fx.stripe;
    svc = await fx.start({
      listen: { host: '127.0.0.1' },
      metering: { default_cost: 1, settle: { schedule: undefined, enabled: false } },
    }, { publicBodyTimeoutMs: 300 });
  });
  afterEach(() => { for (const s of sockets.splice(0)) s.destroy(); });

  /** A raw connection that writes `head` and collects what comes back. */
  function raw(head: string): { socket: net.Socket; answer: () => string; closed: () => boolean } {
    const { hostname, port } = new URL(svc.url);
    const socket = net.connect({ host: hostname, port: Number(port) });
    let text = '';
    let closed = false;
    socket.on('data', (c) => { text += c.toString(); });
    socket.on('close', () => { closed = true; });
    socket.on('error', () => undefined);
    socket.write(head);
    sockets.push(socket);
    return { socket, answer: () => text, closed: () => closed };
  }
  const streamHead = (node: string) => `GET /v1/stream?node=${node} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${CONTROL}\r\n\r\n`;

  it('a lease body far larger than a lease request gets 413 and its connection closes; a stalled one gets 408', async () => {
    for (const p of ['/v1/leases', '/v1/leases/release']) {
      const limit = p === '/v1/leases' ? 64 * 1024 : 2 * 1024 * 1024;
      const big = await fetch(`${svc.url}${p}`, { method: 'POST', headers: { authorization: `Bearer ${CONTROL}` }, body: Buffer.alloc(limit, ' ') });
      expect(big.status, p).to.equal(413);
      expect(big.headers.get('connection'), p).to.equal('close');
      const stalled = raw(`POST ${p} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${CONTROL}\r\nContent-Length: 100\r\n\r\n{"node":`);
      await until(() => stalled.answer().includes('\r\n\r\n'), 3000, `no answer to a stalled ${p} body`);
      expect(stalled.answer(), p).to.match(/^HTTP\/1\.1 408 /);
    }
  });

  it('lease calls: 401 without the token before the body is read; a bad field gets 400 naming it', async () => {
    const noToken = await fetch(`${svc.url}/v1/leases`, { method: 'POST', body: Buffer.alloc(64 * 1024, ' ') });
    expect(noToken.status).to.equal(401);
    const post = (p: string, body: unknown) => fetch(`${svc.url}${p}`, { method: 'POST', headers: { authorization: `Bearer ${CONTROL}` }, body: JSON.stringify(body) })
      .then(async (r) => ({ status: r.status, body: await r.json() as { message?: string } }));
    const bad = await post('/v1/leases', { node: 'n1', consumer: 'c', want: -1 });
    expect(bad.status).to.equal(400);
    expect(bad.body.message).to.match(/^want: /);
    const negative = await post('/v1/leases/release', { node: 'n1', leases: [{ id: 'l', drawn: 1, drawn_micros: -5 }] });
    expect(negative.status).to.equal(400);
    expect(negative.body.message).to.match(/^leases\[0\]\.drawn_micros: /);
    const notJson = await fetch(`${svc.url}/v1/leases`, { method: 'POST', headers: { authorization: `Bearer ${CONTROL}` }, body: '{"node":' });
    expect(notJson.status).to.equal(400);
  });

  it('the stream: 401 without the token; a node reconnecting replaces its old stream', async () => {
    const anonymous = await fetch(`${svc.url}/v1/stream?node=x`);
    expect(anonymous.status).to.equal(401);
    const first = raw(streamHead('node-a'));
    await until(() => first.answer().includes('event: hello'), 3000, 'first stream not open');
    const second = raw(streamHead('node-a'));
    await until(() => second.answer().includes('event: hello'), 3000, 'second stream not open');
    await until(() => first.closed(), 3000, 'the old stream of a reconnected node stayed open');
    expect(second.closed()).to.equal(false);
    expect(svc.stream.nodes()).to.deep.equal(['node-a']);
  });

  it(`at most ${MAX_STREAMS} streams at once: the next gets 503`, async () => {
    const open = [];
    for (let i = 0; i < MAX_STREAMS; i++) open.push(raw(streamHead(`node-${i}`)));
    await until(() => svc.stream.nodes().length === MAX_STREAMS, 10_000, 'streams did not open');
    const extra = await fetch(`${svc.url}/v1/stream?node=one-too-many`, { headers: { authorization: `Bearer ${CONTROL}` } });
    expect(extra.status).to.equal(503);
    for (const s of sockets.splice(0)) s.destroy();
    await until(() => svc.stream.nodes().length === 0, 5000, 'closed streams were not let go of');
  });

  it('a stream client that never reads holds at most 256 KB of changes; when it reads again it is told to drop everything', async () => {
    const slow = raw(streamHead('never-reads'));
    const good = raw(streamHead('reads'));
    await until(() => slow.answer().includes('event: hello') && good.answer().includes('event: hello'), 3000, 'streams not open');
    slow.socket.pause();
    const consumers = Array.from({ length: 1000 }, (_, i) => `cus_${String(i).padStart(14, '0')}`); // ~20 KB a frame
    let most = 0;
    for (let round = 0; round < 1000; round++) { // ~20 MB in all
      svc.stream.changed(consumers);
      most = Math.max(most, svc.stream.maxBacklog());
      if (round % 10 === 0) await new Promise((r) => setTimeout(r, 1));
    }
    expect(most, 'bytes queued for one stream').to.be.at.most(MAX_STREAM_BACKLOG);
    expect(svc.stream.nodes()).to.include.members(['never-reads', 'reads']);
    slow.socket.resume();
    await until(() => slow.answer().includes('data: {"all":true}'), 5000, 'the slow node was never told to drop everything');
    await until(() => good.answer().length > 1_000_000, 5000, 'the reading node got no changes');
  });

  it('GET /v1/balance answers for no one when Kong says the consumer is anonymous, or the consumer header comes twice', async () => {
    stripe.create({ balance: -1234, metadata: { kong_consumer: 'alice' } });
    stripe.create({ balance: -999999, metadata: { kong_consumer: 'bob' } });
    await svc.sync!.sweep();
    const get = (headers: Array<[string, string]>) => fetch(`${svc.url}/v1/balance`, { headers: [['authorization', `Bearer ${CONTROL}`], ...headers] });
    expect((await get([['x-consumer-custom-id', 'alice']])).status, 'the consumer Kong set').to.equal(200);
    expect((await get([['x-consumer-custom-id', 'alice'], ['x-anonymous-consumer', 'true']])).status, 'anonymous consumer').to.equal(400);
    // Kong replaces the header with one value; two header lines mean a client's own went through.
    const twice = raw(`GET /v1/balance HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${CONTROL}\r\nX-Consumer-Custom-ID: alice\r\nX-Consumer-Custom-ID: bob\r\nConnection: close\r\n\r\n`);
    await until(() => twice.closed(), 3000, 'no answer');
    expect(twice.answer(), 'two consumer headers').to.match(/^HTTP\/1\.1 400 /);
  });
});
