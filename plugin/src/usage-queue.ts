// Usage events leave the request path at once: they wait in a bounded queue
// and are sent in batches by a background loop that retries with backoff.

import type { UsageQueueOptions } from './schema';
import type { MeasuredUnits } from './measure';

export interface UsageEvent {
  id: string;
  consumer: string;
  at: string;
  route: string | null;
  status: number;
  /** The lease the request was served on (see lease-cache.ts); absent when it was served without one. */
  lease?: string;
  /** Micros the request reserved from that lease at access (its route's max_cost); absent for a lease of requests. */
  reserved?: number;
  /** What the gateway measured (see measure.ts); absent when nothing was. */
  units?: MeasuredUnits;
}

/**
 * A batch was taken (undefined), taken except some events refused by index,
 * should be sent again, or was refused for what it holds (sending it again cannot help).
 */
export type SendOutcome = undefined | { refusedEvents: Array<{ index: number; error: string }> } | { retry: string } | { refused: string };

export interface UsageQueueDeps {
  send: (batch: UsageEvent[]) => Promise<SendOutcome>;
  error?: (fields: Record<string, unknown>, msg: string) => void;
  warn: (fields: Record<string, unknown>, msg: string) => void;
  /** Events that left the queue for good: taken by the service, refused, or dropped (never sent again). */
  done?: (events: UsageEvent[]) => void;
}

/** How often at most a "dropped" warning is logged, with the count since the last one. */
const DROP_LOG_INTERVAL_MS = 1000;

export class UsageQueue {
  private readonly queue: UsageEvent[] = [];
  private sending = false;
  private inFlight: Promise<boolean> | undefined;
  private flushTimer: NodeJS.Timeout | undefined;
  private failures = 0;
  /** When the batch now failing first failed (queue.max_retry_time counts from it). */
  private failingSince: number | undefined;
  /** JSON bytes of the events queued (counted only when queue.max_bytes is set). */
  private bytes = 0;
  private readonly eventBytes = new WeakMap<UsageEvent, number>();
  private droppedSinceLog = 0;
  private dropLogTimer: NodeJS.Timeout | undefined;
  droppedTotal = 0;
  /** Events per consumer queued or in flight, i.e. not yet counted by the control service. */
  private readonly unreportedByConsumer = new Map<string, number>();

  constructor(private readonly opts: UsageQueueOptions, private readonly deps: UsageQueueDeps) {}

  get size(): number {
    return this.queue.length;
  }

  /** How many of this consumer's requests the control service has not counted yet. */
  unreported(consumer: string): number {
    return this.unreportedByConsumer.get(consumer) ?? 0;
  }

  private settled(batch: UsageEvent[], done = true): void {
    if (done) this.deps.done?.(batch);
    for (const e of batch) {
      this.bytes -= this.eventBytes.get(e) ?? 0;
      const n = (this.unreportedByConsumer.get(e.consumer) ?? 1) - 1;
      if (n > 0) this.unreportedByConsumer.set(e.consumer, n); else this.unreportedByConsumer.delete(e.consumer);
    }
  }

  /** Never blocks and never throws: a full queue drops the event and counts it. */
  push(event: UsageEvent): boolean {
    const size = this.opts.maxBytes === undefined ? 0 : Buffer.byteLength(JSON.stringify(event));
    if (this.queue.length >= this.opts.maxEntries || (this.opts.maxBytes !== undefined && this.bytes + size > this.opts.maxBytes)) {
      this.droppedTotal++;
      this.droppedSinceLog++;
      this.dropLogTimer ??= setTimeout(() => this.logDrops(), DROP_LOG_INTERVAL_MS).unref();
      this.deps.done?.([event]);
      return false;
    }
    this.queue.push(event);
    if (size) { this.bytes += size; this.eventBytes.set(event, size); }
    this.unreportedByConsumer.set(event.consumer, (this.unreportedByConsumer.get(event.consumer) ?? 0) + 1);
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

  /** Takes everything still queued out of the queue (to keep it on disk at shutdown). */
  takeRemaining(): UsageEvent[] {
    clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    const rest = this.queue.splice(0);
    this.settled(rest, false); // kept on disk: not done
    return rest;
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
    if (ok) this.schedule(); else this.retryLater();
  }

  /** After a failed send: the next try waits, doubling up to max_retry_delay. */
  private retryLater(): void {
    clearTimeout(this.flushTimer);
    const delay = Math.min(this.opts.initialRetryDelayMs * 2 ** (this.failures - 1), this.opts.maxRetryDelayMs);
    this.flushTimer = setTimeout(() => { this.flushTimer = undefined; void this.loop(); }, delay).unref();
  }

  /**
   * Sends what is queued now instead of after the coalescing delay, and
   * resolves once the queue is empty or a send failed. Used when a decision
   * must account for every request served so far.
   */
  async flushNow(): Promise<void> {
    if (this.inFlight) await this.inFlight;
    clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    while (this.queue.length > 0 && !this.sending) {
      if (!(await this.sendBatch())) {
        this.retryLater();
        return;
      }
    }
    if (this.inFlight) await this.inFlight;
  }

  private sendBatch(): Promise<boolean> {
    this.inFlight = this.sendBatchNow().finally(() => { this.inFlight = undefined; });
    return this.inFlight;
  }

  private async sendBatchNow(): Promise<boolean> {
    this.sending = true;
    const batch = this.queue.slice(0, this.opts.maxBatchSize);
    let outcome: SendOutcome;
    try {
      outcome = await this.deps.send(batch);
    } catch (err) {
      outcome = { retry: String(err) };
    }
    this.sending = false;
    if (outcome === undefined || 'refused' in outcome || 'refusedEvents' in outcome) {
      this.queue.splice(0, batch.length);
      this.settled(batch);
      this.failures = 0;
      this.failingSince = undefined;
      if (outcome && 'refusedEvents' in outcome) {
        // The rest of the batch was stored; only these are dropped.
        const refused = outcome.refusedEvents;
        this.droppedTotal += refused.length;
        (this.deps.error ?? this.deps.warn)({
          dropped: refused.length, droppedTotal: this.droppedTotal,
          refused: refused.slice(0, 10).map((r) => ({ id: batch[r.index]?.id, error: r.error })),
        }, 'usage events refused by the control service; dropped (the rest of the batch was taken)');
      } else if (outcome) {
        this.droppedTotal += batch.length;
        (this.deps.error ?? this.deps.warn)({ error: outcome.refused, dropped: batch.length, droppedTotal: this.droppedTotal },
          'usage batch refused by the control service; dropped (sending it again cannot help)');
      }
      return true;
    }
    const error = outcome.retry;
    const now = Date.now();
    this.failingSince ??= now;
    if (now - this.failingSince >= (this.opts.maxRetryTimeMs ?? Infinity)) {
      // Kong's queue gives a batch up after max_retry_time; so does payg (its usage is lost, and logged).
      this.queue.splice(0, batch.length);
      this.settled(batch);
      this.failures = 0;
      this.failingSince = undefined;
      this.droppedTotal += batch.length;
      (this.deps.error ?? this.deps.warn)({ error, dropped: batch.length, droppedTotal: this.droppedTotal },
        'usage batch not accepted within queue.max_retry_time; dropped');
      return true;
    }
    this.failures++;
    this.deps.warn({ error, attempt: this.failures, batchSize: batch.length, queued: this.queue.length },
      'usage batch not accepted; will retry');
    return false;
  }
}
