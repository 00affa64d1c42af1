// An HTTP server on a free loopback port for the fakes tests talk to.
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export abstract class LoopbackServer {
  protected readonly server = http.createServer((req, res) => this.handle(req, res));
  url = '';

  protected abstract handle(req: http.IncomingMessage, res: http.ServerResponse): void;

  async start(): Promise<this> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

  /** Stops listening; a second call (a test stopped it, then its afterEach) does nothing. */
  async stop(): Promise<void> {
    if (!this.server.listening) return;
    this.server.closeAllConnections();
    await new Promise((r) => this.server.close(r));
  }
}
