// A real SMTP server on loopback (smtp-server) that keeps what arrives and can
// misbehave on demand: refuse connections for a while, or answer the next
// messages with a 4xx or 5xx. Messages are kept raw at the moment the server
// answers 250 and parsed with mailparser when read.

import { SMTPServer } from 'smtp-server';
import { simpleParser, type ParsedMail } from 'mailparser';
import type { AddressInfo } from 'node:net';

export class SmtpCapture {
  /** Raw messages accepted, in arrival order. */
  readonly raw: Buffer[] = [];
  /** When each raw message was accepted (Date.now()), in the same order. */
  readonly acceptedAt: number[] = [];
  port = 0;
  user = 'payg';
  password = 'smtp-test-password';
  private server: SMTPServer | undefined;
  private failures: Array<{ code: number; message: string }> = [];

  get url(): string { return `smtp://${this.user}:${this.password}@127.0.0.1:${this.port}`; }

  async start(): Promise<this> {
    await this.listen(this.port);
    return this;
  }

  private async listen(port: number): Promise<void> {
    const server = new SMTPServer({
      disabledCommands: ['STARTTLS'],
      allowInsecureAuth: true,
      logger: false,
      onAuth: (auth, _session, cb) => (auth.username === this.user && auth.password === this.password
        ? cb(null, { user: auth.username }) : cb(new Error('Invalid username or password'))),
      onData: (stream, _session, cb) => {
        const chunks: Buffer[] = [];
        stream.on('data', (c: Buffer) => chunks.push(c));
        stream.on('end', () => {
          const failure = this.failures.shift();
          if (failure) return cb(Object.assign(new Error(failure.message), { responseCode: failure.code }));
          this.raw.push(Buffer.concat(chunks));
          this.acceptedAt.push(Date.now());
          cb();
        });
      },
    });
    server.on('error', () => undefined);
    await new Promise<void>((resolve, reject) => {
      server.server.once('error', reject);
      server.listen(port, '127.0.0.1', () => resolve());
    });
    this.port = (server.server.address() as AddressInfo).port;
    this.server = server;
  }

  /** The next `count` messages are answered `code` (e.g. 451 or 550). */
  failNext(count: number, code: number, message = code >= 500 ? 'Mailbox unavailable' : 'Try again later'): void {
    for (let i = 0; i < count; i++) this.failures.push({ code, message });
  }

  /** Stops listening: connections are refused until up(). */
  async down(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (!server) return;
    for (const conn of (server as unknown as { connections: Set<{ close(): void }> }).connections ?? []) conn.close();
    await new Promise<void>((r) => server.close(() => r()));
  }

  /** Listens again on the same port. */
  async up(): Promise<void> { await this.listen(this.port); }

  async stop(): Promise<void> { await this.down(); }

  async inbox(): Promise<ParsedMail[]> {
    return Promise.all(this.raw.map((m) => simpleParser(m)));
  }

  async waitForCount(n: number, timeoutMs = 5000): Promise<ParsedMail[]> {
    const deadline = Date.now() + timeoutMs;
    while (this.raw.length < n) {
      if (Date.now() > deadline) throw new Error(`expected ${n} emails, have ${this.raw.length}`);
      await new Promise((r) => setTimeout(r, 10));
    }
    return this.inbox();
  }
}
