// Usage events leave the request path at once: they wait in a bounded queue
// and are sent in batches by a background loop that retries with backoff.

import type { UsageQueueOptions } from './schema';

export interface UsageEvent {
  id: string;
  consumer: string;
  at: string;
  route: string | null;
  status: number;
}

/** A batch was taken (undefined), should be sent again, or was refused for what it holds (sending it again cannot help). */
export type SendOutcome = undefined | { retry: string } | { refused: string };

export interface UsageQueueDeps {
  send: (batch: UsageEvent[]) => Promise<SendOutcome>;
  error?: (fields: Record<string, unknown>, msg: string) => void;
  warn: (fields: Record<string, unknown>, msg: string) => void;
}

/** How often at most a "dropped" warning is logged, with the count since the last one. */
const DROP_LOG_INTERVAL_MS = 1000;

export class UsageQueue {
  private readonly queue: UsageEvent[] = [];
  private sending = false;
  private flushTimer: NodeJS.Timeout | undefined;
  private failures = 0;
  private droppedSinceLog = 0;
  private dropLogTimer: NodeJS.Timeout | undefined;
  droppedTotal = 0;

  constructor(private readonly opts: UsageQueueOptions, private readonly deps: UsageQueueDeps) {}

  get size(): number {
    return this.queue.length;
  }

  /** Never blocks and never throws: a full queue drops the event and counts it. */
  push(event: UsageEvent): boolean {
    if (this.queue.length >= this.opts.maxEntries) {
      this.droppedTotal++;
      this.droppedSinceLog++;
      this.dropLogTimer ??= setTimeout(() => this.logDrops(), DROP_LOG_INTERVAL_MS).unref();
      return false;
    }
    this.queue.push(event);
    this.schedule();
    return true;
  }

  /** Sends everything queued now (used at shutdown); resolves when the queue is empty or a send fails. */
  async drain(): Promise<void> {
    clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    while (this.queue.length > 0 && !this.sending) {
      if (!(await this.sendBatch())) break;
    }
    if (this.droppedSinceLog > 0) this.logDrops();
  }

  private logDrops(): void {
    this.dropLogTimer = undefined;
    const dropped = this.droppedSinceLog;
    this.droppedSinceLog = 0;
    this.deps.warn({ dropped, droppedTotal: this.droppedTotal, maxEntries: this.opts.maxEntries },
      'usage queue full: usage events dropped');
  }

  private schedule(): void {
    if (this.sending || this.queue.length === 0) return;
    if (this.failures > 0) return; // a retry is already scheduled
    if (this.queue.length >= this.opts.maxBatchSize) {
      clearTimeout(this.flushTimer);
      this.flushTimer = undefined;
      void this.loop();
    } else {
      this.flushTimer ??= setTimeout(() => { this.flushTimer = undefined; void this.loop(); }, this.opts.maxCoalescingDelayMs).unref();
    }
  }

  private async loop(): Promise<void> {
    if (this.sending) return;
    const ok = await this.sendBatch();
    if (ok) {
      this.schedule();
      return;
    }
    const delay = Math.min(this.opts.initialRetryDelayMs * 2 ** (this.failures - 1), this.opts.maxRetryDelayMs);
    this.flushTimer = setTimeout(() => { this.flushTimer = undefined; void this.loop(); }, delay).unref();
  }

  private async sendBatch(): Promise<boolean> {
    this.sending = true;
    const batch = this.queue.slice(0, this.opts.maxBatchSize);
    let outcome: SendOutcome;
    try {
      outcome = await this.deps.send(batch);
    } catch (err) {
      outcome = { retry: String(err) };
    }
    this.sending = false;
    if (outcome === undefined || 'refused' in outcome) {
      this.queue.splice(0, batch.length);
      this.failures = 0;
      if (outcome) {
        this.droppedTotal += batch.length;
        (this.deps.error ?? this.deps.warn)({ error: outcome.refused, dropped: batch.length, droppedTotal: this.droppedTotal },
          'usage batch refused by the control service; dropped (sending it again cannot help)');
      }
      return true;
    }
    const error = outcome.retry;
    this.failures++;
    this.deps.warn({ error, attempt: this.failures, batchSize: batch.length, queued: this.queue.length },
      'usage batch not accepted; will retry');
    return false;
  }
}
