// What the control service persists. The core sees only this interface; the
// SQLite file is the embedded default, PostgreSQL comes for several replicas.

import type { Customer } from '../customer';

export interface StoredCustomer extends Customer {
  /** When Stripe last told us this state (ms): a sweep's fetch time or a webhook event's `created`. */
  version: number;
}

export interface TransitionRecord {
  customerId: string;
  cohort: string;
  kind: 'enter' | 'leave';
  at: number;
  balance: number;
}

export interface Store {
  loadCustomers(): Promise<StoredCustomer[]>;
  /**
   * In one transaction: upserts customers, deletes the ids given, and records
   * cohort transitions with the memberships they lead to.
   */
  saveChanges(changes: { upserts: StoredCustomer[]; deletes: string[]; transitions: TransitionRecord[] }): Promise<void>;
  loadMemberships(): Promise<Map<string, string[]>>;
  history(customerId: string): Promise<TransitionRecord[]>;
  ruleOverrides(): Promise<Map<string, boolean>>;
  setRuleEnabled(ruleId: string, enabled: boolean): Promise<void>;
  /** True the first time an event id is seen. */
  claimWebhookEvent(eventId: string, at: number): Promise<boolean>;
  /** Undoes a claim whose event could not be applied, so Stripe's retry can apply it. */
  forgetWebhookEvent(eventId: string): Promise<void>;
  getMeta(key: string): Promise<string | undefined>;
  setMeta(key: string, value: string): Promise<void>;
  ping(): Promise<void>;
  close(): Promise<void>;
}
