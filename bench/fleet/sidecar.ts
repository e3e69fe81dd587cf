import { pino } from 'pino';
import { createBudgetStore } from '../../src/budget/factory.js';
import { budgetScopes, type BudgetStore, type ScopeBudget } from '../../src/budget/store.js';
import { parseConfig } from '../../src/config/load.js';
import type { Config } from '../../src/config/schema.js';
import { RedisSloBoard } from '../../src/slo/board.js';
import { RedisCounterStore } from '../../src/slo/counter-store.js';
import { SloEvaluator } from '../../src/slo/evaluator.js';
import { SloRecorder } from '../../src/slo/recorder.js';
import { sloSpecsOf } from '../../src/slo/spec.js';
import { RedisConnection } from '../../src/store/redis-connection.js';
import { createMetrics, type Metrics } from '../../src/telemetry/metrics.js';

/** What every simulated call costs: estimated before, charged after (micro-USD). */
export const ESTIMATE_MICROS = 2_000;
export const CHARGE_MICROS = 1_000;
export const ROUTE = 'chat';

export interface FleetConfig {
  url: string;
  keyPrefix: string;
  /** The fleet's daily cap, USD (the outage run sets one the fleet reaches). */
  fleetDailyUsd?: number;
  /** Every call runs in a workflow with `maxCalls` (`--workflow=on`): a leased window on the agent's slot, reported with its day and month. */
  workflow?: boolean;
  /** `store.commitDelayMs`; default the config's. */
  commitDelayMs?: number;
}

/** The config every simulated sidecar runs: one metered LLM route with the default SLOs, a fleet cap when asked. */
export const fleetConfig = (f: FleetConfig, agent: string): Config =>
  parseConfig(
    {
      agent: { id: agent },
      store: { kind: 'redis', url: f.url, keyPrefix: f.keyPrefix, timeoutMs: 250, ...(f.commitDelayMs !== undefined && { commitDelayMs: f.commitDelayMs }) },
      budgets: {
        agent: { dailyUsd: 1_000 },
        ...(f.workflow === true && { workflow: { maxCalls: 1_000_000 } }),
        ...(f.fleetDailyUsd !== undefined && { fleet: { dailyUsd: f.fleetDailyUsd } }),
      },
      routes: [{ name: ROUTE, provider: 'openai', match: { pathPrefix: '/chat' }, upstream: { url: 'http://127.0.0.1:9' } }],
    },
    'bench fleet config',
    {},
  );

/** One call's store latencies, seconds. */
export interface CallTiming {
  reserveS: number;
  commitS: number;
  /** Charged in the shared store or journaled for it (false: refused by a cap). */
  charged: boolean;
  /** Reserved on the local fallback's slice: the shared store was unavailable to this sidecar (an outage, or a timeout). */
  local: boolean;
}

/**
 * A sidecar without its HTTP side: its own Redis connection and the store stack `src/app.ts` builds (budget store
 * with local fallback, SLO counter store on the same connection, recorder flushing every second, evaluator reading
 * every 5 s). A call is what the budget layer does around an upstream call: reserve, commit, record.
 */
export class SimSidecar {
  readonly redis: RedisConnection;
  readonly store: BudgetStore;
  readonly recorder: SloRecorder;
  readonly evaluator: SloEvaluator;
  private readonly scopes: ScopeBudget[];
  private readonly metrics: Metrics;
  private readonly ttlMs: number;
  /** Charges this sidecar made that the store accepted or journaled, micro-USD and calls. */
  chargedMicros = 0;
  chargedCalls = 0;

  constructor(fleet: FleetConfig, readonly agent: string) {
    const config = fleetConfig(fleet, agent);
    const logger = pino({ level: 'silent' });
    const metrics = createMetrics({ defaultMetrics: false });
    this.metrics = metrics;
    this.redis = new RedisConnection({ url: fleet.url, keyPrefix: fleet.keyPrefix, timeoutMs: config.store.timeoutMs });
    this.store = createBudgetStore(config, { now: Date.now, logger, metrics, redis: this.redis });
    const counters = new RedisCounterStore(this.redis);
    const specs = sloSpecsOf(config.routes);
    this.recorder = new SloRecorder({ store: counters, routes: specs, now: Date.now, flushIntervalMs: config.sloCounters.flushIntervalMs, logger });
    // As src/app.ts: one sidecar per route assesses and publishes, the others read the published result.
    const board = new RedisSloBoard(this.redis, { sidecarId: agent });
    this.evaluator = new SloEvaluator({ store: counters, routes: specs, now: Date.now, logger, board });
    const route = config.routes[0]!;
    this.scopes = budgetScopes(config.budgets, route, { agent, route: ROUTE, ...(fleet.workflow === true && { workflow: 'task-1' }) });
    this.ttlMs = route.timeouts.totalMs + 60_000;
  }

  async start(readyMs: number): Promise<void> {
    await this.redis.ready(readyMs);
    this.recorder.start();
    this.evaluator.start();
  }

  async call(): Promise<CallTiming> {
    const t0 = process.hrtime.bigint();
    const r = await this.store.reserve({ scopes: this.scopes, estimate: { usdMicros: ESTIMATE_MICROS, tokens: 500, calls: 1 }, ttlMs: this.ttlMs, onUnavailable: 'local' });
    const t1 = process.hrtime.bigint();
    if (!r.ok) {
      this.recorder.record(ROUTE, { availability: 'skip', refused: true });
      return { reserveS: Number(t1 - t0) / 1e9, commitS: 0, charged: false, local: false };
    }
    // Resolves once the commit landed: ridden on this sidecar's next call, or alone after store.commitDelayMs.
    await this.store.commit(r.reservation, { usdMicros: CHARGE_MICROS, tokens: 400 });
    const t2 = process.hrtime.bigint();
    this.chargedMicros += CHARGE_MICROS;
    this.chargedCalls++;
    this.recorder.record(ROUTE, { availability: 'good', latencyMs: 800, costUsdMicros: CHARGE_MICROS });
    return { reserveS: Number(t1 - t0) / 1e9, commitS: Number(t2 - t1) / 1e9, charged: true, local: r.reservation.local === true };
  }

  /** Commits this sidecar sent, by how (fusebox_store_commits_total). */
  async commitsSent(): Promise<{ ridden: number; alone: number }> {
    const values = (await this.metrics.storeCommits.get()).values;
    const of = (sent: string) => values.find((v) => v.labels.sent === sent)?.value ?? 0;
    return { ridden: of('ridden'), alone: of('alone') };
  }

  /** Journaled charges not yet replayed (the local fallback's journal, as its gauge says). */
  async journalLength(): Promise<number> {
    return (await this.metrics.journalEntries.get()).values[0]?.value ?? 0;
  }

  async close(): Promise<void> {
    await this.evaluator.close();
    await this.recorder.close();
    await this.store.close();
    await this.redis.close();
  }
}
