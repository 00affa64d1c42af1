// Prometheus metrics (one registry per service, so tests can run several).
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/** Read when Prometheus scrapes, so gauges cost nothing between scrapes. */
export interface GaugeProbes {
  customers(): number;
  cohortSizes(): Map<string, number>;
  consumerConflicts(): number;
  /** Seconds since the last successful sweep, or -1 when there has been none. */
  lastSweepAgeSeconds(): number;
  emailsPending(): Promise<number>;
}

export function createMetrics(probes: GaugeProbes) {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'payg_' });
  const m = {
    registry,
    sweepDuration: new Histogram({ name: 'payg_sweep_duration_seconds', help: 'Duration of Stripe sweeps', labelNames: ['result'], registers: [registry], buckets: [0.1, 0.5, 1, 5, 15, 60, 300, 1200] }),
    sweeps: new Counter({ name: 'payg_sweeps_total', help: 'Stripe sweeps by result', labelNames: ['result'], registers: [registry] }),
    lastSweepAge: new Gauge({ name: 'payg_last_successful_sweep_age_seconds', help: 'Seconds since the last successful sweep (-1: never)', registers: [registry],
      collect() { this.set(probes.lastSweepAgeSeconds()); } }),
    customers: new Gauge({ name: 'payg_customers', help: 'Customers known from Stripe', registers: [registry], collect() { this.set(probes.customers()); } }),
    cohortSize: new Gauge({ name: 'payg_cohort_size', help: 'Customers per cohort', labelNames: ['cohort'], registers: [registry],
      collect() { for (const [cohort, size] of probes.cohortSizes()) this.set({ cohort }, size); } }),
    decisions: new Counter({ name: 'payg_decisions_total', help: 'Decisions answered by outcome', labelNames: ['outcome'], registers: [registry] }),
    stripeErrors: new Counter({ name: 'payg_stripe_errors_total', help: 'Stripe API errors by HTTP status (or "connection")', labelNames: ['status'], registers: [registry] }),
    webhooks: new Counter({ name: 'payg_webhooks_total', help: 'Stripe webhooks by result', labelNames: ['result'], registers: [registry] }),
    usageEvents: new Counter({ name: 'payg_usage_events_total', help: 'Usage events received (accepted, duplicate)', labelNames: ['result'], registers: [registry] }),
    settlements: new Counter({ name: 'payg_settlements_total', help: 'Settlements to Stripe by result', labelNames: ['result'], registers: [registry] }),
    settledAmount: new Counter({ name: 'payg_settled_amount_total', help: 'Smallest currency units settled to Stripe', registers: [registry] }),
    emails: new Counter({ name: 'payg_emails_total', help: 'Email delivery attempts by template and result (delivered, retry, failed, cancelled)', labelNames: ['template', 'result'], registers: [registry] }),
    emailsPending: new Gauge({ name: 'payg_emails_pending', help: 'Emails waiting in the outbox', registers: [registry],
      async collect() { this.set(await probes.emailsPending()); } }),
    consumerConflicts: new Gauge({ name: 'payg_consumer_conflicts', help: 'Consumers claimed by more than one Stripe customer', registers: [registry],
      collect() { this.set(probes.consumerConflicts()); } }),
  };
  return m;
}
export type Metrics = ReturnType<typeof createMetrics>;
