import {
  CircuitBreaker,
  type BreakerState,
  type BreakerStats,
  type CircuitBreakerOptions,
  type TransitionReason,
} from './circuit-breaker.js';

export type KeyedTransitionListener = (
  key: string,
  from: BreakerState,
  to: BreakerState,
  reason: TransitionReason,
  lastFailure: string | undefined,
) => void;

export interface BreakerRegistryOptions {
  /** Settings every breaker of this route gets. */
  readonly breaker: CircuitBreakerOptions;
  /** Most breakers kept (`breaker.maxKeys`). */
  readonly maxKeys: number;
  readonly now: () => number;
  readonly random: () => number;
  readonly onTransition?: KeyedTransitionListener;
  /** Called when a breaker leaves the registry (evicted or deleted), e.g. to drop its metric series. Must not throw. */
  readonly onEvict?: (key: string) => void;
}

export interface BreakerEntry {
  readonly key: string;
  readonly stats: BreakerStats;
}

/**
 * Which breaker to give up first when the registry is full: the least recently used of the lowest rank.
 * Losing a closed breaker costs only its counters. Losing an open one re-admits traffic to a key that is
 * failing, and losing a forced one drops an operator's decision, so those go last.
 */
const EVICTION_RANK: Record<BreakerState, number> = { closed: 0, forced_closed: 1, half_open: 2, open: 3, forced_open: 4 };

/**
 * One route's breakers, keyed by whatever the route guards (route, upstream, model, MCP tool name), at most
 * `maxKeys` of them. Keys come from requests (a model or tool name), so the bound is what stops a caller from
 * growing memory without limit.
 *
 * Eviction is LRU among closed breakers first (see EVICTION_RANK); only when every breaker is open or forced does
 * the least recently used of those go. Breakers hold no timers, so an evicted one is simply garbage.
 * Choosing a victim scans from the least recently used end until it finds a closed breaker: O(1) normally,
 * O(maxKeys) when the registry is full of open breakers and new keys keep arriving.
 *
 * The recency order is a Map's insertion order (least recently used first), not lru-cache's: lru-cache allocates
 * its slots for `maxKeys` up front (~22 KB at the default 1,000) for a registry that mostly holds one breaker (keyBy
 * `route`), or none on a route without calls (issue 15: 500 routes held 11 MB of empty slots). The price: a `get` of
 * another key than the newest deletes and re-appends it, ~50–100 ns more than lru-cache when several keys take turns
 * (bench/README.md, "What 500 routes hold").
 */
export class BreakerRegistry {
  private readonly breakers = new Map<string, CircuitBreaker>();
  /** The most recently used key: the last in `breakers`, which a `get` of it need not move. */
  private newest: string | undefined;

  constructor(private readonly options: BreakerRegistryOptions) {}

  /** The breaker for `key`, made on first use; marks it most recently used. */
  get(key: string): CircuitBreaker {
    const found = this.breakers.get(key);
    if (found !== undefined) {
      if (key !== this.newest) this.touch(key, found);
      return found;
    }
    if (this.breakers.size >= this.options.maxKeys) this.evictOne();
    const { now, random, onTransition } = this.options;
    const breaker = new CircuitBreaker(this.options.breaker, {
      now,
      random,
      onTransition: onTransition && ((from, to, reason, lastFailure) => onTransition(key, from, to, reason, lastFailure)),
    });
    this.touch(key, breaker);
    return breaker;
  }

  /** The breaker for `key` if there is one, without making it or changing its recency (admin reads). */
  peek(key: string): CircuitBreaker | undefined {
    return this.breakers.get(key);
  }

  delete(key: string): boolean {
    const deleted = this.breakers.delete(key);
    if (key === this.newest) this.newest = undefined;
    if (deleted) this.options.onEvict?.(key);
    return deleted;
  }

  get size(): number {
    return this.breakers.size;
  }

  /** Every breaker with its stats, most recently used first, for the admin API. */
  list(): BreakerEntry[] {
    const out: BreakerEntry[] = [];
    for (const [key, breaker] of this.breakers) out.push({ key, stats: breaker.stats() });
    return out.reverse();
  }

  /** Admin: `reset()` every breaker. */
  resetAll(): void {
    for (const breaker of this.breakers.values()) breaker.reset();
  }

  /** Moves `key` to the most recently used end (a Map appends a key set anew). */
  private touch(key: string, breaker: CircuitBreaker): void {
    this.breakers.delete(key);
    this.breakers.set(key, breaker);
    this.newest = key;
  }

  private evictOne(): void {
    let victim: string | undefined;
    let victimRank = Number.POSITIVE_INFINITY;
    for (const [key, breaker] of this.breakers) {
      const rank = EVICTION_RANK[breaker.state()];
      if (rank < victimRank) {
        victim = key;
        victimRank = rank;
        if (rank === 0) break;
      }
    }
    if (victim !== undefined) this.delete(victim);
  }
}
