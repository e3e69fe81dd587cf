import type { Logger } from 'pino';
import { loadPrices } from './budget/factory.js';
import { ConfigError } from './config/load.js';
import { configHash, restartOnlyChanges, routeChanges, type RestartOnlyChange } from './config/reload.js';
import type { Config } from './config/schema.js';
import { configWarnings } from './config/warnings.js';
import { RouteTable } from './http/route-table.js';
import { interceptedHosts } from './intercept/setup.js';
import { buildRoutes, RouteState, type BuiltRoute, type PipelineDeps } from './pipeline/build.js';
import type { SloEvaluator } from './slo/evaluator.js';
import { dropSloGauges, zeroSloEventSeries } from './slo/exports.js';
import type { SloRecorder } from './slo/recorder.js';
import { sloSpecsOf } from './slo/spec.js';
import type { Metrics } from './telemetry/metrics.js';

/** What `Fusebox.reload` did. Unless `ok`, the old config goes on serving, untouched. */
export type ReloadResult =
  | {
      result: 'ok';
      hash: string;
      /** The same config as the one in effect (same hash): nothing was rebuilt. */
      unchanged: boolean;
      added: string[];
      removed: string[];
      /** Kept routes whose settings changed. */
      changed: string[];
      /** Kept routes whose breakers, retry budgets or last-good cache start fresh (their settings changed). */
      freshState: string[];
    }
  | { result: 'invalid'; problems: string[] }
  | { result: 'refused'; restartOnly: RestartOnlyChange[] };

/**
 * The config in effect and everything built from it. A reload makes a new one and swaps it in with one
 * assignment; a call holds the route it was matched to, so it finishes on the old handler.
 */
export interface Generation {
  readonly config: Config;
  readonly hash: string;
  readonly built: BuiltRoute[];
  readonly routes: RouteTable<BuiltRoute>;
  /** Breakers, retry budgets and last-good caches, for the next reload to keep. */
  readonly state: RouteState;
}

/** The pipeline's dependencies that do not come from the config (the price table is read again on each reload). */
export type SharedPipelineDeps = Omit<PipelineDeps, 'prices' | 'budgets' | 'maxRequestBodyBytes'>;

export interface GenerationsOptions {
  readonly pipeline: SharedPipelineDeps;
  /** Folder relative paths in the config resolve from (the price table). */
  readonly baseDir: string;
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly slo: { readonly recorder: SloRecorder; readonly evaluator: SloEvaluator };
  readonly now: () => number;
}

/** How long a pool the new generation dropped stays open: the longest call the previous one may still be running, ms. */
const retireGraceMs = (prev: Config): number => Math.max(...prev.routes.map((r) => r.timeouts.totalMs || TOTAL_UNBOUNDED_GRACE_MS), 1_000);
/** A route with `timeouts.totalMs: 0` bounds its calls by nothing; its dropped pools close after this long. */
const TOTAL_UNBOUNDED_GRACE_MS = 3_600_000;

/**
 * The generations of a running sidecar: the one in effect, and `reload`, which validates a new config, builds its
 * routes on the state of the kept ones and swaps it in, or leaves the one in effect serving and says why. Every
 * outcome is a log line and a `fusebox_config_reloads_total{result}`.
 */
export class Generations {
  private generation: Generation;
  private readonly caHosts: readonly string[];

  constructor(
    config: Config,
    private readonly opts: GenerationsOptions,
  ) {
    this.generation = this.make(config, new RouteState());
    this.caHosts = interceptedHosts(config);
    for (const warning of configWarnings(config)) opts.logger.warn(warning);
    this.describe(this.generation);
    for (const result of ['ok', 'invalid', 'refused']) opts.metrics.configReloads.labels(result).inc(0);
  }

  /** The generation new calls are served by. */
  get current(): Generation {
    return this.generation;
  }

  reload(next: Config | ConfigError): ReloadResult {
    const { metrics, logger } = this.opts;
    if (next instanceof ConfigError) return this.invalid(next.source, next.problems);
    const current = this.generation;
    const restartOnly = restartOnlyChanges(current.config, next, { prev: this.caHosts, next: interceptedHosts(next) });
    if (restartOnly.length > 0) {
      metrics.configReloads.labels('refused').inc();
      logger.error({ restartOnly, hash: current.hash }, `config reload refused: ${restartOnly.map((c) => c.path).join(', ')} changed (restart to apply); the config in effect keeps serving`);
      for (const c of restartOnly) logger.error({ path: c.path }, `config reload: ${c.path} changed: ${c.reason}; restart to apply`);
      return { result: 'refused', restartOnly };
    }
    const hash = configHash(next);
    // Same file, same CA files: nothing to rebuild. A CA file rotated in place makes the same config a new pool.
    if (hash === current.hash && !this.opts.pipeline.pools.caFilesChanged()) {
      metrics.configReloads.labels('ok').inc();
      logger.info({ hash }, 'config reloaded: unchanged');
      return { result: 'ok', hash, unchanged: true, added: [], removed: [], changed: [], freshState: [] };
    }
    let made: Generation;
    const pools = this.opts.pipeline.pools;
    pools.beginGeneration();
    try {
      made = this.make(next, current.state);
    } catch (err) {
      pools.abandonGeneration();
      // What the schema cannot see (a price table that cannot be read or parsed, a CA file) is as bad as a schema problem.
      return this.invalid('config', [(err as Error).message]);
    }
    const prev = current;
    const { added, removed, changed } = routeChanges(prev.config, next);
    const freshState = changed.filter(
      (name) => prev.state.chains.get(name)?.registry !== made.state.chains.get(name)?.registry || prev.state.lastGood.get(name)?.cache !== made.state.lastGood.get(name)?.cache,
    );
    // The swap: one assignment. Calls in flight hold their route's handler and finish on it.
    this.generation = made;
    const specs = sloSpecsOf(next.routes);
    this.opts.slo.recorder.setRoutes(specs);
    this.opts.slo.evaluator.setRoutes(specs);
    zeroSloEventSeries(metrics.sloEvents, specs);
    this.dropStaleSeries(prev, made, removed);
    // Pools the new routes did not ask for (a removed upstream, or changed connections, connect timeout or CA file)
    // are closed once the previous generation's calls are over: none lasts longer than its route's totalMs.
    const poolsRetired = pools.retireUnused(retireGraceMs(prev.config));
    logger.level = next.log.level;
    this.describe(made);
    metrics.configReloads.labels('ok').inc();
    for (const warning of configWarnings(next)) logger.warn(warning);
    logger.info({ hash: made.hash, previousHash: prev.hash, added, removed, changed, freshState, poolsRetired }, 'config reloaded');
    return { result: 'ok', hash: made.hash, unchanged: false, added, removed, changed, freshState };
  }

  private make(next: Config, previous: RouteState): Generation {
    const deps: PipelineDeps = { ...this.opts.pipeline, prices: loadPrices(next, this.opts.baseDir), budgets: next.budgets, maxRequestBodyBytes: next.limits.maxRequestBodyBytes };
    const { built, state } = buildRoutes(next.routes, deps, previous);
    return { config: next, hash: configHash(next), built, routes: new RouteTable(built), state };
  }

  private describe(g: Generation): void {
    const { metrics } = this.opts;
    metrics.configInfo.reset();
    metrics.configInfo.labels(String(g.config.routes.length), g.config.store.kind, g.config.agent.id, g.hash).set(1);
    metrics.configLoadedTimestamp.set(this.opts.now() / 1000);
  }

  private invalid(source: string, problems: string[]): ReloadResult {
    const { metrics, logger } = this.opts;
    metrics.configReloads.labels('invalid').inc();
    logger.error({ source, problems, hash: this.generation.hash }, `config reload failed: ${problems.length} problem${problems.length === 1 ? '' : 's'}; the config in effect keeps serving`);
    for (const problem of problems) logger.error({ source }, `config reload: ${problem}`);
    return { result: 'invalid', problems };
  }

  /**
   * Gauges of what a reload dropped would keep their last value (an open breaker of a removed route would read open
   * forever, and alert): the breakers of registries not carried over, the SLO gauges of removed routes, and the
   * budget gauges, which the next scrape refills from the store for the routes in effect.
   */
  private dropStaleSeries(prev: Generation, made: Generation, removed: readonly string[]): void {
    const { metrics } = this.opts;
    for (const [chain, kept] of prev.state.chains) {
      if (made.state.chains.get(chain)?.registry === kept.registry) continue;
      // Deleting reports each key to the registry's onEvict, which removes its gauge series.
      for (const { key } of kept.registry.list()) kept.registry.delete(key);
    }
    for (const route of removed) dropSloGauges({ budgetRemaining: metrics.sloBudgetRemaining, burnRate: metrics.sloBurnRate, action: metrics.sloAction }, route);
    metrics.budgetSpent.reset();
    metrics.budgetLimit.reset();
  }
}
