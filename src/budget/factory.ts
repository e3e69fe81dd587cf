import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import type { Config } from '../config/schema.js';
import type { RedisConnection } from '../store/redis-connection.js';
import type { Metrics } from '../telemetry/metrics.js';
import { LocalFallbackStore } from './local-fallback-store.js';
import { MemoryStore } from './memory-store.js';
import { loadPriceTable, type PriceTable } from './prices.js';
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
 * The store the config asks for: memory (one sidecar, optional snapshot file), or Redis wrapped in the local
 * fallback so an outage follows each route's `budget.storeUnavailable` instead of failing every call. A `redis`
 * store runs on `deps.redis`, the process's one connection, which the caller closes after the store.
 */
export const createBudgetStore = (config: Config, deps: { now: () => number; logger: Logger; metrics: Metrics; redis?: RedisConnection }): BudgetStore => {
  const { now, logger, metrics, redis } = deps;
  const alertPercent = config.budgets.alertPercent;
  // Holds outlive the longest call by a minute; a dead sidecar's holds return after that.
  const reservationTtlMs = Math.max(...config.routes.map((r) => r.timeouts.totalMs)) + 60_000;
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
    return store;
  }
  if (!redis) throw new TypeError('a redis budget store needs the Redis connection (deps.redis)');
  const shared = new RedisStore({ redis, now, alertPercent, reservationTtlMs });
  return new LocalFallbackStore({
    shared,
    now,
    alertPercent,
    reservationTtlMs,
    onEvent: (e) => {
      if (e.type === 'unavailable') {
        metrics.storeUp.set(0);
        logger.error({ error: e.error.message }, 'budget store unreachable: routes follow budget.storeUnavailable (local slice and journal, or refuse)');
      } else if (e.type === 'recovered') {
        metrics.storeUp.set(1);
        logger.info({ replayed: e.replayed }, 'budget store back: journal replayed');
      } else if (e.type === 'replayFailed') {
        logger.warn({ error: e.error.message, pending: e.pending }, 'journal replay failed; will retry');
      } else {
        logger.error({ entries: e.entries, usd: e.usdMicros / 1e6 }, 'journaled charges dropped at shutdown: the shared store never came back');
      }
    },
  });
};
