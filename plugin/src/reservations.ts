// Reserve, then settle: how one node serves a consumer on credit without ever
// spending more than it has, when a request's cost is known only after it ran
// (tokens, units, bytes). Pure; no I/O, no clock.
//
// The service grants credit (micros: what it counts as available, having
// counted every request whose usage it has). A request reserves its route's
// max_cost at access; from then until the service has counted its usage, the
// reservation is outstanding, and every grant is read net of it. The service
// charges the actual cost, never more than max_cost, so the difference comes
// back with the next grant. Hence, on one node, what is charged never exceeds
// the credit, however requests, usage batches and decision calls interleave.
//
// Today the grant is the decision's credit; with leases (issue 12) it is the
// node's lease, and this module is meant to sit on it unchanged.

interface Account {
  /** What may still be reserved on the last grant. */
  available: number;
  /** Reserved by requests the service has not counted yet. */
  outstanding: number;
  /** All reservations ever settled: a grant fetched before a settlement must not see it as counted. */
  settledTotal: number;
  granted: boolean;
}

/** Taken when a decision call starts; hand it back with the grant it returns. */
export type GrantTicket = number;

export class CreditReservations {
  private readonly accounts = new Map<string, Account>();

  private account(consumer: string): Account {
    let a = this.accounts.get(consumer);
    if (!a) { a = { available: 0, outstanding: 0, settledTotal: 0, granted: false }; this.accounts.set(consumer, a); }
    return a;
  }

  /** Before asking the service: remembers what has been settled so far. */
  beginGrant(consumer: string): GrantTicket {
    return this.account(consumer).settledTotal;
  }

  /**
   * The service's answer: `creditMicros` available as it counted. Requests
   * settled while the call was under way may or may not be in that count, so
   * they are taken off again (at their reservation, never less than their cost).
   */
  grant(consumer: string, creditMicros: number, ticket: GrantTicket): void {
    const a = this.account(consumer);
    a.available = creditMicros - a.outstanding - (a.settledTotal - ticket);
    a.granted = true;
  }

  /** Access: reserve `maxCostMicros`. False when the grant cannot cover it: ask again (or refuse with the rule's answer). */
  reserve(consumer: string, maxCostMicros: number): boolean {
    const a = this.accounts.get(consumer);
    if (!a?.granted || a.available < maxCostMicros) return false;
    a.available -= maxCostMicros;
    a.outstanding += maxCostMicros;
    return true;
  }

  /**
   * The service has counted this request's usage (its batch was accepted, or
   * refused for good): the reservation stops being outstanding. Its actual
   * cost is in the next grant; until then the unused part stays unavailable,
   * which only errs on the safe side.
   */
  settle(consumer: string, reservedMicros: number): void {
    const a = this.accounts.get(consumer);
    if (!a) return;
    a.outstanding -= reservedMicros;
    a.settledTotal += reservedMicros;
    if (a.outstanding <= 0 && !a.granted) this.accounts.delete(consumer);
  }

  /** What this node may still reserve for the consumer (the credit header's approximate figure). */
  remaining(consumer: string): number | undefined {
    const a = this.accounts.get(consumer);
    return a?.granted ? Math.max(0, a.available) : undefined;
  }

  /** A decision that is not an allow on credit (a block, fail-open): nothing more may be reserved on it. */
  revoke(consumer: string): void {
    const a = this.accounts.get(consumer);
    if (a) { a.available = 0; a.granted = false; }
  }
}
