// The decision JSON a customer is answered with (GET /v1/decisions, and a
// lease's refusal), worked out from its cohorts, the rules as switched and its
// estimated balance. Pure: the switches come in as `isEnabled`, time as `now`.

import { cohortsOf } from './cohorts';
import { mergeContext } from './merge-tags';
import { decisionJson, verdict, type RuleDef } from './rules';
import { MICROS_PER_UNIT } from './pricing';
import { limitRule, refusalJson } from './caps/refusal';
import { estimated, type DecisionAnswer } from './customer-book';
import type { Config } from './config';
import type { Customer } from './customer';
import type { LedgerState } from './ledger';

const UNKNOWN_BLOCK_BODY = JSON.stringify({ error: 'no_billing_account', message: 'No billing account is linked to this API consumer.' });

export type AnswersConfig = Pick<Config, 'decisionTtlMs' | 'unknownConsumer' | 'metering' | 'rules' | 'cohorts' | 'topUp'>;

export class DecisionAnswers {
  /** The dearest price of one request, in micros (0: nothing is metered). */
  readonly dearestMicros: number;
  /** The answer for a consumer that maps to no customer (or to several). */
  readonly unknownJson: string;
  /** Allow answers are shared, not held once per customer. */
  private readonly allowAnswer: DecisionAnswer;
  private readonly wouldBlockAnswer: DecisionAnswer;

  constructor(private readonly config: AnswersConfig, private readonly isEnabled: (rule: RuleDef) => boolean) {
    const allowJson = JSON.stringify({ allow: true, ttl_ms: config.decisionTtlMs });
    const { pricing } = config.metering;
    this.dearestMicros = Math.max(pricing.defaultCostMicros, ...pricing.routeCostMicros.values());
    this.allowAnswer = { json: allowJson, outcome: 'allow' };
    this.wouldBlockAnswer = { json: allowJson, outcome: 'would_block' };
    this.unknownJson = config.unknownConsumer === 'allow' ? allowJson : JSON.stringify({
      allow: false, status: 403, headers: { 'Content-Type': 'application/json' }, body: UNKNOWN_BLOCK_BODY, rule: 'unknown_consumer', ttl_ms: config.decisionTtlMs,
    });
  }

  /** The answer for a consumer of no customer (`conflict`: claimed by several). */
  unknown(conflict: boolean): DecisionAnswer {
    if (conflict) return { json: this.unknownJson, outcome: 'conflict' };
    return { json: this.unknownJson, outcome: this.config.unknownConsumer === 'allow' ? 'unknown_allow' : 'unknown_block' };
  }

  /** A customer's answer: the rules' verdict on its cohorts; an allow carries what a cached allow may serve. */
  forCustomer(customer: Customer, cohorts: readonly string[], ledger: LedgerState): DecisionAnswer {
    const v = verdict(this.config.rules, cohorts, this.isEnabled);
    if (v.outcome === 'ALLOW') {
      const lease = this.allowLease(customer, ledger.unsettledMicros);
      if (!lease) return v.wouldBlock.length ? this.wouldBlockAnswer : this.allowAnswer;
      return { json: JSON.stringify({ allow: true, ttl_ms: lease.ttlMs, max_requests: lease.maxRequests, credit: lease.credit }), outcome: v.wouldBlock.length ? 'would_block' : 'allow' };
    }
    return { json: decisionJson(v, mergeContext(estimated(customer, ledger), this.config.topUp), this.config.decisionTtlMs), outcome: 'block' };
  }

  /**
   * The answer for a customer with no spendable credit left (what is not held by leases
   * is worth less than one request): the rules' verdict with a balance of at most zero.
   * Undefined when the rules still allow it (no blocking rule at zero: the operator's choice).
   */
  exhausted(customer: Customer, ledger: LedgerState, now: number): string | undefined {
    const view = estimated(customer, ledger);
    const spent = { ...view, balance: Math.max(0, view.balance) };
    const v = verdict(this.config.rules, cohortsOf(this.config.cohorts, spent), this.isEnabled);
    if (v.outcome === 'ALLOW') {
      // Issue 23: an enabled `limit: no_credit` rule words the refusal when no cohort rule blocks.
      if (!limitRule(this.config.rules, 'no_credit', this.isEnabled)) return undefined;
      return refusalJson({ kind: 'no_credit' }, spent, this.config.topUp, this.config.rules, this.isEnabled, now, this.config.decisionTtlMs);
    }
    // A cohort rule's refusal at no credit names its reason too.
    const json = JSON.parse(decisionJson(v, mergeContext(spent, this.config.topUp), this.config.decisionTtlMs)) as Record<string, unknown>;
    return JSON.stringify({ ...json, reason: 'no_credit' });
  }

  /**
   * What a cached allow may serve when usage is metered: with r requests of
   * credit left at the dearest price, `max_requests` = r, and below
   * low_credit_requests (L) also a shorter `ttl_ms` = T·(r − 1)/L, not below
   * min_ttl_ms. Read-only (GET /v1/decisions): nodes serve on leases
   * (POST /v1/leases), which reserve credit. Undefined when nothing is metered.
   */
  private allowLease(customer: Customer, unsettledMicros: number): { ttlMs: number; maxRequests: number; credit: number } | undefined {
    const { lowCreditRequests, minTtlMs } = this.config.metering;
    const full = this.config.decisionTtlMs;
    if (this.dearestMicros === 0) return undefined;
    // In integer micros, so the boundary is exact.
    const creditMicros = -(customer.balance * MICROS_PER_UNIT + unsettledMicros);
    const remaining = Math.floor(Math.max(0, creditMicros) / this.dearestMicros);
    const ttlMs = remaining >= lowCreditRequests ? full
      : Math.min(full, Math.max(minTtlMs, Math.floor((full * Math.max(0, remaining - 1)) / lowCreditRequests)));
    // `credit`: the estimate in the smallest currency unit, for the plugin's optional credit header.
    return { ttlMs, maxRequests: remaining, credit: Math.max(0, creditMicros) / MICROS_PER_UNIT };
  }
}
