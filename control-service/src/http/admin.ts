// The admin API (Bearer PAYG_ADMIN_TOKEN): cohorts and members, one customer's
// state and history, rule and email-template switches, test sends and the
// email log, sweeps, settlements, consumer conflicts.
import http from 'node:http';
import { formatMoney } from '../customer';
import { mergeContext, SAMPLE_CUSTOMER } from '../merge-tags';
import { MICROS_PER_UNIT } from '../pricing';
import type { HttpDeps } from './index';
import { jsonBody, send, tokenMatches } from './util';
import { notOneAddress } from '../emails/address';

export function createAdminHandler(deps: HttpDeps): (method: string, parts: string[], req: http.IncomingMessage, res: http.ServerResponse) => Promise<void> {
  const { config, engine, log } = deps;
  const adminToken = config.secrets.adminToken;

  const adminEmails = async (method: string, id: string | undefined, sub: string | undefined, req: http.IncomingMessage, res: http.ServerResponse) => {
    if (method === 'GET' && !id) {
      return send(res, 200, { emails: config.emails.map((t) => ({
        id: t.id, active: engine.isTemplateActive(t.id),
        trigger: t.trigger.kind === 'cohort' ? { cohort: t.trigger.cohort, on: t.trigger.on } : { low_balance_below: t.trigger.belowCents },
        reenroll_after_ms: t.reenrollAfterMs ?? null,
      })) });
    }
    if (method === 'GET' && id === 'log') {
      const q = new URL(req.url ?? '/', 'http://x').searchParams;
      const status = q.get('status') ?? undefined;
      if (status && !['pending', 'sending', 'delivered', 'failed', 'cancelled'].includes(status)) return send(res, 400, { error: 'bad_request', message: 'status must be pending, sending, delivered, failed or cancelled' });
      const limit = Math.min(1000, Math.max(1, Number(q.get('limit') ?? 100) || 100));
      const rows = await deps.store.emailLog({ customerId: q.get('customer') ?? undefined, templateId: q.get('template') ?? undefined, status: status as never, limit });
      return send(res, 200, { emails: rows.map((r) => ({
        id: r.id, template: r.templateId, customer: r.customerId, to: r.to, status: r.status, attempts: r.attempts,
        created_at: new Date(r.createdAt).toISOString(), delivered_at: r.deliveredAt ? new Date(r.deliveredAt).toISOString() : null,
        next_attempt_at: r.status === 'pending' ? new Date(r.nextAttemptAt).toISOString() : null, last_error: r.lastError, message_id: r.messageId,
      })) });
    }
    if (!id || !config.emails.some((t) => t.id === id)) return send(res, 404, { error: 'not_found' });
    if ((method === 'PUT' || method === 'PATCH') && !sub) {
      const active = (await jsonBody(req))?.active;
      if (typeof active !== 'boolean') return send(res, 400, { error: 'bad_request', message: 'body must be {"active": true|false}' });
      await engine.setTemplateActive(id, active);
      log.info({ email: id, active }, 'email template switched');
      return send(res, 200, { id, active });
    }
    if (method === 'POST' && sub === 'test') {
      if (!deps.emails) return send(res, 503, { error: 'smtp_not_configured' });
      const body = await jsonBody(req);
      const to = body?.to;
      if (typeof to !== 'string' || notOneAddress(to)) return send(res, 400, { error: 'bad_request', message: 'body must be {"to": "<address>", "customer_id"?: "cus_…"}' });
      let customer = SAMPLE_CUSTOMER;
      if (body?.customer_id !== undefined) {
        const state = typeof body.customer_id === 'string' ? engine.customer(body.customer_id) : undefined;
        if (!state) return send(res, 404, { error: 'not_found', message: 'no such customer' });
        customer = { ...state.customer, balance: state.estimatedBalance }; // as the workflow sees it
      }
      const threshold = 1000;
      try {
        const sent = await deps.emails.sendTest(id, to, { ...mergeContext(customer, config.topUp), threshold: { cents: threshold, formatted: formatMoney(threshold, customer.currency) } });
        return send(res, 200, { sent: true, message_id: sent.messageId, smtp_response: sent.response });
      } catch (err) {
        return send(res, 502, { sent: false, error: 'smtp_error', message: (err as Error).message });
      }
    }
    return send(res, 404, { error: 'not_found' });
  };

  /** `rawParts` are the path's segments still percent-encoded: nothing from the path is decoded before authentication. */
  return async (method: string, rawParts: string[], req: http.IncomingMessage, res: http.ServerResponse) => {
    if (!adminToken || !tokenMatches(req.headers.authorization, adminToken)) return send(res, 401, { error: 'unauthorized' });
    let parts: string[];
    try { parts = rawParts.map(decodeURIComponent); } catch { return send(res, 400, { error: 'bad_request', message: 'path is not valid URL encoding' }); }
    const [resource, id, sub] = parts;
    if (method === 'GET' && resource === 'cohorts' && !id) {
      const sizes = engine.cohortSizes();
      return send(res, 200, { cohorts: config.cohorts.map((c) => ({ id: c.id, filter: c.filter, size: sizes.get(c.id) ?? 0 })) });
    }
    if (method === 'GET' && resource === 'cohorts' && id && sub === 'members') {
      if (!config.cohorts.some((c) => c.id === id)) return send(res, 404, { error: 'not_found' });
      return send(res, 200, { cohort: id, members: engine.cohortMembers(id) });
    }
    if (method === 'GET' && resource === 'customers' && id) {
      const state = engine.customer(id);
      if (!state) return send(res, 404, { error: 'not_found' });
      const { version, ...customer } = state.customer;
      return send(res, 200, {
        customer, cohorts: state.cohorts,
        estimated_balance: state.estimatedBalance, unsettled_usage: state.unsettledMicros / MICROS_PER_UNIT, decision: JSON.parse(state.decision.json), updated_at: new Date(version).toISOString(),
        history: (await deps.store.history(id)).map((t) => ({ cohort: t.cohort, kind: t.kind, at: new Date(t.at).toISOString(), balance: t.balance })),
        // Read-only: credit reserved to gateway nodes (the decision above reserves nothing).
        leases: await deps.leases.leasesOf(id),
      });
    }
    if (method === 'GET' && resource === 'rules' && !id) {
      return send(res, 200, { rules: engine.rules().map(({ rule, enabled }) => ({ id: rule.id, cohort: rule.cohort, enabled, log_only: rule.logOnly, status: rule.status })) });
    }
    if ((method === 'PUT' || method === 'PATCH') && resource === 'rules' && id) {
      const enabled = (await jsonBody(req))?.enabled;
      if (typeof enabled !== 'boolean') return send(res, 400, { error: 'bad_request', message: 'body must be {"enabled": true|false}' });
      if (!(await engine.setRuleEnabled(id, enabled))) return send(res, 404, { error: 'not_found' });
      log.info({ rule: id, enabled }, 'rule switched');
      return send(res, 200, { id, enabled });
    }
    if (method === 'POST' && resource === 'sweep') {
      if (!deps.sync) return send(res, 503, { error: 'stripe_not_configured' });
      return send(res, 200, await deps.sync.sweep());
    }
    if (resource === 'emails') return adminEmails(method, id, sub, req, res);
    if (method === 'POST' && resource === 'settle') {
      if (!deps.settler) return send(res, 503, { error: 'settlement_not_configured' });
      return send(res, 200, await deps.settler.settle());
    }
    if (method === 'GET' && resource === 'settlements') {
      const q = new URL(req.url ?? '/', 'http://x').searchParams;
      return send(res, 200, { settlements: (await deps.store.settlements(q.get('customer') ?? undefined)).map((r) => ({
        id: r.id, customer: r.customerId, amount: r.amount, currency: r.currency, mode: r.mode, status: r.status, attempts: r.attempts,
        events: [r.fromSeq, r.uptoSeq], idempotency_key: r.idempotencyKey, stripe_ref: r.stripeRef, last_error: r.lastError,
        created_at: new Date(r.createdAt).toISOString(), confirmed_at: r.confirmedAt ? new Date(r.confirmedAt).toISOString() : null,
      })) });
    }
    if (method === 'GET' && resource === 'conflicts') return send(res, 200, { conflicts: engine.conflicts() });
    return send(res, 404, { error: 'not_found' });
  };

}
