// Which replica runs the singleton work (Stripe sweep, settlement passes, email
// sending, pruning). With SQLite there is one process: it leads. With
// PostgreSQL the leader is whoever holds a session advisory lock on its own
// dedicated connection: the lock lives exactly as long as that session, so a
// replica killed with -9 loses it when PostgreSQL sees the socket close, and a
// connection that breaks means leadership is lost at once. Followers try again
// every `retryMs`. Server-side TCP keepalives end the session of a host that
// vanished without closing its socket.

import pg from 'pg';

export interface Leadership {
  readonly isLeader: boolean;
  /** Called with true when this replica becomes leader, false when it stops being one. */
  onChange(listener: (leader: boolean) => void): void;
  stop(): Promise<void>;
}

/** One process on SQLite: always the leader. */
export function soleLeader(): Leadership {
  return { isLeader: true, onChange: () => undefined, stop: async () => undefined };
}

/** The advisory lock key the leader holds (any constant unique to payg's singleton work). */
export const LEADER_LOCK = 0x7061796c; // "payl"

export class PostgresLeadership implements Leadership {
  private client: pg.Client | undefined;
  private leader = false;
  private stopped = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly listeners: Array<(leader: boolean) => void> = [];

  constructor(private readonly url: string, private readonly opts: { retryMs?: number; onError?: (err: Error) => void } = {}) {}

  get isLeader(): boolean { return this.leader; }

  onChange(listener: (leader: boolean) => void): void { this.listeners.push(listener); }

  /** Tries once now, then keeps trying (as follower) or checking the session (as leader). */
  async start(): Promise<void> {
    await this.tick();
  }

  private schedule(): void {
    if (!this.stopped) this.timer = setTimeout(() => { void this.tick(); }, this.opts.retryMs ?? 1000);
  }

  private async tick(): Promise<void> {
    try {
      const client = await this.connection();
      if (this.leader) {
        await client.query('SELECT 1'); // still our session, so still our lock
      } else {
        const got = (await client.query('SELECT pg_try_advisory_lock($1) AS got', [LEADER_LOCK])).rows[0].got as boolean;
        if (got && !this.stopped) this.set(true);
      }
    } catch (err) {
      this.lose(err as Error);
    }
    this.schedule();
  }

  private async connection(): Promise<pg.Client> {
    if (this.client) return this.client;
    // Keepalives on both ends: PostgreSQL drops the session (and the lock) of a host gone silent within ~10 s.
    const client = new pg.Client({
      connectionString: this.url, keepAlive: true, application_name: 'payg-control leader',
      options: '-c tcp_keepalives_idle=4 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=2',
    });
    // Only the current connection's end counts (an old one may end after its replacement started).
    client.on('error', (err) => { if (this.client === client) this.lose(err); });
    client.on('end', () => { if (this.client === client) this.lose(new Error('leader connection ended')); });
    this.client = client;
    await client.connect();
    return client;
  }

  private lose(err: Error): void {
    const client = this.client;
    this.client = undefined;
    client?.end().catch(() => undefined);
    if (this.leader) this.set(false);
    if (!this.stopped) this.opts.onError?.(err);
  }

  private set(leader: boolean): void {
    this.leader = leader;
    for (const l of this.listeners) l(leader);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    const client = this.client;
    this.client = undefined;
    if (this.leader) this.set(false);
    // Ending the session releases the lock: a follower takes over at its next try.
    await client?.end().catch(() => undefined);
  }
}
