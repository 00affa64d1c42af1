// Delivers the outbox with nodemailer over SMTP: one email at a time, paced to
// messages_per_second. Each is claimed (sending), sent, then marked delivered
// right after the server's 250, so a crash repeats at most the one email in
// flight, and that one carries the same Message-ID. Attempts count the
// server's answers only: a 4xx is retried with backoff up to max_attempts, a
// 5xx fails at once, and a connection that fails (refused, timed out, cut) is
// retried with backoff without using an attempt, however long SMTP is away.
// When the server answers again after SMTP was unreachable, every email postponed
// meanwhile goes at once (paced as ever), not each at the end of its backoff:
// the outbox drains up to the latest time the outage pushed an email to.
// Right before sending, the email is checked again: template still on, and
// still true (stale otherwise).

import { createHash } from 'node:crypto';
import type { Transporter } from 'nodemailer';
import type { Logger } from 'pino';
import type { Config } from '../config';
import type { EmailMergeContext } from '../merge-tags';
import type { OutboxRow, Store } from '../store/store';
import type { EmailTemplate } from './templates';
import { notOneAddress } from './address';

export type SendResult = 'delivered' | 'retry' | 'failed' | 'cancelled' | 'stale';

export interface SenderDeps {
  store: Store;
  templates: readonly EmailTemplate[];
  isActive(templateId: string): boolean;
  transport: Transporter;
  delivery: Config['emailDelivery'];
  log: Logger;
  onResult?(result: SendResult, templateId: string): void;
  /** Why this email is no longer true at delivery time (the customer left the cohort, is back above the threshold), or undefined. */
  staleReason?(row: OutboxRow): Promise<string | undefined>;
  now?(): number;
}

/** A Message-ID stable for one outbox row: derived from what the email is for. */
export function messageIdFor(row: Pick<OutboxRow, 'dedupeKey'>, fromAddress: string): string {
  const domain = fromAddress.split('@')[1] ?? 'payg.invalid';
  return `<payg.${createHash('sha256').update(row.dedupeKey).digest('hex').slice(0, 32)}@${domain}>`;
}

export function renderEmail(template: EmailTemplate, row: Pick<OutboxRow, 'dedupeKey' | 'to' | 'context'>) {
  const ctx = JSON.parse(row.context) as EmailMergeContext;
  return {
    from: { name: template.from.name ?? '', address: template.from.address },
    to: row.to,
    subject: template.subject(ctx),
    ...(template.html ? { html: template.html(ctx) } : {}),
    ...(template.text ? { text: template.text(ctx) } : {}),
    messageId: messageIdFor(row, template.from.address),
  };
}

export class EmailSender {
  private readonly templates: Map<string, EmailTemplate>;
  private readonly now: () => number;
  private running = false;
  private loop: Promise<void> | undefined;
  private wakeUp: (() => void) | undefined;
  private nextSlot = 0;
  /** Connection failures in a row: backs off while SMTP is away, without using any email's attempts. */
  private unreachableStreak = 0;
  /** The latest time an email was postponed to because SMTP was unreachable (this outage). */
  private outageHorizon: number | undefined;
  /** While set, SMTP is back after an outage: emails due up to this time are sent now. */
  private drainUntil: number | undefined;

  constructor(private readonly deps: SenderDeps) {
    this.templates = new Map(deps.templates.map((t) => [t.id, t]));
    this.now = deps.now ?? Date.now;
  }

  async start(): Promise<void> {
    const requeued = await this.deps.store.requeueInterruptedEmails();
    if (requeued) this.deps.log.warn({ emails: requeued }, 'emails interrupted by a stop are pending again');
    this.running = true;
    this.loop = this.run();
  }

  /** Something was enqueued: look now rather than at the next poll. */
  wake(): void { this.wakeUp?.(); }

  async stop(): Promise<void> {
    this.running = false;
    this.wake();
    await this.loop;
    this.deps.transport.close();
  }

  private async run(): Promise<void> {
    while (this.running) {
      let processed = false;
      try {
        processed = await this.deliverNext();
      } catch (err) {
        this.deps.log.error({ err: (err as Error).message }, 'email outbox step failed');
      }
      if (processed || !this.running) continue;
      const due = await this.deps.store.nextEmailDueAt().catch(() => undefined);
      const wait = Math.max(0, Math.min(this.deps.delivery.pollIntervalMs, due === undefined ? Infinity : due - this.now()));
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, wait);
        this.wakeUp = () => { clearTimeout(timer); resolve(); };
      });
      this.wakeUp = undefined;
    }
  }

  /** Waits for the next send slot so delivery stays under messages_per_second. */
  private async pace(): Promise<void> {
    const now = Date.now();
    const at = Math.max(now, this.nextSlot);
    this.nextSlot = at + 1000 / this.deps.delivery.messagesPerSecond;
    if (at > now) await new Promise((r) => setTimeout(r, at - now));
  }

  /** Sends a template to `to` now, outside the outbox (an operator's test). */
  async sendTest(templateId: string, to: string, context: EmailMergeContext): Promise<{ messageId: string; response: string }> {
    const template = this.templates.get(templateId);
    if (!template) throw new Error(`no email template ${templateId}`);
    const row = { dedupeKey: `test|${templateId}|${to}|${Date.now()}|${Math.random()}`, to, context: JSON.stringify(context) };
    const message = renderEmail(template, row);
    const info = await this.deps.transport.sendMail(message);
    return { messageId: message.messageId, response: String(info.response ?? '') };
  }

  /** Delivers the oldest due email, if any. True when one was handled. */
  async deliverNext(): Promise<boolean> {
    const { store, log } = this.deps;
    const now = this.now();
    const row = await store.claimDueEmail(this.drainUntil === undefined ? now : Math.max(now, this.drainUntil));
    if (!row) {
      this.drainUntil = undefined;
      return false;
    }
    if (await this.dropIfNotDue(row)) return true;
    const badAddress = notOneAddress(row.to);
    if (badAddress) {
      // Never handed to SMTP: a list or a malformed address would reach whoever it names.
      await store.finishEmail(row.id, { status: 'failed', at: this.now(), error: badAddress });
      log.warn({ email: row.id, template: row.templateId, customer: row.customerId, reason: badAddress }, 'email not sent');
      this.deps.onResult?.('failed', row.templateId);
      return true;
    }
    await this.pace();
    // Checked again after waiting for the slot: a switch-off or a change meanwhile stops it.
    if (await this.dropIfNotDue(row)) return true;
    const template = this.templates.get(row.templateId)!;
    const message = renderEmail(template, row);
    try {
      await this.deps.transport.sendMail(message);
    } catch (err) {
      const e = err as Error & { responseCode?: number; code?: string };
      const answered = e.responseCode !== undefined;
      if (answered) this.reachable(); // a refusal for this email, but SMTP is there
      const reason = answered ? `${e.responseCode} ${e.message}` : `${e.code ?? 'error'}: ${e.message}`;
      const attempts = row.attempts + (answered ? 1 : 0);
      const permanent = answered && e.responseCode! >= 500;
      if (permanent || attempts >= this.deps.delivery.maxAttempts) {
        await store.finishEmail(row.id, { status: 'failed', at: this.now(), error: reason, answered });
        log.error({ email: row.id, template: row.templateId, customer: row.customerId, attempts, reason }, 'email failed');
        this.deps.onResult?.('failed', row.templateId);
      } else {
        const { retryBaseDelayMs: base, retryMaxDelayMs: cap } = this.deps.delivery;
        this.unreachableStreak = answered ? 0 : this.unreachableStreak + 1;
        let delay = Math.min(cap, base * 2 ** (Math.max(attempts, this.unreachableStreak, 1) - 1));
        if (!answered) {
          // SMTP is away (again): no drain until the server answers.
          this.drainUntil = undefined;
          this.outageHorizon = Math.max(this.outageHorizon ?? 0, this.now() + delay);
        } else if (this.drainUntil !== undefined) {
          // Refused by the server while the outbox drains: tried once in this drain, next after it.
          delay = Math.max(delay, this.drainUntil + 1 - this.now());
        }
        await store.retryEmail(row.id, this.now() + delay, reason, answered);
        log.warn({ email: row.id, template: row.templateId, attempts, retryInMs: delay, reason }, answered ? 'email not delivered; will retry' : 'SMTP server unreachable; will retry without using an attempt');
        this.deps.onResult?.('retry', row.templateId);
      }
      return true;
    }
    this.unreachableStreak = 0;
    // Marked at once after the 250: nothing awaits between the server's answer and this write.
    await store.finishEmail(row.id, { status: 'delivered', at: this.now(), messageId: message.messageId, answered: true });
    this.reachable();
    this.deps.onResult?.('delivered', row.templateId);
    return true;
  }

  /**
   * The server answered (250 or not): when an outage postponed emails, they go
   * now rather than each at the end of its backoff. Returns the time the
   * outbox drains up to, if it is draining.
   */
  private reachable(): number | undefined {
    if (this.outageHorizon !== undefined) {
      this.drainUntil = Math.max(this.drainUntil ?? 0, this.outageHorizon);
      this.outageHorizon = undefined;
      this.deps.log.info({ until: new Date(this.drainUntil).toISOString() }, 'SMTP reachable again: sending the emails postponed by the outage now');
    }
    return this.drainUntil;
  }

  /** Ends an email that must not go: template off or gone (cancelled), or no longer true (stale). */
  private async dropIfNotDue(row: OutboxRow): Promise<boolean> {
    const template = this.templates.get(row.templateId);
    if (!template || !this.deps.isActive(row.templateId)) {
      await this.deps.store.finishEmail(row.id, { status: 'cancelled', at: this.now(), error: template ? 'template switched off' : 'template no longer configured' });
      this.deps.onResult?.('cancelled', row.templateId);
      return true;
    }
    const stale = await this.deps.staleReason?.(row);
    if (stale) {
      await this.deps.store.finishEmail(row.id, { status: 'stale', at: this.now(), error: stale });
      this.deps.log.info({ email: row.id, template: row.templateId, customer: row.customerId, reason: stale }, 'email no longer true; not sent');
      this.deps.onResult?.('stale', row.templateId);
      return true;
    }
    return false;
  }
}
