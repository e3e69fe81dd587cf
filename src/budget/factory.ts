import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import type { Config } from '../config/schema.js';
import type { RedisConnection } from '../store/redis-connection.js';
import type { Metrics } from '../telemetry/metrics.js';
import { fallbackEvents, leaseEvents } from './store-events.js';
import { LeasedStore } from './lease.js';
import { MemoryLeaseSource, type LeaseSource } from './lease-source.js';
import { LocalFallbackStore } from './local-fallback-store.js';
import { MemoryStore } from './memory-store.js';
import { loadPriceTable, microUsdFromUsd, type PriceTable } from './prices.js';
import { RedisLeaseSource } from './redis-lease-source.js';
import { RedisStore } from './redis-store.js';
import type { BudgetStore } from './store.js';

/** The price table shipped with Fusebox: `config/prices.yaml` at the package root (from src/ or dist/src/). */
export const bundledPricesFile = (): string => {
  const here = fileURLToPath(new URL('.', import.meta.url));
  const candidates = [resolve(here, '../../config/prices.yaml'), resolve(here, '../../../config/prices.yaml')];
  return candidates.find((f) => existsSync(f)) ?? candidates[0]!;
};

export const loadPrices = (config: Config, baseDir: string): PriceTable =>
  loadPriceTable(config.budgets.pricesFile !== undefined ? resolve(baseDir, config.budgets.pricesFile) : bundledPricesFile());

/**
 * How often leased spend is reported when the config does not say. Redis: each report is a script call, so rarely.
 * Memory: a report is a function call, and until it runs the spend is in no snapshot and crosses no alert percent
 * (a crash loses what was unreported, an agent that stopped past the percent is alerted only then): every tick.
 */
const DEFAULT_REPORT_INTERVAL_MS = { redis: 20_000, memory: 1_000 } as const;

/**
 * The store the config asks for, as a stack (outermost first):
 * - LeasedStore: every cap (route, fleet, agent, workflow; µUSD, tokens, calls) served from leased slices (lease.ts),
 *   so a call runs no store script (the inner store checks its kill copy only), and an outage spends at most the
 *   slices held. It wraps memory and Redis alike, so both behave the same; the memory lease source hands
 *   its one holder all that is left, which keeps memory exact.
 * - memory: MemoryStore (one sidecar, optional snapshot file; it also keeps the leased windows' spend).
 * - redis: RedisStore wrapped in LocalFallbackStore, so an outage follows each route's `budget.storeUnavailable`
 *   instead of failing every call. It runs on `deps.redis`, the process's one connection, which the caller closes
 *   after the store.
 */

export const createBudgetStore = (config: Config, deps: { now: () => number; logger: Logger; metrics: Metrics; redis?: RedisConnection }): BudgetStore => {
  const { now, logger, metrics, redis } = deps;
  const alertPercent = config.budgets.alertPercent;
  // Holds outlive the longest call by a minute; a dead sidecar's holds return after that.
  const reservationTtlMs = Math.max(...config.routes.map((r) => r.timeouts.totalMs)) + 60_000;
  const lease = config.store.lease;
  const sizing = { ttlMs: lease.ttlMs, graceMs: lease.graceMs, minSliceUsdMicros: microUsdFromUsd(lease.minSliceUsd), alertPercent };
  const leased = (inner: BudgetStore, source: LeaseSource) =>
    new LeasedStore({
      inner,
      source,
      now,
      alertPercent,
      renewBelowPercent: lease.renewBelowPercent,
      allowanceUsdMicros: microUsdFromUsd(lease.allowanceUsd),
      reportIntervalMs: lease.reportIntervalMs ?? DEFAULT_REPORT_INTERVAL_MS[config.store.kind],
      onEvent: leaseEvents(metrics, logger),
    });
  if (config.store.kind === 'memory') {
    const store = new MemoryStore({
      now,
      alertPercent,
      reservationTtlMs,
      ...(config.store.snapshotPath !== undefined ? { snapshotPath: config.store.snapshotPath } : {}),
      snapshotIntervalMs: config.store.snapshotIntervalMs,
      onSnapshotError: (err) => logger.error({ err, path: config.store.snapshotPath }, 'budget snapshot problem: spend may not survive a restart'),
    });
    if (store.snapshotLoadError) logger.error({ error: store.snapshotLoadError.message }, 'budget snapshot unreadable: starting with empty counters');
    return leased(store, new MemoryLeaseSource(store, sizing));
  }
  if (!redis) throw new TypeError('a redis budget store needs the Redis connection (deps.redis)');
  const shared = new RedisStore({
    redis,
    now,
    alertPercent,
    reservationTtlMs,
    commitDelayMs: config.store.commitDelayMs,
    onCommitsSent: (how, n) => metrics.storeCommits.labels(how).inc(n),
  });
  // Both series from the first scrape, so the ridden share can be read before either moves.
  for (const how of ['ridden', 'alone']) metrics.storeCommits.labels(how).inc(0);
  const fallback = new LocalFallbackStore({
    shared,
    now,
    alertPercent,
    reservationTtlMs,
    journalMaxEntries: config.store.journalMaxEntries,
    onEvent: fallbackEvents(metrics, logger),
  });
  return leased(fallback, new RedisLeaseSource({ redis, ...sizing }));
};
