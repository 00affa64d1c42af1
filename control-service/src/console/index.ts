// Mounts the operator console on a running service: records decisions for it
// (only when the console is configured, so the decision path is untouched
// otherwise) and starts its listener.

import type { Logger } from 'pino';
import type { Config } from '../config';
import type { EmailSender } from '../emails/sender';
import type { DecisionAnswer, Engine } from '../engine';
import type { Metrics } from '../metrics';
import { verdict } from '../rules';
import { SqliteConsoleQueries, type ConsoleQueries } from '../store/console-queries';
import { PostgresConsoleQueries } from '../store/console-queries-postgres';
import { PostgresStore } from '../store/postgres';
import type { Store } from '../store/store';
import { StripeGateway } from '../stripe/gateway';
import type { BalanceSync } from '../stripe/sync';
import { ActivityRecorder } from './activity';
import { startConsole, type ConsoleServer } from './server';

export async function mountConsole(deps: { config: Config; engine: Engine; store: Store; sync: BalanceSync | undefined; emails: EmailSender | undefined; metrics: Metrics; log: Logger; followsStoredSweep?: () => boolean; gateway?: StripeGateway }): Promise<ConsoleServer> {
  const { engine, config } = deps;
  // The console's writes to Stripe (auto-recharge settings) share the service's gateway: one rate limit, one retry policy.
  const gateway = deps.gateway;
  const activity = new ActivityRecorder();
  // A block's rule is in its JSON; parse it once per answer object.
  const blockRule = new WeakMap<DecisionAnswer, string>();
  const enabled = () => new Map(engine.rules().map(({ rule, enabled: on }) => [rule.id, on]));
  const decide = engine.decide.bind(engine);
  engine.decide = (consumer: string): DecisionAnswer => {
    const answer = decide(consumer);
    const at = Date.now();
    const customerId = engine.resolve(consumer) ?? null;
    let rule: string | null = null;
    let wouldBlock: string[] = [];
    if (answer.outcome === 'block') {
      rule = blockRule.get(answer) ?? (JSON.parse(answer.json) as { rule: string }).rule;
      blockRule.set(answer, rule);
    } else if (answer.outcome === 'would_block' && customerId) {
      const on = enabled();
      wouldBlock = verdict(config.rules, engine.customer(customerId)!.cohorts, (r) => on.get(r.id) ?? r.enabled).wouldBlock;
    } else if (answer.outcome === 'unknown_block' || answer.outcome === 'conflict') {
      rule = config.unknownConsumer === 'block' ? 'unknown_consumer' : null;
    }
    activity.record({ at, consumer, customerId, outcome: answer.outcome, rule, wouldBlock });
    if (customerId) activity.sampleBalance(customerId, engine.customer(customerId)!.estimatedBalance, at);
    return answer;
  };
  return startConsole({ ...deps, gateway, activity, queries: consoleQueries(deps.store, config) });
}

/** The read model where the store writes: the same PostgreSQL database (any replica), or the SQLite file. */
export function consoleQueries(store: Store, config: Config): ConsoleQueries {
  return store instanceof PostgresStore ? new PostgresConsoleQueries(store.url) : new SqliteConsoleQueries(config.sqlitePath);
}
